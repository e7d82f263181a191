"""Continual-learning scenarios: class splits, the four scenario builders, domain transforms,
task/scenario validation, the built-in mini-MTIL sequence and the named experiments.

Expected values are worked by hand from the source labels written out below, or are properties
every scenario must have (each class exactly once, disjoint train/test items, ...).
"""

from __future__ import annotations

import doctest
import itertools
import re
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset, TensorDataset

import mmcl.continual.builtin as builtin_module
import mmcl.continual.domains as domains_module
import mmcl.continual.scenarios as scenarios_module
import mmcl.continual.splits as splits_module
import mmcl.continual.tasks as tasks_module
from mmcl.continual.builtin import MissingDataError, mini_mtil
from mmcl.continual.classes import stream_offsets
from mmcl.continual.experiments import build_scenario
from mmcl.continual.scenarios import (
    DEFAULT_TEMPLATES,
    PermuteChannels,
    Rotate,
    Scenario,
    Task,
    TaskSubset,
    class_incremental,
    colour_permuted_domains,
    dataset_targets,
    describe,
    domain_incremental,
    multi_dataset,
    rotated_domains,
    split_classes,
    task_incremental,
    transformed_domains,
)

NAMES6 = ["ant", "bee", "cat", "dog", "eel", "fox"]
# Source labels of the toy data sets. Item i's image is the single number i, so an item of a
# task can be traced back to the source item it came from.
TRAIN6 = [i % 6 for i in range(30)]  # five of every class
TEST6 = [0, 5, 2, 2, 1, 5, 3, 0, 2, 4, 5, 5]  # class: count = 0:2, 1:1, 2:3, 3:1, 4:1, 5:4


def numbered(labels: list[int]) -> TensorDataset:
    """A data set whose item i is (tensor([i.]), labels[i])."""
    return TensorDataset(
        torch.arange(len(labels), dtype=torch.float32)[:, None], torch.tensor(labels)
    )


def source_index(image: torch.Tensor) -> int:
    return int(image.item())


def toy6(**kwargs):
    return numbered(TRAIN6), numbered(TEST6), NAMES6


# ----------------------------------------------------------------------------- doctests
@pytest.mark.parametrize(
    "module",
    [tasks_module, scenarios_module, splits_module, domains_module, builtin_module],
    ids=lambda m: m.__name__.rsplit(".", 1)[-1],
)
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- class splits
@pytest.mark.parametrize("n_classes, n_tasks", [(10, 5), (10, 2), (6, 3), (7, 7), (4, 1)])
@pytest.mark.parametrize("seed", [0, 1, 123])
def test_split_has_every_class_exactly_once_in_equal_groups(n_classes, n_tasks, seed):
    groups = split_classes(n_classes, n_tasks=n_tasks, seed=seed)
    assert len(groups) == n_tasks
    assert [len(g) for g in groups] == [n_classes // n_tasks] * n_tasks
    flat = [c for g in groups for c in g]
    assert sorted(flat) == list(range(n_classes))  # every class once: no overlap, none lost


def test_class_order_is_a_function_of_the_seed():
    assert split_classes(10, n_tasks=5, seed=7) == split_classes(10, n_tasks=5, seed=7)
    orders = {tuple(c for g in split_classes(10, n_tasks=5, seed=s) for c in g) for s in range(8)}
    assert len(orders) > 1  # 10! orders: eight seeds giving one order would be no shuffle
    assert any(order != tuple(range(10)) for order in orders)
    # The same through the builder, across separately built scenarios.
    train, test, names = toy6()
    first = class_incremental(train, test, names, n_tasks=3, seed=5)
    again = class_incremental(train, test, names, n_tasks=3, seed=5)
    assert [t.class_ids for t in first] == [t.class_ids for t in again]
    assert first.seed == 5


def test_explicit_order_and_uneven_group_sizes():
    order = [5, 4, 3, 2, 1, 0]
    assert split_classes(6, n_tasks=3, class_order=order) == [[5, 4], [3, 2], [1, 0]]
    assert split_classes(6, classes_per_task=[3, 2, 1], class_order=order) == [
        [5, 4, 3],
        [2, 1],
        [0],
    ]
    assert split_classes(6, classes_per_task=3, class_order=order) == [[5, 4, 3], [2, 1, 0]]
    # numpy and tensor integers are class ids too.
    assert split_classes(4, n_tasks=2, class_order=np.array([3, 1, 0, 2])) == [[3, 1], [0, 2]]
    assert split_classes(4, n_tasks=2, class_order=torch.tensor([3, 1, 0, 2])) == [[3, 1], [0, 2]]
    # Explicit splits need not cover every class.
    assert split_classes(6, class_splits=[[4], [0, 2]]) == [[4], [0, 2]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(class_splits=[[0, 1], [1, 2]]), "overlap"),
        (dict(class_splits=[[0, 1], [2, 2]]), "overlap"),
        (dict(class_splits=[[0, 1], []]), "empty"),
        (dict(class_splits=[]), "empty"),
        (dict(class_splits=[[0, 9]]), "unknown class ids"),
        (dict(class_splits=[[0], [1]], n_tasks=3), "n_tasks=3"),
        (dict(class_splits=[[0]], class_order=range(6)), "alone"),
        (dict(classes_per_task=[3, 0, 3]), "empty task"),
        (dict(classes_per_task=[3, 2]), "sums to 5"),
        (dict(classes_per_task=4), "groups of 4"),
        (dict(n_tasks=7), "more than the 6 classes"),
        (dict(n_tasks=4), "classes_per_task"),  # uneven: says how to ask for it
        (dict(n_tasks=0), "positive"),
        (dict(), "n_tasks"),
        (dict(n_tasks=2, class_order=[0, 1, 2, 3, 4, 4]), "permutation"),
        (dict(n_tasks=2, class_order=[0, 1, 2, 3, 4]), "missing [5]"),
        (dict(n_tasks=2, class_order=[0, 1, 2, 3, 4, 5.0]), "integer"),
        (dict(n_tasks=2, seed=None), "seed"),  # would be a different order every run
    ],
)
def test_bad_splits_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        split_classes(6, **kwargs)
    # The builders raise the same error before building anything.
    train, test, names = toy6()
    with pytest.raises(ValueError):
        class_incremental(train, test, names, **kwargs)


