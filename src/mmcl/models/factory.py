"""`create_model` and `load`: names or checkpoint files in, ready models out."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from mmcl.choices import PRECISION_NAMES
from mmcl.io.checkpoints import CheckpointError, describe_mismatch, load_checkpoint
from mmcl.io.hub import is_hub_reference
from mmcl.io.transforms import get_preprocess
from mmcl.models.albef import Albef
from mmcl.models.albef_config import AlbefConfig
from mmcl.models.blip import Blip
from mmcl.models.blip_config import BlipConfig
from mmcl.models.blip_vocab import blip_tokenizer
from mmcl.models.bridges.blip2 import Blip2, Blip2Config
from mmcl.models.bridges.cogvlm import CogVLM, CogVLMConfig
from mmcl.models.bridges.llava import Llava, LlavaConfig
from mmcl.models.bridges.minigpt4 import MiniGPT4, MiniGPT4Config
from mmcl.models.clip import CLIP
from mmcl.models.coca import CoCa
from mmcl.models.config import CLIPConfig, CoCaConfig, config_from_dict
from mmcl.models.pretrained import list_pretrained, resolve_pretrained
from mmcl.models.registry import available_models, get_model_config, resolve_name
from mmcl.nn.cpu_support import native_on_cpu

# The one list of precisions (`mmcl.choices`, which the CLI lists) and their dtypes.
PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.bfloat16, torch.float16), strict=True))


class ArchitectureNotRecordedError(CheckpointError):
    """A checkpoint without its architecture, loaded without a model name."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)
        super().__init__(
            f"{path}: the file does not record its architecture; pass a model name: "
            f"create_model(name, pretrained=path) or mmcl.load(path, model_name=name), with a "
            f"name such as 'ViT-B-32' (mmcl.available_models() lists them)"
        )


