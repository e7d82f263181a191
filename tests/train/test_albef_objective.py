"""ALBEF's objective: every loss and mask against a hand-worked case, the order of the
momentum update, the temperature clamp, the alpha ramp, the queue, and an exact resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import mmcl.train.albef_objective as albef_objective
from mmcl.models.albef import Albef
from mmcl.models.albef_config import AlbefConfig
from mmcl.train import TrainConfig, Trainer, TrainingPlugin
from mmcl.train.albef_objective import (
    AlbefObjective,
    distillation_weight,
    enqueue,
    mask_tokens,
    mlm_distillation_loss,
    momentum_update,
    queue_contrastive_loss,
    soft_targets,
)
from mmcl.train.blip_losses import IGNORE

VOCAB, PAD, CLS, SEP, MASK = 30, 0, 2, 3, 4
CONFIG = {
    "vision_cfg": {
        "image_size": 16,
        "patch_size": 8,
        "width": 16,
        "layers": 1,
        "heads": 2,
        "mlp_width": 32,
    },
    "albef_text": {
        "vocab_size": VOCAB,
        "width": 16,
        "text_layers": 1,
        "fusion_layers": 1,
        "heads": 2,
        "mlp_width": 32,
        "max_positions": 10,
        "pad_id": PAD,
        "cls_id": CLS,
        "sep_id": SEP,
        "mask_id": MASK,
    },
    "embed_dim": 8,
}


def tiny(seed: int = 0) -> Albef:
    torch.manual_seed(seed)
    return Albef(AlbefConfig.from_dict(CONFIG))


def batch(size: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 16, 16, generator=generator)
    tokens = torch.randint(5, VOCAB, (size, 6), generator=generator)
    tokens[:, 0] = CLS
    tokens[:, -1] = PAD
    tokens[:, -2] = SEP
    return images, tokens


def softmax(row):
    total = sum(math.exp(x) for x in row)
    return [math.exp(x) / total for x in row]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


# --- pure pieces -------------------------------------------------------------------------------


def test_alpha_ramps_linearly_over_the_first_epoch_then_stays():
    assert [distillation_weight(c, 4, 0.4) for c in range(7)] == pytest.approx(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4]
    )
    assert distillation_weight(0, None, 0.4) == 0.4  # no epoch length: no ramp


def test_soft_targets_mix_the_momentum_softmax_with_the_one_hot_positive():
    sims = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]])  # batch 2, queue 1
    first, second = softmax([1.0, 0.0, 2.0]), softmax([0.0, 3.0, 1.0])
    expected = [
        [0.25 * first[0] + 0.75, 0.25 * first[1], 0.25 * first[2]],
        [0.25 * second[0], 0.25 * second[1] + 0.75, 0.25 * second[2]],
    ]
    torch.testing.assert_close(soft_targets(sims, 0.25), torch.tensor(expected))
    assert torch.allclose(soft_targets(sims, 0.25).sum(1), torch.ones(2))


def test_queue_contrastive_loss_equals_the_formula_worked_by_hand():
    images = [[1.0, 0.0], [0.0, 1.0]]
    texts = [[0.6, 0.8], [0.8, -0.6]]
    momentum_images = [[0.8, 0.6], [0.0, 1.0]]
    momentum_texts = [[1.0, 0.0], [0.6, -0.8]]
    image_queue, text_queue = [[-1.0, 0.0]], [[0.0, -1.0]]
    temperature, alpha = 0.5, 0.4

    def side(queries, momentum_queries, keys):
        total = 0.0
        for i, (query, momentum_query) in enumerate(zip(queries, momentum_queries, strict=True)):
            logits = [dot(query, key) / temperature for key in keys]
            momentum = softmax([dot(momentum_query, key) / temperature for key in keys])
            targets = [alpha * p + (1 - alpha) * (j == i) for j, p in enumerate(momentum)]
            log_probs = [math.log(p) for p in softmax(logits)]
            total -= dot(targets, log_probs)
        return total / len(queries)

    expected = (
        side(images, momentum_images, momentum_texts + text_queue)
        + side(texts, momentum_texts, momentum_images + image_queue)
    ) / 2
    t = torch.tensor
    loss = queue_contrastive_loss(
        t(images),
        t(texts),
        t(momentum_images),
        t(momentum_texts),
        t(image_queue),
        t(text_queue),
        t(temperature),
        alpha,
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_queue_contrastive_loss_with_no_information_is_log_of_the_candidates():
    # Every similarity 0 and alpha 0: each row is a uniform guess over batch + queue (2 + 3).
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    others = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    queue = torch.tensor([[0.0, 1.0]] * 3)
    loss = queue_contrastive_loss(
        features, features, others, others, queue, queue, torch.tensor(0.1), 0.0
    )
    assert loss.item() == pytest.approx(math.log(5))


def test_masking_never_touches_padding_or_the_start_token():
    tokens = torch.tensor([[CLS, 7, 8, SEP, PAD, PAD], [CLS, 9, SEP, PAD, PAD, PAD]])
    masked, targets = mask_tokens(tokens, VOCAB, MASK, PAD, CLS, probability=1.0)
    chosen = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(targets, tokens.masked_fill(~chosen, IGNORE))
    assert torch.equal(masked[~chosen], tokens[~chosen])


def test_masking_replaces_80_percent_by_mask_10_by_random_and_keeps_10():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.full((200, 100), 7)
    tokens[:, 0] = CLS
    masked, targets = mask_tokens(tokens, 1000, MASK, PAD, CLS, 0.5, generator)
    chosen = targets != IGNORE
    assert not chosen[:, 0].any()
    assert chosen[:, 1:].float().mean().item() == pytest.approx(0.5, abs=0.01)
    picked = masked[chosen]
    assert (picked == MASK).float().mean().item() == pytest.approx(0.8, abs=0.01)
    assert (picked == 7).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert ((picked != MASK) & (picked != 7)).float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert torch.equal(masked[~chosen], tokens[~chosen])


def test_mlm_distillation_loss_equals_the_formula_worked_by_hand():
    logits = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]]])
    momentum = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [9.0, 0.0, 0.0]]])
    targets = torch.tensor([[0, 1, IGNORE]])  # the third token was not chosen
    alpha = 0.3
    first, second = softmax([1.0, 0.0, 0.0]), softmax([0.0, 2.0, 0.0])
    hard = -(math.log(first[0]) + math.log(second[1])) / 2
    teacher = softmax([0.0, 1.0, 0.0])
    soft = -(dot(teacher, [math.log(p) for p in first]) + sum(math.log(p) for p in second) / 3) / 2
    loss = mlm_distillation_loss(logits, targets, momentum, alpha)
    assert loss.item() == pytest.approx((1 - alpha) * hard + alpha * soft, rel=1e-6)
    none = mlm_distillation_loss(logits.requires_grad_(), torch.full((1, 3), IGNORE), momentum, 0.3)
    assert none.item() == 0 and none.requires_grad


def test_momentum_update_moves_each_weight_a_fraction_towards_the_model():
    model, averaged = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0), model.bias.fill_(-2.0)
        averaged.weight.fill_(0.0), averaged.bias.fill_(2.0)
    momentum_update(averaged, model, 0.75)
    assert averaged.weight.item() == pytest.approx(0.25)
    assert averaged.bias.item() == pytest.approx(0.75 * 2.0 + 0.25 * -2.0)


def test_enqueue_writes_a_ring_buffer_from_the_pointer():
    queue = torch.zeros(4, 1)
    pointer = enqueue(queue, 3, torch.tensor([[1.0], [2.0]]))
    assert pointer == 1 and queue.flatten().tolist() == [2.0, 0.0, 0.0, 1.0]


# --- the objective on a tiny ALBEF -------------------------------------------------------------


def test_temperature_is_clamped_to_its_range_at_every_step():
    model, objective = tiny(), AlbefObjective(queue_size=8)
    images, tokens = batch()
    for start, clamped in ((1.0, 0.5), (1e-6, 0.001), (0.2, 0.2)):
        with torch.no_grad():
            model.temp.fill_(start)
        objective(model, images, tokens)
        assert model.temp.item() == pytest.approx(clamped)


def test_the_momentum_model_is_updated_before_it_computes_the_queued_features():
    model, objective = tiny(), AlbefObjective(queue_size=8, momentum=0.5)
    objective.check(model)
    with torch.no_grad():  # the model moves away from its momentum copy
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    stale = copy.deepcopy(objective.momentum_model)
    updated = copy.deepcopy(stale)
    current = dict(model.named_parameters())
    with torch.no_grad():
        for name, parameter in updated.named_parameters():
            parameter.copy_(0.5 * parameter + 0.5 * current[name])
    images, tokens = batch()
    objective(model, images, tokens)
    queued = objective.image_queue[:4]
    torch.testing.assert_close(queued, updated.encode_image(images, normalize=True))
    assert not torch.allclose(queued, stale.encode_image(images, normalize=True), atol=1e-3)
    assert objective.queue_pointer == 4


def test_the_queue_receives_every_ranks_momentum_features(monkeypatch):
    # Two ranks: the other rank's rows (here our rows + 1) follow ours, as all_gather orders.
    monkeypatch.setattr(albef_objective, "all_gather_with_grad", lambda x: torch.cat([x, x + 1]))
    model, objective = tiny(), AlbefObjective(queue_size=16, momentum=0.0)
    images, tokens = batch()
    objective(model, images, tokens)
    own = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(objective.text_queue[:8], torch.cat([own, own + 1]))
    assert objective.queue_pointer == 8


def test_itm_pairs_one_positive_and_two_hard_negatives_never_the_positive():
    model, objective = tiny(), AlbefObjective(queue_size=8)
    for seed in range(5):
        images, tokens = batch(seed=seed)
        terms, outputs = objective(model, images, tokens)
        image_index, text_index = outputs["itm_image_index"], outputs["itm_text_index"]
        assert outputs["itm_logits"].shape == (12, 2)
        same = image_index == text_index
        assert same[:4].all() and not same[4:].any()  # 4 positives, then 8 negatives
        assert torch.equal(image_index[:8], torch.arange(4).repeat(2))  # image i, its negative
        assert torch.equal(text_index[8:], torch.arange(4))  # text i, its negative image
        assert set(terms) == {"itc", "itm", "mlm"}


def test_alpha_is_zero_at_the_first_step_of_a_ramped_run():
    model, objective = tiny(), AlbefObjective(queue_size=8)
    objective.set_epoch_steps(4)
    alphas = [objective(model, *batch())[1]["alpha"] for _ in range(5)]
    assert alphas == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_masks_depend_on_the_seed_the_step_and_the_rank_only(monkeypatch):
    images, tokens = batch(8)

    def targets(rank, calls):
        monkeypatch.setattr(albef_objective, "rank", lambda: rank)
        objective = AlbefObjective(queue_size=8, mlm_probability=0.5)
        objective.check(tiny())
        objective.seed, objective.calls = 7, calls
        return objective(tiny(), images, tokens)[1]["mlm_targets"]

    assert torch.equal(targets(0, 3), targets(0, 3))  # a resumed rank draws the same
    assert not torch.equal(targets(0, 3), targets(1, 3))  # ranks draw their own
    assert not torch.equal(targets(0, 3), targets(0, 4))  # and each step anew


def test_the_run_settings_choose_the_queue_and_the_momentum():
    config = TrainConfig(loss="albef", albef_queue_size=6, albef_momentum=0.9, batch_size=2)
    objective = Trainer(tiny(), list(zip(*batch(), strict=True)), config).objective
    assert isinstance(objective, AlbefObjective)
    assert (objective.queue_size, objective.momentum) == (6, 0.9)


# --- resume ------------------------------------------------------------------------------------


class Stop(Exception):
    pass


class StopAfter(TrainingPlugin):
    name = "stop"

    def __init__(self, step: int | None = None):
        self.stop_step = step

    def after_optimizer_step(self, trainer):
        if trainer.step == self.stop_step:
            raise Stop


def test_resume_is_exact_momentum_queue_and_pointer_included(tmp_path):
    images, tokens = batch(16, seed=1)
    data = list(zip(images, tokens, strict=True))

    def run(folder, plugin, seed=0, resume=None):
        config = TrainConfig(
            loss="albef",
            steps=4,
            batch_size=4,
            lr=1e-3,
            checkpoint_every=2,
            progress=False,
            tensorboard=False,
            output_dir=str(tmp_path / folder),
            resume=resume,
        )
        objective = AlbefObjective(queue_size=6, momentum=0.5)  # 6: the pointer wraps mid-run
        trainer = Trainer(tiny(seed), data, config, plugins=[plugin], objective=objective)
        trainer.fit()
        return trainer

    whole = run("whole", StopAfter())
    assert whole.objective.ramp_calls == 16 // 4  # alpha ramps over the first epoch's steps
    with pytest.raises(Stop):
        run("cut", StopAfter(2))
    resumed = run("cut", StopAfter(), seed=123, resume="latest")
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    saved, again = whole.objective.state_dict(), resumed.objective.state_dict()
    assert saved["queue_pointer"] == again["queue_pointer"] == (4 * 4) % 6
    assert saved["calls"] == again["calls"] == 4
    for key in ("image_queue", "text_queue"):
        assert torch.equal(saved[key], again[key]), key
    for key, value in saved["momentum_model"].items():
        assert torch.equal(value, again["momentum_model"][key]), key
