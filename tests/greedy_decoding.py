"""A reference for cached decoding: greedy tokens by full forwards over the growing sequence
(no KV cache), for a bridge's ``model(ids, pixel_values).logits``."""

from __future__ import annotations

import torch


def greedy_by_full_forwards(model, ids, pixel_values, end: int, steps: int = 64) -> list[int]:
    """The new token ids of row 0, up to (without) `end` or `steps` tokens."""
    tokens, new = ids, []
    for _ in range(steps):
        with torch.no_grad():
            following = model(tokens, pixel_values).logits[:, -1].argmax(-1, keepdim=True)
        if int(following[0]) == end:
            break
        new.append(int(following[0]))
        tokens = torch.cat([tokens, following], dim=1)
    return new
