"""Class names and prompt templates for zero-shot classification, shipped as JSON data files.

Each data set lives in ``mmcl/data/zeroshot/<name>.json`` with the class names and prompt
templates OpenAI published for CLIP (``data/prompts.md`` and the ImageNet prompt-engineering
notebook); the file's ``source`` field says exactly where they come from.

Templates are stored with OpenAI's ``{}`` placeholder, so ``template.format(classname)`` works
as well as :func:`format_prompts`; ``{c}`` (the clip_benchmark style) is accepted on input.

Class order is the source's order, which is the label order of the data set as OpenAI loaded
it. It is not always the order another loader uses (EuroSAT in torchvision is alphabetical, for
one), so check it against your data set's labels before trusting an accuracy.

>>> meta = load_zero_shot_metadata("CIFAR10")
>>> len(meta.classnames), len(meta.templates)
(10, 18)
>>> format_prompts(meta.classnames[0], meta.templates[:2])
['a photo of a airplane.', 'a blurry photo of a airplane.']
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "PLACEHOLDER",
    "ZeroShotMetadata",
    "available_zero_shot_datasets",
    "format_prompts",
    "load_zero_shot_metadata",
    "normalize_template",
]

PLACEHOLDER = "{}"
_NAMED_PLACEHOLDER = "{c}"
_DATA_PACKAGE = "mmcl.data"
_DATA_FOLDER = "zeroshot"

# Other names the same data sets go by (clip_benchmark's among them), so a name copied from
# another tool still resolves. Lookup ignores case and separators, so only real renames are here.
_ALIASES = {
    "imagenet1k": "imagenet",
    "pets": "oxford_pets",
    "cars": "stanford_cars",
    "flowers": "flowers102",
    "aircraft": "fgvc_aircraft",
    "describable_textures": "dtd",
    "sst2": "rendered_sst2",
    "clevr_count_all": "clevr_counts",
    "kitti_closest_vehicle_distance": "kitti",
    "patch_camelyon": "pcam",
    "pascal_voc2007": "voc2007",
}


@dataclass(frozen=True)
class ZeroShotMetadata:
    """Class names and prompt templates of one data set.

    ``synonyms[i]`` holds every name OpenAI used for class ``i`` (its first entry is
    ``classnames[i]``); only FER2013 has more than one. Pass ``synonyms`` instead of
    ``classnames`` to ``build_zero_shot_classifier`` to ensemble over all of them.
    """

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    source: str
    synonyms: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.synonyms:
            object.__setattr__(self, "synonyms", tuple((name,) for name in self.classnames))

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def normalize_template(template: str) -> str:
    """The template with its class-name placeholder written as ``{}``.

    >>> normalize_template("a photo of a {c}.")
    'a photo of a {}.'
    """
    if not isinstance(template, str):
        raise TypeError(f"a template must be a string, got {type(template).__name__}")
    normalized = template.replace(_NAMED_PLACEHOLDER, PLACEHOLDER)
    if PLACEHOLDER not in normalized:
        raise ValueError(
            f"template {template!r} has no class-name placeholder: write '{{}}' or '{{c}}' "
            "where the class name goes"
        )
    return normalized


def format_prompts(classname: str, templates: Iterable[str]) -> list[str]:
    """Every template filled in with ``classname``.

    Plain substitution rather than ``str.format``, so braces or format specs inside a class
    name or elsewhere in a template cannot raise or be misread.

    >>> format_prompts("dog", ["a photo of a {}.", "a {c} in a video game."])
    ['a photo of a dog.', 'a dog in a video game.']
    """
    return [normalize_template(template).replace(PLACEHOLDER, classname) for template in templates]


def available_zero_shot_datasets() -> list[str]:
    """Names of the data sets shipped with mmcl, sorted.

    >>> "imagenet" in available_zero_shot_datasets()
    True
    """
    return list(_shipped_names())


@functools.cache
def _shipped_names() -> tuple[str, ...]:
    folder = importlib.resources.files(_DATA_PACKAGE) / _DATA_FOLDER
    return tuple(
        sorted(
            entry.name.removesuffix(".json")
            for entry in folder.iterdir()
            if entry.name.endswith(".json")
        )
    )


def load_zero_shot_metadata(name: str) -> ZeroShotMetadata:
    """Class names and templates of a shipped data set; ``name`` ignores case and separators.

    >>> meta = load_zero_shot_metadata("ImageNet")
    >>> meta.num_classes, len(meta.templates), meta.classnames[0]
    (1000, 80, 'tench')
    """
    if not isinstance(name, str):
        raise TypeError(f"a data set name must be a string, got {type(name).__name__}")
    lookup = _names_by_squashed_key()
    key = lookup.get(_squash(name))
    if key is None:
        known = list(_shipped_names())
        candidates = difflib.get_close_matches(_squash(name), list(lookup), n=6, cutoff=0.5)
        close = list(dict.fromkeys(lookup[c] for c in candidates))[:3]  # each data set once
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown zero-shot data set {name!r}.{hint} Available: {', '.join(known)}"
        )
    return _load(key)


def _squash(name: str) -> str:
    # "CIFAR-10", "cifar_10" and "cifar10" all name the same data set.
    return re.sub(r"[^a-z0-9]", "", name.lower())


@functools.cache
def _names_by_squashed_key() -> dict[str, str]:
    names = {_squash(alias): target for alias, target in _ALIASES.items()}
    names.update((_squash(name), name) for name in _shipped_names())
    return names


@functools.cache
def _load(key: str) -> ZeroShotMetadata:
    resource = importlib.resources.files(_DATA_PACKAGE) / _DATA_FOLDER / f"{key}.json"
    record = json.loads(resource.read_text(encoding="utf-8"))
    classnames = _strings(record["classnames"], key, "classnames")
    templates = tuple(
        normalize_template(t) for t in _strings(record["templates"], key, "templates")
    )
    synonyms = tuple(
        _strings(names, key, "classname_synonyms")
        for names in record.get("classname_synonyms", [[c] for c in classnames])
    )
    if len(synonyms) != len(classnames) or any(
        names[0] != c for names, c in zip(synonyms, classnames, strict=True)
    ):
        raise ValueError(f"{key}.json: classname_synonyms must start with each class name")
    return ZeroShotMetadata(
        name=record["name"],
        classnames=classnames,
        templates=templates,
        source=record["source"],
        synonyms=synonyms,
    )


def _strings(values: Sequence[str], key: str, field: str) -> tuple[str, ...]:
    # The files ship with the package, but a broken one should say which file and field.
    if not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{key}.json: '{field}' must be a non-empty list of strings")
    return tuple(values)
