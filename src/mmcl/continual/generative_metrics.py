"""Retention metrics of continual instruction tuning: pure functions of what a run records.

Beside the accuracy matrix A, an instruction stream records after every task (rows) and for
every task (columns) the *format matrix* ``F[i, j]``: the share of answers to task j, after
training task i, in the format task j asks for (one word, a number, a sentence;
`mmcl.continual.instructions.answer_format`); and the scores of the general sets (held-out
scene captioning, a general scene VQA set), before training and after every task.

* ``general_retained = g_last / g_initial``, where ``g`` is the mean score of the general
  sets: the share of the base model's general ability left at the end (CoIN's question:
  how much does instruction tuning erode it?). NaN without general sets or when the base
  model scores 0 on them.
* ``format_retained = mean_j F[T-1, j]``: after the last task, the share of answers, over
  every task, in the format asked. Low format retention with a high score on the
  instructions means alignment was lost, not knowledge (CoIN, Chen et al. 2024).
* ``format_bwt``: BWT (`mmcl.continual.metrics.backward_transfer`) of F: how the share
  in the asked format fell on earlier tasks since each was learnt.

>>> generative = {"initial": {"formats": [0.5, 0.0], "general": {"captioning": 0.4, "vqa": 0.6}},
...               "rows": [{"formats": [1.0, 0.5], "general": {"captioning": 0.3, "vqa": 0.5}},
...                        {"formats": [0.5, 1.0], "general": {"captioning": 0.2, "vqa": 0.4}}]}
>>> {k: round(v, 4) for k, v in summarize_generative(generative).items()}
{'general_initial': 0.5, 'general_last': 0.3, 'general_retained': 0.6, 'format_initial': 0.25, 'format_retained': 0.75, 'format_bwt': -0.5}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mmcl.continual.metrics import as_accuracy_matrix, backward_transfer, last_accuracy

NAN = float("nan")
KEYS = (
    "general_initial",
    "general_last",
    "general_retained",
    "format_initial",
    "format_retained",
    "format_bwt",
)


def general_ability(scores: Mapping[str, float] | None) -> float:
    """The mean score of the general sets (NaN: none measured).

    >>> general_ability({"captioning": 0.2, "vqa": 0.6})
    0.4
    """
    if not scores:
        return NAN
    return sum(scores.values()) / len(scores)


def general_retained(initial: Mapping[str, float] | None, last: Mapping[str, float]) -> float:
    """``general_ability(last) / general_ability(initial)``; NaN when the initial is 0 or
    there is none.

    >>> general_retained({"vqa": 0.5}, {"vqa": 0.4})
    0.8
    """
    before, after = general_ability(initial), general_ability(last)
    if math.isnan(before) or math.isnan(after) or before == 0:
        return NAN
    return after / before


def format_retained(format_matrix: Any) -> float:
    """The mean of the format matrix's last row.

    >>> format_retained([[1.0, 0.0], [0.5, 1.0]])
    0.75
    """
    return last_accuracy(format_matrix)


def summarize_generative(generative: Mapping[str, Any]) -> dict[str, float]:
    """Every retention metric, from a run's record: ``{"initial": row, "rows": [row, ...]}``,
    each row holding ``formats`` (one share per task) and ``general`` ({set: score})."""
    rows = generative["rows"]
    if not rows:
        raise ValueError("the generative record holds no row (no task was trained)")
    initial = generative.get("initial") or {}
    formats = as_accuracy_matrix([row["formats"] for row in rows])
    initial_formats = initial.get("formats")
    return {
        "general_initial": general_ability(initial.get("general")),
        "general_last": general_ability(rows[-1].get("general")),
        "general_retained": general_retained(initial.get("general"), rows[-1].get("general")),
        "format_initial": _mean(initial_formats),
        "format_retained": format_retained(formats),
        "format_bwt": backward_transfer(formats),
    }


def _mean(values: Sequence[float] | None) -> float:
    return sum(values) / len(values) if values else NAN
