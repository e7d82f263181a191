"""Plain image classifiers (a backbone and one linear head), for the classic protocols.

Continual-learning benchmarks before CLIP (Buzzega et al. 2020's sequential CIFAR-10,
Avalanche's and Mammoth's baselines) train a network with a linear output layer over every
class of the stream, not a text tower. The runner and the methods that make sense without text
(fine-tuning, joint, EWC, LwF, ER, iCaRL, DER, WiSE-FT) accept such a model: wherever a CLIP
model builds a classifier from prompts, an `ImageClassifier` takes its head's columns for the
space's stream labels. Methods that need a text tower (ZSCL, CoOp, MoE adapters, L2P) refuse it
before training starts.

>>> model = cifar_resnet18(num_classes=10, width=8)
>>> model(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
>>> objective = HeadObjective([3, 7])
>>> terms, outputs = objective(model, torch.zeros(2, 3, 32, 32), torch.tensor([7, 3]))
>>> outputs["logits"].shape, outputs["all_logits"].shape
(torch.Size([2, 2]), torch.Size([2, 10]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from mmcl.train.objectives import ClassificationObjective, class_targets, label_positions

# Sequential CIFAR-10's normalisation (Buzzega et al. 2020, Mammoth): the training set's
# per-channel mean and standard deviation.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2615)


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


def cifar_resnet18(
    num_classes: int = 10, width: int = 64, channels_last: bool | None = None
) -> ImageClassifier:
    """ResNet-18 for 32x32 images, as in the continual-learning literature (GEM, DER, Mammoth):
    torchvision's ResNet-18 with a 3x3 stride-1 first convolution and no max-pooling, so the
    four stages see 32, 16, 8 and 4 pixels. `width` scales the channels (64: the usual 11M
    parameters; 20: GEM's "reduced ResNet-18"). From width 16 its weights are channels-last
    unless `channels_last` is False (see `ImageClassifier`): at width 20, batch 32 and one CPU
    thread a training step takes about 3/4 of the NCHW time, evaluation at batch 256 about
    half."""
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


def _channels_last_is_safe(backbone: nn.Module) -> bool:
    """Whether `backbone` has 2-D convolutions and none that oneDNN #6035 hits in NHWC."""
    convolutions = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    return bool(convolutions) and all(
        m.in_channels >= 16 for m in convolutions if m.kernel_size == (1, 1) and m.stride != (1, 1)
    )


def is_classifier(model: nn.Module) -> bool:
    """Whether `model` (or the module a DDP wrapper holds) is a plain `ImageClassifier`."""
    return isinstance(getattr(model, "module", model), ImageClassifier)


class HeadObjective:
    """Cross-entropy over the head's columns for `label_ids` (stream labels), in that order.

    Outputs: ``logits`` over those classes, ``all_logits`` over every column of the head.
    """

    def __init__(self, label_ids: Sequence[int]):
        if not label_ids:
            raise ValueError("a head objective needs at least one class")
        self.labels = torch.tensor(list(label_ids))
        self.position = label_positions(label_ids)

    def __call__(self, model, images, labels):
        all_logits = model(images)
        if all_logits.shape[1] <= int(self.labels.max()):
            raise ValueError(
                f"the model's head has {all_logits.shape[1]} outputs but the stream has class "
                f"label {int(self.labels.max())}: build it with num_classes >= "
                f"{int(self.labels.max()) + 1}"
            )
        logits = all_logits[:, self.labels.to(all_logits.device)]
        targets = class_targets(self.position, labels)
        outputs = {"logits": logits, "all_logits": all_logits}
        return {"classification": F.cross_entropy(logits, targets)}, outputs

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass


def classification_objective(model: nn.Module, space):
    """What a task over `space` (a `ClassSpace`) trains: the head's columns for a plain
    classifier, prompts through the text tower for a CLIP model."""
    if is_classifier(model):
        return HeadObjective(space.labels)
    return ClassificationObjective(space.names, space.templates, space.labels)


def head_logits(model: nn.Module, images: torch.Tensor, labels: Sequence[int]) -> torch.Tensor:
    """A plain classifier's logits for the classes `labels` (stream labels), in that order."""
    return model(images)[:, torch.as_tensor(list(labels), device=images.device)]


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
