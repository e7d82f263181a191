"""Reading raw tensors from checkpoint files, safely, with errors that name the file.

Formats: safetensors, pickled state dicts (loaded with `weights_only=True`, so no code runs),
and TorchScript archives (OpenAI's released `.pt` files). A Hugging Face model directory is a
folder holding `config.json` and `model.safetensors` or `pytorch_model.bin`; a training run's
folder (no `config.json`) is read as its `model.safetensors`.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from mmcl.io.checkpoints.errors import CheckpointError

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MMCL_MODEL_FILE = "model.safetensors"  # what a training run writes into its folder


@dataclass
class RawCheckpoint:
    path: Path
    container: str  # "safetensors", "pickle", "torchscript" or "huggingface"
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)  # safetensors metadata / HF config


def read_checkpoint(path: str | Path) -> RawCheckpoint:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.is_dir():
        if not (path / "config.json").exists() and (path / MMCL_MODEL_FILE).is_file():
            path = path / MMCL_MODEL_FILE  # a training run's folder: its model file
        else:
            return _read_huggingface_dir(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if _is_safetensors(path):
        return RawCheckpoint(path, "safetensors", *_read_safetensors(path))
    if _is_torchscript(path):
        return RawCheckpoint(path, "torchscript", _read_torchscript(path))
    return RawCheckpoint(path, "pickle", _read_pickle(path))


def _is_safetensors(path: Path) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length, then a JSON header.
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _is_torchscript(path: Path) -> bool:
    # torch.save archives hold data.pkl only; TorchScript archives also hold compiled code.
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {error}"
        ) from error


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path}: not a readable TorchScript archive (truncated or corrupt?): {error}"
        ) from error
    return {key: value.detach() for key, value in module.state_dict().items()}


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    if not _starts_like_torch_save(path):
        raise CheckpointError(
            f"{path}: not a checkpoint (neither safetensors, a PyTorch archive nor a pickle); "
            f"is it the right file?"
        )
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad pickles; all mean the same here
        raise CheckpointError(f"{path}: {_pickle_problem(error)}") from None
    return _unwrap_state_dict(loaded, path)


def _starts_like_torch_save(path: Path) -> bool:
    # torch.save writes a zip archive (local file header "PK\x03\x04" first, so a truncated
    # one still shows it) or, in its legacy format, a pickle of protocol 2 or later (PROTO
    # opcode 0x80 and the protocol number).
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _pickle_problem(error: Exception) -> str:
    """What went wrong, in mmcl's words. torch's own message is not passed on: it advises
    retrying with `weights_only=False`, which would run whatever code the file holds."""
    message = str(error)
    refused_global = re.search(r"GLOBAL (\S+)", message)
    if refused_global:
        return (
            f"holds Python objects other than tensors ({refused_global.group(1)}); mmcl loads "
            f"only tensors and never runs code from a checkpoint"
        )
    if isinstance(error, pickle.UnpicklingError) or "Unsupported operand" in message:
        return "not a checkpoint: not a valid pickle (truncated, corrupt, or another kind of file)"
    first_sentence = message.split(". ")[0].strip() or type(error).__name__
    detail = "" if "weights_only" in message else f": {first_sentence}"
    return f"could not be read as a PyTorch checkpoint (truncated or corrupt?){detail}"


def _unwrap_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    # Training checkpoints wrap the weights ({"state_dict": ...}); DDP prefixes "module.".
    if isinstance(loaded, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key[len("module.") :]: value for key, value in loaded.items()}
    return loaded


def _read_huggingface_dir(path: Path) -> RawCheckpoint:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path}: a Hugging Face model folder needs a config.json")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{config_path}: invalid JSON: {error}") from error
    for name in HF_WEIGHT_FILES:
        weights = path / name
        if weights.is_file():
            if weights.stat().st_size == 0:
                raise CheckpointError(f"{weights}: the file is empty")
            tensors = (
                _read_safetensors(weights)[0]
                if name.endswith(".safetensors")
                else _read_pickle(weights)
            )
            return RawCheckpoint(path, "huggingface", tensors, config)
    raise CheckpointError(f"{path}: none of {', '.join(HF_WEIGHT_FILES)} found in the folder")
