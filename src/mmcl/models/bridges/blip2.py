"""BLIP-2 stage 2 (Li et al. 2023, section 3.3): a frozen image tower, the Q-Former over its
features, and a linear projection of the query outputs into a frozen Hugging Face causal LM
(`transformers.AutoModelForCausalLM`, held as it is), where they are soft prompts before the
text.

InstructBLIP (Dai et al. 2023; `instruct=True`) feeds the instruction to the Q-Former too,
as text beside the queries (each sees the other, as in BLIP-2's ITM), and still only the
query outputs go to the LM.

The prompts go where the text has the image placeholder token (`image_token_id`, one per
query, as Hugging Face's `Blip2Processor` writes them), or, when the text has none, before
it. Only the Q-Former and the projection train (`trainable_parameters`); the tower and the LM
are frozen. `mmcl.io.checkpoints.blip2` reads and writes `Blip2ForConditionalGeneration`
folders. MiniGPT-4 (`mmcl.models.bridges.minigpt4`) is this assembly with another training.

A BLIP-2 with an `image_token_id` chats as LLaVA does (`image_token_id`, `tokens_per_image`,
`encode_image`, `embed`: `mmcl ask`, the scene VQA suite, the blip2-scenes recipes).

>>> import torch
>>> from mmcl.models.bridges.blip2 import Blip2, Blip2Config
>>> config = Blip2Config.from_dict({
...     "blip_vision": {"image_size": 32, "patch_size": 16, "width": 16, "layers": 1,
...                     "heads": 2, "mlp_width": 32},
...     "qformer": {"width": 16, "layers": 1, "heads": 2, "mlp_width": 32, "queries": 3,
...                 "vocab_size": None},
...     "text_config": {"model_type": "opt", "vocab_size": 40, "hidden_size": 16, "ffn_dim": 32,
...                     "num_hidden_layers": 1, "num_attention_heads": 2,
...                     "word_embed_proj_dim": 16, "eos_token_id": 2, "pad_token_id": 1}})
>>> model = Blip2(config).eval()
>>> model(torch.randn(2, 3, 32, 32), torch.tensor([[2, 5, 6], [2, 7, 8]])).shape  # 3 + 3 tokens
torch.Size([2, 6, 40])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmcl.models.blip import BlipVisionTower
from mmcl.models.blip_config import BlipVisionConfig
from mmcl.models.bridges.causal_lm import lm_generate, splice_image_tokens
from mmcl.models.config import parse_fields
from mmcl.models.qformer import QFormerConfig, build_qformer
from mmcl.nn.generation import Generated
from mmcl.nn.qformer import itm_mask


@dataclass
class Blip2Config:
    """`blip_vision` (the tower), `vision_eps` (its LayerNorms' and the Q-Former's LayerNorm
    over its features), `qformer`, `text_config` (a transformers config dict of any causal LM,
    with its `model_type`), `image_token_id` (None: the prompts go before the text) and
    `instruct` (InstructBLIP: the Q-Former reads the instruction; it needs its text part)."""

    blip_vision: BlipVisionConfig = field(default_factory=BlipVisionConfig)
    vision_eps: float = 1e-6
    qformer: QFormerConfig = field(default_factory=lambda: QFormerConfig(vocab_size=None))
    text_config: dict[str, Any] = field(default_factory=lambda: {"model_type": "opt"})
    image_token_id: int | None = None
    instruct: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Blip2Config:
        data = dict(data)
        vision = parse_fields(
            BlipVisionConfig, data.pop("blip_vision", {}), f"{source}: blip_vision"
        )
        qformer_fields = data.pop("qformer", {})
        config = parse_fields(cls, data, source)
        config.blip_vision = vision
        config.qformer = parse_fields(
            QFormerConfig, {"vision_width": vision.width, **qformer_fields}, f"{source}: qformer"
        )
        if config.qformer.vision_width != vision.width:
            raise ValueError(
                f"{source}: qformer.vision_width {config.qformer.vision_width} differs from "
                f"blip_vision.width {vision.width}"
            )
        config.qformer.vision_eps = config.vision_eps
        if config.instruct and config.qformer.vocab_size is None:
            raise ValueError(
                f"{source}: instruct needs the Q-Former's text part: qformer.vocab_size"
            )
        if "model_type" not in config.text_config:
            raise ValueError(f"{source}: text_config needs a model_type (e.g. 'opt', 'llama')")
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_language_model(text_config: dict[str, Any]) -> nn.Module:
    """`AutoModelForCausalLM.from_config` for a config dict (random weights)."""
    import transformers  # heavy: only when a bridge is built

    config = dict(text_config)
    kind = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    return transformers.AutoModelForCausalLM.from_config(kind)


class Blip2(nn.Module):
    """See the module docstring."""

    def __init__(self, config: Blip2Config, output_dict: bool = False):
        super().__init__()
        self.config = config
        self.visual = BlipVisionTower(config.blip_vision)
        # BLIP-2's towers end without a LayerNorm: the Q-Former's `ln_vision` is it.
        self.visual.ln_post = nn.Identity()
        for module in self.visual.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = config.vision_eps
        self.qformer = build_qformer(config.qformer)
        self.language_model = build_language_model(config.text_config)
        lm_width = self.language_model.get_input_embeddings().embedding_dim
        self.language_projection = nn.Linear(config.qformer.width, lm_width)
        self.visual.requires_grad_(False)
        self.language_model.requires_grad_(False)
        # Loading with `assign=True` (as `mmcl.load` does) puts the LM head and the input
        # embeddings in as two tensors: tie them again where the LM's config ties them.
        self.register_load_state_dict_post_hook(_tie_language_model)

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    @property
    def image_token_id(self) -> int:
        """The LM's image placeholder id (chat and the bridges recipes need one)."""
        if self.config.image_token_id is None:
            raise ValueError(
                "this model's config has no image_token_id: its prompts go before the text, "
                "and a chat template needs a placeholder for them; set image_token_id"
            )
        return self.config.image_token_id

    @property
    def tokens_per_image(self) -> int:
        return self.qformer.num_queries

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The chat interface's name for `image_prompts` (BLIP-2: no instruction)."""
        return self.image_prompts(pixel_values)

    def embed(
        self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The LM's input embeddings, `image_tokens` (`encode_image`'s, or the last of them)
        written over the placeholders (`mmcl.models.bridges.causal_lm.splice_image_tokens`)."""
        return splice_image_tokens(
            self.language_model, input_ids, self.image_token_id, image_tokens, self.tokens_per_image
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The Q-Former's and the projection's: what the optimizer gets (the tower and the LM
        are frozen, whatever their `requires_grad`)."""
        return [*self.qformer.parameters(), *self.language_projection.parameters()]

    def load_stage1(self, qformer: nn.Module) -> None:
        """Start stage 2 from a stage-1 Q-Former (`QFormerPretrainer.qformer`): its weights,
        less the text part (embeddings, text FFN) when this model's Q-Former has none."""
        ours = self.qformer.state_dict()
        given = {k: v for k, v in qformer.state_dict().items() if k in ours}
        missing = sorted(set(ours) - set(given))
        if missing:
            raise ValueError(
                f"load_stage1: the stage-1 Q-Former lacks {missing[:3]} (built with another "
                f"shape?); give the Q-Former of a QFormerPretrainer of this model's qformer config"
            )
        self.qformer.load_state_dict(given)

    def image_prompts(
        self,
        images: torch.Tensor,
        instruction: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The soft prompts ``(batch, queries, lm_width)``: projected query outputs.
        InstructBLIP: `instruction` ``(batch, length)`` (the Q-Former's own token ids) and its
        `instruction_mask` (1 at real tokens) go through the Q-Former beside the queries."""
        with torch.no_grad():
            features = self.visual(images)
        if self.config.instruct != (instruction is not None):
            raise ValueError(
                "instruction: an InstructBLIP needs the instruction's Q-Former token ids, a "
                "BLIP-2 takes none"
                if self.config.instruct
                else "instruction: this BLIP-2's Q-Former reads no instruction; give none"
            )
        mask = None
        if instruction is not None:
            if instruction_mask is None:
                instruction_mask = torch.ones_like(instruction)
            mask = itm_mask(self.qformer.num_queries, instruction_mask == 0)
        queries, _ = self.qformer(features, instruction, mask)
        return self.language_projection(queries)

    def lm_inputs(
        self,
        prompts: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The LM's input embeddings and attention mask: the text's, with the `prompts`
        (`image_prompts`) written at its image placeholders or put before it."""
        embeddings = self.language_model.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prompts = prompts.to(embeddings.dtype)
        placeholders = self._placeholders(input_ids, prompts.shape[1])
        if placeholders is not None:
            flat = prompts.reshape(-1, prompts.shape[-1])
            return embeddings.masked_scatter(placeholders[..., None], flat), attention_mask
        ones = attention_mask.new_ones(prompts.shape[:2])
        return torch.cat([prompts, embeddings], 1), torch.cat([ones, attention_mask], 1)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        instruction: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The LM's logits ``(batch, length, vocab)`` over the prompts and the text (its
        length counts the prompts when the text has no placeholders for them).
        `instruction`, `instruction_mask`: InstructBLIP's (`image_prompts`)."""
        prompts = self.image_prompts(images, instruction, instruction_mask)
        embeddings, mask = self.lm_inputs(prompts, input_ids, attention_mask)
        return self.language_model(inputs_embeds=embeddings, attention_mask=mask).logits

    @torch.no_grad()
    def generate(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 30,
        end_token: int | None = None,
        instruction: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        **options,
    ) -> Generated:
        """Text after the prompt (`mmcl.models.bridges.causal_lm.lm_generate`: greedy by
        default, ``beams`` (and ``length_penalty``) for transformers' beam search, `top_p`
        samples), ending at `end_token` (default: the LM's `eos_token_id`). Without `input_ids`, the prompt is the LM's start token
        (after the placeholders, if the config has `image_token_id`), as Hugging Face's
        `Blip2ForConditionalGeneration.generate` starts. `instruction`, `instruction_mask`:
        InstructBLIP's (`image_prompts`)."""
        prompts = self.image_prompts(images, instruction, instruction_mask)
        if input_ids is None:
            start = [self.language_model.config.bos_token_id]
            if self.config.image_token_id is not None:
                start = [self.config.image_token_id] * prompts.shape[1] + start
            input_ids = torch.tensor([start] * len(images), device=images.device)
        _, mask = self.lm_inputs(prompts, input_ids, attention_mask)
        return lm_generate(
            self.language_model,
            lambda tokens: self.lm_inputs(prompts, tokens, attention_mask)[0],
            input_ids,
            mask,
            max_new_tokens,
            end_token=end_token,
            **options,
        )

    def _placeholders(self, input_ids: torch.Tensor, queries: int) -> torch.Tensor | None:
        if self.config.image_token_id is None:
            return None
        placeholders = input_ids == self.config.image_token_id
        counts = placeholders.sum(dim=1)
        if not placeholders.any():
            return None
        if (counts != queries).any():
            raise ValueError(
                f"input_ids: each row needs {queries} image tokens (id "
                f"{self.config.image_token_id}), one per query, or none; found "
                f"{counts.tolist()}"
            )
        return placeholders


def query_prompt_logits(model: Blip2, input_ids, images, attention_mask) -> torch.Tensor:
    """The LM's logits for the bridges' LM objective (`mmcl.train.lm_objective`), for a model
    whose forward takes the images first (BLIP-2, MiniGPT-4)."""
    return model(images, input_ids, attention_mask)


def _tie_language_model(model: Blip2, incompatible_keys) -> None:
    model.language_model.tie_weights()
