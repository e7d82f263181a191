"""BLIP (Li et al. 2022): a pre-LN ViT and a multimodal mixture of encoder-decoder built from
`mmcl.nn.bert`: a unimodal text encoder (ITC), the same encoder cross-attending to the image
(ITM: the start token replaced by [ENC]), and a causal decoder starting with [DEC] (captions).

A `Blip` holds the parts its config names (`BlipConfig.parts`), as Hugging Face's
`BlipForConditionalGeneration` (decoder), `BlipForImageTextRetrieval` (encoder, ITC, ITM) and
`BlipForQuestionAnswering` (encoder and decoder) each hold a subset;
`mmcl.io.checkpoints.blip` converts their folders.

>>> import torch
>>> from mmcl.models.blip import Blip
>>> from mmcl.models.blip_config import BlipConfig
>>> config = BlipConfig.from_dict({"blip_vision": {"image_size": 32, "patch_size": 8,
...     "width": 16, "layers": 1, "heads": 2, "mlp_width": 32}, "blip_text": {"vocab_size": 40,
...     "width": 16, "layers": 1, "heads": 2, "mlp_width": 32, "max_positions": 20,
...     "dec_id": 38, "enc_id": 39}, "embed_dim": 8})
>>> model = Blip(config).eval()
>>> images, tokens = torch.randn(2, 3, 32, 32), torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
>>> model.itm_logits(model.encode_image_tokens(images), tokens).shape
torch.Size([2, 2])
>>> model.generate(images, max_new_tokens=4).tokens.shape[0]
2
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.models.blip_config import BlipConfig, BlipTextConfig, BlipVisionConfig
from mmcl.nn import BertEmbeddings, BertEncoder, BertLMHead, KVCache, LayerNorm, Transformer
from mmcl.nn.generation import Captioner, Generated, generate
from mmcl.nn.masks import key_padding_mask

PROMPT_PADDING = "blip prompt padding"  # the generation cache's entry (`_prompt_padding`)
INITIAL_TEMPERATURE = 0.07  # BLIP's `temp`: learned, clamped to [0.001, 0.5] in training


class BlipVisionTower(nn.Module):
    """Hugging Face's `BlipVisionModel`: a conv patch embedding with a bias, a class token,
    no LayerNorm before the blocks, pre-LN blocks, and a final LayerNorm over every token."""

    def __init__(self, config: BlipVisionConfig):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(
                f"image_size {config.image_size} is not a multiple of patch {config.patch_size}"
            )
        width, patch = config.width, config.patch_size
        self.image_size = config.image_size
        grid = config.image_size // patch
        self.stem = None  # optional stride-2 convolutions (`BlipVisionConfig.conv_stem`)
        channels = 3
        if config.conv_stem:
            layers = []
            for out_channels in config.conv_stem:
                layers += [nn.Conv2d(channels, out_channels, 3, stride=2, padding=1), nn.GELU()]
                channels = out_channels
            self.stem = nn.Sequential(*layers)
            patch //= 2 ** len(config.conv_stem)
        self.conv1 = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)
        self.class_embedding = nn.Parameter(0.02 * torch.randn(width))
        self.positional_embedding = nn.Parameter(0.02 * torch.randn(grid * grid + 1, width))
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_width)
        self.ln_post = LayerNorm(width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(batch, 3, H, W)`` -> every token's final state ``(batch, 1 + grid*grid, width)``."""
        x = images.to(self.class_embedding.dtype)
        if self.stem is not None:
            x = self.stem(x)
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        return self.ln_post(self.transformer(x))


class BlipText(nn.Module):
    """BERT-style embeddings and blocks with cross-attention to `context_width` tokens, and an
    LM head when `lm_head` (the decoder)."""

    def __init__(self, config: BlipTextConfig, context_width: int, lm_head: bool = False):
        super().__init__()
        self.embeddings = BertEmbeddings(config.vocab_size, config.width, config.max_positions)
        self.encoder = BertEncoder(
            config.width, config.layers, config.heads, config.mlp_width, context_width
        )
        self.lm_head = BertLMHead(config.width, config.vocab_size) if lm_head else None

    def forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: KVCache | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        x = self.embeddings(tokens, offset)
        return self.encoder(x, mask, causal, context, context_mask, cache)


