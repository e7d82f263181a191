"""The training loop: schedule, freezing, precision, accumulation, resume, and bad settings."""

import copy
import json
import math

import pytest
import torch

import mmcl
from mmcl.train import ResumeError, TrainConfig, Trainer, TrainingPlugin
from mmcl.train.optim import build_optimizer, cosine_with_warmup, step_decay
from training_runs import RandomPairs, Stop, StopAfter


def settings(tmp_path, **overrides):
    values = dict(
        steps=6,
        batch_size=8,
        lr=1e-4,
        warmup_steps=1,
        progress=False,
        tensorboard=False,
        output_dir=str(tmp_path / "run"),
        log_every=1,
    )
    values.update(overrides)
    return TrainConfig(**values)


def losses(tmp_path, name="run"):
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


def tiny_model(seed=0, name="tiny-vit", **overrides):
    torch.manual_seed(seed)
    return mmcl.create_model(name, **overrides)


def test_loss_goes_down_and_artifacts_are_written(tmp_path):
    result = Trainer(tiny_model(), RandomPairs(), settings(tmp_path, steps=30)).fit()
    curve = losses(tmp_path)
    assert result.steps == 30 and len(curve) == 30
    assert sum(curve[-5:]) / 5 < 0.7 * sum(curve[:5]) / 5
    assert (tmp_path / "run" / "model.safetensors").is_file()
    reloaded, _ = mmcl.load(tmp_path / "run" / "model.safetensors")
    assert torch.equal(reloaded.state_dict()["logit_scale"], trained_scale(tmp_path))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step_00000030.pt"
    ]


def trained_scale(tmp_path):
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "step_00000030.pt")
    return checkpoint["model"]["logit_scale"]


def test_resume_continues_exactly(tmp_path):
    data = RandomPairs()
    Trainer(tiny_model(), data, settings(tmp_path, steps=8, checkpoint_every=3)).fit()
    uninterrupted = losses(tmp_path)
    # Stop a second run after step 5 (its last checkpoint is step 3), then resume it.
    config = settings(tmp_path, steps=8, checkpoint_every=3, output_dir=str(tmp_path / "cut"))

    with pytest.raises(Stop):
        Trainer(tiny_model(), data, config, plugins=[StopAfter(5)]).fit()
    config.resume = "latest"
    Trainer(tiny_model(seed=123), data, config, plugins=[StopAfter()]).fit()
    assert losses(tmp_path, "cut") == uninterrupted


def test_resume_refuses_a_different_schedule(tmp_path):
    data = RandomPairs()
    Trainer(tiny_model(), data, settings(tmp_path, steps=4, checkpoint_every=2)).fit()
    changed = settings(tmp_path, steps=8, lr=5e-5, resume="latest")
    with pytest.raises(ResumeError, match="total_steps: checkpoint 4 vs now 8"):
        Trainer(tiny_model(), data, changed).fit()
    changed.allow_schedule_change = True
    result = Trainer(tiny_model(), data, changed).fit()
    assert result.steps == 8


def test_cosine_schedule_with_warmup_follows_the_formula():
    optimizer = build_optimizer(tiny_model(), lr=1.0)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=4, total_steps=14, min_ratio=0.1)
    rates = []
    for _ in range(14):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    expected = [(s + 1) / 4 for s in range(4)] + [
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 10)) for s in range(4, 14)
    ]
    assert rates == pytest.approx(expected)


def test_step_schedule_decays_at_fractions_of_the_run_after_warmup():
    optimizer = build_optimizer(tiny_model(), lr=1.0, kind="sgd")
    scheduler = step_decay(
        optimizer, total_steps=20, decay_at=(0.5, 0.75), decay=0.1, warmup_steps=2
    )
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    expected = [0.5, 1.0] + [1.0] * 8 + [0.1] * 5 + [0.01] * 5  # milestones at steps 10 and 15
    assert rates == pytest.approx(expected)