# ----------------------------------------------------------------------------- class-incremental
def test_class_incremental_tasks_hold_exactly_their_classes_with_global_labels():
    train, test, names = toy6()
    scenario = class_incremental(train, test, names, class_splits=[[5, 0], [2], [1, 3, 4]])
    assert scenario.kind == "class-incremental" and len(scenario) == 3
    assert scenario.task_names == ["task-0", "task-1", "task-2"]
    assert [t.class_ids for t in scenario] == [[5, 0], [2], [1, 3, 4]]
    assert [t.classnames for t in scenario] == [["fox", "ant"], ["cat"], ["bee", "dog", "eel"]]
    assert [t.label_ids for t in scenario] == [[5, 0], [2], [1, 3, 4]]
    # Test items counted by hand from TEST6: {5, 0} -> 4 + 2, {2} -> 3, {1, 3, 4} -> 1 + 1 + 1.
    assert [len(t.test) for t in scenario] == [6, 3, 3]
    assert [len(t.train) for t in scenario] == [10, 5, 15]
    for task in scenario:
        for split, source in (("train", TRAIN6), ("test", TEST6)):
            data = getattr(task, split)
            wanted = [i for i, y in enumerate(source) if y in task.class_ids]
            got = [source_index(data[j][0]) for j in range(len(data))]
            assert got == wanted  # exactly the items of its classes, each once
            labels = [data[j][1] for j in range(len(data))]
            assert labels == [source[i] for i in wanted]  # global class ids, unchanged
            assert data.targets == labels
    assert scenario.classes_seen_up_to(0) == [5, 0]
    assert scenario.classes_seen_up_to(2) == [5, 0, 2, 1, 3, 4]
    assert scenario.classnames_seen_up_to(1) == ["fox", "ant", "cat"]
    with pytest.raises(IndexError):
        scenario.classes_seen_up_to(3)


@pytest.mark.parametrize("seed", [0, 3])
def test_class_incremental_by_seed_covers_every_item_once(seed):
    train, test, names = toy6()
    scenario = class_incremental(train, test, names, n_tasks=3, seed=seed)
    assert [len(t.class_ids) for t in scenario] == [2, 2, 2]
    assert sorted(c for t in scenario for c in t.class_ids) == list(range(6))
    # Every source item is in exactly one task, and the sizes add up to the source sizes.
    for split, source in (("train", TRAIN6), ("test", TEST6)):
        seen = [source_index(x) for t in scenario for x, _ in getattr(t, split)]
        assert sorted(seen) == list(range(len(source)))
    assert [len(t.train) for t in scenario] == [10, 10, 10]  # five items a class


def test_class_incremental_reads_names_templates_and_labels_from_the_dataset():
    class Named(Dataset):
        classnames = ["a", "b", "c", "d"]
        templates = ["a drawing of {c}."]

        def __init__(self, labels):
            self.labels = np.array(labels, dtype=np.int64)  # numpy ints as labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            raise AssertionError("labels must be read without loading images")

    scenario = class_incremental(Named([0, 1, 2, 3] * 2), Named([3, 2, 1, 0]), n_tasks=2)
    assert scenario.classnames == ["a", "b", "c", "d"]
    assert all(task.templates == ["a drawing of {}."] for task in scenario)
    assert scenario[0].prompts(0) == [f"a drawing of {scenario[0].classnames[0]}."]
    # Without templates anywhere the default ones are used.
    train, test, names = toy6()
    assert class_incremental(train, test, names, n_tasks=2)[0].templates == list(DEFAULT_TEMPLATES)


def test_class_without_training_items_is_refused_before_training():
    # Class 2 ("cat") has test items but no training items; its task has other classes.
    train = numbered([0, 1, 3, 4, 5, 0, 1, 3, 4, 5])
    with pytest.raises(ValueError, match=r"classes \[2\] \(cat\) have no training"):
        class_incremental(train, numbered(TEST6), NAMES6, class_splits=[[0, 1], [2, 3], [4, 5]])
    with pytest.raises(ValueError, match="no training"):
        task_incremental(train, numbered(TEST6), NAMES6, n_tasks=3, seed=0)
    # A class that no task uses may lack items.
    scenario = class_incremental(train, numbered(TEST6), NAMES6, class_splits=[[0, 1], [3]])
    assert [t.class_ids for t in scenario] == [[0, 1], [3]]


def test_task_without_test_items_is_refused():
    test = numbered([0, 1, 0, 1, 2, 3, 2, 3])  # no test items of classes 4 and 5
    with pytest.raises(ValueError, match=r"task 2 \(classes \[4, 5\]\) has no test"):
        class_incremental(numbered(TRAIN6), test, NAMES6, class_splits=[[0, 1], [2, 3], [4, 5]])


@pytest.mark.parametrize(
    "train_labels, test_labels, kwargs, message",
    [
        (TRAIN6[:-1] + [6], TEST6, {}, "train label 6 at index 29"),
        (TRAIN6, TEST6[:-1] + [-1], {}, "test label -1 at index 11"),
        (TRAIN6, TEST6, dict(train_targets=[0, 1]), "2 targets for a dataset of 30"),
        (TRAIN6, TEST6, dict(classnames=[]), "class names are needed"),
    ],
)
def test_class_incremental_bad_labels(train_labels, test_labels, kwargs, message):
    kwargs = {"classnames": NAMES6, **kwargs}
    with pytest.raises(ValueError, match=message):
        class_incremental(numbered(train_labels), numbered(test_labels), n_tasks=2, **kwargs)


