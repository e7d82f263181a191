"""BLIP's objective under DistributedDataParallel, run by `test_distributed_losses`' two gloo
ranks (one spawn for every distributed scenario): one model call a step uses every
parameter, so DDP with find_unused_parameters=False runs step after step."""

import torch
from torch.nn.parallel import DistributedDataParallel

from mmcl.models.blip import Blip
from mmcl.models.blip_config import BlipConfig
from mmcl.train.blip_losses import contrastive_loss, pair_ids
from mmcl.train.blip_objective import BlipObjective, draw_global_negatives, row_fingerprints
from mmcl.train.distributed import all_gather_with_grad, average_gradients

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


def hard_negative_problem(world_size: int):
    """A global batch in which an image (rows 1 and 4) and a caption (rows 2 and 5) each appear
    on both ranks, and the ranks' longest captions differ (4 and 6 tokens)."""
    model, images, _ = blip_problem(world_size)
    images[4] = images[1]
    texts = torch.zeros(world_size * LOCAL_BATCH, 8, dtype=torch.long)
    for row in range(len(texts)):
        words = [10 + row] if row < LOCAL_BATCH else [10 + row, 20 + row, 30 + row]
        texts[row, : len(words) + 2] = torch.tensor([2, *words, 3])
    texts[5] = texts[2]
    return model, images, texts


def blip_hard_negative_scenario(rank: int, world_size: int) -> dict:
    """This rank's ITM negatives: drawn by `draw_global_negatives` under 20 seeds, and drawn
    by one objective step (with the ITM term's gradients, averaged over ranks)."""
    model, images, texts = hard_negative_problem(world_size)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    objective = BlipObjective(prompt_ids=[30, 31, 32])
    with torch.no_grad():
        image_features = model.encode_image(images[rows], normalize=True)
        text_features = model.encode_text(texts[rows], normalize=True)
    ids = pair_ids(all_gather_with_grad(row_fingerprints(images[rows])[:, None]), texts)
    draws = [
        draw_global_negatives(
            image_features, text_features, ids, 0.07, torch.Generator().manual_seed(seed)
        )
        for seed in range(20)
    ]
    terms, outputs = objective(model, images[rows], texts[rows])
    terms["itm"].backward()
    average_gradients(model.parameters())
    return {
        "draws": draws,
        "negative_texts": outputs["itm_negative_texts"],
        "negative_images": outputs["itm_negative_images"],
        "itm": terms["itm"].detach(),
        "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
    }