def test_sgd_and_step_schedule_settings_reach_the_trainer(tmp_path):
    config = settings(
        tmp_path, optimizer="sgd", momentum=0.9, schedule="step", lr_decay_at=[0.5], lr=0.01
    )
    trainer = Trainer(tiny_model(), RandomPairs(), config)
    trainer.fit()
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    assert trainer.optimizer.param_groups[0]["momentum"] == 0.9
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.001)  # decayed once, at step 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optimizer": "lamb"}, "optimizer=.lamb. is not one of .adamw., .sgd."),
        ({"schedule": "linear"}, "schedule=.linear. is not one of .cosine., .step."),
        ({"momentum": 1.0}, "momentum must be in"),
        ({"schedule": "step", "lr_decay_at": [0.9, 0.5]}, "increasing fractions"),
        ({"lr_decay_at": [0.5]}, "needs schedule 'step'"),
        ({"lr_decay": 0.0}, "lr_decay must be in"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio must be in"),
    ],
)
def test_bad_optimiser_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_weight_decay_spares_norms_biases_embeddings_and_scale():
    model = tiny_model()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in optimizer.param_groups[0]["params"]}
    spared = {names[id(p)] for p in optimizer.param_groups[1]["params"]}
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in decayed
    assert "text.text_projection" in decayed
    for name in (
        "logit_scale",
        "text.token_embedding.weight",
        "text.positional_embedding",
        "visual.class_embedding",
        "visual.ln_pre.weight",
        "visual.transformer.resblocks.0.mlp.c_fc.bias",
    ):
        assert name in spared
    assert decayed.isdisjoint(spared) and len(decayed | spared) == len(names)


def test_adamw_is_fused_and_takes_torchs_reference_steps():
    # The fused kernel against torch's plain per-tensor loop, from the same weights and
    # gradients, with the same two groups (decay and none): the same update up to rounding.
    model = tiny_model()
    reference = copy.deepcopy(model)
    start = copy.deepcopy(model.state_dict())
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.2)
    assert optimizer.defaults["fused"] is True
    twin = dict(zip(model.parameters(), reference.parameters(), strict=True))
    groups = [
        {"params": [twin[p] for p in group["params"]], "weight_decay": group["weight_decay"]}
        for group in optimizer.param_groups
    ]
    plain = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, foreach=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in twin.items():
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        optimizer.step()
        plain.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(a, start[name]), name  # every parameter moved


def test_locked_image_tower_does_not_move(tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, RandomPairs(), settings(tmp_path, steps=3, lock_image=True)).fit()
    after = model.state_dict()
    for key in before:
        moved = not torch.equal(before[key], after[key])
        assert moved == (not key.startswith("visual.")) or key == "logit_scale", key


def test_partly_unlocked_image_tower_trains_only_its_head(tmp_path):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = settings(tmp_path, steps=2, lock_image=True, lock_image_unlocked_groups=1)
    Trainer(model, RandomPairs(), config).fit()
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    visual_moved = {k for k in moved if k.startswith("visual.")}
    assert visual_moved == {"visual.ln_post.weight", "visual.ln_post.bias", "visual.proj"}


def test_bf16_autocast_trains_on_cpu(tmp_path):
    result = Trainer(tiny_model(), RandomPairs(), settings(tmp_path, precision="bf16")).fit()
    assert math.isfinite(result.final_loss)
    assert next(iter(tiny_model().parameters())).dtype == torch.float32  # weights stay fp32


def test_fp16_autocast_uses_a_grad_scaler(tmp_path):
    trainer = Trainer(tiny_model(), RandomPairs(), settings(tmp_path, precision="fp16", steps=3))
    result = trainer.fit()
    assert math.isfinite(result.final_loss)
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 0
    saved = torch.load(result.checkpoint)
    assert saved["scaler"]["scale"] == trainer.scaler.get_scale()  # resumable with its scale


def test_gradient_checkpointing_gives_the_same_curve(tmp_path):
    Trainer(tiny_model(), RandomPairs(), settings(tmp_path)).fit()
    Trainer(
        tiny_model(),
        RandomPairs(),
        settings(tmp_path, grad_checkpointing=True, output_dir=str(tmp_path / "gc")),
    ).fit()
    assert losses(tmp_path, "gc") == pytest.approx(losses(tmp_path), abs=1e-6)


def test_gradient_caching_gives_the_same_curve(tmp_path):
    Trainer(tiny_model(), RandomPairs(), settings(tmp_path)).fit()
    Trainer(
        tiny_model(),
        RandomPairs(),
        settings(tmp_path, grad_cache_chunk=3, output_dir=str(tmp_path / "cache")),
    ).fit()
    assert losses(tmp_path, "cache") == pytest.approx(losses(tmp_path), abs=1e-5)


