"""Packing instruction/answer token ids into batches, as InstructBLIP trains and generates.

- Training (`pack_for_training`): each row is ``[instruction | answer | padding]``, padded on
  the right; the labels are the answer tokens only (`IGNORE` elsewhere), aligned with the
  input ids (the loss shifts them: `mmcl.train.blip2_losses.stage2_loss`).
- Generation (`pack_for_generation`): the instructions alone, padded on the left, so that
  every row's next token comes right after its last real one.
- Too long: an instruction keeps its end (truncated from the left: the question is at the
  end), an answer keeps its start (truncated from the right).

>>> batch = pack_for_training([[5, 6, 7], [8]], [[20, 21], [22, 23, 24]], max_instruction=2,
...                           max_answer=2, pad_id=0)
>>> batch.input_ids.tolist(), batch.labels.tolist()
([[6, 7, 20, 21], [8, 22, 23, 0]], [[-100, -100, 20, 21], [-100, 22, 23, -100]])
>>> pack_for_generation([[5, 6, 7], [8]], max_instruction=2, pad_id=0).input_ids.tolist()
[[6, 7], [0, 8]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmcl.train.blip_losses import IGNORE


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (batch, length)
    attention_mask: torch.Tensor  # (batch, length): 1 at real tokens
    labels: torch.Tensor | None = None  # (batch, length): answer tokens, IGNORE elsewhere


def pack_for_training(
    instructions: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    max_instruction: int,
    max_answer: int,
    pad_id: int,
) -> PackedBatch:
    """``[instruction | answer | padding]`` rows and answer-only labels; see the module
    docstring."""
    if len(instructions) != len(answers):
        raise ValueError(
            f"pack_for_training: {len(instructions)} instructions but {len(answers)} answers"
        )
    _check_limits(max_instruction, max_answer)
    rows, answer_spans = [], []
    for number, (instruction, answer) in enumerate(zip(instructions, answers, strict=True)):
        kept_answer = list(answer)[:max_answer]
        if not kept_answer:
            raise ValueError(
                f"pack_for_training: answer {number} is empty, so its row would take no loss; "
                f"give every sample an answer"
            )
        kept_instruction = list(instruction)[-max_instruction:] if max_instruction else []
        rows.append(kept_instruction + kept_answer)
        answer_spans.append((len(kept_instruction), len(kept_instruction) + len(kept_answer)))
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for index, (row, (start, stop)) in enumerate(zip(rows, answer_spans, strict=True)):
        input_ids[index, : len(row)] = torch.tensor(row)
        attention_mask[index, : len(row)] = 1
        labels[index, start:stop] = input_ids[index, start:stop]
    return PackedBatch(input_ids, attention_mask, labels)


def pack_for_generation(
    instructions: Sequence[Sequence[int]], max_instruction: int, pad_id: int
) -> PackedBatch:
    """Instructions padded on the left (truncated from the left); no labels."""
    _check_limits(max_instruction, 1)
    rows = [list(instruction)[-max_instruction:] for instruction in instructions]
    if any(not row for row in rows):
        raise ValueError("pack_for_generation: an instruction is empty; give at least one token")
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, length - len(row) :] = torch.tensor(row)
        attention_mask[index, length - len(row) :] = 1
    return PackedBatch(input_ids, attention_mask)


def _check_limits(max_instruction: int, max_answer: int) -> None:
    if max_instruction < 0 or max_answer < 1:
        raise ValueError(
            f"max_instruction must be >= 0 and max_answer >= 1, got {max_instruction} and "
            f"{max_answer}"
        )
