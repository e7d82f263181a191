"""MoE-LoRA, as in CoIN (Chen et al. 2024, "CoIN: A Benchmark of Continual Instruction tuNing
for Multimodel Large Language Models", NeurIPS Datasets and Benchmarks): the language model
frozen, a mixture of LoRA experts with a learned router in each adapted linear layer, trained
on one task after another.

Each adapted layer computes ``W x + alpha / r * sum_e softmax(W_g x)_e B_e A_e x`` per token
(`mmcl.nn.lora_experts`): the rank `r` is split among `experts` experts, the router is a
bias-free linear layer, and the gating is CoIN's dense softmax over all experts; `top_k`
keeps only each token's k largest router logits (a sparse variant CoIN does not use). Every
expert and router trains on every task; what protects earlier tasks is only that the router
can send new tasks' tokens to other experts. There is no task identity at test time and no
extra loss.

Where mmcl differs from CoIN: the adapters go on the layers named by `modules` (CoIN adapts
every linear layer of the LLM); A is initialised as peft does (Kaiming-uniform; CoIN draws
N(0, 0.01^2)); the image tower and projector are frozen (CoIN also trains the projector).
All weights are extra keys of the model's state dict, so the method's own state is empty and
a run resumes exactly from the model's weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmcl.continual.methods.base import Method
from mmcl.nn.lora import LoraSpec
from mmcl.nn.lora_experts import LoraExpertsLinear, add_lora_experts


def lora_spec(name: str, target: str, modules, r: int, alpha: float) -> LoraSpec:
    """The methods' LoRA arguments as a checked `LoraSpec`."""
    modules = [modules] if isinstance(modules, str) else list(modules)
    data = {"target": target, "modules": modules, "r": r, "alpha": alpha}
    return LoraSpec.from_dict(data, name)


def check_int(name: str, what: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {what} must be an integer >= {minimum}, got {value!r}")


def refuse_carried_lora(name: str, model, target: str) -> None:
    """A method that adds its own LoRA refuses a part that already carries peft LoRA (a
    recipe's ``model.lora``): the two would stack, and only one would be the method's."""
    from mmcl.nn.lora import _part, lora_layers

    if lora_layers(_part(model, target, name)):
        raise ValueError(
            f"{name}: the model's {target or 'whole model'} already carries LoRA (a recipe's "
            f"model.lora); {name} adds its own LoRA adapters: drop model.lora from the "
            f"recipe, or choose a method that trains the model as it is (e.g. finetune, lwf)"
        )


class MoELoRA(Method):
    name = "moe_lora"
    takes_instructions = True
    takes_classes = False

    def __init__(
        self,
        experts: int = 4,
        top_k: int | None = None,
        r: int = 8,
        alpha: float = 16.0,
        target: str = "language_model",
        modules: str | Sequence[str] = ("q_proj", "v_proj"),
    ):
        check_int(self.name, "experts", experts, 1)
        check_int(self.name, "r", r, 1)
        if r % experts:
            raise ValueError(
                f"moe_lora: the rank r={r} is split among the experts, so it must be a multiple "
                f"of experts={experts}"
            )
        if top_k is not None:
            check_int(self.name, "top_k", top_k, 1)
            if top_k > experts:
                raise ValueError(f"moe_lora: top_k ({top_k}) exceeds experts ({experts})")
        self.spec = lora_spec(self.name, target, modules, r, alpha)
        # Under the constructor's names, as `method_arguments` reads a method built directly.
        self.r, self.alpha, self.target, self.modules = r, alpha, target, self.spec.modules
        self.experts, self.top_k = experts, top_k
        self.layers: dict[str, LoraExpertsLinear] = {}

    def setup(self, model, run) -> None:
        refuse_carried_lora(self.name, model, self.spec.target)
        model.requires_grad_(False)  # only the experts and routers train
        self.layers = add_lora_experts(model, self.spec, self.experts, self.top_k, self.name)

    def __repr__(self) -> str:
        return f"MoELoRA(experts={self.experts}, top_k={self.top_k}, r={self.spec.r})"
