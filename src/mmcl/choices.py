"""The names some options accept, with no heavy imports.

The command line lists them in its help (`--precision`, `--high-bit-depth`), and `mmcl --help`
must answer without loading torch, so they live here rather than beside the code that acts on
them (`mmcl.models.factory`, `mmcl.data.images`), which imports them from here.
"""

from __future__ import annotations

from typing import Literal, get_args

# Model precisions; `mmcl.models.factory.PRECISIONS` maps them to torch dtypes.
Precision = Literal["fp32", "bf16", "fp16"]
PRECISION_NAMES: tuple[str, ...] = get_args(Precision)

# What reading an image of more than 8 bits a sample does: scale it to 8 bits, or refuse it.
HIGH_BIT_DEPTH_CHOICES = ("scale", "refuse")
