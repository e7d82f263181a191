"""EWC (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018): a quadratic pull towards
the weights each past task ended with, stronger where those weights mattered to that task.

After task k the method stores the diagonal Fisher information F_k of the model's predictive
distribution and the anchor theta*_k = the weights at that moment. While later tasks train it
adds

    ewc = lambda / 2 * sum_k sum_i F_k,i * (theta_i - theta*_k,i) ** 2

EWC keeps one (F_k, theta*_k) pair per past task, so its memory grows by two copies of the
trainable weights per task. Online EWC keeps a single running pair: F <- gamma * F + F_k and
theta* <- theta*_k (gamma = 1 sums the Fisher of every task; gamma < 1 forgets old ones).

The Fisher is the *true* Fisher, not the empirical one: for each of `fisher_samples` training
images x (a seeded random sample of the task's data, with stream labels) a label y is drawn
from the model's own prediction p(y | x), and F = mean over x of (d log p(y | x) / d theta)**2.
p is the distribution the task was trained with: the classification objective over the task's
training space (prompts for CLIP, the head's columns for a plain classifier) (`run.training_space`: in class-incremental streams every class seen so far),
templates cycling, computed in eval mode one image at a time, because a squared gradient needs
per-sample gradients. Only trainable parameters get a Fisher: a frozen one has no entry (its
Fisher is zero) and costs no memory.
"""

from __future__ import annotations

import math

import torch

from mmcl.continual.heads import classification_objective, is_classifier
from mmcl.continual.methods.base import Method