def test_explicit_targets_override_the_datasets_labels():
    train = numbered([0] * 6)  # what the items say is ignored when targets are given
    scenario = class_incremental(
        train,
        train,
        ["x", "y"],
        n_tasks=2,
        class_order=[1, 0],
        train_targets=[0, 1] * 3,
        test_targets=[1, 1, 1, 0, 0, 0],
    )
    assert scenario[0].class_ids == [1]
    assert scenario[0].train.indices == [1, 3, 5] and scenario[0].test.indices == [0, 1, 2]
    assert scenario[0].train.targets == [1, 1, 1]


# ----------------------------------------------------------------------------- task-incremental
def test_task_incremental_local_labels_map_back_to_source_classes():
    train, test, names = toy6()
    scenario = task_incremental(train, test, names, class_splits=[[4, 1, 5], [0], [3, 2]])
    assert scenario.kind == "task-incremental"
    assert [t.label_ids for t in scenario] == [[0, 1, 2], [0], [0, 1]]
    assert [t.classnames for t in scenario] == [["eel", "bee", "fox"], ["ant"], ["dog", "cat"]]
    for task in scenario:
        for split, source in (("train", TRAIN6), ("test", TEST6)):
            data = getattr(task, split)
            labels = []
            for image, local in data:
                labels.append(local)
                assert 0 <= local < task.num_classes
                original = source[source_index(image)]
                assert task.class_ids[local] == original  # local label -> the source class
                assert task.classnames[local] == names[original]
            assert sorted(set(labels)) == list(range(task.num_classes))
            assert data.targets == labels
    # Hand check on task 0's test set: TEST6 items of classes 4, 1, 5 in source order are
    # 5(idx 1), 1(4), 5(5), 4(9), 5(10), 5(11) -> local labels 2, 1, 2, 0, 2, 2.
    assert scenario[0].test.targets == [2, 1, 2, 0, 2, 2]
    # The class space of the stream is still the global one.
    assert scenario.classes_seen_up_to(2) == [4, 1, 5, 0, 3, 2]


@pytest.mark.parametrize("seed", [0, 3])
def test_class_and_task_incremental_cut_the_same_tasks_and_differ_only_in_labels(seed):
    train, test, names = toy6()
    cil = class_incremental(train, test, names, n_tasks=3, seed=seed)
    til = task_incremental(train, test, names, n_tasks=3, seed=seed)
    assert [t.class_ids for t in cil] == [t.class_ids for t in til]
    assert [t.classnames for t in cil] == [t.classnames for t in til]
    for a, b in zip(cil, til, strict=True):
        for split in ("train", "test"):
            items_a = [(source_index(x), int(y)) for x, y in getattr(a, split)]
            items_b = [(source_index(x), int(y)) for x, y in getattr(b, split)]
            assert [i for i, _ in items_a] == [i for i, _ in items_b]  # the same items
            # Only the label differs: global id for one, its place in the task for the other.
            assert [y for _, y in items_a] == [a.class_ids[y] for _, y in items_b]


def test_class_and_task_incremental_by_hand_on_explicit_splits():
    train, test, names = toy6()
    splits = [[5, 2], [0, 4, 1], [3]]
    cil = class_incremental(train, test, names, class_splits=splits)
    til = task_incremental(train, test, names, class_splits=splits)
    assert (cil.kind, til.kind) == ("class-incremental", "task-incremental")
    # TEST6 = [0, 5, 2, 2, 1, 5, 3, 0, 2, 4, 5, 5]. Task 0 (classes 5, 2) holds items
    # 1, 2, 3, 5, 8, 10, 11 with labels 5, 2, 2, 5, 2, 5, 5; locally 5 -> 0 and 2 -> 1.
    assert [source_index(x) for x, _ in cil[0].test] == [1, 2, 3, 5, 8, 10, 11]
    assert cil[0].test.targets == [5, 2, 2, 5, 2, 5, 5]
    assert til[0].test.targets == [0, 1, 1, 0, 1, 0, 0]
    # Task 1 (classes 0, 4, 1): items 0, 4, 7, 9 with labels 0, 1, 0, 4 -> local 0, 2, 0, 1.
    assert cil[1].test.targets == [0, 1, 0, 4]
    assert til[1].test.targets == [0, 2, 0, 1]
    assert cil[2].test.targets == [3] and til[2].test.targets == [0]
    # Train: TRAIN6 item i has class i % 6, so task 2 (class 3) holds items 3, 9, ..., 27.
    assert [source_index(x) for x, _ in til[2].train] == [3, 9, 15, 21, 27]
    assert cil[2].train.targets == [3] * 5 and til[2].train.targets == [0] * 5


