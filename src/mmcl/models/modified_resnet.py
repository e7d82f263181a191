"""CLIP's ModifiedResNet image tower (Radford et al. 2021, sec. 2.4).

Differences from a torchvision ResNet: a 3-convolution stem with average pooling, anti-aliased
strided convolutions (average pooling before the stride-1 convolution) and an attention-pooling
head in place of global average pooling.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from mmcl.models.config import VisionConfig
from mmcl.nn import AttentionPool2d
from mmcl.nn.transformer import take_indices


class Bottleneck(nn.Module):
    expansion = 4
    # Convolution, BatchNorm (and ReLU) run back to back: `mmcl.nn.accelerate` folds them.
    conv_bn_relu_chains = (
        ("conv1", "bn1", "act1"),
        ("conv2", "bn2", "act2"),
        ("conv3", "bn3", None),
    )

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU()
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU()
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            # Key names "-1", "0", "1" match the OpenAI checkpoints.
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.act3(out + identity)


class ModifiedResNet(nn.Module):
    conv_bn_relu_chains = (
        ("conv1", "bn1", "act1"),
        ("conv2", "bn2", "act2"),
        ("conv3", "bn3", "act3"),
    )

    def __init__(self, config: VisionConfig, output_dim: int):
        super().__init__()
        width = config.width
        self.image_size = config.image_size
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU()
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width
        depths = config.layers
        self.layer1 = self._make_layer(width, depths[0])
        self.layer2 = self._make_layer(width * 2, depths[1], stride=2)
        self.layer3 = self._make_layer(width * 4, depths[2], stride=2)
        self.layer4 = self._make_layer(width * 8, depths[3], stride=2)

        embed_dim = width * 32  # channels out of layer4
        self.attnpool = AttentionPool2d(
            config.image_size // 32, embed_dim, config.heads, output_dim
        )

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Channels-last (NHWC) is the layout oneDNN and cuDNN convolutions run fastest in,
        # bf16 on the CPU above all; the layers keep it, and the attention pool reads it as tokens.
        x = self.stem(images)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.conv1.weight.dtype, memory_format=torch.channels_last)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.avgpool(self.act3(self.bn3(self.conv3(x))))

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
        normalize_intermediates: bool = False,
        intermediates_only: bool = False,
        output_fmt: str = "NCHW",
        output_extra_tokens: bool = False,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The outputs of the five stages (stem, layer1..layer4) `indices` chooses, as
        open_clip returns them: ``image_intermediates`` ``(batch, channels, h, w)`` and, unless
        `intermediates_only`, ``image_features`` (which needs every stage: `stop_early` is
        ignored then). `normalize_intermediates` and `output_extra_tokens` do not apply (no
        final norm, no extra tokens), as in open_clip."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for a ResNet, got {output_fmt!r}")
        taken = take_indices(5, indices)
        stages = [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]
        if stop_early and intermediates_only:
            stages = stages[: max(taken) + 1]
        x, intermediates = images, []
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in taken:
                intermediates.append(x)
        output = {"image_intermediates": intermediates}
        if not intermediates_only:
            output["image_features"] = self.attnpool(x)
        return output
