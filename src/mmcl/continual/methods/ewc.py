"""EWC (Kirkpatrick et al. 2017) and online EWC (Schwarz et al. 2018): a quadratic pull towards
the weights each past task ended with, stronger where those weights mattered to that task.

After task k the method stores the diagonal Fisher information F_k of the model's predictive
distribution and the anchor theta*_k = the weights at that moment. While later tasks train it
adds

    ewc = lambda / 2 * sum_k sum_i F_k,i * (theta_i - theta*_k,i) ** 2

EWC does not keep one (F_k, theta*_k) pair per past task: after each task it merges them into
one quadratic per weight (see `merge_pairs`), the same penalty and gradient, so its memory and
its saved state stay at two copies of the trainable weights however many tasks have passed.
Online EWC keeps a single running pair: F <- gamma * F + F_k and theta* <- theta*_k (gamma = 1
sums the Fisher of every task; gamma < 1 forgets old ones).

Two estimators of F (`fisher`), both over `fisher_samples` training images (a seeded random
sample of the task's data, with stream labels), in eval mode, with p the distribution the task
was trained with: the classification objective over the task's training space
(`run.training_space`: in class-incremental streams every class seen so far; prompts for CLIP,
templates cycling, the head's columns for a plain classifier).

* ``fisher="sample"`` (the default): the *true* Fisher of the paper, per sample. For each image
  x a label y is drawn from the model's own prediction p(y | x), and F = mean over x of
  (d log p(y | x) / d theta)**2. A squared gradient needs per-sample gradients: one image at a
  time, or for a plain classifier batched with torch.func's vmap (still one backward per image
  in cost).
* ``fisher="minibatch"``: a cheaper *mini-batch empirical* importance, the one avalanche-lib's
  `EWCPlugin` computes: the images in batches of `fisher_batch_size` (default: the training
  batch size; the last batch may be smaller), the cross-entropy of the batch with its *true*
  labels averaged over the batch, and F = mean over batches of (d mean loss / d theta)**2. One
  forward and backward pass per batch. It is not the Fisher: squaring a batch's mean gradient
  drops most of the per-sample variance (for B uncorrelated samples it is about 1/B of the
  per-sample empirical Fisher, plus the squared mean gradient, which is large while the task's
  loss is still high), so the two estimators call for different `lambda_`.

On an instruction stream (`mmcl.continual.instructions`, a LLaVA-style bridge) the same two
estimators use the LM loss on the answers (`instruction_terms.lm_importance`): ``"sample"``
draws each answer position's token from the model's own next-token distribution and squares
the gradient of a conversation's summed log-probabilities, one conversation at a time;
``"minibatch"`` squares the gradient of a batch's LM loss with the true answers. Only what
trains has an importance (the projector, a LoRA, the LM: whatever requires grad).

Pairs set by hand (`method.fishers`, `method.anchors`, several of them) are merged the same
way when the penalty is first computed (`EWC._merged`).

Only trainable parameters get an importance: a frozen one has no entry (its importance is zero)
and costs no memory.
"""

from __future__ import annotations

import math

import torch

from mmcl.continual.heads import classification_objective, is_classifier
from mmcl.continual.methods.base import Method
from mmcl.continual.methods.instruction_terms import encoded_batches, lm_importance