# ----------------------------------------------------------------------------- domain-incremental
def random_images(n: int, size: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_rotated_domains_rotate_images_and_keep_labels():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    images = random_images(6)
    data = TensorDataset(images, labels)
    scenario = domain_incremental(rotated_domains(data, data, [0, 90, 180, 270]), ["a", "b", "c"])
    assert scenario.kind == "domain-incremental"
    assert scenario.task_names == ["rotated-0", "rotated-90", "rotated-180", "rotated-270"]
    for k, task in enumerate(scenario):
        assert task.classnames == ["a", "b", "c"] and task.class_ids == [0, 1, 2]
        assert task.label_ids == [0, 1, 2]  # every task has every class
        assert scenario.classes_seen_up_to(k) == [0, 1, 2]
        assert task.train.targets == labels.tolist() and task.test.targets == labels.tolist()
        for i in range(len(data)):
            image, label = task.train[i]
            assert label == labels[i]
            assert torch.equal(image, torch.rot90(images[i], k, dims=(1, 2)))
    # Rotating by 90 degrees counter-clockwise moves the top-right pixel to the top-left.
    corner = torch.zeros(1, 3, 3)
    corner[0, 0, 2] = 1
    assert Rotate(90)(corner)[0, 0, 0] == 1
    assert torch.equal(Rotate(-90)(images[0]), torch.rot90(images[0], -1, dims=(1, 2)))
    assert torch.equal(Rotate(450)(images[0]), torch.rot90(images[0], 1, dims=(1, 2)))


def test_rotate_works_on_pil_images_like_on_tensors():
    pixels = (np.random.default_rng(0).random((5, 5, 3)) * 255).astype(np.uint8)
    rotated = np.asarray(Rotate(90)(Image.fromarray(pixels)))
    assert np.array_equal(rotated, np.rot90(pixels, 1, axes=(0, 1)))


def test_rotate_keeps_the_size_of_any_image():
    wide = torch.rand(3, 4, 6)
    for angle in (90, 45, 180, 270, 30):
        assert Rotate(angle)(wide).shape == wide.shape
    assert torch.equal(Rotate(180)(wide), torch.flip(wide, dims=(1, 2)))
    square = random_images(1, size=8)[0]
    turned = Rotate(45)(square)
    assert turned.shape == square.shape and not torch.equal(turned, square)
    assert turned[:, 0, 0].abs().max() == 0  # corners come from outside the image: filled with 0
    image = Image.new("RGB", (6, 4))
    assert Rotate(90)(image).size == (6, 4)
    with pytest.raises(ValueError, match="angle"):
        Rotate("90")


def test_rotated_domains_must_be_distinct():
    data = TensorDataset(random_images(2), torch.tensor([0, 1]))
    for angles in ([0, 90, 90], [0, 360], [90, -270], [10.0, 370.0]):
        with pytest.raises(ValueError, match="distinct"):
            rotated_domains(data, data, angles)
    # Distinct angles give pairwise different images.
    domains = rotated_domains(data, data, [0, 90, 180, 270])
    images = [train[0][0] for _, train, _ in domains]
    for a, b in itertools.combinations(images, 2):
        assert not torch.equal(a, b)


def test_colour_permuted_domains_reorder_channels_and_keep_labels():
    labels = torch.tensor([1, 0, 1])
    images = random_images(3)
    data = TensorDataset(images, labels)
    domains = colour_permuted_domains(data, data)
    assert [name for name, _, _ in domains] == ["channels-rgb", "channels-gbr", "channels-brg"]
    # gbr: output channels are input channels (g, b, r) = (1, 2, 0).
    _, gbr, _ = domains[1]
    image, label = gbr[2]
    assert label == 1 and gbr.targets == [1, 0, 1]
    assert torch.equal(image, torch.stack([images[2][1], images[2][2], images[2][0]]))
    _, identity, _ = domains[0]
    assert torch.equal(identity[0][0], images[0])
    # The three default domains differ in every channel, pairwise.
    outputs = [train[0][0] for _, train, _ in domains]
    for a, b in itertools.combinations(outputs, 2):
        assert all(not torch.equal(a[c], b[c]) for c in range(3))
    scenario = domain_incremental(domains, ["p", "q"])
    assert scenario.task_names == ["channels-rgb", "channels-gbr", "channels-brg"]


def test_permute_channels_on_pil_matches_tensors_and_checks_input():
    pixels = (np.random.default_rng(1).random((4, 4, 3)) * 255).astype(np.uint8)
    out = np.asarray(PermuteChannels((2, 0, 1))(Image.fromarray(pixels)))
    assert np.array_equal(out, pixels[:, :, [2, 0, 1]])
    for order in [(0, 0, 1), (0, 1, 5), (0, 1), (True, False, 2), (0.0, 1.0, 2.0)]:
        with pytest.raises(ValueError, match="permutation"):
            PermuteChannels(order)
    data = TensorDataset(random_images(1), torch.tensor([0]))
    with pytest.raises(ValueError, match="permutation"):
        colour_permuted_domains(data, data, [(0, 1, 5)])  # a clear error, not an IndexError
    with pytest.raises(ValueError, match="distinct"):
        colour_permuted_domains(data, data, [(1, 2, 0), (1, 2, 0)])
    for shape in [(1, 4, 4), (4, 4)]:
        with pytest.raises(ValueError, match="3 colour channels"):
            PermuteChannels((1, 2, 0))(torch.zeros(shape))


def test_domain_incremental_with_own_domains_and_bad_input():
    a = numbered([0, 1, 0, 1])
    b = numbered([1, 1, 0, 0])
    scenario = domain_incremental([("day", a, b), ("night", b, a)], ["cat", "dog"], seed=4)
    assert scenario.task_names == ["day", "night"] and scenario.seed == 4
    assert [t.index for t in scenario] == [0, 1]
    assert scenario[1].train is b and scenario[1].test is a  # no copies, labels unchanged
    assert transformed_domains(a, b, {"same": lambda x: x})[0][1][3] == (a[3][0], 1)
    with pytest.raises(ValueError, match=r"must be \(name, train, test\)"):
        domain_incremental([("day", a)], ["cat", "dog"])
    with pytest.raises(ValueError, match="at least one"):
        domain_incremental([], ["cat", "dog"])
    with pytest.raises(ValueError, match="label 2"):
        domain_incremental([("day", a, numbered([0, 2]))], ["cat", "dog"])
    with pytest.raises(ValueError, match="unique"):
        domain_incremental([("day", a, b), ("day", b, a)], ["cat", "dog"])
    with pytest.raises(ValueError, match="at least one named transform"):
        transformed_domains(a, b, {})


# ----------------------------------------------------------------------------- multi-dataset
def test_multi_dataset_tasks_keep_local_labels_names_and_templates():
    class Flowers(Dataset):
        classnames = ["rose", "tulip", "daisy"]
        templates = ["a photo of a {}, a type of flower."]
        targets = [2, 0, 1, 1]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(1), self.targets[i]

    digits = numbered([0, 1, 0, 1])
    cars = numbered([3, 2, 1, 0, 3])
    scenario = multi_dataset(
        [
            ("digits", digits, digits, ["zero", "one"], ["the number {}."]),
            ("flowers", Flowers(), Flowers(), None, None),  # names and templates from the data
            ("cars", cars, cars, ["a", "b", "c", "d"], None),  # no templates anywhere: default
        ],
        seed=2,
    )
    assert scenario.kind == "multi-dataset" and scenario.classnames is None
    assert scenario.task_names == ["digits", "flowers", "cars"]
    assert [t.classnames for t in scenario] == [
        ["zero", "one"],
        ["rose", "tulip", "daisy"],
        ["a", "b", "c", "d"],
    ]
    assert [t.templates for t in scenario] == [
        ["the number {}."],
        ["a photo of a {}, a type of flower."],
        list(DEFAULT_TEMPLATES),
    ]
    assert scenario[1].prompts(2) == ["a photo of a daisy, a type of flower."]
    assert [t.label_ids for t in scenario] == [[0, 1], [0, 1, 2], [0, 1, 2, 3]]
    assert scenario[2].train is cars  # local labels are the data set's own
    with pytest.raises(ValueError, match="no shared label space"):
        scenario.classes_seen_up_to(0)
    # Stream labels: offset by the classes of earlier tasks, so no two classes collide.
    offsets = stream_offsets(scenario)
    assert offsets == [0, 2, 5]
    spaces = [
        [offset + y for y in task.label_ids] for offset, task in zip(offsets, scenario, strict=True)
    ]
    flat = [label for space in spaces for label in space]
    assert sorted(flat) == list(range(2 + 3 + 4))
    stream_train = [
        {offset + y for y in dataset_targets(task.train)}
        for offset, task in zip(offsets, scenario, strict=True)
    ]
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(stream_train, 2))


