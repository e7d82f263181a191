"""BLIP's objective under DistributedDataParallel, run by `test_distributed_losses`' two gloo
ranks (one spawn for every distributed scenario): one model call a step uses every
parameter, so DDP with find_unused_parameters=False runs step after step."""

import torch
from torch.nn.parallel import DistributedDataParallel

from mmcl.models.blip import Blip
from mmcl.models.blip_config import BlipConfig
from mmcl.train.blip_losses import contrastive_loss
from mmcl.train.blip_objective import BlipObjective

LOCAL_BATCH = 3
CONFIG = {
    "blip_vision": {"image_size": 16, "patch_size": 8, "width": 16, "layers": 1, "heads": 2,
                    "mlp_width": 32},
    "blip_text": {"vocab_size": 40, "width": 16, "layers": 1, "heads": 2, "mlp_width": 32,
                  "max_positions": 20, "pad_id": 0, "sep_id": 3, "dec_id": 5, "enc_id": 6},
    "embed_dim": 8,
}  # fmt: skip


def blip_problem(world_size: int):
    torch.manual_seed(0)
    model = Blip(BlipConfig.from_dict(CONFIG))
    images = torch.randn(world_size * LOCAL_BATCH, 3, 16, 16)
    texts = torch.tensor([[2, 10 + i, 11 + i, 3] for i in range(world_size * LOCAL_BATCH)])
    return model, images, texts


def blip_ddp_scenario(rank: int, world_size: int) -> dict:
    """Two DDP steps on this rank's rows; the first step's ITC term."""
    model, images, texts = blip_problem(world_size)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    wrapped = DistributedDataParallel(model, find_unused_parameters=False)
    objective, itc = BlipObjective(prompt_ids=[30, 31, 32]), []
    for _ in range(2):
        terms, _ = objective(wrapped, images[rows], texts[rows])
        sum(terms.values()).backward()
        itc.append(terms["itc"].detach())
        model.zero_grad()
    return {"itc": itc[0]}


def blip_single_process_itc(world_size: int) -> torch.Tensor:
    model, images, texts = blip_problem(world_size)
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(texts, normalize=True)
        return contrastive_loss(image_features, text_features, torch.tensor(0.07))
