"""MoE-Adapters' Distribution-Discriminative Auto-Selector (DDAS): one small autoencoder per
task, fitted to that task's (frozen-model) image features; the task whose autoencoder
reconstructs an input best, relative to its own error threshold, is the task the input most
likely came from (see `mmcl.continual.methods.moe_adapters` for how the method uses it)."""

from __future__ import annotations

import torch
from torch import nn

HELD_OUT = 0.2  # of a task's features, for the selector's threshold


class FeatureAutoencoder(nn.Module):
    """features -> ReLU code -> features; its reconstruction error measures how familiar an
    input is to the data it was fitted to."""

    def __init__(self, dim: int, code: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, code), nn.ReLU())
        self.decoder = nn.Linear(code, dim)

    def errors(self, features: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per row."""
        return (self.decoder(self.encoder(features)) - features).pow(2).mean(dim=1)


class AutoSelector:
    """DDAS: one autoencoder and error threshold per task; `choose` names the task an input
    most likely came from, or -1 when no task's autoencoder accepts it."""

    def __init__(self, steps: int = 300, quantile: float = 0.95, lr: float = 1e-2):
        self.steps, self.quantile, self.lr = steps, quantile, lr
        self.tasks: list[int] = []
        self.autoencoders: list[FeatureAutoencoder] = []
        self.thresholds: list[float] = []

    def fit(self, task: int, features: torch.Tensor, seed: int = 0) -> None:
        if features.ndim != 2 or len(features) == 0:
            raise ValueError(
                f"the selector needs a (samples, dim) feature matrix, got {tuple(features.shape)}"
            )
        features = features.detach().float()
        if task in self.tasks:  # fitted again (a task re-run): replace it
            drop = self.tasks.index(task)
            for held in (self.tasks, self.autoencoders, self.thresholds):
                del held[drop]
        # An autoencoder reconstructs the very samples it was fitted to better than new ones
        # from the same distribution: the threshold comes from a held-out fifth, or test
        # images of the task itself would too often be turned away.
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
        held_out = max(1, round(HELD_OUT * len(features))) if len(features) > 1 else 0
        calibrate, fit = features[order[:held_out]], features[order[held_out:]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            autoencoder = FeatureAutoencoder(features.shape[1], max(8, features.shape[1] // 4))
        autoencoder.to(features.device)
        optimizer = torch.optim.Adam(autoencoder.parameters(), lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.steps):
                optimizer.zero_grad(set_to_none=True)
                autoencoder.errors(fit).mean().backward()
                optimizer.step()
        autoencoder.requires_grad_(False)
        with torch.no_grad():
            errors = autoencoder.errors(calibrate if held_out else fit)
            threshold = torch.quantile(errors, self.quantile).item()
        self.tasks.append(task)
        self.autoencoders.append(autoencoder)
        self.thresholds.append(max(threshold, 1e-12))

    @torch.no_grad()
    def choose(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        if not self.tasks:
            return torch.full((len(features),), -1, dtype=torch.long, device=features.device)
        scores = torch.stack(
            [
                autoencoder.to(features.device).errors(features) / threshold
                for autoencoder, threshold in zip(self.autoencoders, self.thresholds, strict=True)
            ],
            dim=1,
        )
        best, which = scores.min(dim=1)
        tasks = torch.tensor(self.tasks, device=features.device)[which]
        return torch.where(best <= 1.0, tasks, torch.full_like(tasks, -1))

    def state_dict(self) -> dict:
        return {
            "tasks": list(self.tasks),
            "thresholds": list(self.thresholds),
            "autoencoders": [
                {k: v.detach().cpu().clone() for k, v in a.state_dict().items()}
                for a in self.autoencoders
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        self.tasks = [int(t) for t in state["tasks"]]
        self.thresholds = [float(t) for t in state["thresholds"]]
        self.autoencoders = []
        for weights in state["autoencoders"]:
            code, dim = weights["encoder.0.weight"].shape
            autoencoder = FeatureAutoencoder(dim, code)
            autoencoder.load_state_dict(weights)
            self.autoencoders.append(autoencoder.requires_grad_(False))
