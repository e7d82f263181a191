"""Two real gloo processes: the distributed losses equal one process on the concatenated batch.

One spawn (module fixture) runs every scenario on both ranks and saves the results to files;
the tests compare them with the same computations done here in a single process.
"""

import math
import os

import pytest
import torch
import torch.multiprocessing as mp
from blip_ddp_scenario import (
    LOCAL_BATCH as BLIP_LOCAL_BATCH,
)
from blip_ddp_scenario import (
    blip_ddp_scenario,
    blip_hard_negative_scenario,
    blip_single_process_itc,
    hard_negative_problem,
)
from torch import nn
from torch.nn import functional as F

from conftest import free_port, join_cpu_process_group
from mmcl.train import distributed
from mmcl.train.grad_cache import grad_cache_step
from mmcl.train.losses import ClipLoss, SigLipLoss

WORLD_SIZE = 2
LOCAL_BATCH = 4
BATCH = WORLD_SIZE * LOCAL_BATCH
DIM = 8
LOSSES = ["clip", "siglip"]


class LinearDualEncoder(nn.Module):
    """Two linear towers on float inputs, with the interface grad_cache_step expects."""

    def __init__(self):
        super().__init__()
        self.image = nn.Linear(6, DIM)
        self.text = nn.Linear(5, DIM)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(5.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-2.0))  # used by SigLIP only

    def encode_image(self, x, normalize=False):
        return F.normalize(self.image(x), dim=-1) if normalize else self.image(x)

    def encode_text(self, x, normalize=False):
        return F.normalize(self.text(x), dim=-1) if normalize else self.text(x)


