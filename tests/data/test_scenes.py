"""Procedural scenes: determinism, disjoint splits, truthful captions, balanced views, and
labels checked against the rendered pixels."""

from __future__ import annotations

import doctest
import random
import re
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmcl.data import scenes as scenes_module
from mmcl.data import scenes_identity, scenes_render, scenes_text
from mmcl.data.scenes import (
    BACKGROUNDS,
    COLOUR_WORDS,
    COLOURS,
    POSITIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SPLITS,
    Scene,
    SceneCaptions,
    SceneClassification,
    render,
    sample_scene,
    save_preview,
    split_of,
    view_classnames,
    view_templates,
)
from mmcl.data.scenes_render import COLOUR_RGB
from mmcl.io.tokenizer import tokenize


def _raw(split: str, size: int, **kwargs) -> SceneCaptions:
    return SceneCaptions(split, size, transform=lambda image: image, **kwargs)


# --------------------------------------------------------------------------- determinism
def test_same_seed_and_index_give_identical_items():
    a, b = SceneCaptions("train", 50, seed=3), SceneCaptions("train", 50, seed=3)
    for i in (0, 7, 49, -1):
        (image_a, text_a), (image_b, text_b) = a[i], b[i]
        assert torch.equal(image_a, image_b)
        assert text_a == text_b
        assert a.scene(i) == b.scene(i) and a.caption(i) == text_a


def test_different_seeds_splits_and_indices_differ():
    base = _raw("train", 40, seed=0)
    other_seed = _raw("train", 40, seed=1)
    other_split = _raw("val", 40, seed=0)
    for other in (other_seed, other_split):
        assert sum(base.scene(i) != other.scene(i) for i in range(40)) == 40
    images = {np.asarray(base[i][0]).tobytes() for i in range(40)}
    assert len(images) == 40


def test_render_is_a_function_of_the_scene():
    scene = Scene("star", "red", "large", 2, None, "white", layout_seed=7)
    first = np.asarray(render(scene, 32))
    assert np.array_equal(first, np.asarray(render(scene, 32)))
    moved = Scene("star", "red", "large", 2, None, "white", layout_seed=8)
    assert not np.array_equal(first, np.asarray(render(moved, 32)))
    image = render(scene, 48)
    assert image.mode == "RGB" and image.size == (48, 48)


# -------------------------------------------------------------------------------- splits
def test_split_is_a_stable_function_of_the_identity():
    # blake2b of the identity: the same answer in every process and Python version. Changing
    # these values means changing which scenes are held out, i.e. every published split.
    splits = [split_of(Scene("circle", "red", "small", 1, "left", "white", s)) for s in range(9)]
    assert splits == ["test", "train", "test", "train", "train", "train", "train", "train", "val"]
    scene = Scene("circle", "red", "small", 1, "left", "white", 8)
    assert scene.split == "val"


def test_splits_never_share_a_scene():
    seen: dict[str, set[Scene]] = {}
    for split in SPLITS:
        scenes = {_raw(split, 600).scene(i) for i in range(600)}
        for view in ("shape", "position"):
            data = SceneClassification(view, split, 200)
            scenes |= {data.scene(i) for i in range(200)}
        assert all(split_of(scene) == split for scene in scenes)
        seen[split] = scenes
    assert not seen["train"] & seen["val"]
    assert not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]


def test_split_fractions():
    rng = random.Random(0)
    splits = Counter(
        split_of(Scene("heart", "blue", "large", 3, None, "black", rng.getrandbits(32)))
        for _ in range(4000)
    )
    assert 0.77 < splits["train"] / 4000 < 0.83
    assert 0.08 < splits["val"] / 4000 < 0.12 and 0.08 < splits["test"] / 4000 < 0.12


