"""Soft prompts per task, prepended to a causal language model's input embeddings.

`TaskPrompts` holds ``length`` learned vectors per task in the LM's embedding space.
`attach_lm_prompts` is a transformation of a finished language model: two forward hooks on
it (its state dict keys and its code stay as they are), which, while a choice is set
(`TaskPrompts.choosing`), put each row's chosen task prompts before the row's input
embeddings and take their positions out of the logits again:

    logits(prompts_t ++ embeddings)[:, length:]

so callers see logits aligned with their own ids and labels. Only a call that starts a
sequence (no cache given, or an empty one) gets the prompts; a call that continues one (the
generation loop's later steps, given the cache that already holds the prompts' keys and values)
gets its attention mask widened and its positions shifted by ``length``, as the first call counted
them. With no choice set the LM computes as it did.

>>> import torch
>>> prompts = TaskPrompts(tasks=3, length=2, width=8)
>>> prompts.rows(torch.tensor([0, 2])).shape
torch.Size([2, 2, 8])
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

IGNORE_INDEX = -100  # labels of the prompt positions, when the LM is given labels
PROMPT_INIT_STD = 0.02


class TaskPrompts(nn.Module):
    """``length`` prompt vectors of size `width` for each of `tasks` tasks (one parameter
    per task, so earlier tasks' prompts can be frozen on their own)."""

    def __init__(self, tasks: int, length: int, width: int):
        super().__init__()
        for what, value in (("tasks", tasks), ("length", length), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TaskPrompts: {what} must be a positive integer, got {value!r}")
        self.length = length
        self.embeddings = nn.ParameterList(
            [nn.Parameter(torch.randn(length, width) * PROMPT_INIT_STD) for _ in range(tasks)]
        )
        self.choice: torch.Tensor | None = None  # per row: a task index; None: no prompts

    def rows(self, tasks: torch.Tensor) -> torch.Tensor:
        """``(rows, length, width)``: the prompts of task ``tasks[i]`` for row i."""
        stacked = torch.stack(list(self.embeddings))
        return stacked[tasks.to(stacked.device)]

    @contextlib.contextmanager
    def choosing(self, tasks: torch.Tensor | int | None):
        """Inside: each row gets task ``tasks[row]``'s prompts (an int: every row that
        task's; None: no prompts); afterwards, as before."""
        before = self.choice
        self.choose(tasks)
        try:
            yield
        finally:
            self.choice = before

    def choose(self, tasks: torch.Tensor | int | None) -> None:
        self.choice = torch.tensor(tasks) if isinstance(tasks, int) else tasks


def attach_lm_prompts(language_model: nn.Module, prompts: TaskPrompts) -> list:
    """Hook `prompts` into `language_model` (a transformers causal LM called with
    ``inputs_embeds`` or ``input_ids``). Returns the hook handles (``.remove()`` detaches)."""

    calls = {}  # "started": whether the call under way starts a sequence

    def continues(kwargs) -> bool:
        # Whether the call continues a sequence: a cache given that holds positions already.
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        return cache is not None and cache.get_seq_length() > 0

    def before(module, args, kwargs):
        choice = prompts.choice
        if choice is None:
            return None
        kwargs = dict(kwargs)
        embeddings = kwargs.pop("inputs_embeds", None)
        if embeddings is None:
            ids = kwargs.pop("input_ids", None)
            if ids is None and args:
                ids, args = args[0], args[1:]
            embeddings = module.get_input_embeddings()(ids)
        rows, length = embeddings.shape[0], prompts.length
        starts = calls["started"] = not continues(kwargs)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            kwargs["attention_mask"] = torch.cat([mask.new_ones(rows, length), mask], dim=1)
        positions = kwargs.get("position_ids")
        if positions is not None:
            shifted = positions + length
            if starts:
                front = torch.arange(length, device=positions.device).expand(len(positions), -1)
                shifted = torch.cat([front, shifted], dim=1)
            kwargs["position_ids"] = shifted
        if starts:
            choice = choice.expand(rows) if choice.ndim == 0 else choice
            prompt = prompts.rows(choice).to(embeddings.dtype)
            embeddings = torch.cat([prompt, embeddings], dim=1)
            labels = kwargs.get("labels")
            if labels is not None:
                kwargs["labels"] = torch.cat(
                    [labels.new_full((rows, length), IGNORE_INDEX), labels], dim=1
                )
        kwargs["inputs_embeds"] = embeddings
        return args, kwargs

    def after(module, args, kwargs, output):
        # (After the call its cache holds this call's positions: ask what `before` found.)
        if prompts.choice is None or not calls.pop("started", False):
            return None
        # Only logits of every position hold the prompts' (not those of the last few that
        # `logits_to_keep` asks for).
        if output.logits.shape[1] == kwargs["inputs_embeds"].shape[1]:
            output["logits"] = output.logits[:, prompts.length :]
        return output

    return [
        language_model.register_forward_pre_hook(before, with_kwargs=True),
        language_model.register_forward_hook(after, with_kwargs=True),
    ]


__all__ = ["TaskPrompts", "attach_lm_prompts"]