class EWC(Method):
    name = "ewc"
    online = False
    takes_instructions = True

    def __init__(
        self,
        lambda_: float = 1000.0,
        fisher_samples: int = 256,
        fisher: str = "sample",
        fisher_batch_size: int | None = None,
    ):
        _check_arguments(self.name, lambda_, fisher_samples, fisher, fisher_batch_size)
        self.lambda_ = float(lambda_)
        self.gamma = 1.0
        self.fisher_samples = fisher_samples
        self.fisher = fisher
        self.fisher_batch_size = fisher_batch_size
        # The past tasks' penalty: one (importance, anchor) pair after `after_task` merged
        # them, plus the constant the merge leaves (it moves the value, not the gradient).
        self.fishers: list[dict[str, torch.Tensor]] = []
        self.anchors: list[dict[str, torch.Tensor]] = []
        self.constant = 0.0
        self._merged_key, self._merged_terms, self._merged_constant = None, {}, 0.0

    def after_task(self, task, model, run) -> None:
        seed = 1_000_003 * run.config.seed + task.index
        if getattr(run, "instructions", False):
            fisher = self._instruction_importance(task, model, run, seed)
            self._store(fisher, model)
            return
        arguments = (
            model,
            run.training_space(task.index),
            run.stream_data(task.index),
            self.fisher_samples,
            seed,
        )
        if self.fisher == "minibatch":
            batch_size = self.fisher_batch_size or run.config.batch_size
            fisher = minibatch_importance(*arguments, batch_size=batch_size, method=run.method)
        else:
            fisher = diagonal_fisher(*arguments, method=run.method)
        self._store(fisher, model)

    def _instruction_importance(self, task, model, run, seed) -> dict[str, torch.Tensor]:
        """`lm_importance` over `fisher_samples` of the task's conversations (seeded)."""
        data = run.stream_data(task.index)
        generator = torch.Generator().manual_seed(seed)
        picks = torch.randperm(len(data), generator=generator)[: self.fisher_samples].tolist()
        batch_size = self.fisher_batch_size or run.config.batch_size
        chosen = torch.utils.data.Subset(data, picks)
        batches = encoded_batches(chosen, run.encoder, batch_size)
        return lm_importance(model, batches, self.fisher, generator)

    def _store(self, fisher: dict[str, torch.Tensor], model) -> None:
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
        self._merge_stored()

    def _merge_stored(self) -> None:
        """Replace the stored pairs by one: what keeps the state from growing with the tasks."""
        if len(self.fishers) > 1:
            fisher, anchor, constant = merge_pairs(self.fishers, self.anchors)
            self.fishers, self.anchors = [fisher], [anchor]
            self.constant += constant

    def extra_losses(self, model, batch, outputs) -> dict[str, torch.Tensor]:
        if not self.fishers:
            return {}
        parameters = dict(model.named_parameters())
        total = None
        for name, (weight, centre) in self._merged(parameters).items():
            term = (weight * (parameters[name].float() - centre) ** 2).sum()
            total = term if total is None else total + term
        if total is None:  # nothing was trainable when the Fisher was taken
            return {}
        return {self.name: self.lambda_ / 2 * (total + self._merged_constant + self.constant)}

    def _merged(self, parameters) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The pairs as one quadratic per weight (`merge_pairs`) on each weight's device,
        built again only when the pairs change: one term per weight a step, however many."""
        names = dict.fromkeys(name for fisher in self.fishers for name in fisher)
        # Each weight's device (a model may span several), then the pairs themselves (not
        # their ids, which a freed dict's successor may reuse).
        devices = tuple(parameters[name].device for name in names)
        key = (devices, *self.fishers, *self.anchors)
        cached = self._merged_key
        if cached is not None and len(cached) == len(key) and all(map(_same, cached, key)):
            return self._merged_terms
        placed = list(zip(names, devices, strict=True))

        def moved(pairs: dict) -> dict:
            return {name: pairs[name].to(device) for name, device in placed if name in pairs}

        on_device = [moved(f) for f in self.fishers]
        anchors = [moved(a) for a in self.anchors]
        weights, centres, constant = merge_pairs(on_device, anchors)
        terms = {name: (weights[name], centres[name]) for name in names}
        self._merged_key, self._merged_terms, self._merged_constant = key, terms, constant
        return terms

    def state_dict(self):
        return {
            "fishers": self.fishers,
            "anchors": self.anchors,
            "constant": self.constant,
            "fisher": self.fisher,
        }

    def load_state_dict(self, state) -> None:
        saved = state.get("fisher", "sample")  # checkpoints from before the choice: "sample"
        if state.get("fishers") and saved != self.fisher:
            raise ValueError(
                f"{self.name}: the checkpoint's importances were estimated with "
                f"fisher={saved!r}, this run asks for fisher={self.fisher!r}; resume with "
                f"fisher={saved!r} (mixing the two would weigh the tasks' penalties unevenly)"
            )
        self.fishers = [dict(f) for f in state.get("fishers", [])]
        self.anchors = [dict(a) for a in state.get("anchors", [])]
        self.constant = float(state.get("constant", 0.0))
        self._merge_stored()  # a state saved by an older mmcl holds one pair per task

    def __repr__(self) -> str:
        return (
            f"EWC(lambda_={self.lambda_}, fisher_samples={self.fisher_samples}, "
            f"fisher={self.fisher!r})"
        )


class OnlineEWC(EWC):
    """Online EWC (Schwarz et al. 2018): one running Fisher, decayed by `gamma` each task."""

    name = "online_ewc"
    online = True

    def __init__(
        self,
        lambda_: float = 1000.0,
        gamma: float = 1.0,
        fisher_samples: int = 256,
        fisher: str = "sample",
        fisher_batch_size: int | None = None,
    ):
        super().__init__(lambda_, fisher_samples, fisher, fisher_batch_size)
        if not (isinstance(gamma, (int, float)) and 0.0 <= gamma <= 1.0):
            raise ValueError(f"{self.name}: gamma must be in [0, 1], got {gamma!r}")
        self.gamma = float(gamma)

    def __repr__(self) -> str:
        return (
            f"OnlineEWC(lambda_={self.lambda_}, gamma={self.gamma}, "
            f"fisher_samples={self.fisher_samples}, fisher={self.fisher!r})"
        )


FISHER_ESTIMATORS = ("sample", "minibatch")


def merge_pairs(fishers, anchors) -> tuple[dict, dict, float]:
    """Several tasks' (importance, anchor) pairs as one quadratic per weight, and a constant.

    sum_k F_k (w - a_k)^2 = S (w - m)^2 + c with S = sum_k F_k, m = sum_k F_k a_k / S and
    c = sum_k F_k (a_k - m)^2: the same value and gradient for every w. Where S is zero any
    centre will do; the latest anchor is kept. A weight missing from a pair (frozen then) has
    no importance there. One pair comes back as it is.
    """
    if len(fishers) == 1:
        return fishers[0], anchors[0], 0.0
    names = dict.fromkeys(name for fisher in fishers for name in fisher)
    merged_fisher, merged_anchor, constant = {}, {}, 0.0
    for name in names:
        pairs = [(f[name], a[name]) for f, a in zip(fishers, anchors, strict=True) if name in f]
        weight = sum(f for f, _ in pairs)
        centre = sum(f * a for f, a in pairs) / weight
        centre = torch.where(weight > 0, centre, pairs[-1][1])
        constant += sum(float((f.double() * (a - centre).double() ** 2).sum()) for f, a in pairs)
        merged_fisher[name], merged_anchor[name] = weight, centre
    return merged_fisher, merged_anchor, constant


def _same(cached, current) -> bool:
    return cached is current or (isinstance(cached, tuple) and cached == current)


def _check_arguments(method: str, lambda_, fisher_samples, fisher, fisher_batch_size) -> None:
    if not (isinstance(lambda_, (int, float)) and math.isfinite(lambda_) and lambda_ >= 0):
        raise ValueError(f"{method}: lambda_ must be a finite number >= 0, got {lambda_!r}")
    if isinstance(fisher_samples, bool) or not isinstance(fisher_samples, int):
        raise ValueError(f"{method}: fisher_samples must be an integer, got {fisher_samples!r}")
    if fisher_samples < 1:
        raise ValueError(f"{method}: fisher_samples must be at least 1, got {fisher_samples}")
    if fisher not in FISHER_ESTIMATORS:
        raise ValueError(
            f"{method}: fisher must be one of {', '.join(FISHER_ESTIMATORS)}, got {fisher!r}"
        )
    if fisher_batch_size is not None and (
        isinstance(fisher_batch_size, bool)
        or not isinstance(fisher_batch_size, int)
        or fisher_batch_size < 1
    ):
        raise ValueError(
            f"{method}: fisher_batch_size must be None or an integer >= 1, "
            f"got {fisher_batch_size!r}"
        )


def diagonal_fisher(
    model, space, data, samples: int, seed: int, method=None
) -> dict[str, torch.Tensor]:
    """Mean squared gradient of log p(y | x), y drawn from the model, over trainable weights.

    p is the classification objective over `space` (a `ClassSpace`); `data` yields
    ``(image, stream label)``. `samples` items of `data` (all of them when it has fewer) are
    chosen at random with `seed`, and the labels are drawn with the same generator, so the
    result is reproducible. `method`: the run's method, whose feature hooks the objective uses
    (so `coop+ewc` measures CoOp's classifier).
    """
    objective = classification_objective(model, space, method)
    trainable, fisher = _trainable_and_zeros(model)
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


def minibatch_importance(
    model, space, data, samples: int, seed: int, batch_size: int, method=None
) -> dict[str, torch.Tensor]:
    """Mean over mini-batches of the squared gradient of the batch's mean loss, true labels.

    avalanche-lib's `EWCPlugin` importance (see the module docstring for how it differs from
    the Fisher): `samples` items of `data` (``(image, stream label)``; all of them when it has
    fewer), chosen at random with `seed`, in batches of `batch_size` in that order (the last
    batch may be smaller and counts as one batch), eval mode, the classification objective
    over `space`, with `method`'s feature hooks as in `diagonal_fisher`.
    """
    objective = classification_objective(model, space, method)
    trainable, importance = _trainable_and_zeros(model)
    if not trainable:
        return importance
    device = trainable[0][1].device
    picks = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:samples]
    batches = 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(picks), batch_size):
            items = [data[i] for i in picks[start : start + batch_size].tolist()]
            images = torch.stack([image for image, _ in items]).to(device)
            labels = torch.tensor([int(label) for _, label in items], device=device)
            terms, _ = objective(model, images, labels)
            gradients = torch.autograd.grad(
                terms["classification"], [p for _, p in trainable], allow_unused=True
            )
            for (name, _), gradient in zip(trainable, gradients, strict=True):
                if gradient is not None:
                    importance[name] += gradient.float() ** 2
            batches += 1
    finally:
        model.train(was_training)
    for value in importance.values():
        value /= batches
    return importance


def _trainable_and_zeros(model) -> tuple[list, dict[str, torch.Tensor]]:
    """The trainable (name, parameter) pairs and a float32 zero accumulator for each."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return trainable, {n: torch.zeros_like(p, dtype=torch.float32) for n, p in trainable}
