"""What the continual runner needs to serve a LLaVA-style bridge on an instruction stream
(`mmcl.continual.instructions`): the model and method checks, the training data, collate and
objective of a task, and one evaluation row. Kept here so the runner reads the same for every
kind of stream.
"""

from __future__ import annotations

INSTRUCTION_MEASURE = (
    "VQA accuracy (exact match of the normalised answer); caption tasks: attribute accuracy "
    "of the captions (shape, colour, count), CIDEr-D beside it"
)


def instruction_methods() -> str:
    """The methods that run on an instruction stream (``takes_instructions``), by name."""
    from mmcl.continual.methods import METHODS

    return ", ".join(sorted(name for name, cls in METHODS.items() if cls.takes_instructions))


def check_bridge(model, method, stream, tokenizer) -> None:
    """Refuse, before anything trains, a model that is not a bridge into a language model,
    a missing tokenizer, and methods that do not take instructions."""
    parts = getattr(method, "parts", [method])
    refused = [part.name for part in parts if not part.takes_instructions]
    if refused:
        raise ValueError(
            f"method(s) {refused} do not train on instructions, which the stream "
            f"{stream.name!r} holds; choose among the methods that do ({instruction_methods()})"
        )
    if not (hasattr(model, "language_model") and hasattr(model, "generate")):
        raise ValueError(
            f"an instruction stream trains a bridge into a language model (e.g. a LLaVA "
            f"model); this model is a {type(model).__name__}: give a LLaVA folder or recipe"
        )
    if tokenizer is None:
        raise ValueError(
            "an instruction stream needs the bridge's tokenizer (run_continual(tokenizer=...))"
        )


def conversation_encoder(model, tokenizer, max_length: int | None = None):
    """The chat template the bridge was trained with: the system text its folder records
    (the llava-scenes recipes train without one, and their tokenizer cannot spell Vicuna's),
    else Vicuna's (no template, or one of another layout than LLaVA-1.5's)."""
    from mmcl.data.chat_template import (
        ChatTemplate,
        ConversationEncoder,
        TemplateMismatchError,
        system_text,
    )

    try:
        system = system_text(tokenizer)
    except TemplateMismatchError:
        system = None
    template = ChatTemplate() if system is None else ChatTemplate(system=system)
    return ConversationEncoder(
        tokenizer, model.image_token_id, model.tokens_per_image, template, max_length=max_length
    )


def training_parts(data, encoder):
    """`(dataset, collate_fn, objective)` of a task whose items are ``(image,
    Conversation)``: conversations through the chat template, the loss on answers only."""
    from mmcl.data.conversation_batches import ConversationCollate, EncodedConversations
    from mmcl.train.lm_objective import CausalLMObjective

    return (
        EncodedConversations(data, encoder),
        ConversationCollate(encoder.tokenizer.pad_token_id),
        CausalLMObjective(),
    )


# Parts of a LLaVA folder trained in a continual run: LLaVA's stage 2 (the tower frozen).
FOLDER_TRAINABLE = ("projector", "language_model")


def starting_bridge(spec: str):
    """`(model, tokenizer)` a run on an instruction stream starts from: a LLaVA folder with
    its tokenizer (a recipe's ``hf/`` output; projector and LM train, the tower is frozen),
    or a LLaVA recipe (shipped name or YAML file) whose model section builds it (its
    ``init`` folder, or a new model, seeded; its ``trainable`` parts train). A recipe's
    ``model.lora`` adds peft LoRA as the recipe does (`mmcl.nn.lora.add_lora`): the adapted
    part's own weights are frozen and its adapters train, with the other ``trainable``
    parts; the adapters are keys of the model's state dict, so a resumed run finds them."""
    from pathlib import Path

    import torch
    import yaml

    from mmcl.recipe import recipe_text
    from mmcl.train.bridges import build_llava, set_trainable

    lora = None
    if Path(spec).is_dir():
        model_spec, source = {"init": spec}, str(spec)
        trainable = list(FOLDER_TRAINABLE)
    else:
        try:
            text, source = recipe_text(spec)
        except FileNotFoundError:
            raise ValueError(
                f"--model {spec}: an instruction stream needs a bridge: a LLaVA folder with "
                f"its tokenizer, or a LLaVA recipe (e.g. llava-scenes-stage1)"
            ) from None
        model_spec = dict((yaml.safe_load(text) or {}).get("model") or {})
        if model_spec.pop("kind", None) != "llava":
            raise ValueError(f"{source}: not a LLaVA recipe (model.kind must be llava)")
        trainable = model_spec.pop("trainable", ["projector"])
        lora = model_spec.pop("lora", None)
    torch.manual_seed(0)
    model, tokenizer = build_llava(model_spec, source)
    if model_spec:
        raise ValueError(f"{source}: unknown model entries {sorted(model_spec)}")
    set_trainable(model, trainable, source)
    if lora is not None:
        from mmcl.nn.lora import LoraSpec, add_lora

        add_lora(model, LoraSpec.from_dict(lora, f"{source}: model.lora"), f"{source}: model.lora")
    return model, tokenizer
