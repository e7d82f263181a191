"""Hugging Face's BERT-style text model layout (`BlipTextModel`, `BlipTextLMHeadModel`'s `bert.`
and `cls.` parts) to and from `mmcl.nn.bert`'s.

Keys are given without the model's own prefix (strip ``text_decoder.bert.`` or
``text_encoder.`` first). mmcl's side: ``embeddings.*``, ``encoder.blocks.{i}.*`` and
``lm_head.*``. Only names change, except the attention projections: Hugging Face's separate
query/key/value become one ``in_proj_weight``/``in_proj_bias`` (or ``q/k/v_proj_weight`` when
the cross-attention's context has another width), as `torch.nn.MultiheadAttention` keeps them.
"""

from __future__ import annotations

import re

import torch

from mmcl.io.checkpoints.errors import CheckpointError

_RENAMES = (  # (Hugging Face, mmcl), prefixes of whole name components
    ("embeddings.LayerNorm", "embeddings.norm"),
    ("embeddings.word_embeddings", "embeddings.word_embeddings"),
    ("embeddings.position_embeddings", "embeddings.position_embeddings"),
    ("attention.output.dense", "attn.out_proj"),
    ("attention.output.LayerNorm", "attn_norm"),
    ("crossattention.output.dense", "cross_attn.out_proj"),
    ("crossattention.output.LayerNorm", "cross_norm"),
    ("intermediate.dense", "mlp.c_fc"),
    ("output.dense", "mlp.c_proj"),
    ("output.LayerNorm", "mlp_norm"),
    ("cls.predictions.transform.dense", "lm_head.transform"),
    ("cls.predictions.transform.LayerNorm", "lm_head.norm"),
    ("cls.predictions.decoder", "lm_head.decoder"),
)
_ATTENTIONS = {"attention": "attn", "crossattention": "cross_attn"}
_QKV = ("query", "key", "value")
_IGNORED = re.compile(r"(.*position_ids|cls\.predictions\.bias)$")  # a buffer; a tied copy
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.*)")
_BLOCK = re.compile(r"encoder\.blocks\.(\d+)\.(.*)")


def bert_from_huggingface(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmcl's names for a Hugging Face BERT-style text model's tensors; unknown keys are kept
    as they are, so that a strict load reports them."""
    out: dict[str, torch.Tensor] = {}
    projections: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if _IGNORED.match(key):
            continue
        layer = _LAYER.match(key)
        prefix, name = (f"encoder.blocks.{layer[1]}.", layer[2]) if layer else ("", key)
        parts = name.split(".")
        if len(parts) == 4 and parts[0] in _ATTENTIONS and parts[1] == "self" and parts[2] in _QKV:
            target = f"{prefix}{_ATTENTIONS[parts[0]]}"
            projections.setdefault((target, parts[3]), {})[parts[2]] = value
            continue
        out[prefix + _rename(name)] = value
    for (target, kind), parts in projections.items():
        if set(parts) != set(_QKV):
            raise CheckpointError(f"incomplete attention projections for {target}: {sorted(parts)}")
        query, key, value = (parts[p] for p in _QKV)
        if kind == "weight" and key.shape[1] != query.shape[1]:  # a context of another width
            for name, tensor in zip(("q", "k", "v"), (query, key, value), strict=True):
                out[f"{target}.{name}_proj_weight"] = tensor
        else:
            out[f"{target}.in_proj_{kind}"] = torch.cat([query, key, value])
    return out


def bert_to_huggingface(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `bert_from_huggingface` (Hugging Face's tied ``cls.predictions.bias``
    is written too, as `save_pretrained` writes it)."""
    out: dict[str, torch.Tensor] = {}
    reverse_attentions = {ours: hf for hf, ours in _ATTENTIONS.items()}
    for key, value in state_dict.items():
        block = _BLOCK.match(key)
        prefix, name = (f"encoder.layer.{block[1]}.", block[2]) if block else ("", key)
        attention, _, rest = name.partition(".")
        if attention in reverse_attentions and rest.startswith(("in_proj_", "q_proj", "k_proj")):
            hf = f"{prefix}{reverse_attentions[attention]}.self"
            if rest.startswith("in_proj_"):
                kind = rest.removeprefix("in_proj_")
                for part, chunk in zip(_QKV, value.chunk(3), strict=True):
                    out[f"{hf}.{part}.{kind}"] = chunk.contiguous()
            else:
                out[f"{hf}.{'query' if rest[0] == 'q' else 'key'}.weight"] = value
            continue
        if attention in reverse_attentions and rest == "v_proj_weight":
            out[f"{prefix}{reverse_attentions[attention]}.self.value.weight"] = value
            continue
        out[prefix + _rename(name, reverse=True)] = value
    if "lm_head.decoder.bias" in state_dict:
        out["cls.predictions.bias"] = state_dict["lm_head.decoder.bias"]
    return out


def _rename(name: str, reverse: bool = False) -> str:
    for hf_name, our_name in _RENAMES:
        old, new = (our_name, hf_name) if reverse else (hf_name, our_name)
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return name
