"""Plugins: every hook declared with a no-op default, called always; states saved by name."""

import doctest

import pytest
import torch
from test_engine import RandomPairs, losses, settings, tiny_model

from mmcl.continual.methods import build_method
from mmcl.train import ResumeError, Trainer, TrainingPlugin, plugins


class Counter(TrainingPlugin):
    name = "counter"

    def __init__(self):
        self.steps = self.loss_calls = 0

    def extra_losses(self, model, batch, outputs):
        self.loss_calls += 1
        return {}

    def after_optimizer_step(self, trainer):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


class Bare(TrainingPlugin):
    name = "bare"


def test_hooks_are_called_and_the_defaults_change_nothing(tmp_path):
    counter = Counter()
    config = settings(tmp_path, steps=4, accumulation_steps=2, batch_size=4)
    Trainer(tiny_model(), RandomPairs(), config, plugins=[counter, Bare()]).fit()
    assert (counter.steps, counter.loss_calls) == (4, 8)  # 4 steps of 2 micro-batches
    plain = settings(tmp_path, steps=4, accumulation_steps=2, batch_size=4)
    plain.output_dir = str(tmp_path / "plain")
    Trainer(tiny_model(), RandomPairs(), plain).fit()
    assert losses(tmp_path, "plain") == losses(tmp_path)


def test_plugin_states_are_saved_under_their_names_and_restored(tmp_path):
    config = settings(tmp_path, steps=3)
    Trainer(tiny_model(), RandomPairs(), config, plugins=[Counter(), Bare()]).fit()
    saved = torch.load(config.checkpoint_dir / "step_00000003.pt", weights_only=True)
    assert saved["plugins"] == {"counter": {"steps": 3}, "bare": {}}
    resumed = Counter()
    config.resume, config.steps, config.allow_schedule_change = "latest", 5, True
    Trainer(tiny_model(), RandomPairs(), config, plugins=[Bare(), resumed]).fit()
    assert resumed.steps == 5  # 3 restored + 2 more


def test_resuming_with_other_plugins_is_refused_naming_both(tmp_path):
    config = settings(tmp_path, steps=2)
    Trainer(tiny_model(), RandomPairs(), config, plugins=[Counter()]).fit()
    config.resume = "latest"
    trainer = Trainer(tiny_model(), RandomPairs(), config, plugins=[Bare()])
    with pytest.raises(ResumeError, match=r"plugins \['counter'\], but this run has \['bare'\]"):
        trainer.fit()


def test_positional_plugin_states_of_older_checkpoints_are_refused(tmp_path):
    config = settings(tmp_path, steps=2)
    Trainer(tiny_model(), RandomPairs(), config, plugins=[Counter()]).fit()
    path = config.checkpoint_dir / "step_00000002.pt"
    state = torch.load(path, weights_only=True)
    state["plugins"] = [{"steps": 2}]  # how mmcl saved them before plugins had names
    torch.save(state, path)
    config.resume = "latest"
    with pytest.raises(ResumeError, match="saved plugin states by position"):
        Trainer(tiny_model(), RandomPairs(), config, plugins=[Counter()]).fit()


def test_plugins_must_be_training_plugins_with_distinct_names(tmp_path):
    class DuckTyped:
        def after_optimizer_step(self, trainer):
            pass

    with pytest.raises(TypeError, match="is not a TrainingPlugin"):
        Trainer(tiny_model(), RandomPairs(), settings(tmp_path), plugins=[DuckTyped()])
    with pytest.raises(ValueError, match=r"share the name\(s\) \['counter'\]"):
        Trainer(tiny_model(), RandomPairs(), settings(tmp_path), plugins=[Counter(), Counter()])


def test_gradient_caching_refuses_only_plugins_that_add_losses(tmp_path):
    config = settings(tmp_path, grad_cache_chunk=4)
    Trainer(tiny_model(), RandomPairs(), config, plugins=[Bare()])
    with pytest.raises(ValueError, match="plugins that add losses"):
        Trainer(tiny_model(), RandomPairs(), config, plugins=[Counter()])


def test_continual_methods_are_plugins_keyed_by_their_names():
    method = build_method("er+lwf")
    assert isinstance(method, TrainingPlugin) and method.name == "er+lwf"
    assert build_method("finetune").extra_losses(None, None, None) == {}


def test_doctests():
    result = doctest.testmod(plugins)
    assert result.attempted > 0 and result.failed == 0


class BatchRecorder(TrainingPlugin):
    name = "batches"

    def __init__(self, data):
        self.data, self.seen = data, []

    def extra_losses(self, model, batch, outputs):
        images = batch[0]
        # Which items the batch holds, found by matching images against the data set.
        self.seen.append(
            [int((self.data.images == image).flatten(1).all(1).nonzero()) for image in images]
        )
        return {}


@pytest.mark.parametrize("shuffle", [False, True])
def test_shuffle_off_gives_the_items_in_order_every_epoch(tmp_path, shuffle):
    data = RandomPairs(size=16)
    recorder = BatchRecorder(data)
    config = settings(tmp_path, steps=4, batch_size=8, shuffle=shuffle)
    Trainer(tiny_model(), data, config, plugins=[recorder]).fit()
    in_order = [list(range(8)), list(range(8, 16))] * 2  # two epochs of two batches
    assert (recorder.seen == in_order) == (not shuffle)
    assert sorted(sum(recorder.seen[:2], [])) == list(range(16))  # each epoch sees every item