# ------------------------------------------------------------------------------ captions
_WORD = re.compile(r"[a-z]+|\d")
_SHAPE_OF = {
    word: shape
    for shape, forms in SHAPE_WORDS.items()
    for pair in forms
    for form in pair
    for word in [form.split()[0]]  # "plus sign" -> "plus"
}
_COLOUR_OF = {word: colour for colour, words in COLOUR_WORDS.items() for word in words}
_SIZE_OF = {word: size for size, words in SIZE_WORDS.items() for word in words}
_COUNT_OF = {"one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "1": 1, "2": 2, "3": 3, "4": 4}
_POSITION_OF = {p: p for p in POSITIONS} | {"centre": "center", "middle": "center"}


def _check_truthful(scene: Scene, text: str) -> bool:
    """Assert every attribute word in ``text`` is true of ``scene``; return whether the
    shape is named."""
    rest = text
    for background in sorted(BACKGROUNDS, key=len, reverse=True):  # "light grey" before "grey"
        if background in rest:
            assert background == scene.background, (scene, text)
            rest = rest.replace(background, " ")
    words = _WORD.findall(rest)
    for word in words:
        for table, value in (
            (_SHAPE_OF, scene.shape),
            (_COLOUR_OF, scene.colour),
            (_SIZE_OF, scene.size),
            (_COUNT_OF, scene.count),
            (_POSITION_OF, scene.position),
        ):
            if word in table:
                assert table[word] == value, (word, scene, text)
    for word in ("white", "grey", "black", "light", "dark"):  # only as a background
        assert word not in words, (scene, text)
    return any(word in _SHAPE_OF for word in words)


def test_captions_are_truthful_and_mostly_name_the_shape():
    data = _raw("train", 1500, seed=5)
    named = 0
    for i in range(len(data)):
        scene, text = data.scene_and_caption(i)
        named += _check_truthful(scene, text)
    assert named / len(data) > 0.8
    texts = {data.caption(i) for i in range(len(data))}
    assert len(texts) > 800  # varied wording, not one template


def test_truthfulness_checker_catches_a_lie():
    scene = Scene("star", "red", "small", 2, None, "white", 1)
    _check_truthful(scene, "two small red stars on a white background")
    for lie in ("three red stars", "two blue stars", "two red hearts", "two big red stars"):
        with pytest.raises(AssertionError):
            _check_truthful(scene, lie)
    with pytest.raises(AssertionError):
        _check_truthful(scene, "two red stars on a black background")


# --------------------------------------------------------------------------------- views
@pytest.mark.parametrize("view", ["shape", "colour", "count", "position"])
def test_views_are_balanced_and_labels_match_scenes(view):
    names = view_classnames(view)
    data = SceneClassification(view, "val", 10 * len(names), transform=lambda image: image)
    labels = Counter()
    others = Counter()
    for i in range(len(data)):
        image, label = data[i]
        scene = data.scene(i)
        value = scene.count if view == "count" else getattr(scene, view)
        assert names[label] == (
            ["one", "two", "three", "four"][value - 1] if view == "count" else value
        )
        labels[label] += 1
        others[scene.shape if view != "shape" else scene.colour] += 1
        if view == "position":
            assert scene.count == 1
    assert set(labels.values()) == {10}
    assert len(others) >= 5  # the unlabelled attributes still vary
    assert len(view_templates(view)) >= 4
    assert all(t.count("{}") == 1 for t in view_templates(view))


def _object_mask(image: np.ndarray) -> np.ndarray:
    """Pixels far from the background colour, estimated from the image border."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(float)
    background = np.median(border, axis=0)
    return np.linalg.norm(image.astype(float) - background, axis=-1) > 60


def _components(mask: np.ndarray) -> int:
    """Number of 8-connected components, by flood fill (8, so thin star tips stay attached)."""
    seen = np.zeros_like(mask)
    count = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for ny, nx in [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]:
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]:
                    if mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
    return count


def test_pixels_agree_with_colour_count_and_position_labels():
    palette = np.array([COLOUR_RGB[c] for c in COLOURS], dtype=float)
    rng = random.Random(0)
    for _ in range(120):
        scene = sample_scene(rng, "test")
        image = np.asarray(render(scene, 64))
        mask = _object_mask(image)
        dominant = np.median(image[mask].astype(float), axis=0)
        nearest = COLOURS[int(np.argmin(np.linalg.norm(palette - dominant, axis=1)))]
        assert nearest == scene.colour, scene
        assert _components(mask) == scene.count, scene
        if scene.count == 1:
            ys, xs = np.nonzero(mask)
            x, y = xs.mean() / 64, ys.mean() / 64
            expected = {"left": x < 0.4, "right": x > 0.6, "top": y < 0.4, "bottom": y > 0.6}
            assert expected.get(scene.position, 0.4 < x < 0.6 and 0.4 < y < 0.6), scene


def test_small_objects_are_smaller_than_large_ones():
    rng = random.Random(1)
    extent = {"small": [], "large": []}
    for _ in range(60):
        scene = sample_scene(rng, "train", count=1, shape=rng.choice(SHAPES))
        ys, xs = np.nonzero(_object_mask(np.asarray(render(scene, 32))))
        extent[scene.size].append(max(np.ptp(xs), np.ptp(ys)) + 1)
    # Diameters are 8 px and 12.8 px at 32x32.
    assert max(extent["small"]) < min(extent["large"])


# ------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SceneCaptions("training", 10), "train"),
        (lambda: SceneCaptions("train", 0), "size"),
        (lambda: SceneCaptions("train", -3), "size"),
        (lambda: SceneCaptions("train", 10, image_size=0), "image_size"),
        (lambda: SceneClassification("shapes", "train", 10), "colour"),
        (lambda: SceneClassification("shape", "dev", 10), "val"),
        (lambda: SceneClassification("shape", "test", 0), "size"),
        (lambda: view_classnames("color"), "colour"),
        (lambda: view_templates("size"), "position"),
        (lambda: Scene("blob", "red", "small", 1, "left", "white", 0), "circle"),
        (lambda: Scene("star", "red", "small", 2, "left", "white", 0), "count 1"),
        (lambda: Scene("star", "red", "small", 1, None, "white", 0), "position"),
        (lambda: sample_scene(random.Random(0), "train", size="huge"), "size"),
        (lambda: sample_scene(random.Random(0), "train", layout_seed=1), "cannot fix"),
        (lambda: sample_scene(random.Random(0), "train", count=0), "count"),
        (lambda: sample_scene(random.Random(0), "val", count=2, position="top"), "count 1"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_index_out_of_range():
    data = SceneCaptions("train", 5)
    with pytest.raises(IndexError):
        data[5]
    with pytest.raises(IndexError):
        SceneClassification("count", "train", 5)[-6]


# ------------------------------------------------------------------------------- loading
def test_dataloader_with_strings_and_with_tokenizer():
    texts = DataLoader(SceneCaptions("train", 10, image_size=32), batch_size=4)
    images, captions = next(iter(texts))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    # CLIP normalisation: far from [0, 1], roughly centred.
    assert images.min() < -1 and images.max() > 1

    data = SceneCaptions("val", 6, image_size=32, tokenizer=tokenize)
    images, tokens = next(iter(DataLoader(data, batch_size=6, num_workers=0)))
    assert tokens.shape == (6, 77) and tokens.dtype == torch.long
    assert torch.equal(tokens, tokenize([data.caption(i) for i in range(6)]))

    labelled = DataLoader(SceneClassification("colour", "test", 8), batch_size=8)
    images, labels = next(iter(labelled))
    assert images.shape == (8, 3, 32, 32) and labels.tolist() == list(range(8))


def test_default_transform_matches_torchvision():
    from torchvision.transforms import Compose, Normalize, ToTensor

    from mmcl.io.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    reference = Compose([ToTensor(), Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)])
    data = SceneCaptions("train", 3, image_size=24)
    for i in range(3):
        assert torch.allclose(data[i][0], reference(data.image(i)), atol=1e-5)


def test_save_preview(tmp_path):
    path = save_preview(tmp_path / "preview.png", n=4)
    assert path.stat().st_size > 0


@pytest.mark.parametrize("module", [scenes_module, scenes_identity, scenes_render, scenes_text])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
