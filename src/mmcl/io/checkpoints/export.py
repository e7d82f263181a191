"""Writing a model in mmcl's own safetensors layout, open_clip's layout, or Hugging Face's.

Each writer takes any object with `state_dict()` and `config.to_dict()` (an `mmcl` CLIP) and
writes atomically: a crash never leaves a half-written checkpoint behind. Nothing that mmcl
did not write is ever deleted: a Hugging Face export replaces only its own two files in a
folder, and only when asked to.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmcl.io.atomic import atomic_folder, atomic_path
from mmcl.io.checkpoints import blip, blip2, coca, huggingface, llava, openai
from mmcl.io.checkpoints.errors import CheckpointError
from mmcl.io.hf_processor import HF_PROCESSOR_FILES, processor_files

# Metadata key under which an mmcl safetensors file carries its architecture.
MMCL_CONFIG_KEY = "mmcl_config"
# The files a Hugging Face export writes (the model, then what CLIPProcessor reads); any other
# file in its folder is left alone.
HF_MODEL_FILES = ("config.json", "model.safetensors")
HF_EXPORT_FILES = (*HF_MODEL_FILES, *HF_PROCESSOR_FILES)


def check_export_target(
    path: str | os.PathLike, folder: bool, overwrite: bool, remedy: str = "overwrite=True"
) -> None:
    """Refuse, before any work is done, a target an export must not write to.

    `folder`: the export is a folder (Hugging Face), else one file. Without `overwrite`, an
    existing file or a non-empty folder is refused; `remedy` names the way to allow it in the
    caller's terms (the command line says `--overwrite`).
    """
    target = Path(path)
    if folder:
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(
                f"{target}: is a file; a Hugging Face export is a folder "
                f"({' + '.join(HF_MODEL_FILES)} + processor files): give a folder path"
            )
        if not target.is_dir():
            return
        if not overwrite and any(target.iterdir()):
            raise FileExistsError(
                f"{target}: the folder is not empty; {remedy} writes "
                f"{', '.join(HF_EXPORT_FILES)} into it (replacing those, if there) and keeps "
                f"every other file"
            )
        for name in HF_EXPORT_FILES:
            if (target / name).exists() and not (target / name).is_file():
                raise IsADirectoryError(f"{target / name}: is not a file; it cannot be replaced")
    else:
        if target.is_dir():
            raise IsADirectoryError(
                f"{target}: is a folder; this format is one file: give a file path "
                f"(e.g. {target / 'model.safetensors'})"
            )
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target}: the file exists; {remedy} replaces it")


def _plain_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views and shared storage; save independent contiguous copies.
    return {key: value.detach().cpu().contiguous().clone() for key, value in state_dict.items()}


def save_safetensors(model, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """mmcl layout with the architecture in the file's metadata, so `mmcl.load(path)` works.
    A model without an mmcl config (e.g. a plain classifier) is saved as bare tensors.

    Like `torch.save`, it replaces a file that is there, unless `overwrite=False`."""
    check_export_target(path, folder=False, overwrite=overwrite)
    metadata = {"format": "pt"}
    if getattr(model, "config", None) is not None:
        metadata[MMCL_CONFIG_KEY] = json.dumps(model.config.to_dict())
    with atomic_path(path) as tmp:
        save_file(_plain_tensors(model.state_dict()), str(tmp), metadata=metadata)
    return Path(path)


def save_open_clip(model, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """open_clip / OpenAI state-dict layout; `.safetensors` or a pickled `.pt`/`.bin`. A CoCa
    is written as open_clip's `CoCa` holds it, which is mmcl's layout too.

    Like `torch.save`, it replaces a file that is there, unless `overwrite=False`."""
    check_export_target(path, folder=False, overwrite=overwrite)
    state = model.state_dict()
    tensors = _plain_tensors(
        state if coca.is_coca_layout(state) else openai.to_openai_layout(state)
    )
    with atomic_path(path) as tmp:
        if str(path).endswith(".safetensors"):
            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)
    return Path(path)


def save_huggingface(model, directory: str | os.PathLike, overwrite: bool = False) -> Path:
    """A `CLIPModel` folder for `transformers`: config.json and model.safetensors, and the
    tokenizer and image processor files `CLIPProcessor.from_pretrained` reads (`HF_EXPORT_FILES`;
    see `mmcl.io.hf_processor`).

    A new folder appears whole or not at all. An existing non-empty folder is refused unless
    `overwrite=True`, and then only the export's own files are replaced: other files in it
    stay. (A folder path, unlike a file path, does not name the files that would be
    replaced, hence the refusal by default.)
    """
    config_dict = model.config.to_dict()
    is_blip = "blip_text" in config_dict
    if not is_blip and coca.is_coca_layout(model.state_dict()):
        raise CheckpointError(
            f"{directory}: Hugging Face has no CoCa model class; export a CoCa as mmcl "
            f"safetensors or in open_clip's layout (a .pt, .bin or .safetensors file)"
        )
    if "cogvlm_vision" in config_dict:
        raise CheckpointError(
            f"{directory}: Hugging Face has no CogVLM model class (its checkpoints run their "
            f"own code); export a CogVLM as mmcl safetensors (--to mmcl), or as a CogVLM folder"
        )
    if "llava_vision" in config_dict:  # a LLaVA: its model files (its tokenizer is the LM's)
        config = llava.config_to_huggingface(config_dict)
        tied = config["tie_word_embeddings"]
        tensors = _plain_tensors(llava.llava_to_huggingface(model.state_dict(), tied))
        texts = {}
    elif "qformer" in config_dict:  # a BLIP-2: its model files only (the LM's tokenizer is apart)
        config = blip2.config_to_huggingface(config_dict)
        tensors = _plain_tensors(blip2.blip2_to_huggingface(model.state_dict()))
        texts = {}
    elif is_blip:  # a BLIP: its model files only (its tokenizer is WordPiece)
        config = blip.config_to_huggingface(config_dict)
        tensors = _plain_tensors(blip.blip_to_huggingface(model.state_dict()))
        texts = {}
    else:
        config = huggingface.config_to_huggingface(config_dict)
        tensors = _plain_tensors(huggingface.to_huggingface(model.state_dict()))
        texts = processor_files(
            model.config.vision_cfg.image_size, model.config.text_cfg.context_length
        )
    texts["config.json"] = json.dumps(config, indent=2)
    target = Path(directory)
    check_export_target(target, folder=True, overwrite=overwrite)
    # An existing folder gets the files in place; a new one is staged and renamed whole.
    # Either way every file is complete before any is renamed into place.
    folder = contextlib.nullcontext(target) if target.is_dir() else atomic_folder(target)
    with folder as written_folder, contextlib.ExitStack() as files:
        weights_tmp = files.enter_context(atomic_path(written_folder / "model.safetensors"))
        save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
        for name, text in texts.items():
            files.enter_context(atomic_path(written_folder / name)).write_text(text)
    return target
