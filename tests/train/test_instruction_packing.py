"""InstructBLIP's packing on hand-worked batches."""

from __future__ import annotations

from mmcl.train.instruction_packing import pack_for_generation, pack_for_training

I = -100  # noqa: E741  (IGNORE, short to keep the matrices readable)


def test_training_rows_are_instruction_answer_padding_with_loss_on_answers_only():
    batch = pack_for_training([[5, 6], [7, 8, 9]], [[20], [21, 22]], 8, 8, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 20, 0, 0], [7, 8, 9, 21, 22]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.labels.tolist() == [[I, I, 20, I, I], [I, I, I, 21, 22]]


def test_instructions_lose_their_start_and_answers_their_end():
    batch = pack_for_training(
        [[1, 2, 3, 4]], [[30, 31, 32]], max_instruction=2, max_answer=2, pad_id=0
    )
    assert batch.input_ids.tolist() == [[3, 4, 30, 31]]
    assert batch.labels.tolist() == [[I, I, 30, 31]]


def test_generation_pads_on_the_left_and_truncates_from_the_left():
    batch = pack_for_generation([[1, 2, 3, 4], [5]], max_instruction=3, pad_id=0)
    assert batch.input_ids.tolist() == [[2, 3, 4], [0, 0, 5]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.labels is None
