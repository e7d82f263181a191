"""Shipped zero-shot class names and templates: counts, provenance, lookup and formatting."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json

import pytest
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

from mmcl.data import (
    ZeroShotMetadata,
    available_zero_shot_datasets,
    format_prompts,
    load_zero_shot_metadata,
    normalize_template,
)

# (classes, templates) as published by OpenAI in CLIP's data/prompts.md and ImageNet notebook.
EXPECTED_COUNTS = {
    "imagenet": (1000, 80),
    "cifar10": (10, 18),
    "cifar100": (100, 18),
    "mnist": (10, 1),
    "stl10": (10, 2),
    "food101": (101, 1),
    "caltech101": (102, 34),
    "oxford_pets": (37, 1),
    "flowers102": (102, 1),
    "fgvc_aircraft": (100, 2),
    "stanford_cars": (196, 8),
    "dtd": (47, 8),
    "eurosat": (10, 3),
    "gtsrb": (43, 3),
    "sun397": (397, 2),
    "country211": (211, 5),
    "resisc45": (45, 18),
    "kitti": (4, 1),
    "pcam": (2, 1),
    "fer2013": (7, 6),
    "voc2007": (20, 1),
    "clevr_counts": (8, 1),
    "rendered_sst2": (2, 1),
}


def test_exactly_the_expected_datasets_are_shipped():
    assert available_zero_shot_datasets() == sorted(EXPECTED_COUNTS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_counts_match_the_published_lists(name):
    meta = load_zero_shot_metadata(name)
    assert (len(meta.classnames), len(meta.templates)) == EXPECTED_COUNTS[name]
    assert meta.num_classes == EXPECTED_COUNTS[name][0]
    assert meta.name == name


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_data_files_are_well_formed(name):
    path = importlib.resources.files("mmcl.data") / "zeroshot" / f"{name}.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert set(record) <= {"name", "source", "classnames", "templates", "classname_synonyms"}
    assert record["name"] == name
    assert "OpenAI" in record["source"]
    assert all(isinstance(c, str) and c.strip() == c and c for c in record["classnames"])
    assert all(t.count("{}") == 1 for t in record["templates"])
    assert len(set(record["templates"])) == len(record["templates"])
    if name != "imagenet":  # OpenAI's ImageNet names repeat 'missile' and 'sunglasses'
        assert len(set(record["classnames"])) == len(record["classnames"])


def test_imagenet_equals_open_clip_metadata():
    meta = load_zero_shot_metadata("imagenet")
    assert list(meta.classnames) == list(IMAGENET_CLASSNAMES)
    for classname in (meta.classnames[0], meta.classnames[-1], "goldfish"):
        assert format_prompts(classname, meta.templates) == [
            template(classname) for template in OPENAI_IMAGENET_TEMPLATES
        ]


def test_spot_checks_against_prompts_md():
    cifar10 = load_zero_shot_metadata("cifar10")
    assert cifar10.classnames[:3] == ("airplane", "automobile", "bird")
    assert cifar10.templates[0] == "a photo of a {}."
    mnist = load_zero_shot_metadata("mnist")
    assert mnist.classnames == tuple(str(d) for d in range(10))
    assert format_prompts("7", mnist.templates) == ['a photo of the number: "7".']
    assert load_zero_shot_metadata("kitti").templates == ("{}",)
    assert load_zero_shot_metadata("cifar100").classnames[1] == "aquarium fish"


def test_fer2013_keeps_openai_synonyms():
    meta = load_zero_shot_metadata("fer2013")
    assert meta.classnames[3] == "happy"
    assert meta.synonyms[3] == ("happy", "smiling")
    assert meta.synonyms[5] == ("surprised", "shocked", "spooked")
    assert all(names[0] == name for names, name in zip(meta.synonyms, meta.classnames, strict=True))


def test_synonyms_default_to_the_class_name():
    meta = load_zero_shot_metadata("cifar10")
    assert meta.synonyms == tuple((c,) for c in meta.classnames)


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("CIFAR10", "cifar10"),
        ("cifar-10", "cifar10"),
        ("  ImageNet ", "imagenet"),
        ("imagenet1k", "imagenet"),
        ("Oxford Pets", "oxford_pets"),
        ("pets", "oxford_pets"),
        ("stanford-cars", "stanford_cars"),
        ("SST2", "rendered_sst2"),
    ],
)
def test_names_ignore_case_and_separators(spelling, name):
    assert load_zero_shot_metadata(spelling).name == name


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown zero-shot data set 'cifar1000'.*'cifar100'"):
        load_zero_shot_metadata("cifar1000")
    with pytest.raises(ValueError, match="Available: caltech101"):
        load_zero_shot_metadata("no-such-thing")
    with pytest.raises(TypeError, match="must be a string"):
        load_zero_shot_metadata(10)  # type: ignore[arg-type]


def test_metadata_is_frozen_and_lists_are_copies():
    meta = load_zero_shot_metadata("stl10")
    assert isinstance(meta, ZeroShotMetadata)
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.name = "other"  # type: ignore[misc]
    names = available_zero_shot_datasets()
    names.clear()
    assert "stl10" in available_zero_shot_datasets()


def test_format_prompts_accepts_both_placeholder_styles():
    assert format_prompts("cat", ["a photo of a {}.", "a {c} in a video game."]) == [
        "a photo of a cat.",
        "a cat in a video game.",
    ]
    # Substitution, not str.format: braces in a class name are kept as they are.
    assert format_prompts("{weird}", ["a {}"]) == ["a {weird}"]
    assert normalize_template("the {c}") == "the {}"


def test_template_without_placeholder_is_rejected():
    with pytest.raises(ValueError, match="no class-name placeholder"):
        format_prompts("cat", ["a photo of a cat."])
    with pytest.raises(TypeError, match="must be a string"):
        normalize_template(None)  # type: ignore[arg-type]