class EWC(Method):
    name = "ewc"
    online = False

    def __init__(self, lambda_: float = 1000.0, fisher_samples: int = 256):
        _check_arguments(self.name, lambda_, fisher_samples)
        self.lambda_ = float(lambda_)
        self.gamma = 1.0
        self.fisher_samples = fisher_samples
        # One (Fisher, anchor) pair per past task, or a single running pair for online EWC.
        self.fishers: list[dict[str, torch.Tensor]] = []
        self.anchors: list[dict[str, torch.Tensor]] = []

    def after_task(self, task, model, run) -> None:
        seed = 1_000_003 * run.config.seed + task.index
        fisher = diagonal_fisher(
            model,
            run.training_space(task.index),
            run.stream_data(task.index),
            self.fisher_samples,
            seed,
        )
        if self.online and self.fishers:
            for name, old in self.fishers[0].items():  # F <- gamma * F + F_k
                new = fisher.get(name)
                if new is None:  # frozen now: keep its decayed Fisher
                    fisher[name] = self.gamma * old
                else:
                    fisher[name] = new + self.gamma * old.to(new.device)
            self.fishers, self.anchors = [], []
        parameters = dict(model.named_parameters())
        self.fishers.append(fisher)
        self.anchors.append({name: parameters[name].detach().float().clone() for name in fisher})

    def extra_losses(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        if not self.fishers:
            return {}
        parameters = dict(model.named_parameters())
        total = None
        for fisher, anchor in zip(self.fishers, self.anchors, strict=True):
            for name, weight in fisher.items():
                parameter = parameters[name]
                if weight.device != parameter.device:  # loaded from a checkpoint on the CPU
                    fisher[name] = weight = weight.to(parameter.device)
                    anchor[name] = anchor[name].to(parameter.device)
                term = (weight * (parameter.float() - anchor[name]) ** 2).sum()
                total = term if total is None else total + term
        if total is None:  # nothing was trainable when the Fisher was taken
            return {}
        return {self.name: self.lambda_ / 2 * total}

    def state_dict(self):
        return {"fishers": self.fishers, "anchors": self.anchors}

    def load_state_dict(self, state) -> None:
        self.fishers = [dict(f) for f in state.get("fishers", [])]
        self.anchors = [dict(a) for a in state.get("anchors", [])]

    def __repr__(self) -> str:
        return f"EWC(lambda_={self.lambda_}, fisher_samples={self.fisher_samples})"


class OnlineEWC(EWC):
    """Online EWC (Schwarz et al. 2018): one running Fisher, decayed by `gamma` each task."""

    name = "online_ewc"
    online = True

    def __init__(self, lambda_: float = 1000.0, gamma: float = 1.0, fisher_samples: int = 256):
        super().__init__(lambda_=lambda_, fisher_samples=fisher_samples)
        if not (isinstance(gamma, (int, float)) and 0.0 <= gamma <= 1.0):
            raise ValueError(f"{self.name}: gamma must be in [0, 1], got {gamma!r}")
        self.gamma = float(gamma)

    def __repr__(self) -> str:
        return (
            f"OnlineEWC(lambda_={self.lambda_}, gamma={self.gamma}, "
            f"fisher_samples={self.fisher_samples})"
        )


def _check_arguments(method: str, lambda_, fisher_samples) -> None:
    if not (isinstance(lambda_, (int, float)) and math.isfinite(lambda_) and lambda_ >= 0):
        raise ValueError(f"{method}: lambda_ must be a finite number >= 0, got {lambda_!r}")
    if isinstance(fisher_samples, bool) or not isinstance(fisher_samples, int):
        raise ValueError(f"{method}: fisher_samples must be an integer, got {fisher_samples!r}")
    if fisher_samples < 1:
        raise ValueError(f"{method}: fisher_samples must be at least 1, got {fisher_samples}")


def diagonal_fisher(model, space, data, samples: int, seed: int) -> dict[str, torch.Tensor]:
    """Mean squared gradient of log p(y | x), y drawn from the model, over trainable weights.

    p is the classification objective over `space` (a `ClassSpace`); `data` yields
    ``(image, stream label)``. `samples` items of `data` (all of them when it has fewer) are
    chosen at random with `seed`, and the labels are drawn with the same generator, so the
    result is reproducible.
    """
    objective = classification_objective(model, space)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in trainable}
    if not trainable:
        return fisher
    device = trainable[0][1].device
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(data), generator=generator)[:samples].tolist()
    was_training = model.training
    model.eval()  # the prediction the task ended with: no dropout, BatchNorm's running stats
    try:
        if is_classifier(model):
            _accumulate_batched(model, space, data, picks, generator, fisher, device)
        else:
            for index in picks:
                image, label = data[index]
                # The label only has to be one of the space's classes: y is drawn from the model.
                labels = torch.tensor([int(label)], device=device)
                _, outputs = objective(model, image.unsqueeze(0).to(device), labels)
                log_probs = outputs["logits"][0].float().log_softmax(dim=-1)
                drawn = torch.multinomial(log_probs.detach().exp().cpu(), 1, generator=generator)
                gradients = torch.autograd.grad(
                    log_probs[drawn.item()], [p for _, p in trainable], allow_unused=True
                )
                for (name, _), gradient in zip(trainable, gradients, strict=True):
                    if gradient is not None:
                        fisher[name] += gradient.float() ** 2
    finally:
        model.train(was_training)
    for value in fisher.values():
        value /= len(picks)
    return fisher


def _accumulate_batched(model, space, data, picks, generator, fisher, device, chunk: int = 16):
    """Per-sample gradients of a plain classifier, `chunk` images at a time (torch.func's vmap
    over one functional forward), added squared into `fisher`. Labels are drawn in the same
    order, from the same generator, as the one-image-at-a-time loop."""
    from torch.func import functional_call, grad, vmap

    columns = torch.tensor(space.labels, device=device)
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))

    def log_prob(weights, image, label):
        logits = functional_call(model, {**fixed, **weights}, (image.unsqueeze(0),))
        log_probs = logits[0, columns].float().log_softmax(dim=-1)
        return log_probs.gather(0, label.unsqueeze(0))[0]  # no .item() under vmap

    per_sample = vmap(grad(log_prob), in_dims=(None, 0, 0))
    for start in range(0, len(picks), chunk):
        images = torch.stack([data[i][0] for i in picks[start : start + chunk]]).to(device)
        with torch.no_grad():
            probabilities = model(images)[:, columns].float().softmax(dim=-1).cpu()
        drawn = torch.cat([torch.multinomial(row, 1, generator=generator) for row in probabilities])
        gradients = per_sample(trainable, images, drawn.to(device))
        for name, gradient in gradients.items():
            fisher[name] += (gradient.float() ** 2).sum(dim=0)