def test_shared_label_spaces_need_no_offsets():
    train, test, names = toy6()
    scenario = class_incremental(train, test, names, n_tasks=3)
    assert stream_offsets(scenario) == [0, 0, 0]
    # Class-incremental labels are global ids, already disjoint between tasks.
    labels = [set(t.train.targets) for t in scenario]
    assert all(a.isdisjoint(b) for a, b in itertools.combinations(labels, 2))
    tasks = task_incremental(train, test, names, n_tasks=3)
    assert stream_offsets(tasks) == [0, 2, 4]


def test_multi_dataset_bad_input():
    a = numbered([0, 1])
    with pytest.raises(ValueError, match="at least one task"):
        multi_dataset([])
    with pytest.raises(ValueError, match="got 3 items"):
        multi_dataset([("a", a, a)])
    with pytest.raises(ValueError, match="label 1 at index 1"):
        multi_dataset([("a", a, a, ["only"], None)])
    with pytest.raises(ValueError, match="class names are needed"):
        multi_dataset([("a", a, a, None, None)])
    with pytest.raises(ValueError, match="unique"):
        multi_dataset([("a", a, a, ["x", "y"], None), ("a", a, a, ["x", "y"], None)])
    with pytest.raises(ValueError, match="placeholder"):
        multi_dataset([("a", a, a, ["x", "y"], ["a photo"])])


# ----------------------------------------------------------------------------- labels and views
def test_dataset_targets_reads_labels_cheaply_and_checks_them():
    class Loud(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(1), torch.tensor([2, 0, 1][i])

    class ByMethod(Loud):
        def label(self, i):
            return [1, 1, 0][i]

    assert dataset_targets(Loud()) == [2, 0, 1]  # loads items when nothing cheaper exists
    assert dataset_targets(ByMethod()) == [1, 1, 0]
    assert dataset_targets(Subset(numbered([4, 5, 6, 7]), [3, 1])) == [7, 5]
    assert dataset_targets(numbered([0, 1]), targets=np.array([1, 0])) == [1, 0]
    assert dataset_targets(numbered([0, 1]), targets=torch.tensor([1.0, 0.0])) == [1, 0]
    for bad in ([0.5, 1], [True, 0], ["1", 0], [np.True_, 0]):
        with pytest.raises(ValueError, match="integer class id"):
            dataset_targets(numbered([0, 1]), targets=bad)
    with pytest.raises(ValueError, match="3 targets for a dataset of 2"):
        dataset_targets(numbered([0, 1]), targets=[0, 1, 1])


def test_task_subset_is_a_view_with_mapped_labels():
    data = numbered([3, 1, 3, 2])
    part = TaskSubset(data, [0, 2, 3], dataset_targets(data), label_map={3: 0, 2: 1})
    assert len(part) == 3 and part.indices == [0, 2, 3] and part.dataset is data
    assert part.targets == [0, 0, 1]
    assert [(source_index(x), y) for x, y in part] == [(0, 0), (2, 0), (3, 1)]
    plain = TaskSubset(data, [1, 3], dataset_targets(data))
    assert plain.targets == [1, 2] and plain[1][1] == 2
    with pytest.raises(ValueError, match=r"labels \[2\]"):
        TaskSubset(data, [0, 3], dataset_targets(data), label_map={3: 0})
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        TaskSubset(data, [0], dataset_targets(data), label_map={})


# ----------------------------------------------------------------------------- Task and Scenario
def two_items():
    return numbered([0, 1])


def make_task(name="t", index=0, **overrides):
    values = dict(
        name=name,
        index=index,
        train=two_items(),
        test=two_items(),
        classnames=["a", "b"],
        templates=["{}"],
        class_ids=[0, 1],
    )
    values.update(overrides)
    return Task(**values)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(name=""), "needs a name"),
        (dict(classnames=[]), "no class names"),
        (dict(templates=[]), "no prompt templates"),
        (dict(templates=["a photo"]), "placeholder"),
        (dict(class_ids=[0]), "1 class ids for 2 class names"),
        (dict(class_ids=[1, 1]), r"class ids \[1\] appear more than once"),
        (dict(class_ids=None, global_labels=True), "global labels need class_ids"),
        (dict(train=numbered([])), "empty train set"),
        (dict(test=numbered([])), "empty test set"),
    ],
)
def test_bad_tasks_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_task(**overrides)


