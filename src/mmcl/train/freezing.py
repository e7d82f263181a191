"""Freezing towers or parts of them (e.g. LiT: a locked, pre-trained image tower)."""

from __future__ import annotations

from torch import nn


def freeze(module: nn.Module, unlocked_last_groups: int = 0) -> None:
    """Stop gradients into `module`, except its last `unlocked_last_groups` layer groups.

    Layer groups are the transformer blocks (ViT/text) or the ResNet stages, followed by the
    head (final norm and projection), so `unlocked_last_groups=1` trains only the head.
    """
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    if unlocked_last_groups <= 0:
        return
    for group in layer_groups(module)[-unlocked_last_groups:]:
        for parameter in group:
            parameter.requires_grad_(True)


def layer_groups(tower: nn.Module) -> list[list[nn.Parameter]]:
    """The tower's parameters from input to output, in coarse groups."""
    if hasattr(tower, "transformer"):  # ViT or text transformer
        blocks = list(tower.transformer.resblocks)
        in_blocks = {id(p) for block in blocks for p in block.parameters()}
        head_names = ("ln_post", "proj", "ln_final", "text_projection")
        head = [p for n, p in tower.named_parameters() if n.split(".")[0] in head_names]
        stem = [
            p
            for p in tower.parameters()
            if id(p) not in in_blocks and all(p is not h for h in head)
        ]
        return [stem, *[list(b.parameters()) for b in blocks], head]
    stages = ("layer1", "layer2", "layer3", "layer4", "attnpool")  # ModifiedResNet
    stem = [p for n, p in tower.named_parameters() if n.split(".")[0] not in stages]
    return [stem, *[list(getattr(tower, s).parameters()) for s in stages]]
