"""Captions of image batches as text: a captioning model (BLIP with a decoder, CoCa), its
tokenizer and the decoding settings, shared by `caption_image_folder` and `capfilt`.

>>> import mmcl, torch
>>> from mmcl.eval.model_text import model_text
>>> model = mmcl.create_model("tiny-coca").eval()
>>> captioner = Captioner(model, model_text(model), CaptionSettings(max_length=5))
>>> len(captioner.caption(torch.randn(2, 3, 32, 32)))
2
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from mmcl.eval.model_text import ModelText, has_caption_decoder
from mmcl.models.blip import Blip

__all__ = ["CaptionSettings", "Captioner", "require_caption_decoder"]


@dataclass(frozen=True)
class CaptionSettings:
    """Greedy by default; beam search with ``beams > 1``; nucleus sampling with `top_p`
    (seeded by `seed`). `max_length`: the most tokens a caption gets (its end token
    included). `prompt` (BLIP only, e.g. "a picture of") starts every caption and is not
    repeated in it, as BLIP writes its captions."""

    max_length: int = 30
    beams: int = 1
    length_penalty: float = 1.0
    top_p: float | None = None
    seed: int = 0
    prompt: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Captioner:
    """`caption(images)` -> one text per image; see the module docstring. `name` is how errors
    call the model (its name or checkpoint)."""

    def __init__(
        self, model, text: ModelText, settings: CaptionSettings, name: str | None = None
    ) -> None:
        name = name or type(model).__name__
        require_caption_decoder(model, name)
        if settings.max_length < 1:
            raise ValueError(f"--max-length must be at least 1, got {settings.max_length}")
        if settings.beams < 1:
            raise ValueError(f"--beams must be at least 1, got {settings.beams}")
        if settings.top_p is not None:
            if settings.beams > 1:
                raise ValueError("--top-p samples and --beams searches: choose one")
            if not 0.0 < settings.top_p <= 1.0:
                raise ValueError(f"--top-p must be in (0, 1], got {settings.top_p}")
        self.model, self.text, self.settings = model, text, settings
        self.prompt = None
        if isinstance(model, Blip):
            # BLIP's prompt is "[DEC] a picture of" without its [SEP] (as BLIP and transformers).
            self.prompt = text.tokenizer([settings.prompt], first_token="[DEC]").input_ids[:, :-1]
        elif settings.prompt:
            raise ValueError(f"--prompt is for BLIP; {name} (CoCa) starts from its start token")
        prompt_length = 1 if self.prompt is None else self.prompt.shape[1]
        if prompt_length + settings.max_length > model.context_length:
            raise ValueError(
                f"--max-length {settings.max_length} and the prompt's {prompt_length} token(s) "
                f"exceed {name}'s {model.context_length} text positions; lower --max-length"
            )

    def generator(self, offset: int, device: str | torch.device) -> torch.Generator | None:
        """The sampling generator for the captions that start at image `offset` (None unless
        sampling): each part of a job draws from its own seed, so a resumed job samples the
        captions an uninterrupted one would."""
        if self.settings.top_p is None:
            return None
        return torch.Generator(device=torch.device(device)).manual_seed(
            self.settings.seed * 1_000_003 + offset
        )

    @torch.no_grad()
    def caption(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[str]:
        settings = self.settings
        options = dict(
            max_new_tokens=settings.max_length,
            beams=settings.beams,
            length_penalty=settings.length_penalty,
            top_p=settings.top_p,
            generator=generator,
        )
        if self.prompt is not None:
            prompt = self.prompt.to(images.device).expand(len(images), -1)
            generated = self.model.generate(images, prompt=prompt, **options)
            start = prompt.shape[1]
        else:
            generated = self.model.generate(images, **options)
            start = 1
        return [self.text.decode(row) for row in generated.tokens[:, start:].cpu()]


def require_caption_decoder(model, name: str) -> None:
    """Refuse, naming the model (`name`), a model that cannot write captions."""
    if has_caption_decoder(model):
        return
    kind = type(model).__name__
    detail = f"a BLIP of parts {', '.join(model.config.parts)}" if isinstance(model, Blip) else kind
    raise ValueError(
        f"{name} has no caption decoder ({detail}); captions need a BLIP captioner (e.g. a "
        f"BlipForConditionalGeneration folder) or a CoCa model"
    )
