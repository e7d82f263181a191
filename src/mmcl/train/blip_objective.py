"""BLIP's training objective (Li et al. 2022, section 3.2) on the one engine: `train.loss: blip`.

Each step is ONE call of the model (`Blip.forward`), so DistributedDataParallel sees every
part used: the ITC features, the ITM pairs with hard negatives sampled inside that call from
the features it has just computed, and the decoder's caption logits. The terms are the pure
functions of `mmcl.train.blip_losses`:

- ITC: InfoNCE at the model's learned temperature (`Blip.temp`), clamped to [0.001, 0.5]
  before every step as BLIP does, features gathered across ranks (`ClipLoss`);
- ITM: 1 positive to 2 hard negatives drawn from the global batch (every rank's features,
  captions and image tokens, gathered as BLIP's pre-training does; the image tokens with
  their gradient, which returns to the rank that owns them), with every pair that shares an
  image, or a caption, excluded (a caption repeated in the batch matches both images: it is
  no negative);
- LM: the decoder reads "[DEC] a picture of <caption> [SEP]" and the prompt is left out of
  the loss, as BLIP's captioner is fine-tuned.

The batches are ``(images, tokens)`` with tokens from the model's WordPiece tokenizer
(``[CLS] caption [SEP] [PAD]...``); padding columns are cut before the model sees them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmcl.train.blip_losses import (
    TEMPERATURE_RANGE,
    contrastive_loss,
    draw_negatives,
    itm_loss,
    lm_loss,
    lm_targets,
    pair_ids,
)
from mmcl.train.distributed import all_gather_with_grad, rank

DEFAULT_PROMPT = "a picture of"
_NEEDED_PARTS = ("text_encoder", "text_decoder", "itc", "itm")


class BlipObjective:
    """ITC + ITM + LM, weighted; returns ``({"itc", "itm", "lm"}, model outputs)``.

    `prompt_ids`: the prompt's word-piece ids; by default the model's tokenizer encodes
    `prompt` when the engine checks the model (`check`).
    """

    def __init__(
        self,
        prompt: str = DEFAULT_PROMPT,
        itc_weight: float = 1.0,
        itm_weight: float = 1.0,
        lm_weight: float = 1.0,
        label_smoothing: float = 0.1,
        prompt_ids: list[int] | None = None,
    ):
        self.prompt = prompt
        self.weights = {"itc": itc_weight, "itm": itm_weight, "lm": lm_weight}
        self.label_smoothing = label_smoothing
        self.prompt_ids = None if prompt_ids is None else list(prompt_ids)

    def check(self, model) -> None:
        config = getattr(model, "config", None)
        parts = getattr(config, "parts", ())
        missing = [part for part in _NEEDED_PARTS if part not in parts]
        if config is None or not hasattr(config, "blip_text") or missing:
            raise ValueError(
                "loss 'blip' needs a BLIP with its text encoder, decoder, ITC and ITM parts "
                f"(e.g. tiny-blip){f'; this model lacks {missing}' if config else ''}"
            )
        if self.prompt_ids is None:
            tokenizer = getattr(model, "tokenizer", None)
            if tokenizer is None:
                raise ValueError(
                    "loss 'blip': the model has no WordPiece tokenizer to encode the caption "
                    "prompt; build it by name (e.g. tiny-blip) or load a folder with its "
                    "vocabulary, or give BlipObjective(prompt_ids=...)"
                )
            self.prompt_ids = tokenizer.encode(self.prompt)

    def __call__(self, model, images: Tensor, texts: Tensor):
        unwrapped = getattr(model, "module", model)  # DistributedDataParallel keeps it there
        if self.prompt_ids is None:
            self.check(unwrapped)
        text_config = unwrapped.config.blip_text
        # Every rank cuts to the global batch's longest caption, so that captions gather.
        all_texts = trim_padding(all_gather_with_grad(texts), text_config.pad_id)
        texts = texts[:, : all_texts.shape[1]]
        caption_texts = with_prompt(texts, self.prompt_ids)
        if caption_texts.shape[1] > text_config.max_positions:
            raise ValueError(
                f"captions of {caption_texts.shape[1]} tokens with the prompt exceed the model's "
                f"{text_config.max_positions} positions; tokenize with a shorter context_length"
            )
        ids = pair_ids(all_gather_with_grad(row_fingerprints(images)[:, None]), all_texts)
        with torch.no_grad():
            unwrapped.temp.clamp_(*TEMPERATURE_RANGE)
        temperature = unwrapped.temp
        drawn = []

        def negatives(image_features, text_features, image_tokens, texts):
            negative_texts, negative_images = draw_global_negatives(
                image_features, text_features, ids, temperature.detach()
            )
            drawn.extend([negative_texts, negative_images])
            return all_texts[negative_texts], all_gather_with_grad(image_tokens)[negative_images]

        outputs = model(images, texts, negatives=negatives, caption_texts=caption_texts)
        outputs["itm_negative_texts"], outputs["itm_negative_images"] = drawn
        batch = len(texts)
        itm_labels = torch.zeros(3 * batch, dtype=torch.long, device=texts.device)
        itm_labels[:batch] = 1
        targets = lm_targets(caption_texts, 1 + len(self.prompt_ids), text_config.pad_id)
        terms = {
            "itc": contrastive_loss(
                outputs["image_features"], outputs["text_features"], temperature
            ),
            "itm": itm_loss(outputs["itm_logits"], itm_labels),
            "lm": lm_loss(outputs["caption_logits"], targets, self.label_smoothing),
        }
        return {name: self.weights[name] * term for name, term in terms.items()}, outputs


@torch.no_grad()
def draw_global_negatives(
    image_features: Tensor,
    text_features: Tensor,
    ids: Tensor,
    temperature: Tensor | float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """For this rank's normalised features ``(batch, dim)``, a negative caption for each image
    and a negative image for each caption, as indices into the global batch (every rank's rows
    in rank order): drawn from the softmax of the similarities to every rank's features, with
    the pairs sharing a group id (`ids`, ``(global batch,)``, from `pair_ids`) excluded.
    Every rank holds the same number of rows (as `all_gather_with_grad` needs)."""
    all_images = all_gather_with_grad(image_features)
    all_texts = all_gather_with_grad(text_features)
    start = rank() * len(image_features)
    local_ids = ids[start : start + len(image_features)]
    image_to_text = image_features @ all_texts.T / temperature  # (batch, global batch)
    text_to_image = text_features @ all_images.T / temperature
    return (
        draw_negatives(image_to_text, local_ids, ids, generator),
        draw_negatives(text_to_image, local_ids, ids, generator),
    )


def row_fingerprints(rows: Tensor) -> Tensor:
    """An int64 per row of `rows`, equal for equal rows: a random linear hash of the rows' bits
    in exact (wrapping, modulo 2^64) integer arithmetic, the same on every device, so rows
    compare across ranks without gathering the pixels; distinct rows collide with a negligible
    chance. (A -0.0 and a 0.0 pixel differ here, where `torch.unique` makes them equal.)"""
    flat = rows.detach().flatten(1).contiguous()
    if flat.is_floating_point():
        flat = flat.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()])
    generator = torch.Generator().manual_seed(0)  # the same coefficients on every rank
    coefficients = torch.randint(-(2**62), 2**62, (flat.shape[1],), generator=generator) * 2 + 1
    return (flat.long() * coefficients.to(flat.device)).sum(dim=1)


def trim_padding(tokens: Tensor, pad_id: int) -> Tensor:
    """`tokens` without the trailing columns that are padding in every row."""
    used = (tokens != pad_id).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1] if len(used) else tokens[:, :1]


def with_prompt(tokens: Tensor, prompt_ids: list[int]) -> Tensor:
    """``[CLS] p1 .. pk caption [SEP] [PAD]..``: the prompt's ids after each row's first token."""
    prompt = torch.tensor(prompt_ids, dtype=tokens.dtype, device=tokens.device)
    return torch.cat([tokens[:, :1], prompt.expand(len(tokens), -1), tokens[:, 1:]], dim=1)
