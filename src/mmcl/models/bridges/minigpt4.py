"""MiniGPT-4 (Zhu et al. 2023): BLIP-2's frozen image tower and Q-Former, then ONE linear
layer into a causal language model (Vicuna there; any `transformers.AutoModelForCausalLM`
here), whose input gets the projected query outputs as soft-prompt tokens.

That is BLIP-2's stage-2 assembly (`mmcl.models.bridges.blip2.Blip2`: tower, Q-Former with its
learned queries, `language_projection`, LM), so MiniGPT-4 is a `Blip2` with its own training
and its own file: only the projection trains (`trainable_parameters`; the paper's stage 1 on
captions, stage 2 on conversations), and there is no Hugging Face class for it.

Folder layout (mmcl's own; `save_minigpt4_folder` writes it, `mmcl.load(FOLDER)` reads it)::

    FOLDER/model.safetensors     every weight, in this module's names (visual.*, qformer.*,
                                 language_projection.*, language_model.*), with the config
                                 (architecture "minigpt4") in the file's metadata
    FOLDER/tokenizer.json, tokenizer_config.json, ...   the LM's tokenizer (save_pretrained)

A folder without one of the four parts is refused, naming the part
(`mmcl.io.checkpoints.minigpt4`). Since the computation is BLIP-2's, `mmcl convert FOLDER OUT
--to hf` writes a `Blip2ForConditionalGeneration` folder that gives the same logits.

The image prompts go at the image placeholder (`image_token_id`, one per query), as the chat
template lays them out; generation is greedy through the shared LM loop (`Blip2.generate`).

>>> import torch
>>> from mmcl.models.bridges.minigpt4 import MiniGPT4, MiniGPT4Config
>>> lm = {"model_type": "llama", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 32,
...       "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}
>>> model = MiniGPT4(MiniGPT4Config.from_dict({
...     "blip_vision": {"image_size": 32, "patch_size": 16, "width": 16, "layers": 1,
...                     "heads": 2, "mlp_width": 32},
...     "qformer": {"width": 16, "layers": 1, "heads": 2, "mlp_width": 32, "queries": 3,
...                 "vocab_size": None},
...     "text_config": lm, "image_token_id": 39})).eval()
>>> ids = torch.tensor([[1, 39, 39, 39, 7, 8]])  # 3 placeholders: one per query
>>> model(torch.randn(1, 3, 32, 32), ids).shape
torch.Size([1, 6, 40])
>>> [p.shape for p in model.trainable_parameters()]  # the one linear layer
[torch.Size([16, 16]), torch.Size([16])]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from mmcl.models.bridges.blip2 import Blip2, Blip2Config

ARCHITECTURE = "minigpt4"  # the config's mark, which `config_from_dict` dispatches on


@dataclass
class MiniGPT4Config(Blip2Config):
    """`Blip2Config`'s fields; the Q-Former has no text part and reads no instruction."""

    architecture: str = ARCHITECTURE

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> MiniGPT4Config:
        qformer = {"vocab_size": None, **data.get("qformer", {})}
        if data.get("instruct") or qformer["vocab_size"] is not None:
            raise ValueError(
                f"{source}: MiniGPT-4's Q-Former is BLIP-2's stage-2 one, without a text part "
                f"(qformer.vocab_size null) and without instructions (instruct false)"
            )
        config = super().from_dict({**data, "qformer": qformer}, source)
        if config.architecture != ARCHITECTURE:
            raise ValueError(f"{source}: architecture {config.architecture!r} is not a MiniGPT-4")
        return config


class MiniGPT4(Blip2):
    """See the module docstring."""

    def __init__(self, config: MiniGPT4Config, output_dict: bool = False):
        super().__init__(config, output_dict)
        self.qformer.requires_grad_(False)  # BLIP-2's, frozen: only the projection trains

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The projection's: MiniGPT-4 trains that one layer (the tower, the Q-Former and the
        LM are frozen, whatever their `requires_grad`)."""
        return list(self.language_projection.parameters())

    def load_blip2_parts(self, blip2: Blip2) -> None:
        """Take a trained BLIP-2's image tower and Q-Former (MiniGPT-4 starts from them)."""
        for part in ("visual", "qformer"):
            ours, theirs = getattr(self, part), getattr(blip2, part)
            try:
                ours.load_state_dict(theirs.state_dict())
            except RuntimeError as error:
                first = str(error).splitlines()[1:2] or [str(error)]
                raise ValueError(
                    f"the BLIP-2's {part} does not fit this MiniGPT-4's ({first[0].strip()}); "
                    f"build the MiniGPT-4 with that BLIP-2's blip_vision and qformer config"
                ) from None