def test_task_normalises_templates_and_fills_prompts():
    task = make_task(classnames=["red fox", "owl"], templates=["a {c}.", "art of the {}"])
    assert task.templates == ["a {}.", "art of the {}"]
    assert task.prompts(0) == ["a red fox.", "art of the red fox"]
    assert task.num_classes == 2 and task.label_ids == [0, 1]
    assert make_task(class_ids=[7, 3], global_labels=True).label_ids == [7, 3]


def test_bad_scenarios_are_refused():
    names8 = [str(i) for i in range(8)]
    domain = dict(kind="domain-incremental", classnames=["a", "b"])
    with pytest.raises(ValueError, match="unknown scenario kind 'online'"):
        Scenario([make_task()], "online", classnames=["a", "b"])
    with pytest.raises(ValueError, match="at least one task"):
        Scenario([], **domain)
    with pytest.raises(ValueError, match="index 1, expected 0"):
        Scenario([make_task(index=1)], **domain)
    with pytest.raises(ValueError, match="index 2, expected 1"):
        Scenario([make_task("x", 0), make_task("y", 2)], **domain)
    with pytest.raises(ValueError, match=r"unique, repeated: \['x'\]"):
        Scenario([make_task("x", 0), make_task("x", 1)], **domain)
    with pytest.raises(ValueError, match="needs the global class names"):
        Scenario([make_task()], "domain-incremental")
    with pytest.raises(ValueError, match="class ids in 0..1"):
        Scenario([make_task(class_ids=[0, 5])], **domain)
    with pytest.raises(ValueError, match="class ids in 0..7"):
        Scenario([make_task(class_ids=None)], "class-incremental", classnames=names8)
    with pytest.raises(ValueError, match="do not match"):
        Scenario([make_task(classnames=["b", "a"])], **domain)
    with pytest.raises(ValueError, match="global_labels=True"):
        Scenario([make_task()], "class-incremental", classnames=["a", "b"])
    with pytest.raises(ValueError, match="local labels"):
        Scenario([make_task(global_labels=True)], "task-incremental", classnames=["a", "b"])
    with pytest.raises(ValueError, match="shared class ids"):
        Scenario(
            [make_task(classnames=["b", "c"], class_ids=[1, 2])],
            "domain-incremental",
            classnames=["a", "b", "c"],
        )
    # A multi-dataset task needs no class ids, and the scenario no global names.
    scenario = Scenario([make_task(class_ids=None)], "multi-dataset")
    assert len(scenario) == 1 and scenario[0].name == "t" and list(scenario) == scenario.tasks


def test_describe_lists_every_task():
    labels = [0, 1, 2, 3, 4] * 2
    five = numbered(labels)
    three = numbered([0, 1, 2])
    scenario = multi_dataset(
        [
            ("letters", five, numbered([4, 3, 2, 1, 0, 0]), list("abcde"), ["{}", "a {}"]),
            ("colours", three, three, ["red", "green", "blue"], ["{}"]),
        ],
        seed=3,
        name="demo",
    )
    lines = describe(scenario).splitlines()
    assert lines[0] == "demo: multi-dataset scenario, 2 tasks, seed 3"
    header = lines[1].split()
    assert header[:6] == ["#", "task", "classes", "train", "test", "templates"]
    rows = [line.split(None, 6) for line in lines[2:]]
    assert rows == [
        ["0", "letters", "5", "10", "6", "2", "a, b, c, d, ..."],
        ["1", "colours", "3", "3", "3", "1", "red, green, blue"],
    ]
    # Index and name left-aligned, numbers right-aligned under their header.
    spans = [[m.span() for m in re.finditer(r"\S+", line)][:6] for line in lines[1:]]
    for row in spans[1:]:
        assert [start for start, _ in row[:2]] == [start for start, _ in spans[0][:2]]
        assert [end for _, end in row[2:]] == [end for _, end in spans[0][2:]]
    short = describe(scenario, max_names=5).splitlines()[2]
    assert short.endswith("a, b, c, d, e")
    single = Scenario([make_task()], "domain-incremental", seed=0, classnames=["a", "b"])
    assert (
        describe(single).splitlines()[0] == "scenario: domain-incremental scenario, 1 task, seed 0"
    )


# ----------------------------------------------------------------------------- built-in mini-MTIL
MTIL_ORDER = ["scene-shape", "scene-colour", "scene-count", "scene-position", "cifar10", "mnist"]
MTIL_ORDER += ["digits"]
MTIL_CLASSES = {
    "scene-shape": 8,
    "scene-colour": 8,
    "scene-count": 4,
    "scene-position": 5,
    "cifar10": 10,
    "mnist": 10,
    "digits": 10,
}
TRAIN_SIZE, TEST_SIZE, IMAGE_SIZE = 12, 6, 16


def shared_mini_mtil(**kwargs):
    """mini_mtil with every task, or a skip saying what is missing (a user's machine has no
    shared data folder; CI has it)."""
    try:
        return mini_mtil(require_all=True, **kwargs)
    except MissingDataError as missing:
        pytest.skip(f"shared data not available, skipping: {missing}")


@pytest.fixture(scope="module")
def mtil():
    return shared_mini_mtil(image_size=IMAGE_SIZE, train_size=TRAIN_SIZE, test_size=TEST_SIZE)


