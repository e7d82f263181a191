"""CIFAR-10's preprocessing in the continual-learning literature (sequential CIFAR-10 of
Buzzega et al. 2020, Mammoth).

>>> from PIL import Image
>>> cifar_transforms(augment=False)(Image.new("RGB", (32, 32))).shape
torch.Size([3, 32, 32])
"""

from __future__ import annotations

import torchvision

# Sequential CIFAR-10's normalisation (Buzzega et al. 2020, Mammoth): the training set's
# per-channel mean and standard deviation.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2615)


def cifar_transforms(augment: bool) -> torchvision.transforms.Compose:
    """Sequential CIFAR-10's preprocessing: random 32-pixel crop after 4 pixels of padding and
    a horizontal flip when training (`augment`), then the CIFAR-10 normalisation."""
    steps = []
    if augment:
        steps += [
            torchvision.transforms.RandomCrop(32, padding=4),
            torchvision.transforms.RandomHorizontalFlip(),
        ]
    steps += [
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
    ]
    return torchvision.transforms.Compose(steps)
