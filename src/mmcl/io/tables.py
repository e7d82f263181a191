"""Plain-text tables for terminals and logs (the CLI's results, the benchmarks' reports)."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns left-aligned to their widest cell, a rule under the header.

    >>> print(format_table(["name", "%"], [["shape", 93.5], ["colour", 100]]))
    name    %
    ------  ----
    shape   93.5
    colour  100
    """
    cells = [[str(cell) for cell in row] for row in rows]
    for number, row in enumerate(cells):
        if len(row) != len(header):
            raise ValueError(f"row {number} has {len(row)} cells for {len(header)} columns")
    widths = [max(len(row[i]) for row in [list(header), *cells]) for i in range(len(header))]

    def line(row):
        return "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, cells)])


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(format_table(header, rows))
