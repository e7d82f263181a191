"""Model names: the JSON configs shipped in `mmcl/models/configs`, and OpenAI-style aliases."""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any

# OpenAI's released models were trained with QuickGELU, so their names map to -quickgelu configs.
OPENAI_ALIASES = {
    "ViT-B/32": "ViT-B-32-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
    "ViT-L/14@336px": "ViT-L-14-336-quickgelu",
    "ViT-H/14": "ViT-H-14",
    "ViT-g/14": "ViT-g-14",
    "ViT-bigG/14": "ViT-bigG-14",
}


@cache
def _config_files() -> dict[str, Any]:
    folder = resources.files("mmcl.models") / "configs"
    return {
        entry.name[: -len(".json")]: entry
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


def available_models() -> list[str]:
    """Names accepted by `mmcl.create_model` (aliases such as "ViT-B/32" resolve too)."""
    return sorted(_config_files(), key=str.lower)


def resolve_name(name: str) -> str:
    """Map any accepted spelling to a config name, or raise with the closest names."""
    files = _config_files()
    if name in files:
        return name
    if name in OPENAI_ALIASES:
        return OPENAI_ALIASES[name]
    lowered = {key.lower(): key for key in files}
    if name.lower() in lowered:
        return lowered[name.lower()]
    candidates = list(files) + list(OPENAI_ALIASES)
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown model name {name!r}.{hint} `mmcl.available_models()` lists all names."
    )


def get_model_config(name: str) -> dict[str, Any]:
    """The config dict (open_clip JSON format) for a model name."""
    return json.loads(_config_files()[resolve_name(name)].read_text())
