"""Continual-learning metrics against matrices worked by hand, properties, and bad input."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import mmcl.continual.metrics as metrics_module
from mmcl.continual.metrics import (
    as_accuracy_matrix,
    average_accuracy,
    backward_transfer,
    forgetting_first,
    forgetting_max,
    forward_transfer,
    last_accuracy,
    per_task_metrics,
    summarize,
    transfer,
)

# A[i, j]: accuracy (percent) on task j after training task i.
#
#          task0  task1  task2
# after 0 [  80,    30,    10 ]     entries above the diagonal are zero-shot
# after 1 [  83,    90,    40 ]     A[1, 0] = 83 > A[0, 0]: task 1 helped task 0 at first
# after 2 [  60,    84,    72 ]
#
# Avg       = (80+30+10 + 83+90+40 + 60+84+72) / 9 = (120 + 213 + 216) / 9 = 549 / 9 = 61
# Last      = (60 + 84 + 72) / 3 = 216 / 3 = 72
# Transfer  = mean over j = 1, 2 of the mean above the diagonal in column j
#           = mean(A[0,1], mean(A[0,2], A[1,2])) = mean(30, mean(10, 40)) = (30 + 25) / 2 = 27.5
# BWT       = mean over j = 0, 1 of A[2,j] - A[j,j] = ((60-80) + (84-90)) / 2 = (-20 - 6)/2 = -13
# F_first   = mean of A[j,j] - A[2,j]  = (20 + 6) / 2 = 13  (= -BWT)
# F_max     = mean of max_{l=j..1} A[l,j] - A[2,j]
#           = ((max(80, 83) - 60) + (max(90) - 84)) / 2 = (23 + 6) / 2 = 14.5
# With a0 = [51, 24, 15] (the model before any training):
# FWT       = mean over j = 1, 2 of A[j-1, j] - a0[j] = ((30-24) + (40-15)) / 2 = (6 + 25)/2 = 15.5
# initial_average  = (51 + 24 + 15) / 3 = 30;  initial_transfer = (24 + 15) / 2 = 19.5
# Per task: transfer = [—, 30, 25]; average = column means = [223/3, 204/3 = 68, 122/3];
#           last = [60, 84, 72]
MATRIX_3 = [[80, 30, 10], [83, 90, 40], [60, 84, 72]]
INITIAL_3 = [51, 24, 15]
EXPECTED_3 = {
    "transfer": 27.5,
    "average_accuracy": 61.0,
    "last_accuracy": 72.0,
    "backward_transfer": -13.0,
    "forgetting_max": 14.5,
    "forgetting_first": 13.0,
    "forward_transfer": 15.5,
    "initial_average": 30.0,
    "initial_transfer": 19.5,
}

# Fractions, 4 tasks. Column 2 has a high zero-shot entry *before* task 2 is learned
# (A[0, 2] = 0.9): it must not count as something forgotten.
#
#          t0    t1    t2    t3
# after 0 [0.5,  0.2,  0.9,  0.1]
# after 1 [0.6,  0.8,  0.5,  0.3]
# after 2 [0.4,  0.7,  0.6,  0.2]
# after 3 [0.3,  0.7,  0.4,  0.9]
#
# Avg      = (1.7 + 2.2 + 1.9 + 2.3) / 16 = 8.1 / 16 = 0.50625
# Last     = 2.3 / 4 = 0.575
# Transfer = mean(A[0,1], mean(A[0,2], A[1,2]), mean(A[0,3], A[1,3], A[2,3]))
#          = mean(0.2, (0.9+0.5)/2 = 0.7, (0.1+0.3+0.2)/3 = 0.2) = 1.1 / 3 = 0.36667
# BWT      = ((0.3-0.5) + (0.7-0.8) + (0.4-0.6)) / 3 = (-0.2 - 0.1 - 0.2) / 3 = -0.16667
# F_first  = 0.5 / 3 = 0.16667
# F_max    = j=0: max(0.5, 0.6, 0.4) - 0.3 = 0.3      (the maximum is in a middle row)
#            j=1: max(0.8, 0.7)      - 0.7 = 0.1
#            j=2: max(0.6)           - 0.4 = 0.2      (A[0,2] = 0.9 and A[1,2] excluded:
#                                                      counting them would give 0.5)
#          = 0.6 / 3 = 0.2
# With a0 = [0.4, 0.1, 0.5, 0.2]:
# FWT      = ((0.2-0.1) + (0.5-0.5) + (0.2-0.2)) / 3 = 0.1 / 3 = 0.03333
MATRIX_4 = [
    [0.5, 0.2, 0.9, 0.1],
    [0.6, 0.8, 0.5, 0.3],
    [0.4, 0.7, 0.6, 0.2],
    [0.3, 0.7, 0.4, 0.9],
]
INITIAL_4 = [0.4, 0.1, 0.5, 0.2]
EXPECTED_4 = {
    "transfer": 1.1 / 3,
    "average_accuracy": 0.50625,
    "last_accuracy": 0.575,
    "backward_transfer": -0.5 / 3,
    "forgetting_max": 0.2,
    "forgetting_first": 0.5 / 3,
    "forward_transfer": 0.1 / 3,
    "initial_average": 0.3,
    "initial_transfer": 0.8 / 3,
}

METRICS = {
    "transfer": transfer,
    "average_accuracy": average_accuracy,
    "last_accuracy": last_accuracy,
    "backward_transfer": backward_transfer,
    "forgetting_max": forgetting_max,
    "forgetting_first": forgetting_first,
}


def all_metrics(matrix) -> dict[str, float]:
    return {name: metric(matrix) for name, metric in METRICS.items()}


def test_doctests():
    result = doctest.testmod(metrics_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "matrix, initial, expected",
    [(MATRIX_3, INITIAL_3, EXPECTED_3), (MATRIX_4, INITIAL_4, EXPECTED_4)],
    ids=["3x3-percent", "4x4-fractions"],
)
def test_every_metric_matches_the_hand_computation(matrix, initial, expected):
    for name, metric in METRICS.items():
        assert metric(matrix) == pytest.approx(expected[name], abs=1e-12), name
    assert forward_transfer(matrix, initial) == pytest.approx(expected["forward_transfer"])
    assert summarize(matrix, initial) == pytest.approx(expected)


def test_summarize_keys_are_fixed_and_values_are_python_floats():
    without_initial = summarize(MATRIX_3)
    assert list(without_initial) == list(EXPECTED_3)
    for name in ("forward_transfer", "initial_average", "initial_transfer"):
        assert math.isnan(without_initial[name])
    assert all(type(value) is float for value in summarize(MATRIX_3, INITIAL_3).values())


def test_per_task_metrics_by_hand():
    per_task = per_task_metrics(MATRIX_3)
    assert set(per_task) == {"transfer", "average", "last"}
    assert math.isnan(per_task["transfer"][0])
    np.testing.assert_allclose(per_task["transfer"][1:], [30, 25])
    np.testing.assert_allclose(per_task["average"], [223 / 3, 68, 122 / 3])
    np.testing.assert_allclose(per_task["last"], [60, 84, 72])


def test_forgetting_max_ignores_rows_before_the_task_was_learned():
    matrix = np.array(MATRIX_4)
    raised = matrix.copy()
    raised[0, 2] = raised[1, 2] = raised[0, 1] = 1.0  # zero-shot entries, before learning
    assert forgetting_max(raised) == pytest.approx(forgetting_max(matrix))


@pytest.mark.parametrize(
    "as_input", [np.array, torch.tensor, lambda m: m], ids=["numpy", "torch", "lists"]
)
def test_numpy_torch_and_lists_agree(as_input):
    expected = all_metrics(np.array(MATRIX_4))
    assert all_metrics(as_input(MATRIX_4)) == pytest.approx(expected)
    float32 = torch.tensor(MATRIX_4, dtype=torch.float32)
    assert all_metrics(float32) == pytest.approx(expected, abs=1e-6)


def test_the_input_is_not_modified():
    matrix = np.array(MATRIX_4)
    copy = matrix.copy()
    summarize(matrix, np.array(INITIAL_4))
    per_task_metrics(matrix)["last"][:] = 0
    np.testing.assert_array_equal(matrix, copy)


def test_a_single_task_gives_avg_and_last_and_nan_for_the_rest():
    summary = summarize([[0.7]], initial=[0.2])
    assert summary["average_accuracy"] == summary["last_accuracy"] == 0.7
    assert summary["initial_average"] == pytest.approx(0.2)
    undefined = ["transfer", "backward_transfer", "forgetting_max", "forgetting_first"]
    for name in [*undefined, "forward_transfer", "initial_transfer"]:
        assert math.isnan(summary[name]), name


# --- properties -----------------------------------------------------------------------------


def random_matrices(count: int = 20):
    rng = np.random.default_rng(0)
    for _ in range(count):
        size = int(rng.integers(2, 9))
        yield rng.uniform(0, 1, (size, size))


def test_a_constant_matrix_has_every_accuracy_metric_equal_to_its_entry():
    for size in (1, 2, 5):
        summary = summarize(np.full((size, size), 0.42))
        assert summary["average_accuracy"] == pytest.approx(0.42)
        assert summary["last_accuracy"] == pytest.approx(0.42)
        if size > 1:
            assert summary["transfer"] == pytest.approx(0.42)
            assert summary["backward_transfer"] == pytest.approx(0.0)
            assert summary["forgetting_max"] == pytest.approx(0.0)
            assert summary["forgetting_first"] == pytest.approx(0.0)


def test_no_forgetting_gives_zero_forgetting_and_non_negative_bwt():
    rng = np.random.default_rng(1)
    for size in (2, 4, 7):
        # Each task keeps the accuracy it reached when learned: A[i, j] = A[j, j] for i >= j.
        learned = rng.uniform(0.5, 1, size)
        kept = np.triu(rng.uniform(0, 0.5, (size, size)), 1) + np.tril(np.tile(learned, (size, 1)))
        assert backward_transfer(kept) == pytest.approx(0.0)
        assert forgetting_max(kept) == pytest.approx(0.0)
        assert forgetting_first(kept) == pytest.approx(0.0)
        # Accuracies that only improve after learning: BWT >= 0, forgetting <= 0.
        improving = kept + np.tril(np.cumsum(rng.uniform(0, 0.02, (size, size)), axis=0), -1)
        assert backward_transfer(improving) >= 0
        assert forgetting_max(improving) <= 1e-12
        assert forgetting_first(improving) <= 1e-12


def test_forgetting_first_is_minus_bwt_and_never_above_forgetting_max():
    for matrix in random_matrices():
        assert forgetting_first(matrix) == pytest.approx(-backward_transfer(matrix))
        assert forgetting_max(matrix) >= forgetting_first(matrix) - 1e-12


def test_units_are_preserved():
    for matrix in random_matrices(5):
        fractions, percentages = summarize(matrix), summarize(100 * matrix)
        for name, value in fractions.items():
            if not math.isnan(value):
                assert percentages[name] == pytest.approx(100 * value), name


def test_each_metric_reads_only_its_part_of_the_matrix():
    for matrix in random_matrices(10):
        size = len(matrix)
        noise = np.random.default_rng(size).uniform(0, 1, matrix.shape)
        upper = np.triu(np.ones_like(matrix, dtype=bool), 1)
        new_upper = np.where(upper, noise, matrix)  # only zero-shot entries changed
        new_lower = np.where(upper, matrix, noise)  # only trained entries changed
        for metric in (backward_transfer, forgetting_max, forgetting_first):
            assert metric(new_upper) == pytest.approx(metric(matrix))
        assert transfer(new_lower) == pytest.approx(transfer(matrix))
        earlier_rows = matrix.copy()
        earlier_rows[: size - 1] = noise[: size - 1]
        assert last_accuracy(earlier_rows) == pytest.approx(last_accuracy(matrix))


def test_avg_depends_on_the_entries_only_not_their_places():
    for matrix in random_matrices(5):
        shuffled = np.random.default_rng(2).permutation(matrix.ravel()).reshape(matrix.shape)
        assert average_accuracy(shuffled) == pytest.approx(average_accuracy(matrix))
        assert average_accuracy(matrix.T) == pytest.approx(average_accuracy(matrix))


def test_reordering_tasks_changes_what_is_zero_shot():
    matrix = np.array(MATRIX_3, dtype=float)
    order = [2, 0, 1]  # the same numbers, as if the tasks had been trained in another order
    permuted = matrix[np.ix_(order, order)]
    assert average_accuracy(permuted) == pytest.approx(average_accuracy(matrix))
    assert transfer(permuted) != pytest.approx(transfer(matrix))
    # column j of the permuted matrix is task order[j]: per-task averages move with the tasks
    np.testing.assert_allclose(
        per_task_metrics(permuted)["average"], per_task_metrics(matrix)["average"][order]
    )


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "matrix, message",
    [
        ([0.1, 0.2], "2-D"),
        (np.zeros((2, 2, 2)), "2-D"),
        (0.5, "2-D"),
        (np.zeros((2, 3)), "square"),
        (np.zeros((0, 0)), "at least one task"),
        ([[0.5, float("nan")], [0.1, 0.2]], "NaN or infinite"),
        ([[0.5, float("inf")], [0.1, 0.2]], "NaN or infinite"),
        ([[0.5, -0.1], [0.1, 0.2]], r"\[0, 1\] or \[0, 100\]"),
        ([[50, 100.5], [10, 20]], r"\[0, 1\] or \[0, 100\]"),
        ([["a", "b"], ["c", "d"]], "array of numbers"),
        ([[0.1, 0.2], [0.3]], "array of numbers"),
    ],
)
def test_bad_matrices_raise_clear_errors(matrix, message):
    for metric in [*METRICS.values(), summarize, per_task_metrics, as_accuracy_matrix]:
        with pytest.raises(ValueError, match=message):
            metric(matrix)


@pytest.mark.parametrize(
    "initial, message",
    [
        ([0.1, 0.2], "one entry per task"),
        ([[0.1, 0.2, 0.3]], "one entry per task"),
        ([0.1, 0.2, float("nan")], "NaN or infinite"),
        ([0.1, 0.2, 101], r"\[0, 1\] or \[0, 100\]"),
    ],
)
def test_bad_initial_accuracies_raise_clear_errors(initial, message):
    with pytest.raises(ValueError, match=message):
        summarize(MATRIX_3, initial)
    with pytest.raises(ValueError, match=message):
        forward_transfer(MATRIX_3, initial)
