"""Plugins: small objects that the training loop calls at fixed points, for methods that need
more than the objective (continual-learning methods, weight averaging, extra losses).

Subclass `TrainingPlugin`, give it a `name`, and override only the hooks you need; every hook
has a no-op default and the engine calls every hook of every plugin. A plugin's state is saved
in each checkpoint under its name, so a run resumes only with plugins of the same names.

>>> import torch
>>> class CountSteps(TrainingPlugin):
...     name = "count_steps"
...     def __init__(self):
...         self.steps = 0
...     def after_optimizer_step(self, trainer):
...         self.steps += 1
...     def state_dict(self):
...         return {"steps": self.steps}
...     def load_state_dict(self, state):
...         self.steps = state["steps"]
>>> CountSteps().extra_losses(None, None, None)
{}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmcl.train.state import ResumeError


class TrainingPlugin:
    """Every hook the training engine calls, each doing nothing by default."""

    name: str = "plugin"  # the key of this plugin's state in checkpoints: distinct per run
    # True when some trainable parameters sit out some steps (e.g. top-k routed experts), so
    # DDP must look for unused parameters.
    ddp_find_unused_parameters: bool = False

    def extra_losses(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        """Loss terms added to the objective's, by name.

        batch: (images, targets, indices); `indices` are the items' positions in the training
        data set (a LongTensor on the CPU), None for a webdataset stream. outputs: what the
        objective returned besides its terms (e.g. the features).
        """
        return {}

    def after_optimizer_step(self, trainer) -> None:
        """Called after every optimiser step (e.g. weight averaging); `trainer.step` is done."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly; saved in every checkpoint under `name`."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""


def adds_losses(plugin: TrainingPlugin) -> bool:
    return type(plugin).extra_losses is not TrainingPlugin.extra_losses


def check_plugins(plugins: Sequence[Any]) -> list[TrainingPlugin]:
    """The plugins as a list, refusing objects that are not plugins and repeated names."""
    for plugin in plugins:
        if not isinstance(plugin, TrainingPlugin):
            raise TypeError(
                f"plugin {plugin!r} is not a TrainingPlugin: subclass "
                f"mmcl.train.TrainingPlugin and override the hooks it needs"
            )
    names = [plugin.name for plugin in plugins]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(
            f"plugins {names} share the name(s) {repeated}: their states are saved by name, "
            f"so give each plugin its own `name`"
        )
    return list(plugins)


def plugin_states(plugins: Sequence[TrainingPlugin]) -> dict[str, Any]:
    return {plugin.name: plugin.state_dict() for plugin in plugins}


def load_plugin_states(plugins: Sequence[TrainingPlugin], saved: Any, source: str) -> None:
    """Gives each plugin its state from a checkpoint, refusing a different set of plugins."""
    if isinstance(saved, list):
        if saved:  # states saved by position cannot be matched to plugins safely
            raise ResumeError(
                f"{source} was written by an older mmcl that saved plugin states by position, "
                f"which this version cannot match to plugins; start a fresh run"
            )
        saved = {}
    names = [plugin.name for plugin in plugins]
    if sorted(saved) != sorted(names):
        raise ResumeError(
            f"{source} was saved with plugins {list(saved)}, but this run has {names}; resume "
            f"with the same plugins"
        )
    for plugin in plugins:
        plugin.load_state_dict(saved[plugin.name])
