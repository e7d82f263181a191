"""What a captioned (contrastive) continual stream promises about bad input.

Promises checked here, one a line:
- A method that needs class prompts is refused on a captioned stream before anything trains,
  naming it and the methods that train on captions.
- A plain image classifier is refused on a captioned stream, with the way out (a CLIP model).
- An unknown scene style is an error naming it and the forms that are valid.
- A CIFAR-10 folder that is not there is an error naming the folder and the way out.
- Asking a captioned stream for classes is an error saying it has none.
"""

from __future__ import annotations

import pytest
import torch

import mmcl
from mmcl.continual.captioned import scene_styles_stream
from mmcl.continual.methods import build_method
from mmcl.continual.runner import ContinualRun, run_continual
from mmcl.models.cifar_resnet import cifar_resnet18
from mmcl.train import TrainConfig


def config(tmp_path) -> TrainConfig:
    return TrainConfig(steps=1, batch_size=4, progress=False, tensorboard=False,
                       output_dir=str(tmp_path / "unused"))  # fmt: skip


def stream():
    return scene_styles_stream(["upright"], train_size=4, test_size=4)


def test_a_method_that_needs_class_prompts_is_refused_before_training(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"\['ewc'\] need class prompts.*finetune, frozen, er"):
        run_continual(
            mmcl.create_model("tiny-vit"), stream(), build_method("er+ewc"), config(tmp_path),
            tmp_path / "run",
        )  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_a_plain_classifier_is_refused_on_a_captioned_stream(tmp_path):
    with pytest.raises(ValueError, match="plain image classifier.*choose a CLIP model"):
        run_continual(cifar_resnet18(10, width=8), stream(), build_method("finetune"),
                      config(tmp_path), tmp_path / "run")  # fmt: skip


def test_an_unknown_scene_style_names_it_and_the_valid_forms():
    with pytest.raises(ValueError, match="unknown scene style 'sepia'.*'rotated-DEGREES'"):
        scene_styles_stream(["upright", "sepia"], 4, 4)


def test_a_missing_cifar10_folder_is_named_with_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar10 \(train\) not found.*--data-root"):
        scene_styles_stream(["upright"], 4, 4, cifar10_root=tmp_path)


def test_a_captioned_stream_has_no_classes_to_ask_for(tmp_path):
    run = ContinualRun(stream(), build_method("finetune"), config(tmp_path), tmp_path, {})
    with pytest.raises(ValueError, match="captioned stream has no classes"):
        run.training_space(0)
