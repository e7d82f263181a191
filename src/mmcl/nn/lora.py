"""LoRA (Hu et al. 2021) on a part of a model, through `peft`: add, merge, unmerge, unload,
and adapter-only files.

`add_lora` injects peft's LoRA layers into one submodule (a bridge's ``language_model``,
``projector`` or ``visual``) in place, with `peft.inject_adapter_in_model`: the model keeps
its own class, forward and generate, and each targeted `nn.Linear` becomes a peft layer that
calls the original one plus ``B A x * alpha / r``. The part's own weights are frozen; only
the ``lora_`` tensors train.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
>>> add_lora(model, LoraSpec(target="", modules=["0", "2"], r=2))
>>> sorted(name for name, p in model.named_parameters() if p.requires_grad)[:2]
['0.lora_A.default.weight', '0.lora_B.default.weight']
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from mmcl.io.atomic import atomic_path

LORA_KEY = "lora_"  # in every peft LoRA tensor's name (lora_A, lora_B, lora_embedding_A...)
SPEC_KEY = "mmcl_lora"  # the adapter file's metadata entry holding its `LoraSpec`
TARGET_ALIASES = {"lm": "language_model", "tower": "visual"}


@dataclass
class LoraSpec:
    """`target`: the submodule's attribute path ("" for the whole model; ``lm`` and ``tower``
    stand for ``language_model`` and ``visual``); `modules`: names (or name suffixes) of its
    linear layers to adapt, as peft's ``target_modules``."""

    target: str = "language_model"
    modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, data: dict, source: str = "lora") -> LoraSpec:
        unknown = sorted(set(data) - {"target", "modules", "r", "alpha", "dropout"})
        if unknown:
            raise ValueError(
                f"{source}: unknown LoRA entries {unknown}; give target, modules, r, alpha, dropout"
            )
        spec = cls(**data)
        spec.target = TARGET_ALIASES.get(spec.target, spec.target)
        if isinstance(spec.modules, str):
            spec.modules = [spec.modules]
        if not spec.modules or int(spec.r) < 1:
            raise ValueError(f"{source}: LoRA needs r >= 1 and some modules, got {data}")
        return spec


def _part(model: nn.Module, target: str, source: str) -> nn.Module:
    try:
        return model.get_submodule(target) if target else model
    except AttributeError:
        parts = [name for name, _ in model.named_children()]
        raise ValueError(
            f"{source}: the model has no part {target!r}; its parts: {parts}"
        ) from None


def add_lora(
    model: nn.Module, spec: LoraSpec, source: str = "lora", adapter_name: str = "default"
) -> None:
    """Inject LoRA layers into `model`'s `spec.target` in place; that part's own weights are
    frozen (other parts keep their `requires_grad`). A second call with another
    `adapter_name` adds a second adapter to the same layers (see `mmcl.nn.task_loras`)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ImportError("LoRA uses peft: pip install 'mmcl[llm]'") from None
    part = _part(model, spec.target, source)
    config = LoraConfig(
        r=int(spec.r),
        lora_alpha=float(spec.alpha),
        lora_dropout=float(spec.dropout),
        target_modules=list(spec.modules),
        bias="none",
    )
    try:
        inject_adapter_in_model(config, part, adapter_name=adapter_name)
    except ValueError as error:  # peft: "Target modules {...} not found in the base model"
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in part.named_modules() if _linear(m)})
        raise ValueError(
            f"{source}: LoRA modules {spec.modules} match nothing in {spec.target or 'the model'}"
            f" ({error}); its linear layers are named {linears}"
        ) from None
    for name, parameter in part.named_parameters():
        parameter.requires_grad_(LORA_KEY in name)


def _linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear)


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def refuse_lora_experts(model: nn.Module, action: str) -> None:
    """A mixture of LoRA experts (`mmcl.nn.lora_experts`) weighs its experts per token through
    a router, so no single weight holds its update and peft's adapter format has no place
    for it: merging, unloading or saving it as a peft adapter would drop it without a word."""
    from mmcl.nn.lora_experts import LoraExpertsLinear

    mixtures = [n for n, m in model.named_modules() if isinstance(m, LoraExpertsLinear)]
    if mixtures:
        raise ValueError(
            f"cannot {action}: the model holds a mixture of LoRA experts ({len(mixtures)} "
            f"layers, e.g. {mixtures[0]!r}), whose per-token router no merged weight or peft "
            "adapter can hold; keep the model's state_dict (it has every expert) instead"
        )


def merge_lora(model: nn.Module) -> dict[str, torch.Tensor]:
    """Add each adapter's ``B A * alpha / r`` into its base weight (forward then skips the
    adapter). Returns copies of the base weights before the merge: `unmerge_lora` puts those
    back bit for bit (subtracting the delta again would leave rounding errors)."""
    refuse_lora_experts(model, "merge LoRA")
    saved = {}
    for name, layer in lora_layers(model):
        if layer.merged:
            continue
        saved[name] = layer.get_base_layer().weight.detach().clone()
        layer.merge()
    return saved


def unmerge_lora(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Undo `merge_lora`: the adapters run separately again on the exact base weights."""
    for name, layer in lora_layers(model):
        if name in saved:
            layer.unmerge()
            with torch.no_grad():
                layer.get_base_layer().weight.copy_(saved[name])


def unload_lora(model: nn.Module) -> None:
    """Merge the adapters and put the plain layers back: the model's state dict has its
    original names again (what a Hugging Face export needs). The adapters are gone."""
    refuse_lora_experts(model, "unload LoRA")
    for name, layer in lora_layers(model):
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if LORA_KEY in k}


def save_lora_adapter(model: nn.Module, spec: LoraSpec, path: str | os.PathLike) -> Path:
    """The adapter tensors only (safetensors), with `spec` in the metadata; written
    atomically."""
    from safetensors.torch import save_file

    refuse_lora_experts(model, f"save a LoRA adapter to {path}")

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in lora_state_dict(model).items()}
    if not tensors:
        raise ValueError(f"{path}: the model holds no LoRA adapter to save (add_lora first)")
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={SPEC_KEY: json.dumps(asdict(spec))})
    return Path(path)


def load_lora_adapter(model: nn.Module, path: str | os.PathLike) -> LoraSpec:
    """Load an adapter file into `model`, adding its LoRA layers first when the model has
    none. Returns the file's `LoraSpec`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA adapter file at {path}")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
        if SPEC_KEY not in metadata:
            raise ValueError(f"{path}: not an mmcl LoRA adapter file (no {SPEC_KEY} metadata)")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    spec = LoraSpec.from_dict(json.loads(metadata[SPEC_KEY]), str(path))
    if not lora_layers(model):
        add_lora(model, spec, str(path))
    expected = set(lora_state_dict(model))
    if expected != set(tensors):
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(
            f"{path}: the adapter does not fit this model (missing {missing[:3]}, "
            f"unexpected {extra[:3]}); was it saved from another architecture?"
        )
    model.load_state_dict(tensors, strict=False)
    return spec
