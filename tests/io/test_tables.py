import doctest

import pytest

from mmcl.io import tables


def test_doctests():
    assert doctest.testmod(tables).failed == 0


def test_every_column_starts_at_the_same_place_on_every_line():
    header = ["model", "library", "samples/s"]
    rows = [["tiny-vit", "open_clip", 12.5], ["ViT-B-32", "mmcl", 1234.0]]
    lines = tables.format_table(header, rows).splitlines()
    assert len(lines) == 4
    starts = [lines[0].index(name) for name in header]
    for line, row in zip(lines[2:], rows, strict=True):
        assert [line.index(str(cell)) for cell in row] == starts
    assert set(lines[1].replace(" ", "")) == {"-"}


def test_a_row_of_the_wrong_length_is_named():
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        tables.format_table(["a", "b"], [["x", "y"], ["z"]])