def test_gradient_clipping_bounds_the_norm(tmp_path):
    norms = []

    class RecordNorm(TrainingPlugin):
        def after_optimizer_step(self, trainer):
            grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    config = settings(tmp_path, steps=3, grad_clip_norm=0.01)
    Trainer(tiny_model(), RandomPairs(), config, plugins=[RecordNorm()]).fit()
    assert all(n <= 0.01 + 1e-6 for n in norms)


def test_accumulation_consumes_several_batches_per_step(tmp_path):
    trainer = Trainer(
        tiny_model(),
        RandomPairs(size=32),
        settings(tmp_path, steps=None, epochs=2, accumulation_steps=2),
    )
    assert trainer.steps_per_epoch == 2
    result = trainer.fit()
    assert result.steps == 4


def test_siglip_loss_trains_the_bias(tmp_path):
    model = tiny_model(init_logit_bias=-10.0, init_logit_scale=math.log(10))
    Trainer(model, RandomPairs(), settings(tmp_path, loss="siglip", steps=4)).fit()
    assert model.logit_bias.item() != -10.0
    with pytest.raises(ValueError, match="needs a model with a logit bias"):
        no_bias = settings(tmp_path, loss="siglip", output_dir=str(tmp_path / "no_bias"))
        Trainer(tiny_model(), RandomPairs(), no_bias).fit()


def test_evaluation_runs_every_n_steps_and_at_the_end(tmp_path):
    calls = []

    def evaluate(model):
        calls.append(model.training)
        return {"score": float(len(calls))}

    result = Trainer(
        tiny_model(), RandomPairs(), settings(tmp_path, steps=5, eval_every=2), evaluate=evaluate
    ).fit()
    assert calls == [False, False, False]  # steps 2, 4 and the end, in eval mode
    assert result.metrics == {"score": 3.0}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [r["step"] for r in map(json.loads, lines) if r["kind"] == "eval"] == [2, 4, 5]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"precision": "int8"}, "precision=.int8. is not one of .fp32., .bf16., .fp16."),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"loss": "triplet"}, "loss=.triplet. is not one of .clip., .siglip."),
        ({"lr": -1.0}, "lr must be positive"),
    ],
)
def test_bad_settings_are_named(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        settings(tmp_path, **overrides)


def test_too_little_data_is_an_error_before_training(tmp_path):
    with pytest.raises(ValueError, match="too few for one step"):
        Trainer(tiny_model(), RandomPairs(size=4), settings(tmp_path, steps=None)).fit()
    with pytest.raises(ValueError, match="empty"):
        Trainer(tiny_model(), [], settings(tmp_path))


def test_unknown_setting_in_a_file_is_named():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['learning_rate'\]"):
        TrainConfig.from_dict({"learning_rate": 0.1}, source="demo.yaml")


def test_warmup_longer_than_the_run_is_shortened_with_a_warning(tmp_path):
    trainer = Trainer(tiny_model(), RandomPairs(), settings(tmp_path, steps=20, warmup_steps=90))
    with pytest.warns(UserWarning, match="warming up over 2 steps instead"):
        trainer.fit()
    assert trainer.schedule()["warmup_steps"] == 2


def test_too_few_items_for_one_batch_is_a_clear_error(tmp_path):
    pairs = [(torch.randn(3, 32, 32), mmcl.tokenize("x")[0]) for _ in range(4)]
    config = TrainConfig(
        steps=1, batch_size=8, progress=False, tensorboard=False, output_dir=str(tmp_path)
    )
    with pytest.raises(ValueError, match="4 training items are too few for one step"):
        Trainer(mmcl.create_model("tiny-vit"), pairs, config)


class IndexRecorder(TrainingPlugin):
    """A plugin that keeps the batches the loop hands it."""

    def __init__(self):
        self.batches = []

    def extra_losses(self, model, batch, outputs):
        self.batches.append([part.clone() for part in batch])
        return {}


def test_plugins_see_each_items_index_in_the_data_set(tmp_path):
    data, recorder = RandomPairs(), IndexRecorder()
    config = settings(tmp_path, steps=6, workers=1)  # 6 x 8 items: one and a half epochs
    Trainer(tiny_model(), data, config, plugins=[recorder]).fit()
    seen = []
    for images, tokens, indices in recorder.batches:
        assert indices.dtype == torch.long and len(indices) == len(images)
        assert torch.equal(images, data.images[indices])
        assert torch.equal(tokens, data.tokens[indices])
        seen += indices.tolist()
    assert sorted(seen[:32]) == list(range(32))  # the first epoch: every item once
