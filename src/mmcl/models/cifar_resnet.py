"""ResNet-18 for 32x32 images, the backbone of the continual-learning literature's CIFAR
protocols (GEM, DER, Mammoth), as a plain `ImageClassifier`.

>>> import torch
>>> model = cifar_resnet18(num_classes=10, width=8)
>>> model(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torchvision
from torch import nn

from mmcl.models.image_classifier import ImageClassifier


def cifar_resnet18(
    num_classes: int = 10, width: int = 64, channels_last: bool | None = None
) -> ImageClassifier:
    """ResNet-18 for 32x32 images, as in the continual-learning literature (GEM, DER, Mammoth):
    torchvision's ResNet-18 with a 3x3 stride-1 first convolution and no max-pooling, so the
    four stages see 32, 16, 8 and 4 pixels. `width` scales the channels (64: the usual 11M
    parameters; 20: GEM's "reduced ResNet-18"). From width 16 its weights are channels-last
    unless `channels_last` is False (see `ImageClassifier`): oneDNN trains and evaluates that
    layout faster on the CPU."""
    block = torchvision.models.resnet.BasicBlock
    network = torchvision.models.ResNet(block, [2, 2, 2, 2])
    network.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
    network.bn1 = nn.BatchNorm2d(width)
    network.inplanes = width  # _make_layer reads and advances it
    for stage, stride in enumerate((1, 2, 2, 2)):
        channels = width * 2**stage
        setattr(network, f"layer{stage + 1}", network._make_layer(block, channels, 2, stride))
    network.maxpool = nn.Identity()
    network.fc = nn.Identity()
    return ImageClassifier(network, 8 * width, num_classes, 32, channels_last=channels_last)