def problem() -> dict:
    """The same global batch and model on every process."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    torch.manual_seed(0)
    return {
        "image_features": F.normalize(randn(BATCH, DIM), dim=-1),
        "text_features": F.normalize(randn(BATCH, DIM), dim=-1),
        "images": randn(BATCH, 6),
        "texts": randn(BATCH, 5),
        "model": LinearDualEncoder().double(),
    }


def loss_fn(name: str, model: LinearDualEncoder):
    if name == "clip":
        return ClipLoss()
    return lambda image, text, scale: SigLipLoss()(image, text, scale, model.logit_bias)


def features_scenario(name: str, image_features, text_features) -> dict:
    """Leaf features in; the loss and the gradients of the features, scale and bias out."""
    image = image_features.clone().requires_grad_()
    text = text_features.clone().requires_grad_()
    log_scale = torch.tensor(math.log(5.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    if name == "clip":
        loss = ClipLoss()(image, text, log_scale.exp())
    else:
        loss = SigLipLoss()(image, text, log_scale.exp(), bias)
    loss.backward()
    return {
        "loss": loss.detach(),
        "image_grad": image.grad,
        "text_grad": text.grad,
        "scale_grad": log_scale.grad,
        "bias_grad": bias.grad if name == "siglip" else None,
    }


def model_scenario(name: str, model, images, texts, chunk_size: int | None) -> dict:
    """Parameter gradients of a plain step (chunk_size None) or a gradient-cached one,
    averaged over ranks as DistributedDataParallel does."""
    loss_function = loss_fn(name, model)
    if chunk_size is None:
        scale = model.logit_scale.exp()
        image = model.encode_image(images, normalize=True)
        text = model.encode_text(texts, normalize=True)
        loss = loss_function(image, text, scale)
        loss.backward()
        loss = loss.detach()
    else:
        loss = grad_cache_step(model, images, texts, loss_function, chunk_size)
    distributed.average_gradients(model.parameters())
    return {"loss": loss, "grads": {n: p.grad for n, p in model.named_parameters()}}


def worker(rank: int, port: int, out_dir: str) -> None:
    info = join_cpu_process_group(rank, WORLD_SIZE, port)
    try:
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        data = problem()
        gathered = distributed.all_gather_with_grad(data["image_features"][rows])
        results = {
            "info": (info.rank, info.local_rank, info.world_size, str(info.device)),
            "helpers": (distributed.is_distributed(), distributed.rank(), distributed.world_size()),
            "gathered": gathered,
        }
        for name in LOSSES:
            results[name] = features_scenario(
                name, data["image_features"][rows], data["text_features"][rows]
            )
            for chunk_size in (None, 3):
                model = problem()["model"]
                results[(name, chunk_size)] = model_scenario(
                    name, model, data["images"][rows], data["texts"][rows], chunk_size
                )
        results["blip"] = blip_ddp_scenario(rank, WORLD_SIZE)
        results["blip_negatives"] = blip_hard_negative_scenario(rank, WORLD_SIZE)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("distributed")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


def assert_close(actual, expected):
    assert torch.allclose(actual, expected, rtol=0, atol=1e-6), (actual - expected).abs().max()


def test_process_group_helpers(ranks):
    for r, result in enumerate(ranks):
        assert result["info"] == (r, r, WORLD_SIZE, "cpu")
        assert result["helpers"] == (True, r, WORLD_SIZE)
        assert torch.equal(result["gathered"], problem()["image_features"])  # rank order
    assert not distributed.is_distributed()  # this process never joined


@pytest.mark.parametrize("name", LOSSES)
def test_loss_and_feature_gradients_equal_one_process(ranks, name):
    data = problem()
    single = features_scenario(name, data["image_features"], data["text_features"])
    per_rank = [result[name] for result in ranks]
    # The global loss is the mean of the per-rank losses.
    assert_close(torch.stack([r["loss"] for r in per_rank]).mean(), single["loss"])
    # Each rank's features get world_size x the global gradient of its rows...
    for key in ("image_grad", "text_grad"):
        gathered = torch.cat([r[key] for r in per_rank])
        assert_close(gathered / WORLD_SIZE, single[key])
    # ...and replicated scalars get their per-rank loss's gradient: the average is exact.
    keys = ["scale_grad"] + (["bias_grad"] if name == "siglip" else [])
    for key in keys:
        assert_close(torch.stack([r[key] for r in per_rank]).mean(), single[key])


@pytest.mark.parametrize("chunk_size", [None, 3], ids=["plain", "grad_cache"])
@pytest.mark.parametrize("name", LOSSES)
def test_ddp_averaged_parameter_gradients_equal_one_process(ranks, name, chunk_size):
    data = problem()
    single = model_scenario(name, data["model"], data["images"], data["texts"], chunk_size=None)
    assert_close(
        torch.stack([result[(name, chunk_size)]["loss"] for result in ranks]).mean(),
        single["loss"],
    )
    for result in ranks:
        for parameter, grad in result[(name, chunk_size)]["grads"].items():
            expected = single["grads"][parameter]
            if expected is None:  # ClipLoss never touches logit_bias
                assert grad is None
            else:
                assert_close(grad, expected)


def test_blip_objective_runs_under_ddp_and_its_itc_is_the_global_batchs(ranks):
    # Two steps with find_unused_parameters=False ran on both ranks (an unused parameter
    # fails the second step's forward); ITC gathered across ranks averages to one process's.
    mean_itc = sum(result["blip"]["itc"] for result in ranks) / WORLD_SIZE
    assert abs(mean_itc.item() - blip_single_process_itc(WORLD_SIZE).item()) < 1e-5


def test_blip_itm_negatives_are_drawn_from_every_ranks_rows_as_in_one_process(ranks):
    from mmcl.train.blip_losses import draw_negatives, itm_loss, pair_ids

    model, images, texts = hard_negative_problem(WORLD_SIZE)
    ids = pair_ids(images, texts)  # from the pixels: {1, 4} one image, {2, 5} one caption
    assert ids.tolist() == [0, 1, 2, 3, 1, 2]
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=True)
        text_features = model.encode_text(texts, normalize=True)
    similarity = image_features @ text_features.T / 0.07
    for r, result in enumerate(ranks):
        rows = slice(r * BLIP_LOCAL_BATCH, (r + 1) * BLIP_LOCAL_BATCH)
        for seed, (negative_texts, negative_images) in enumerate(result["blip_negatives"]["draws"]):
            generator = torch.Generator().manual_seed(seed)
            expected_texts = draw_negatives(similarity[rows], ids[rows], ids, generator)
            expected_images = draw_negatives(similarity.T[rows], ids[rows], ids, generator)
            assert negative_texts.tolist() == expected_texts.tolist()
            assert negative_images.tolist() == expected_images.tolist()
    # One objective step: the ITM pairs each rank drew, scored in one process on the global
    # batch, give the mean of the ranks' ITM terms and their averaged gradients.
    negative_texts = torch.cat([r["blip_negatives"]["negative_texts"] for r in ranks])
    negative_images = torch.cat([r["blip_negatives"]["negative_images"] for r in ranks])
    assert any(n // BLIP_LOCAL_BATCH != i // BLIP_LOCAL_BATCH
               for i, n in enumerate(negative_texts.tolist() + negative_images.tolist()))  # fmt: skip
    everyone = torch.arange(len(texts))
    texts = texts[:, :6]  # the global batch's longest caption
    image_tokens = model.encode_image_tokens(images)
    logits = model.itm_logits(
        torch.cat([image_tokens, image_tokens, image_tokens[negative_images]]),
        torch.cat([texts, texts[negative_texts], texts]),
    )
    labels = torch.cat([torch.ones_like(everyone), torch.zeros_like(everyone).repeat(2)])
    loss = itm_loss(logits, labels)
    loss.backward()
    mean_itm = sum(r["blip_negatives"]["itm"] for r in ranks) / WORLD_SIZE
    assert abs(mean_itm.item() - loss.item()) < 1e-5
    for name, grad in ranks[0]["blip_negatives"]["grads"].items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad, atol=1e-5, rtol=1e-4)
