"""The one error type checkpoint loading raises, always naming the file."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, of an unknown layout, or does not fit the model."""


def describe_mismatch(
    source: str,
    missing: list[str],
    unexpected: list[str],
    shape_mismatches: list[tuple[str, tuple, tuple]],
    limit: int = 12,
) -> str:
    """A readable account of how a state dict differs from what a model expects."""

    def listing(items: list[str]) -> str:
        shown = ", ".join(items[:limit])
        return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

    lines = [f"{source} does not fit the model architecture:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {listing(unexpected)}")
    if shape_mismatches:
        shown = [f"{k}: file {tuple(f)} vs model {tuple(m)}" for k, f, m in shape_mismatches]
        lines.append(f"  shape mismatches ({len(shown)}): {listing(shown)}")
    return "\n".join(lines)
