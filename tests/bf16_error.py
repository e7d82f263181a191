"""Tolerances for bf16 results from bf16's rounding, not from one machine's figures.

bf16 keeps 8 significant bits: one rounding is off by at most u = 2^-8, relatively. How those
errors add up through a network depends on its depth and width and on the CPU's kernels
(accumulation order, fused epilogues, AMX or AVX-512 BF16), so a fixed threshold measured on
one machine fails on another. What does not depend on the machine is the comparison with
PyTorch's own bf16 computation of the same function on the same inputs: a bf16 result may be
a small factor further from float32 than that, plus the one rounding of its output (u/2).
"""

from __future__ import annotations

import torch

UNIT_ROUNDOFF = 2.0**-8


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest per-row ``||result - reference|| / ||reference||``."""
    result, reference = result.detach().double().flatten(1), reference.detach().double().flatten(1)
    return float(((result - reference).norm(dim=1) / reference.norm(dim=1)).max())


def assert_as_close_as_pytorch_bf16(
    result: torch.Tensor,
    reference: torch.Tensor,
    pytorch_bf16: torch.Tensor,
    factor: float = 2.0,
) -> None:
    """`result` (bf16) is at most `factor` times as far from the float32 `reference` as
    `pytorch_bf16`, PyTorch's plain bf16 computation of the same thing, plus u/2."""
    ours = relative_error(result, reference)
    pytorch = relative_error(pytorch_bf16, reference)
    assert ours <= factor * pytorch + UNIT_ROUNDOFF / 2, (ours, pytorch)