class Blip(nn.Module, Captioner):
    """BLIP's parts over one image tower; see the module docstring. Token ids come from
    `mmcl.io.wordpiece` ([CLS] ... [SEP], padded with `pad_id`). Captions: `generate`
    (`mmcl.nn.generation.Captioner`)."""

    def __init__(self, config: BlipConfig, output_dict: bool = False):
        super().__init__()
        self.config = config
        self.output_dict = output_dict
        # The WordPiece tokenizer of the model's vocabulary (`mmcl.io.wordpiece`), when known:
        # `create_model` sets a shipped config's, and loading sets a folder's own.
        self.tokenizer = None
        vision, text = config.blip_vision, config.blip_text
        self.visual = BlipVisionTower(vision)
        self.text_encoder = self.text_decoder = None
        self.vision_proj = self.text_proj = self.itm_head = self.temp = None
        if "text_encoder" in config.parts:
            self.text_encoder = BlipText(text, vision.width)
        if "text_decoder" in config.parts:
            self.text_decoder = BlipText(text, vision.width, lm_head=True)
        if "itc" in config.parts:
            self.vision_proj = nn.Linear(vision.width, config.embed_dim)
            self.text_proj = nn.Linear(text.width, config.embed_dim)
            # The ITC temperature, trained and clamped by `mmcl.train.blip_objective`.
            self.temp = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE))
        if "itm" in config.parts:
            self.itm_head = nn.Linear(text.width, 2)
        # (encoder name, decoder name) of every tied state-dict entry, checked on each load.
        self.tied_names: list[tuple[str, str]] = []
        if config.share_text_weights and None not in (self.text_encoder, self.text_decoder):
            share_all_but_self_attention(self.text_encoder, self.text_decoder)
            self.tied_names = _tied_names(self)
            self.register_load_state_dict_pre_hook(_refuse_untied_weights)

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    @property
    def context_length(self) -> int:
        return self.config.blip_text.max_positions

    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The image tower's tokens ``(batch, 1 + grid*grid, width)``: every head's input."""
        return self.visual(images)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """ITC image features ``(batch, embed_dim)``, from the class token."""
        features = self._part("vision_proj")(self.visual(images)[:, 0])
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """ITC text features ``(batch, embed_dim)`` from the unimodal encoder's first token."""
        states = self._part("text_encoder")(tokens, self._padding(tokens))
        features = self._part("text_proj")(states[:, 0])
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self,
        images: torch.Tensor,
        texts: torch.Tensor,
        negatives: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
        caption_texts: torch.Tensor | None = None,
        answers: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Normalised ITC features of both, and ITM logits of each pair (row i with row i).

        For training, everything in one call (so DistributedDataParallel sees every part
        used): with `negatives`, a function of the normalised image and text features
        (detached), the image tokens and the texts that returns a negative text ``(batch,
        length)`` for each image and a negative image's tokens for each text (e.g. drawn from
        every rank's), "itm_logits" are ``(3 * batch, 2)``: the pairs, each image with its
        negative text, each text with its negative image. With `caption_texts`,
        "caption_logits" are the decoder's over them (`caption_logits`).

        VQA training, also one call: with `answers`, `texts` are the questions and the only
        output is "answer_logits" (`answer_logits`); a VQA model holds no ITC or ITM parts."""
        image_tokens = self.visual(images)
        if answers is not None:
            return {"answer_logits": self.answer_logits(image_tokens, texts, answers)}
        image_features = F.normalize(self._part("vision_proj")(image_tokens[:, 0]), dim=-1)
        text_features = self.encode_text(texts, normalize=True)
        itm_images, itm_texts = image_tokens, texts
        if negatives is not None:
            negative_texts, negative_images = negatives(
                image_features.detach(), text_features.detach(), image_tokens, texts
            )
            itm_images = torch.cat([image_tokens, image_tokens, negative_images])
            itm_texts = torch.cat([texts, negative_texts, texts])
        outputs = {
            "image_features": image_features,
            "text_features": text_features,
            "itm_logits": self.itm_logits(itm_images, itm_texts),
        }
        if caption_texts is not None:
            outputs["caption_logits"] = self.caption_logits(image_tokens, caption_texts)
        return outputs

    def itm_logits(self, image_tokens: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Match / no-match logits ``(batch, 2)`` (column 1: match) of each text with its image's
        tokens; the text's first token is replaced by [ENC], as BLIP trains it."""
        tokens = _with_start(tokens, self.config.blip_text.enc_id)
        states = self._part("text_encoder")(tokens, self._padding(tokens), image_tokens)
        return self._part("itm_head")(states[:, 0])

    def caption_logits(self, image_tokens: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(batch, length, vocab)`` of the decoder over the image tokens;
        the first token is replaced by [DEC]. Position i predicts token i + 1."""
        tokens = _with_start(tokens, self.config.blip_text.dec_id)
        decoder = self._part("text_decoder")
        states = decoder(tokens, self._padding(tokens), image_tokens, causal=True)
        return decoder.lm_head(states)

    def answer_logits(
        self, image_tokens: torch.Tensor, question: torch.Tensor, answer: torch.Tensor
    ) -> torch.Tensor:
        """VQA: the decoder's next-token logits ``(batch, length, vocab)`` for `answer` (first
        token replaced by [DEC]) over the image-grounded encoding of `question` (as given:
        Hugging Face's `BlipForQuestionAnswering` does not replace its start token). The
        question's padding is masked from the decoder, as BLIP does; transformers 5.24 lets
        its decoder attend to it, so padded batches differ from its outputs there."""
        question_states, question_mask = self._question_states(image_tokens, question)
        answer = _with_start(answer, self.config.blip_text.dec_id)
        decoder = self._part("text_decoder")
        states = decoder(answer, self._padding(answer), question_states, question_mask, causal=True)
        return decoder.lm_head(states)

    @torch.no_grad()
    def answer(
        self,
        images: torch.Tensor,
        question: torch.Tensor,
        max_new_tokens: int = 10,
        beams: int = 1,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Generated:
        """VQA answers of the decoder, from [DEC] up to [SEP], over the image-grounded encoding
        of `question` ``(batch, length)`` (as given, as in `answer_logits`: BLIP's fine-tuning
        starts it with [ENC]); greedy by default, beam search with ``beams > 1``, nucleus
        sampling with `top_p`. The question is encoded once; `tokens` start with [DEC]."""
        text = self.config.blip_text
        states, mask = self._question_states(self.visual(images), question)
        if mask is None:  # one tuple of tensors with the rows first, for the loop's `select`
            mask = torch.ones(len(question), 1, 1, question.shape[1], dtype=torch.bool)
        cache = KVCache()
        cache.put(self._part("text_encoder"), (states, mask.to(states.device)))
        start = torch.full((len(question), 1), text.dec_id, device=question.device)
        return generate(
            self.answer_step,
            start,
            cache,
            max_new_tokens,
            text.sep_id,
            text.pad_id,
            beams,
            top_p=top_p,
            generator=generator,
        )

    def answer_step(self, new_tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """`answer`'s step of the generation loop: next-token logits ``(rows, vocab)``."""
        offset = cache.advance(new_tokens)
        states, question_mask = cache.constant(self._part("text_encoder"), _no_question)
        decoder = self._part("text_decoder")
        mask = self._prompt_padding(cache)  # as `caption_step`
        out = decoder(
            new_tokens, mask, states, question_mask, causal=True, cache=cache, offset=offset
        )
        return decoder.lm_head(out[:, -1])

    def _question_states(
        self, image_tokens: torch.Tensor, question: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image-grounded encoder's states of `question` and its padding mask (or None)."""
        question_mask = self._padding(question)
        return self._part("text_encoder")(question, question_mask, image_tokens), question_mask

    def caption_prompt(
        self, images: torch.Tensor, prompt: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int, int]:
        """`generate`'s start, stopping at [SEP]: `prompt` ``(batch, length)`` (e.g.
        "[DEC] a picture of", no padding), whose first token becomes [DEC]; by default [DEC]
        alone."""
        text = self.config.blip_text
        if prompt is None:
            prompt = torch.full((len(images), 1), text.dec_id, device=images.device)
        return _with_start(prompt, text.dec_id), text.sep_id, text.pad_id

    def caption_context(self, images: torch.Tensor) -> torch.Tensor:
        """What the decoder cross-attends to while captioning: the image tokens."""
        return self.visual(images)

    def caption_step(self, new_tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The generation loop's step: next-token logits ``(rows, vocab)`` after `new_tokens`."""
        offset = cache.advance(new_tokens)
        mask = self._prompt_padding(cache)
        image_tokens = self.cached_context(cache)
        decoder = self._part("text_decoder")
        states = decoder(new_tokens, mask, image_tokens, causal=True, cache=cache, offset=offset)
        return decoder.lm_head(states[:, -1])

    def _prompt_padding(self, cache: KVCache) -> torch.Tensor | None:
        """A decoding step's key mask: the padding of the prompt (the first tokens the cache
        saw), or None. A generated token that happens to be [PAD] is attended to, as
        transformers' `generate` does (its attention mask grows by a one a token)."""
        if not cache.has(PROMPT_PADDING):
            cache.track(PROMPT_PADDING, cache.tokens == self.config.blip_text.pad_id)
        (padding,) = cache.tracked(PROMPT_PADDING)
        if not padding.any():
            return None
        return key_padding_mask(F.pad(padding, (0, cache.seen - padding.shape[1])))

    def _padding(self, tokens: torch.Tensor) -> torch.Tensor | None:
        pad_id = self.config.blip_text.pad_id
        return key_padding_mask(tokens, pad_id) if (tokens == pad_id).any() else None

    def _part(self, name: str) -> nn.Module:
        part = getattr(self, name)
        if part is None:
            raise ValueError(
                f"this BLIP has no {name} (its parts: {', '.join(self.config.parts)}); load a "
                f"checkpoint that has it"
            )
        return part


def share_all_but_self_attention(encoder: BlipText, decoder: BlipText) -> None:
    """Ties `decoder` to `encoder` as BLIP's pre-training does: the embeddings, and in every
    block the cross-attention, the feed-forward layers and their LayerNorms become the same
    modules (the same tensors); each keeps its own self-attention and the LayerNorm after it
    (BERT's ``attention`` module, which BLIP's ``tie_encoder_decoder_weights`` skips). The
    decoder's LM head stays its own."""
    decoder.embeddings = encoder.embeddings
    for ours, theirs in zip(encoder.encoder.blocks, decoder.encoder.blocks, strict=True):
        theirs.cross_attn, theirs.cross_norm = ours.cross_attn, ours.cross_norm
        theirs.mlp, theirs.mlp_norm = ours.mlp, ours.mlp_norm


def _tied_names(model: nn.Module) -> list[tuple[str, str]]:
    first: dict[int, str] = {}
    pairs = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in first:
            pairs.append((first[id(tensor)], name))
        else:
            first[id(tensor)] = name
    return pairs


def _refuse_untied_weights(module: Blip, state_dict, prefix: str, *_) -> None:
    """A load into a tied model whose checkpoint holds two different tensors where the model
    has one would keep one of them silently: refuse it."""
    for encoder_name, decoder_name in module.tied_names:
        ours, theirs = state_dict.get(prefix + encoder_name), state_dict.get(prefix + decoder_name)
        if ours is None or theirs is None or ours is theirs:
            continue
        if ours.shape != theirs.shape or not torch.equal(ours, theirs.to(ours.device)):
            raise ValueError(
                f"this checkpoint holds separate weights at {encoder_name} and {decoder_name}, "
                f"which this BLIP shares (share_text_weights); load it into a model whose config "
                f"says share_text_weights: false"
            )


def _no_question():
    raise ValueError("answer_step needs the cache that Blip.answer fills with the question")


def _with_start(tokens: torch.Tensor, start_id: int) -> torch.Tensor:
    tokens = tokens.clone()
    tokens[:, 0] = start_id
    return tokens
