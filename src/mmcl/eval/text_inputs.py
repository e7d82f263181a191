"""Checks of the text arguments the metrics take (one string per item, or one list of strings
per item), so that every metric words its errors the same way: naming the argument, the index
and the way out."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["check_paired", "check_string_lists", "check_strings"]


def check_strings(name: str, values: object, item: str) -> None:
    """``values`` is a list of str, one per ``item`` (e.g. "image")."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ValueError(
            f"{name} must be a list of str (one per {item}), got {type(values).__name__}"
        )
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(f"{name}[{i}] must be a str, got {type(value).__name__}")


def check_string_lists(name: str, values: object, item: str) -> None:
    """``values`` is a list of non-empty lists of str, one list per ``item``."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ValueError(
            f"{name} must be a list of lists of str (one list per {item}), got "
            f"{type(values).__name__}"
        )
    for i, strings in enumerate(values):
        if isinstance(strings, str) or not isinstance(strings, Sequence):
            raise ValueError(
                f"{name}[{i}] must be a list of str, got {type(strings).__name__} (wrap a "
                f"single one as [text])"
            )
        if not strings:
            raise ValueError(f"{name}[{i}] is an empty list; every {item} needs at least one")
        for j, value in enumerate(strings):
            if not isinstance(value, str):
                raise ValueError(f"{name}[{i}][{j}] must be a str, got {type(value).__name__}")


def check_paired(
    first: str, first_values: Sequence, second: str, second_values: Sequence, item: str
) -> None:
    """Both lists hold one entry per ``item``, and there is at least one."""
    if len(first_values) != len(second_values):
        raise ValueError(
            f"{first} has {_entries(len(first_values))} but {second} has "
            f"{_entries(len(second_values))}; give one of each per {item}"
        )
    if not first_values:
        raise ValueError(f"{first} and {second} are empty; need at least one {item}")


def _entries(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"
