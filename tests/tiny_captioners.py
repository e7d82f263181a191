"""Tiny random BLIP folders (Hugging Face layout, with a WordPiece vocabulary), ALBEF run
folders and image folders, for the tests of the commands that read a model's own tokenizer
(`mmcl caption`, `capfilt`, `retrieval`, `embed --texts`, `zeroshot`)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from PIL import Image

# 38 ids in vocab.txt; the tokenizer appends [DEC] = 38 and [ENC] = 39, as BLIP's does.
WORDS = (
    "a picture of the two one red green blue star circle square left right on and good bad "
    "small big dog cat sky photo with in near top bottom middle"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
VOCAB += [f"w{i}" for i in range(38 - len(VOCAB))]
DEC, ENC, SEP = 38, 39, 3
VISION = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
TEXT = dict(
    vocab_size=40,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=24,
    encoder_hidden_size=32,
    bos_token_id=DEC,
    sep_token_id=SEP,
    pad_token_id=0,
)


def hf_blip(kind: str = "BlipForConditionalGeneration", seed: int = 0):
    """A transformers BLIP of `kind` with every weight random (HF sets biases to constants)."""
    torch.manual_seed(seed)
    config = transformers.BlipConfig(
        vision_config=VISION, text_config=TEXT, image_text_hidden_size=16
    )
    model = getattr(transformers, kind)(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    return model


def blip_folder(
    folder: Path, kind: str = "BlipForConditionalGeneration", seed: int = 0, vocab: bool = True
):
    """Save a tiny random `kind` into `folder` with its vocab.txt; returns the HF model."""
    model = hf_blip(kind, seed)
    model.save_pretrained(folder)
    if vocab:
        (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in VOCAB))
    return model


def image_folder(folder: Path, count: int = 5, size: int = 40) -> list[Path]:
    """`count` distinct solid-colour PNGs named 0.png, 1.png, ..., sorted as mmcl lists them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.new("RGB", (size, size), (50 * i % 256, 255 - 40 * i % 256, 90 * i % 256)).save(path)
        paths.append(path)
    return paths


COCA = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                   "patch_size": 8, "attentional_pool": True, "attn_pooler_heads": 2,
                   "attn_pooler_queries": 5, "output_tokens": True},
    "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1, "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2,
                       "layers": 1},
    "custom_text": True,
}  # fmt: skip


def coca_file(path: Path, seed: int = 0):
    """A tiny random CoCa (CLIP's vocabulary, one layer a tower) saved in mmcl's layout."""
    from mmcl.io.checkpoints.export import save_safetensors
    from mmcl.models.coca import CoCa
    from mmcl.models.config import CoCaConfig

    torch.manual_seed(seed)
    model = CoCa(CoCaConfig.from_dict(COCA)).eval()
    save_safetensors(model, path)
    return model


def albef_folder(folder: Path, seed: int = 0, vocab: bool = True):
    """A tiny random ALBEF saved as `folder/model.safetensors`, with the WordPiece vocabulary
    of `WORDS` beside it (ids as tiny-albef's: [PAD] 0, [CLS] 2, [SEP] 3, [MASK] 4), as a
    `mmcl train` run folder holds them; returns the model and its tokenizer."""
    from mmcl.io.checkpoints.export import save_safetensors
    from mmcl.io.wordpiece import train_wordpiece
    from mmcl.models.albef import Albef
    from mmcl.models.albef_config import AlbefConfig

    tokenizer = train_wordpiece([" ".join(WORDS)], vocab_size=200)  # 35 ids, the model 20
    torch.manual_seed(seed)
    config = AlbefConfig.from_dict(
        {
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1,
                           "heads": 2, "mlp_width": 48},
            "albef_text": {"vocab_size": tokenizer.vocab_size, "width": 32, "text_layers": 1,
                           "fusion_layers": 1, "heads": 2, "mlp_width": 48, "max_positions": 20,
                           "cls_id": 2, "sep_id": 3, "mask_id": 4},
            "embed_dim": 16,
        }
    )  # fmt: skip
    model = Albef(config).eval()
    with torch.no_grad():  # BERT's 0.02 init makes every text look alike; spread them out
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, folder / "model.safetensors")
    if vocab:
        tokenizer.save(folder)
    return model, tokenizer


def capfilt_argv(tmp_path, output, *extra):
    return ["capfilt", "--captions", str(tmp_path / "web.csv"), "--images",
            str(tmp_path / "images"), "--captioner", str(tmp_path / "captioner"), "--filter",
            str(tmp_path / "filter"), "--output", str(output), "--part-size", "2",
            "--max-length", "6", "--quiet", *extra]  # fmt: skip


def stopped_capfilt(tmp_path, monkeypatch, output):
    """`mmcl capfilt` on tiny random models and 5 images (7 web captions) in parts of 2,
    stopped right after its first part was written."""
    import pytest

    import mmcl.eval.capfilt as capfilt_module
    from mmcl.cli import main as cli_main

    blip_folder(tmp_path / "captioner", seed=1)
    blip_folder(tmp_path / "filter", "BlipForImageTextRetrieval", seed=2)
    image_folder(tmp_path / "images", 5)
    owner = [0, 0, 1, 2, 3, 3, 4]
    rows = "".join(f"{i}.png,a red star {i}\n" for i in owner)
    (tmp_path / "web.csv").write_text("image,caption\n" + rows)
    write_part = capfilt_module._write_part

    def write_then_stop(*args):
        write_part(*args)
        raise KeyboardInterrupt  # as if stopped right after the first part was written

    monkeypatch.setattr(capfilt_module, "_write_part", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        cli_main(capfilt_argv(tmp_path, output))
    monkeypatch.setattr(capfilt_module, "_write_part", write_part)