class HeadsAssumedWarning(UserWarning):
    """An open_clip CoCa state dict that fits none of the shipped coca_* configs was loaded
    without a model name: its attention head counts, which shapes do not show, were assumed."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)
        super().__init__(
            f"{path}: a CoCa whose shapes fit no shipped coca_* config; assumed 64-wide "
            f"attention heads in the text stacks and 8 heads in the attentional pooler (as "
            f"every coca_* config has them) and GELU. If the model was built otherwise, name "
            f"its config: create_model(name, pretrained=path, ...) with overrides"
        )


class ActivationAssumedWarning(UserWarning):
    """An open_clip / OpenAI state dict, which does not record its activation, was loaded
    without a model name: QuickGELU was assumed. `names` are the configs of that shape
    (GELU first, then QuickGELU), to choose from."""

    def __init__(self, path: os.PathLike, names: Sequence[str] = ()):
        self.path = Path(path)
        self.names = list(names)
        choose = " or ".join(repr(n) for n in names) or "e.g. 'ViT-B-32' or 'ViT-B-32-quickgelu'"
        super().__init__(
            f"{path}: the state dict does not record its activation; assumed QuickGELU, as "
            f"OpenAI's models and clip.load use, but open_clip's own models (names without "
            f"'-quickgelu') use GELU and give other outputs. Name the model to choose: "
            f"mmcl.load(path, model_name=...) or create_model(name, pretrained=path) with "
            f"name {choose}"
        )


def create_model(
    name: str | None = None,
    pretrained: str | os.PathLike | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    output_dict: bool = False,
    compile: bool = False,
    **config_overrides,
) -> CLIP | CoCa:
    """Build a CLIP (or CoCa: the coca_* names) model from a config name, optionally with
    pretrained weights.

    `pretrained` may be a tag of the model (`mmcl.list_pretrained()`: "openai",
    "laion2b_s34b_b79k", ...) or `hf-hub:ORG/NAME`, both fetched through `huggingface_hub`'s
    cache (HF_HOME, HF_HUB_OFFLINE apply), or a local file or folder: an OpenAI TorchScript
    archive or state dict, an open_clip state dict (`.pt`, `.bin`, `.safetensors`; CLIP or
    CoCa), a Hugging Face `CLIPModel` folder, or an mmcl safetensors file. A tag builds the
    model with the activation its weights were trained with (QuickGELU for "openai"). With
    `name=None` the architecture comes from the checkpoint itself (an open_clip /
    OpenAI state dict does not record its activation: QuickGELU is assumed, and an
    `ActivationAssumedWarning` names the models to choose between). Keyword
    arguments override config fields, e.g. `init_logit_bias=-10` for SigLIP training or
    `vision_cfg={"patch_size": 4}` (nested dicts are merged into the named config).

    `precision="bf16"` (or "fp16", for GPUs) casts the whole model; it still takes the float32
    images preprocessing yields (LayerNorm statistics stay float32). The model is plain, as
    every model `create_model` returns: for fast inference pass it to `mmcl.nn.accelerate`
    after ``model.requires_grad_(False)`` (the CLI does so for ``--precision bf16``/``fp16``).
    On a CPU without bf16 (or fp16) matmul instructions it warns, as float32 is then likely
    faster. `compile=True` puts the towers through `torch.compile` (Inductor; the first calls
    compile, which takes a while); on CPUs compare it with `accelerate` through
    `benchmarks/inference.py`.

    >>> import mmcl
    >>> model = mmcl.create_model("tiny-vit")
    >>> model.image_size, model.context_length
    (32, 77)
    """
    dtype = _dtype(precision)
    if name is None and pretrained is None:
        raise ValueError("create_model needs a model name, a pretrained checkpoint, or both")
    resolved = resolve_pretrained(name, pretrained) if pretrained is not None else None
    checkpoint = load_checkpoint(resolved.path) if resolved is not None else None
    # What the weights say (a tag's activation) gives way to what the caller says.
    overrides = {**resolved.overrides, **config_overrides} if resolved else config_overrides
    if name is not None:
        config = config_from_dict(
            _merged(get_model_config(name), overrides), source=resolve_name(name)
        )
    elif resolved.config is not None:
        config = config_from_dict(_merged(resolved.config, overrides), source=str(pretrained))
    elif checkpoint.config is not None:
        config = config_from_dict(
            _merged(checkpoint.config, overrides), source=str(checkpoint.path)
        )
    else:
        raise ArchitectureNotRecordedError(checkpoint.path)
    if checkpoint is None:
        model = _model_class(config)(config, output_dict=output_dict)
    else:
        model = build_pretrained(
            config, checkpoint.state_dict, str(checkpoint.path), dtype, output_dict
        )
    model = model.to(device=device, dtype=dtype).eval()
    if isinstance(model, Blip):  # its WordPiece vocabulary: the folder's own, else shipped
        model.tokenizer = blip_tokenizer(config, _model_folder(checkpoint))
    if (
        name is None
        and resolved.config is None
        and checkpoint.format == "open_clip"
        and "quick_gelu" not in overrides
    ):
        warnings.warn(ActivationAssumedWarning(checkpoint.path, _same_shapes(config)), stacklevel=2)
    if name is None and checkpoint.format == "open_clip_coca" and config not in _coca_configs():
        warnings.warn(HeadsAssumedWarning(checkpoint.path), stacklevel=2)
    if torch.device(device).type == "cpu" and not native_on_cpu(dtype):
        warnings.warn(
            f"precision={precision!r}: this CPU has no {precision} matmul instructions "
            f"(AVX-512 BF16/FP16 or AMX), so its {precision} matmuls are emulated and usually "
            f"slower than float32; precision='fp32' is likely faster here",
            stacklevel=2,
        )
    if compile:
        compile_towers(model)
    return model


def compile_towers(model: CLIP | CoCa) -> CLIP | CoCa:
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
    model_name: str | None = None,
):
    """Load a checkpoint and return `(model, preprocess)`, like `clip.load`.

    `name_or_path` is a local checkpoint file or folder, or `hf-hub:ORG/NAME` (a repository
    of open_clip's or a transformers `CLIPModel`, through `huggingface_hub`'s cache); for a
    model name with a pretrained tag, use `create_model(name, pretrained=tag)`. `model_name` gives
    the architecture where the file does not record it. A plain state dict in OpenAI/open_clip
    layout does not record its activation: with `model_name` (e.g. "ViT-B-32" for open_clip's
    GELU models, "ViT-B-32-quickgelu" for QuickGELU) that is settled; without it, the
    architecture comes from the weights, as `clip.load` does (QuickGELU, 64-wide heads), and
    an `ActivationAssumedWarning` says so.
    """
    if is_hub_reference(name_or_path):
        model = create_model(
            model_name, pretrained=name_or_path, precision=precision, device=device
        )
        return model, get_preprocess(model)
    path = Path(name_or_path)
    if not path.exists():
        try:
            resolve_name(str(name_or_path))
        except ValueError:
            raise FileNotFoundError(
                f"{name_or_path!r} is neither a checkpoint file/folder nor a model name"
            ) from None
        tags = [tag for _, tag in list_pretrained(str(name_or_path))]
        example = f"pretrained={tags[0]!r}" if tags else "pretrained=PATH"
        raise FileNotFoundError(
            f"{name_or_path!r} is a model name, not a checkpoint: for published weights call "
            f"mmcl.create_model({str(name_or_path)!r}, {example}) (its tags: "
            f"{', '.join(tags) or 'none'}); for random weights mmcl.create_model"
            f"({str(name_or_path)!r})"
        )
    model = create_model(model_name, pretrained=path, precision=precision, device=device)
    return model, get_preprocess(model)


def build_pretrained(
    config: CLIPConfig | CoCaConfig,
    state_dict: dict[str, torch.Tensor],
    source: str,
    dtype: torch.dtype = torch.float32,
    output_dict: bool = False,
) -> CLIP | CoCa:
    """`CLIP(config)` (or `CoCa(config)`) with `state_dict` loaded and cast to `dtype`, on the CPU, without ever
    initialising it at random.

    The result equals building the model, `load_state_dict_strict` and `.to(dtype)`, tensor for
    tensor; but CLIP's random initialisation, which that path overwrites at once, took most of
    the time of loading a checkpoint, and the
    float32 copy it loaded into cost another pass over the weights. Here the modules are built
    on the meta device (shapes, no memory) and the checkpoint's tensors, converted as that path
    converts them, become the parameters. A model that keeps state outside its state dict would
    be left with meta tensors; it is built the plain way instead.
    """
    kind = _model_class(config)
    with torch.device("meta"):
        model = kind(config, output_dict=output_dict)
    expected = model.state_dict()
    given = _checked_state_dict(expected, state_dict, source)
    tensors = {}
    for key, like in expected.items():
        if key in given:
            tensors[key] = _loaded_as(given[key], like.dtype, dtype)
        else:  # num_batches_tracked, never loaded: the count a fresh BatchNorm holds
            tensors[key] = torch.zeros(like.shape, dtype=like.dtype)
    model.load_state_dict(tensors, assign=True)
    if _has_meta_tensors(model):
        model = kind(config, output_dict=output_dict)
        load_state_dict_strict(model, state_dict, source)
        model = model.to(dtype)
    return model


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load every tensor or none: any missing, unexpected or mis-shaped key is an error."""
    given = _checked_state_dict(model.state_dict(), state_dict, source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_state_dict(given, strict=False)


def _checked_state_dict(expected: dict, state_dict: dict, source: str) -> dict:
    """`state_dict` less BatchNorms' batch counts, once its keys and shapes fit `expected`."""
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
    return given


def _loaded_as(tensor: torch.Tensor, initial: torch.dtype, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` as copying it into a parameter of dtype `initial` and then casting the model to
    `dtype` leaves it: rounded the same way (float64 goes through float32 first), contiguous,
    and in memory of its own, never a view of the checkpoint's (possibly memory-mapped) file."""
    target = dtype if initial.is_floating_point else initial
    tensor = tensor.detach()
    if tensor.dtype not in (initial, target):
        tensor = tensor.to(initial)  # a new tensor: no copy needed below
        return tensor.to(target, memory_format=torch.contiguous_format)
    return tensor.to(target, memory_format=torch.contiguous_format, copy=True)


def _has_meta_tensors(model: torch.nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [v for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)]
    return any(t.is_meta for t in tensors)


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


def _model_class(config: CLIPConfig | CoCaConfig | BlipConfig) -> type[CLIP | CoCa | Blip]:
    if isinstance(config, BlipConfig):
        return Blip
    if isinstance(config, AlbefConfig):
        return Albef
    if isinstance(config, CogVLMConfig):
        return CogVLM
    if isinstance(config, LlavaConfig):
        return Llava
    if isinstance(config, MiniGPT4Config):  # before Blip2Config, which it extends
        return MiniGPT4
    if isinstance(config, Blip2Config):
        return Blip2
    return CoCa if isinstance(config, CoCaConfig) else CLIP


def _model_folder(checkpoint) -> Path | None:
    """The folder a checkpoint came from (itself, or the file's), where its tokenizer lies."""
    if checkpoint is None:
        return None
    return checkpoint.path if checkpoint.path.is_dir() else checkpoint.path.parent


def _coca_configs() -> list[CoCaConfig]:
    return [
        config_from_dict(get_model_config(name), source=name)
        for name in available_models()
        if "multimodal_cfg" in get_model_config(name)
    ]


def _same_shapes(config: CLIPConfig) -> list[str]:
    """The shipped CLIP configs with `config`'s architecture, whatever their activation."""

    def shape(c: CLIPConfig) -> tuple:
        return c.embed_dim, c.vision_cfg, c.text_cfg

    matches = [
        name
        for name in available_models()
        if not {"multimodal_cfg", "albef_text", "blip_text"} & set(get_model_config(name))
        and shape(CLIPConfig.from_dict(get_model_config(name), source=name)) == shape(config)
    ]
    return sorted(matches, key=lambda name: (name.endswith("-quickgelu"), name))