def test_mini_mtil_has_the_documented_tasks_in_order(mtil):
    assert mtil.kind == "multi-dataset" and mtil.name == "mini-mtil" and mtil.seed == 0
    assert mtil.task_names == MTIL_ORDER
    assert [t.num_classes for t in mtil] == [MTIL_CLASSES[n] for n in MTIL_ORDER]
    cifar = mtil[MTIL_ORDER.index("cifar10")]
    assert cifar.classnames[:3] == ["airplane", "automobile", "bird"]
    assert mtil[MTIL_ORDER.index("mnist")].classnames == [str(d) for d in range(10)]
    for task in mtil:
        assert task.classnames and all(isinstance(c, str) and c for c in task.classnames)
        assert len(set(task.classnames)) == task.num_classes
        assert task.templates and all("{}" in t for t in task.templates)
        assert len(task.train) == TRAIN_SIZE and len(task.test) == TEST_SIZE
        image, label = task.train[0]
        assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and image.dtype == torch.float32
        assert 0 <= label < task.num_classes
        # Class-balanced: classes take turns, so no class has two more items than another.
        for data, size in ((task.train, TRAIN_SIZE), (task.test, TEST_SIZE)):
            counts = Counter(dataset_targets(data))
            per_class = [counts.get(c, 0) for c in range(task.num_classes)]
            assert max(per_class) - min(per_class) <= 1 and sum(per_class) == size


def test_mini_mtil_train_and_test_never_share_items(mtil):
    for task in mtil:
        train, test = task.train, task.test
        if task.name.startswith("scene-"):
            train_scenes = {train.scene(i) for i in range(len(train))}
            test_scenes = {test.scene(i) for i in range(len(test))}
            assert train_scenes.isdisjoint(test_scenes)
            assert {s.split for s in train_scenes} == {"train"}
            assert {s.split for s in test_scenes} == {"test"}
        elif task.name in ("cifar10", "mnist"):
            assert set(train.paths).isdisjoint(test.paths)
            # Labels are the class folders the files are in.
            for data in (train, test):
                for path, label in zip(data.paths, data.targets, strict=True):
                    assert path.parent.name == task.classnames[label]
            if task.name == "cifar10":
                assert {p.parent.parent.name for p in train.paths} == {"train"}
                assert {p.parent.parent.name for p in test.paths} == {"test"}
        else:
            assert task.name == "digits"
            train_pixels = {train.pixels[i].tobytes() for i in range(len(train))}
            assert train_pixels.isdisjoint(test.pixels[i].tobytes() for i in range(len(test)))


def test_digits_loads_offline_and_splits_each_class_80_20():
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn not installed")
    digits = sklearn_datasets.load_digits()
    per_class = Counter(int(y) for y in digits.target)
    # Caps at the pools: 80% of every class (rounded) for training, the rest for testing.
    scenario = mini_mtil(train_size=5000, test_size=5000, tasks=["digits"])
    (task,) = scenario.tasks
    train_counts = Counter(task.train.targets)
    assert train_counts == {c: round(0.8 * n) for c, n in per_class.items()}
    assert Counter(task.test.targets) == {c: n - round(0.8 * n) for c, n in per_class.items()}
    assert len(task.train) + len(task.test) == len(digits.target) == 1797
    # Every image once: the two pools hold all 1,797 (distinct) digit images between them.
    pixels = [p.tobytes() for data in (task.train, task.test) for p in data.pixels]
    assert len(set(pixels)) == 1797
    image, label = task.test[0]
    assert image.shape == (3, 32, 32) and task.classnames[label] == str(label)
    assert task.templates == ['a photo of the number: "{}".']


def test_mini_mtil_subsets_are_fixed_by_seed_and_independent_of_other_tasks():
    pytest.importorskip("sklearn", reason="scikit-learn not installed")
    alone = mini_mtil(train_size=20, test_size=10, tasks="digits")  # one name, not letters
    together = mini_mtil(train_size=20, test_size=10, tasks=["digits", "scene-count"])
    assert together.task_names == ["scene-count", "digits"]  # the canonical order
    assert np.array_equal(alone[0].train.pixels, together[1].train.pixels)
    other_seed = mini_mtil(train_size=20, test_size=10, tasks=["digits"], seed=1)
    assert not np.array_equal(alone[0].train.pixels, other_seed[0].train.pixels)
    scenes = mini_mtil(train_size=8, test_size=4, tasks=["scene-count"], seed=1)
    assert scenes[0].train.seed == 1 and scenes.seed == 1


def write_image_folder(root, classes, per_class, mode="RGB"):
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(per_class):
            Image.new(mode, (8, 8), color=(c * 20 + k) if mode == "L" else (c * 20, k, 0)).save(
                folder / f"{k:04d}.png"
            )


def test_mini_mtil_image_folders_from_any_data_root(tmp_path):
    # A tiny stand-in for the shared data, so this runs without it.
    cifar = ["airplane", "automobile", "bird", "cat", "deer"]
    cifar += ["dog", "frog", "horse", "ship", "truck"]
    write_image_folder(tmp_path / "cifar10" / "train", cifar, 3)
    write_image_folder(tmp_path / "cifar10" / "test", cifar, 2)
    write_image_folder(tmp_path / "mnist" / "test", [str(d) for d in range(10)], 5, mode="L")
    scenario = mini_mtil(
        image_size=8, train_size=1000, test_size=15, data_root=tmp_path, tasks=["mnist", "cifar10"]
    )
    cifar_task, mnist = scenario.tasks
    assert scenario.task_names == ["cifar10", "mnist"]
    assert len(cifar_task.train) == 30 and len(cifar_task.test) == 15  # capped at the folder
    assert Counter(cifar_task.test.targets) == {c: 2 for c in range(5)} | {
        c: 1 for c in range(5, 10)
    }  # 15 of 20: classes take turns, lowest label first
    # MNIST's one folder split per class: round(0.8 * 5) = 4 train, 1 test.
    assert Counter(mnist.train.targets) == {d: 4 for d in range(10)}
    assert Counter(mnist.test.targets) == {d: 1 for d in range(10)}
    assert set(mnist.train.paths).isdisjoint(mnist.test.paths)
    # Labels are the class folders the files are in.
    for task in scenario:
        for data in (task.train, task.test):
            folders = [path.parent.name for path in data.paths]
            assert folders == [task.classnames[y] for y in data.targets]
    image, _ = mnist.train[0]
    assert image.shape == (3, 8, 8)  # grey digits become three channels


