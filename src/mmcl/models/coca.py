"""CoCa (Yu et al. 2022): a contrastive dual encoder whose text tower continues, past a
unimodal half, into a multimodal half that cross-attends to the image and writes captions.

The layout and the state-dict keys are open_clip's `CoCa` (`visual.*`, `text.*`,
`text_decoder.*`, `logit_scale`), so open_clip's checkpoints load and export unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mmcl.models.clip import CLIP, LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, _init_transformer
from mmcl.models.coca_towers import CoCaTextTransformer, CoCaVisionTransformer
from mmcl.models.config import CoCaConfig
from mmcl.nn import CausalDecoder, KVCache
from mmcl.nn.generation import Captioner

# The CLIP tokenizer's start and end tokens, open_clip's defaults for CoCa's generate.
SOT_TOKEN, EOT_TOKEN = 49406, 49407


class CoCa(nn.Module, Captioner):
    """Contrastive captioner. Features as CLIP gives them (`encode_image`, `encode_text`,
    ``forward``), plus `caption_logits` and `generate` (`mmcl.nn.generation.Captioner`: greedy,
    `beams`, nucleus with `top_p`; CoCa's own options in `caption_prompt`).

    >>> import mmcl, torch
    >>> model = mmcl.create_model("tiny-coca")  # or "coca_ViT-B-32", ...
    >>> images, texts = torch.randn(2, 3, 32, 32), mmcl.tokenize(["a cat", "a dog"])
    >>> out = model(images, texts, output_dict=True)
    >>> out["image_features"].shape, out["caption_logits"].shape
    (torch.Size([2, 128]), torch.Size([2, 4, 49408]))
    >>> model.generate(images, max_new_tokens=5).tokens.shape[0]
    2
    """

    def __init__(self, config: CoCaConfig, output_dict: bool = False):
        super().__init__()
        self.config = config
        self.output_dict = output_dict
        multimodal = config.multimodal_cfg
        self.visual = CoCaVisionTransformer(config.vision_cfg, config.embed_dim, config.quick_gelu)
        self.text = CoCaTextTransformer(config.text_cfg, config.embed_dim, config.quick_gelu)
        self.text_decoder = CausalDecoder(
            multimodal.width,
            multimodal.layers,
            multimodal.heads,
            multimodal.mlp_width,
            context_width=multimodal.width,
            output_dim=multimodal.vocab_size,
            quick_gelu=config.quick_gelu,
        )
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.logit_bias = None
        if config.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        self.pad_id = config.text_cfg.pad_id
        self.init_parameters()

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    @property
    def context_length(self) -> int:
        return self.text.context_length

    def init_parameters(self) -> None:
        """open_clip's initialisation (CLIP's, for both text stacks), for training from
        scratch."""
        text = self.text
        nn.init.normal_(text.token_embedding.weight, std=0.02)
        nn.init.normal_(text.positional_embedding, std=0.01)
        nn.init.normal_(text.cls_emb, std=0.01)
        _init_transformer(text.transformer)
        nn.init.normal_(text.text_projection, std=text.transformer.width**-0.5)
        decoder = self.text_decoder
        _init_transformer(decoder)
        for block in decoder.cross_attn:
            _init_cross_block(block, decoder.width, decoder.layers)
        nn.init.normal_(decoder.text_projection, std=decoder.width**-0.5)
        with torch.no_grad():
            scale = self.config.init_logit_scale
            self.logit_scale.fill_(LOGIT_SCALE_INIT if scale is None else float(scale))
            if self.logit_bias is not None:
                self.logit_bias.fill_(float(self.config.init_logit_bias))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.transformer.grad_checkpointing = enable
        self.text.transformer.grad_checkpointing = enable
        self.text_decoder.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features.float(), dim=-1).to(features.dtype) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(tokens)
        return F.normalize(features.float(), dim=-1).to(features.dtype) if normalize else features

    def caption_logits(self, image_tokens: torch.Tensor, token_states: torch.Tensor):
        """Next-token logits ``(batch, length, vocab)`` at every text position, from the image
        tower's captioning tokens and the unimodal text tower's token states."""
        return self.text_decoder(token_states, image_tokens)

    # Both towers answer `forward_intermediates` as CLIP's do, so CLIP's assembly applies.
    forward_intermediates = CLIP.forward_intermediates

    def forward(
        self,
        images: torch.Tensor | None = None,
        texts: torch.Tensor | None = None,
        output_dict: bool | None = None,
    ):
        """Normalised image and text features and the clamped logit scale, as CLIP's forward
        returns them; with `output_dict` and both inputs, also ``caption_logits``
        ``(batch, length, vocab)``: position i predicts token i + 1 (the loss shifts), up to
        the longest text's last token (the columns after it are padding in every row)."""
        image_features = image_tokens = text_features = token_states = None
        if images is not None:
            image_features, image_tokens = self.visual.forward_tokens(images)
            image_features = F.normalize(image_features, dim=-1)
        if texts is not None:
            text_features, token_states = self.text.forward_tokens(texts)
            text_features = F.normalize(text_features, dim=-1)
        logit_scale = self.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)
        if not (output_dict if output_dict is not None else self.output_dict):
            if self.logit_bias is not None:
                return image_features, text_features, logit_scale, self.logit_bias
            return image_features, text_features, logit_scale
        outputs = {
            "image_features": image_features,
            "text_features": text_features,
            "logit_scale": logit_scale,
        }
        if self.logit_bias is not None:
            outputs["logit_bias"] = self.logit_bias
        if images is not None and texts is not None:
            # Causal: the positions after the last real token change nothing before them and
            # are padding in every row, so the decoder stops there (the vocabulary projection
            # of every padded position would cost the most memory of the step).
            real = (texts != self.pad_id).long() * torch.arange(
                1, texts.shape[1] + 1, device=texts.device
            )
            longest = int(real.max()) if texts.numel() else 0
            token_states = token_states[:, : max(longest, 1)]
            outputs["caption_logits"] = self.caption_logits(image_tokens, token_states)
        return outputs

    def caption_prompt(
        self,
        images: torch.Tensor,
        start_token: int = SOT_TOKEN,
        end_token: int | Sequence[int] = EOT_TOKEN,
        pad_token: int | None = None,
    ) -> tuple[torch.Tensor, int | Sequence[int], int]:
        """`generate`'s start: every caption begins with `start_token` and stops at
        `end_token`, padded with `pad_token` (default: the text config's `pad_id`).

        open_clip's `generate` stops a caption at `pad_id` (0, the token "!") as well as at
        the end token; pass ``end_token=(EOT_TOKEN, 0)`` to do the same.
        """
        prompt = torch.full((len(images), 1), start_token, device=images.device)
        return prompt, end_token, self.pad_id if pad_token is None else pad_token

    def caption_context(self, images: torch.Tensor) -> torch.Tensor:
        """What the multimodal decoder cross-attends to: the images' captioning tokens."""
        return self.visual.forward_tokens(images)[1]

    def caption_step(self, new_tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The generation loop's step (`mmcl.nn.generation.Step`): next-token logits
        ``(rows, vocab)`` after `new_tokens`, on a cache from `start_captions`."""
        cache.advance(new_tokens)
        token_states = self.text.step(new_tokens, cache)
        image_tokens = self.cached_context(cache)
        return self.text_decoder(token_states, image_tokens, cache=cache)[:, -1]


def _init_cross_block(block: nn.Module, width: int, layers: int) -> None:
    proj_std = width**-0.5 * (2 * layers) ** -0.5
    nn.init.normal_(block.attn.in_proj_weight, std=width**-0.5)
    nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
    nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
    nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
