"""Pretrained tags and `hf-hub:` names: which published weights a `pretrained=` string means.

`create_model("ViT-B-32", pretrained="openai")` looks the tag up in `pretrained.json` (data:
the repositories and files of OpenAI's and open_clip's published CLIP weights, credited in
NOTICE) and takes the file through `mmcl.io.hub`, that is through `huggingface_hub`'s cache.
A tag fixes the activation its weights were trained with: "ViT-B-32" with "openai" is built
with QuickGELU, as OpenAI trained it. `hf-hub:ORG/NAME[@REVISION]` names a repository directly:
one of open_clip's (open_clip_config.json and its weights) or a transformers `CLIPModel`
(config.json and its weights).

>>> ("ViT-B-32", "laion2b_s34b_b79k") in list_pretrained()
True
>>> find_tag("ViT-B/32", "OpenAI").repo   # any spelling of the name; tags in any case
'timm/vit_base_patch32_clip_224.openai'
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from mmcl.io import hub
from mmcl.models.registry import resolve_name

QUICKGELU_SUFFIX = "-quickgelu"
# The files of a repository that `hf-hub:` reads, in the order they are looked for.
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TRANSFORMERS_CONFIG = "config.json"
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class PretrainedTag:
    model: str  # the architecture's config name, without "-quickgelu"
    tag: str
    repo: str
    filename: str
    quick_gelu: bool  # the weights were trained with QuickGELU

    @property
    def activation(self) -> str:
        return "QuickGELU" if self.quick_gelu else "GELU"


@dataclass
class ResolvedWeights:
    """Where a `pretrained=` string led: a local file or folder, and what it says about the
    model to build (`overrides` of the named config, or a whole `config` for `hf-hub:`)."""

    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None


@cache
def _tags() -> dict[str, dict[str, PretrainedTag]]:
    text = (resources.files("mmcl.models") / "pretrained.json").read_text()
    return {
        model: {
            tag.lower(): PretrainedTag(model, tag, e["repo"], e["file"], e["quick_gelu"])
            for tag, e in tags.items()
        }
        for model, tags in json.loads(text)["models"].items()
    }


def list_pretrained(model: str | None = None) -> list[tuple[str, str]]:
    """(model name, tag) pairs that `create_model(name, pretrained=tag)` accepts.

    Names ending in "-quickgelu" accept the tags of their base name trained with QuickGELU;
    only the base names are listed. `model` keeps the pairs of one name.
    """
    if model is not None:
        return [(model, entry.tag) for entry in _tags_of(model).values()]
    return [(name, entry.tag) for name, tags in _tags().items() for entry in tags.values()]


def pretrained_tags() -> list[PretrainedTag]:
    """Every tag with its repository, file and activation."""
    return [entry for tags in _tags().values() for entry in tags.values()]


def _tags_of(model: str) -> dict[str, PretrainedTag]:
    name = resolve_name(model)
    base = name.removesuffix(QUICKGELU_SUFFIX)
    tags = _tags().get(base, {})
    if name != base:  # a -quickgelu name: the tags whose weights were trained with QuickGELU
        tags = {key: entry for key, entry in tags.items() if entry.quick_gelu}
    return tags


def find_tag(model: str, tag: str) -> PretrainedTag | None:
    return _tags_of(model).get(tag.lower())


def is_known_tag(tag: str) -> bool:
    return any(tag.lower() in tags for tags in _tags().values())


def resolve_pretrained(model: str | None, pretrained: str | os.PathLike) -> ResolvedWeights:
    """The local weights `pretrained` stands for: a tag of `model`, `hf-hub:`, or a path.

    A tag is looked up before the file system (as open_clip does), so a folder named "openai"
    in the working directory does not hide the tag.
    """
    text = os.fspath(pretrained)
    if hub.is_hub_reference(text):
        return _resolve_hub_repository(text)
    if model is not None and isinstance(pretrained, str):
        entry = find_tag(model, text)
        if entry is not None:
            what = f"pretrained={text!r} of {model}"
            path = hub.hub_file(entry.repo, entry.filename, what=what)
            return ResolvedWeights(path, {"quick_gelu": entry.quick_gelu})
    path = Path(text)
    if not path.exists() and isinstance(pretrained, str):
        _refuse_unknown(model, text)
    return ResolvedWeights(path)


def _refuse_unknown(model: str | None, text: str) -> None:
    """A `pretrained` string that is neither a file nor a tag of `model`: say which it was
    likely meant to be."""
    if model is None:
        if is_known_tag(text):
            raise ValueError(
                f"pretrained={text!r} is a tag: name the model it belongs to, e.g. "
                f"create_model('ViT-B-32', pretrained={text!r}) (mmcl.list_pretrained() lists "
                f"the pairs)"
            )
        return  # a plain missing path: reading the checkpoint says so
    tags = [entry.tag for entry in _tags_of(model).values()]
    if not tags:
        known = "it has no pretrained tags"
    else:
        close = difflib.get_close_matches(text.lower(), [t.lower() for t in tags], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = f"its tags are {', '.join(tags)}{hint}"
    raise FileNotFoundError(
        f"pretrained={text!r}: no such file, and not a tag of {model}: {known}. "
        f"mmcl.list_pretrained() (or `mmcl models --pretrained`) lists every tag"
    )


def _resolve_hub_repository(text: str) -> ResolvedWeights:
    repo, revision = hub.parse_hub_reference(text)
    unreachable: list[bool] = []  # one per file not found: True where the Hub was not asked
    config_path = _first_file(repo, (OPEN_CLIP_CONFIG,), revision, text, unreachable)
    if config_path is not None:  # open_clip's layout: its config names the architecture
        weights = _first_file(repo, OPEN_CLIP_WEIGHTS, revision, text, unreachable)
        if weights is not None:
            return ResolvedWeights(weights, config=_open_clip_model_config(config_path, text))
    config_path = _first_file(repo, (TRANSFORMERS_CONFIG,), revision, text, unreachable)
    if config_path is not None:  # a transformers folder: its files side by side
        if _first_file(repo, TRANSFORMERS_WEIGHTS, revision, text, unreachable) is not None:
            return ResolvedWeights(config_path.parent)
    layouts = (
        f"open_clip's files ({OPEN_CLIP_CONFIG} with {' or '.join(OPEN_CLIP_WEIGHTS)}) nor a "
        f"transformers model ({TRANSFORMERS_CONFIG} with {' or '.join(TRANSFORMERS_WEIGHTS)})"
    )
    if not any(unreachable):
        raise FileNotFoundError(f"{text}: the repository holds neither {layouts}")
    expected = [OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS[-1]]
    raise FileNotFoundError(
        f"{text}: found neither {layouts}. " + hub.missing_files(repo, expected, revision)
    )


def _first_file(
    repo: str, names: tuple[str, ...], revision: str | None, what: str, unreachable: list[bool]
) -> Path | None:
    for name in names:
        try:
            return hub.hub_file(repo, name, revision, what=what)
        except hub.HubFileAbsent as error:
            unreachable.append(error.unreachable)
    return None


def _open_clip_model_config(path: Path, source: str) -> dict[str, Any]:
    try:
        model_cfg = json.loads(path.read_text())["model_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{source}: {path} is not open_clip's config (no model_cfg): {error}"
        ) from None
    return model_cfg
