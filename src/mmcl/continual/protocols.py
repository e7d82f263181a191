"""Published protocols, reproduced: sequential CIFAR-10 as in DER (Buzzega et al. 2020).

Buzzega, Boschini, Porrello, Abati and Calderara, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline", NeurIPS 2020 (Table 2, the Class-IL column of
Seq-CIFAR-10), with the per-method hyper-parameters of their Mammoth code base
(`utils/best_args.py`, seq-cifar10). The protocol:

* CIFAR-10, 5 tasks of 2 classes in the natural class order ({airplane, automobile}, ...).
* ResNet-18 for 32x32 images (`mmcl.models.cifar_resnet`), one head over all 10 classes.
* Plain SGD, batch 32, 50 epochs per task, learning rate x0.1 at epochs 35 and 45
  (Mammoth's seq-cifar10 scheduler); random crop (padding 4) and horizontal flip.
* Class-IL accuracy: after the last task, accuracy over the 10 classes on every task's test
  set, averaged over tasks (mmcl's "Last").

The data here are the shared JPEG re-encoding of CIFAR-10, so even a full run is close to, not
identical with, the original binaries. mmcl's methods differ from Mammoth's in places (each
method's docstring says how): EWC uses the true Fisher on 256 samples, LwF the KL divergence at
T = 2, iCaRL cross-entropy plus BCE distillation, ER half-replay batches through the data set
(an epoch therefore takes twice the steps), DER++ cross-entropy over the classes seen so
far rather than the whole head.
Mammoth's online EWC penalty is e_lambda * sum F (w - w*)^2; mmcl's is lambda / 2 * the same
sum, so lambda = 2 x e_lambda.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcl.continual.builtin import balanced_subset, labelled_images, shared_data_root
from mmcl.continual.scenarios import class_incremental
from mmcl.continual.tasks import Scenario
from mmcl.data.cifar import cifar_transforms
from mmcl.data.zeroshot import load_zero_shot_metadata
from mmcl.models.cifar_resnet import cifar_resnet18

# Published Class-IL accuracy (%) on Seq-CIFAR-10, Buzzega et al. 2020, Table 2 (buffer 500).
DER_PUBLISHED_CLASS_IL = {
    "joint": 92.2,
    "sgd": 19.6,
    "oewc": 19.5,
    "lwf": 19.6,
    "er": 57.7,
    "icarl": 47.6,
    "derpp": 72.7,
}


@dataclass(frozen=True)
class ProtocolMethod:
    """One row of the protocol: an mmcl method and its published optimiser settings."""

    method: str
    arguments: dict[str, Any] = field(default_factory=dict)
    lr: float = 0.1
    weight_decay: float = 0.0


DER_METHODS = {
    "joint": ProtocolMethod("joint", lr=0.1),
    "sgd": ProtocolMethod("finetune", lr=0.1),
    "oewc": ProtocolMethod("online_ewc", {"lambda_": 20.0, "gamma": 1.0}, lr=0.03),
    "lwf": ProtocolMethod("lwf", {"lambda_": 3.0, "temperature": 2.0}, lr=0.01, weight_decay=5e-4),
    "er": ProtocolMethod("er", {"buffer_size": 500}, lr=0.1),
    "icarl": ProtocolMethod("icarl", {"memory_size": 500}, lr=0.1, weight_decay=1e-5),
    "derpp": ProtocolMethod(
        "derpp", {"buffer_size": 500, "alpha": 0.2, "beta": 0.5, "minibatch_size": 32}, lr=0.03
    ),
}

# Everything but the learning rate and weight decay, which are per method.
DER_TRAINING = {
    "epochs": 50,
    "batch_size": 32,
    "optimizer": "sgd",
    "momentum": 0.0,
    "schedule": "step",
    "lr_decay_at": (0.7, 0.9),  # epochs 35 and 45 of 50
    "lr_decay": 0.1,
    "warmup_steps": 0,
    "grad_clip_norm": None,
    "tensorboard": False,
}


def seq_cifar10(
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    augment: bool = True,
    data_root: str | Path | None = None,
    download: bool = False,
) -> Scenario:
    """Sequential CIFAR-10: 5 tasks x 2 classes in the natural order, CIFAR normalisation, and
    random crop + flip on the training images. `*_per_class` keep a seeded class-balanced
    subset (None: every image, 5,000 and 1,000 a class). CIFAR-10 comes from `data_root`
    as image folders or torchvision's files (`mmcl.data.datasets`; `download` fetches it)."""
    meta = load_zero_shot_metadata("cifar10")
    root = shared_data_root(data_root)
    parts = []
    for split, per_class, transform in (
        ("train", train_per_class, cifar_transforms(augment)),
        ("test", test_per_class, cifar_transforms(False)),
    ):
        found = labelled_images("cifar10", split, root, download, meta.classnames)
        keep = range(len(found.labels))
        if per_class is not None:
            if per_class < 1:
                raise ValueError(f"{split}_per_class must be at least 1, got {per_class}")
            rng = random.Random(f"seq-cifar10/{split}/{seed}")
            keep = balanced_subset(found.labels, per_class * len(meta.classnames), rng)
        parts.append(found.subset(keep, transform))
    train, test = parts
    return class_incremental(
        train,
        test,
        list(meta.classnames),
        class_splits=[[2 * t, 2 * t + 1] for t in range(5)],
        templates=list(meta.templates),
        train_targets=train.targets,
        test_targets=test.targets,
        seed=seed,
        name="seq-cifar10",
    )


def der_protocol_model(width: int = 64):
    """The protocol's network: ResNet-18 for 32x32 images with a 10-way head."""
    return cifar_resnet18(num_classes=10, width=width)


def der_training(name: str, **overrides) -> dict[str, Any]:
    """Engine settings for protocol method `name` (see `DER_METHODS`), with overrides."""
    if name not in DER_METHODS:
        raise ValueError(f"unknown protocol method {name!r}; choose from {sorted(DER_METHODS)}")
    setting = DER_METHODS[name]
    return {**DER_TRAINING, "lr": setting.lr, "weight_decay": setting.weight_decay, **overrides}
