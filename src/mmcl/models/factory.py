"""`create_model` and `load`: names or checkpoint files in, ready models out."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from mmcl.io.checkpoints import CheckpointError, describe_mismatch, load_checkpoint
from mmcl.io.transforms import get_preprocess
from mmcl.models.clip import CLIP
from mmcl.models.config import CLIPConfig
from mmcl.models.registry import get_model_config, resolve_name

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def create_model(
    name: str | None = None,
    pretrained: str | os.PathLike | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    output_dict: bool = False,
    compile: bool = False,
    **config_overrides,
) -> CLIP:
    """Build a CLIP model from a config name, optionally loading weights from a file.

    `pretrained` may be an OpenAI TorchScript archive or state dict, an open_clip state dict
    (`.pt`, `.bin`, `.safetensors`), a Hugging Face `CLIPModel` folder, or an mmcl safetensors
    file. With `name=None` the architecture comes from the checkpoint itself. Keyword
    arguments override config fields, e.g. `init_logit_bias=-10` for SigLIP training or
    `vision_cfg={"patch_size": 4}` (nested dicts are merged into the named config).

    `precision="bf16"` (or "fp16", for GPUs) casts the whole model; it still takes the float32
    images preprocessing yields, and without gradients it runs the fast inference path of
    `mmcl.nn.inference` (LayerNorm statistics stay float32). `compile=True` puts the towers
    through `torch.compile` (Inductor; the first calls take a minute). It is never needed: on
    CPUs mmcl's own bf16 path was 15-35% faster than Inductor's code for ViT-B/32, RN50 and
    the text tower (`benchmarks/inference.py` measures it).

    >>> import mmcl
    >>> model = mmcl.create_model("tiny-vit")
    >>> model.image_size, model.context_length
    (32, 77)
    """
    dtype = _dtype(precision)
    if name is None and pretrained is None:
        raise ValueError("create_model needs a model name, a pretrained checkpoint, or both")
    checkpoint = load_checkpoint(pretrained) if pretrained is not None else None
    if name is not None:
        config = CLIPConfig.from_dict(
            _merged(get_model_config(name), config_overrides), source=resolve_name(name)
        )
    elif checkpoint.config is not None:
        config = CLIPConfig.from_dict(
            _merged(checkpoint.config, config_overrides), source=str(checkpoint.path)
        )
    else:
        raise CheckpointError(
            f"{checkpoint.path}: the file does not record its architecture; "
            f"pass a model name, e.g. create_model('ViT-B-32', pretrained=...)"
        )
    model = CLIP(config, output_dict=output_dict)
    if checkpoint is not None:
        load_state_dict_strict(model, checkpoint.state_dict, str(checkpoint.path))
    model = model.to(device=device, dtype=dtype).eval()
    if compile:
        compile_towers(model)
    return model


def compile_towers(model: CLIP) -> CLIP:
    """`torch.compile` the image tower and the text tower's transformer, in place
    (`nn.Module.compile`, so state-dict keys are unchanged).

    Text batches vary in length (each is computed up to its longest text, which the tower
    reads off the tokens before the transformer), so that part is compiled for dynamic shapes
    rather than once per length.
    """
    model.visual.compile()
    model.text.transformer.compile(dynamic=True)
    return model


def load(
    name_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
):
    """Load a checkpoint and return `(model, preprocess)`, like `clip.load`.

    mmcl never downloads weights: pass a local checkpoint file or folder. A plain state dict
    in OpenAI/open_clip layout gets its architecture from the weights, as `clip.load` does
    (QuickGELU, 64-wide heads); for open_clip's GELU models use
    `create_model(name, pretrained=path)`.
    """
    path = Path(name_or_path)
    if not path.exists():
        try:
            resolve_name(str(name_or_path))
        except ValueError:
            raise FileNotFoundError(
                f"{name_or_path!r} is neither a checkpoint file/folder nor a model name"
            ) from None
        raise FileNotFoundError(
            f"{name_or_path!r} is a model name, but mmcl does not download weights: pass the "
            f"path of a local checkpoint, or call mmcl.create_model({str(name_or_path)!r}) for a "
            f"randomly initialised model"
        )
    model = create_model(None, pretrained=path, precision=precision, device=device)
    return model, get_preprocess(model)


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load every tensor or none: any missing, unexpected or mis-shaped key is an error."""
    expected = model.state_dict()
    expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        (key, tuple(given[key].shape), tuple(expected[key].shape))
        for key in sorted(set(given) & set(expected))
        if given[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(describe_mismatch(source, missing, unexpected, mismatched))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_state_dict(given, strict=False)


def _merged(config: dict, overrides: dict) -> dict:
    merged = dict(config)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]
