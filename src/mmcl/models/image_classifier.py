"""A plain image classifier: a backbone and one linear head, for the classic protocols.

Continual-learning benchmarks before CLIP (Buzzega et al. 2020's sequential CIFAR-10,
Avalanche's and Mammoth's baselines) train a network with a linear output layer over every
class of the stream, not a text tower; `mmcl.continual.heads` trains such a model.

>>> import torch
>>> from torch import nn
>>> model = ImageClassifier(nn.Flatten(), feature_dim=12, num_classes=3, image_size=2)
>>> model(torch.zeros(5, 3, 2, 2)).shape
torch.Size([5, 3])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ImageClassifier(nn.Module):
    """``head(backbone(images))``: logits over every class of the stream, column = stream label.

    `encode_image` gives the backbone's features (L2-normalised on request), which is what
    iCaRL's nearest-mean classifier compares.

    `channels_last` stores the convolution weights in the channels-last (NHWC) memory format,
    which oneDNN on the CPU convolves faster than NCHW: a convolution follows its
    weight's layout, so the activations become NHWC from the first layer on and images may come
    in either layout. Only the layout changes: outputs equal the NCHW model's up to float
    rounding, and ``state_dict()`` holds the same values (strided differently; `torch.save`,
    `load_state_dict` and mmcl's safetensors export handle either layout in both directions).
    The default (None) is channels-last when the backbone has a 2-D convolution and every
    strided 1x1 convolution (a ResNet's downsampling shortcut) has at least 16 input channels:
    oneDNN 3.x's NHWC weight gradient of a strided 1x1 convolution with fewer input channels
    than its vector block (16 with AVX-512, 8 with AVX2) writes past its workspace (oneDNN
    issue #6035: wrong gradients or a crash; with torch 2.14 on AVX-512, a crash at 2 threads
    and odd batch sizes).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        image_size: int,
        channels_last: bool | None = None,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"an image classifier needs at least one class, got {num_classes}")
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.num_classes = num_classes
        self.image_size = image_size
        if channels_last is None:
            channels_last = _channels_last_is_safe(backbone)
        if channels_last:
            self.to(memory_format=torch.channels_last)  # 4-D tensors only: the convolutions

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.backbone(images)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def _channels_last_is_safe(backbone: nn.Module) -> bool:
    """Whether `backbone` has 2-D convolutions and none that oneDNN #6035 hits in NHWC."""
    convolutions = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    return bool(convolutions) and all(
        m.in_channels >= 16 for m in convolutions if m.kernel_size == (1, 1) and m.stride != (1, 1)
    )