def test_mini_mtil_missing_data_is_left_out_or_refused(tmp_path):
    with pytest.warns(UserWarning, match="leaving out task 'cifar10'.*not found"):
        scenario = mini_mtil(
            train_size=4, test_size=4, data_root=tmp_path, tasks=["cifar10", "scene-count"]
        )
    assert scenario.task_names == ["scene-count"]
    with pytest.raises(MissingDataError, match="'mnist'.*not found"):
        mini_mtil(train_size=4, test_size=4, data_root=tmp_path, tasks=["mnist"], require_all=True)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="every selected task"):
        warnings.simplefilter("ignore")
        mini_mtil(train_size=4, test_size=4, data_root=tmp_path, tasks=["cifar10"])
    # Class folders that are not the classes are an error, not silently wrong labels.
    write_image_folder(tmp_path / "mnist" / "test", ["zero", "one"], 2, mode="L")
    with pytest.raises(ValueError, match="expected class folders"):
        mini_mtil(train_size=4, test_size=4, data_root=tmp_path, tasks=["mnist"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tasks=["scene-count", "imagenet"]), r"unknown mini-MTIL tasks \['imagenet'\]"),
        (dict(tasks=[]), "tasks is empty"),
        (dict(train_size=0), "train_size must be a positive int"),
        (dict(test_size=2.5), "test_size must be a positive int"),
        (dict(image_size=True), "image_size must be a positive int"),
    ],
)
def test_mini_mtil_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        mini_mtil(**{"train_size": 4, "test_size": 4, **kwargs})
    if "unknown" in message:
        assert all(name in str(error.value) for name in MTIL_ORDER)  # lists the valid ones


# ----------------------------------------------------------------------------- named experiments
def test_build_scenario_scenes_cil():
    scenario = build_scenario("scenes-cil", train_size=16, test_size=8, image_size=16)
    assert scenario.name == "scenes-cil" and scenario.kind == "class-incremental"
    assert len(scenario) == 4 and [t.num_classes for t in scenario] == [2, 2, 2, 2]
    assert sorted(c for t in scenario for c in t.class_ids) == list(range(8))
    # Scene item i has label i % 8: 16 train items are two of each class, 8 test items one.
    assert [len(t.train) for t in scenario] == [4, 4, 4, 4]
    assert [len(t.test) for t in scenario] == [2, 2, 2, 2]
    task = scenario[1]
    image, label = task.train[0]
    assert label in task.class_ids and image.shape == (3, 16, 16)
    assert task.classnames == [scenario.classnames[c] for c in task.class_ids]
    assert [i % 8 for i in task.train.indices] == task.train.targets  # global ids
    assert task.templates and all("{}" in t for t in task.templates)
    other = build_scenario("scenes-cil", train_size=16, test_size=8, seed=1)
    assert other.seed == 1


def test_scenes_cil_too_small_to_train_every_class():
    # Four training items are labels 0..3: shapes 4..7 would have nothing to learn from.
    with pytest.raises(ValueError, match="no training examples"):
        build_scenario("scenes-cil", train_size=4, test_size=8)


def test_build_scenario_cifar10_cil():
    try:
        scenario = build_scenario("cifar10-cil", train_size=20, test_size=10, image_size=8)
    except MissingDataError as missing:
        pytest.skip(f"shared data not available, skipping: {missing}")
    assert scenario.name == "cifar10-cil" and len(scenario) == 5
    assert sorted(c for t in scenario for c in t.class_ids) == list(range(10))
    # Balanced subsets: 20 train items are two a class, 10 test items one a class.
    assert [len(t.train) for t in scenario] == [4] * 5 and [len(t.test) for t in scenario] == [
        2
    ] * 5
    for task in scenario:
        for data in (task.train, task.test):
            for j, i in enumerate(data.indices):
                path = data.dataset.paths[i]
                assert path.parent.name == scenario.classnames[data.targets[j]]
                assert data.targets[j] in task.class_ids


def test_build_scenario_mini_mtil_and_unknown_names():
    scenario = build_scenario("mini-mtil", tasks=["scene-position"], train_size=5, test_size=5)
    assert scenario.task_names == ["scene-position"] and scenario.name == "mini-mtil"
    with pytest.raises(
        ValueError,
        match="Valid scenarios: cifar10-cil, instructions, llava-json, mini-mtil, scene-styles, "
        "scenes-cil, seq-cifar10, vqa-functions, vqa-scenes$",
    ):
        build_scenario("imagenet-cil")
    with pytest.raises(ValueError, match="Did you mean scenes-cil"):
        build_scenario("scenes_cil")


def test_kept_items_are_made_once_and_equal_the_datasets():
    from mmcl.continual.builtin import KeptItems

    class Counted(torch.utils.data.Dataset):
        targets = [0, 1, 1]
        made = 0

        def __len__(self):
            return 3

        def __getitem__(self, index):
            if not -3 <= index < 3:
                raise IndexError(index)
            Counted.made += 1
            return torch.full((2,), float(index % 3)), self.targets[index]

    kept = KeptItems(Counted())
    first = [kept[i] for i in range(3)] + [kept[-1]]
    again = [kept[i] for i in (2, 1, 0)]
    assert Counted.made == 3  # -1 is item 2, already made
    assert [label for _, label in first] == [0, 1, 1, 1]
    assert torch.equal(first[3][0], torch.full((2,), 2.0)) and again[0] is first[2]
    assert kept.targets == [0, 1, 1] and len(kept) == 3
    with pytest.raises(IndexError):
        kept[3]


def test_mini_mtil_tasks_keep_their_datasets_attributes():
    scenario = mini_mtil(train_size=8, test_size=4, tasks=["scene-count"])
    task = scenario[0]
    assert task.train.classnames == task.classnames and task.train.label(1) == 1
    image, label = task.train[1]
    assert label == 1 and task.train[1][0] is image
