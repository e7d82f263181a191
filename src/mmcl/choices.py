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

# Search index kinds (`mmcl.eval.index`): auto is exact up to a number of rows, IVF above it.
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
# Exact search over 200k rows of 512 floats is ~0.4 GB and tens of ms a query on a CPU core.
DEFAULT_INDEX_THRESHOLD = 200_000
