"""Zero-shot classifier, top-k accuracy and the streaming evaluation loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier as open_clip_classifier
from torch.utils.data import DataLoader, TensorDataset

from mmcl.eval import accuracy, build_zero_shot_classifier, evaluate_zero_shot
from mmcl.models.clip import CLIP
from mmcl.models.config import CLIPConfig
from mmcl.models.registry import get_model_config

try:  # mmcl's tokenizer and open_clip's produce identical ids; prefer ours.
    from mmcl.io.tokenizer import tokenize
except ImportError:  # pragma: no cover - only while mmcl's tokenizer is missing
    from open_clip import tokenize

CLASSNAMES = ["cat", "dog", "red car", "airplane", "tiny frog"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "art of a {}.", "{}"]


@pytest.fixture(scope="module")
def model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(CLIPConfig.from_dict(get_model_config("tiny-vit"))).eval()


def hand_built_classifier(model, classes, templates) -> torch.Tensor:
    """One class at a time, straight from the definition of prompt ensembling."""
    columns = []
    with torch.no_grad():
        for names in classes:
            names = [names] if isinstance(names, str) else names
            prompts = [t.replace("{}", n) for n in names for t in templates]
            embeddings = F.normalize(model.encode_text(tokenize(prompts)), dim=-1)
            columns.append(F.normalize(embeddings.mean(dim=0), dim=0))
    return torch.stack(columns, dim=1)


def test_classifier_matches_open_clip(model):
    ours = build_zero_shot_classifier(model, tokenize, CLASSNAMES, TEMPLATES, batch_size=2)
    reference = open_clip_classifier(
        model, tokenize, CLASSNAMES, TEMPLATES, num_classes_per_batch=3, device="cpu"
    )
    assert ours.shape == (64, len(CLASSNAMES))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_classifier_matches_hand_computation_for_any_batch_size(model):
    expected = hand_built_classifier(model, CLASSNAMES, TEMPLATES)
    for batch_size in (1, 2, 5, 100):
        got = build_zero_shot_classifier(model, tokenize, CLASSNAMES, TEMPLATES, batch_size)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert got.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got.norm(dim=0), torch.ones(len(CLASSNAMES)))


def test_synonyms_ensemble_over_every_name(model):
    classes = ["angry", ("happy", "smiling"), ["surprised", "shocked", "spooked"]]
    got = build_zero_shot_classifier(model, tokenize, classes, TEMPLATES[:2], batch_size=2)
    torch.testing.assert_close(got, hand_built_classifier(model, classes, TEMPLATES[:2]))


def test_named_placeholder_gives_the_same_classifier(model):
    named = [t.replace("{}", "{c}") for t in TEMPLATES]
    torch.testing.assert_close(
        build_zero_shot_classifier(model, tokenize, CLASSNAMES, named),
        build_zero_shot_classifier(model, tokenize, CLASSNAMES, TEMPLATES),
    )


def test_classifier_restores_training_mode_and_shows_progress(model, capsys):
    model.train()
    try:
        build_zero_shot_classifier(model, tokenize, CLASSNAMES, TEMPLATES[:1], progress=True)
        assert model.training
    finally:
        model.eval()
    assert "zero-shot classifier" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("classnames", "templates", "batch_size", "message"),
    [
        ([], TEMPLATES, 10, "classnames must be a non-empty"),
        ("cat", TEMPLATES, 10, "classnames must be a non-empty"),
        (["cat", ""], TEMPLATES, 10, "class 1 must be a non-empty"),
        (["cat", ()], TEMPLATES, 10, "class 1 must be a non-empty"),
        (CLASSNAMES, [], 10, "templates must be a non-empty"),
        (CLASSNAMES, "a photo of a {}.", 10, "templates must be a non-empty"),
        (CLASSNAMES, ["a photo of a {}.", "a photo."], 10, "'a photo.' has no class-name"),
        (CLASSNAMES, TEMPLATES, 0, "batch_size must be a positive integer"),
    ],
)
def test_classifier_rejects_bad_inputs(model, classnames, templates, batch_size, message):
    with pytest.raises(ValueError, match=message):
        build_zero_shot_classifier(model, tokenize, classnames, templates, batch_size)


def test_accuracy_hand_worked_example():
    logits = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.02],  # target 0: rank 0
            [0.1, 0.2, 0.3, 0.4],  # target 1: rank 2
            [0.5, 0.1, 0.3, 0.1],  # target 3: ties with class 1 (lower index) -> rank 3
            [0.0, 1.0, 2.0, 3.0],  # target 3: rank 0
        ]
    )
    targets = torch.tensor([0, 1, 3, 3])
    assert accuracy(logits, targets, topk=(1, 2, 3, 4)) == {
        "top1": 0.5,
        "top2": 0.5,
        "top3": 0.75,
        "top4": 1.0,
    }


def test_accuracy_clips_k_to_the_number_of_classes():
    logits = torch.tensor([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    assert accuracy(logits, torch.tensor([0, 2])) == {"top1": 0.0, "top5": 1.0}


def test_accuracy_breaks_ties_towards_the_lower_index():
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1]), topk=(1, 2)) == {"top1": 0.5, "top2": 1.0}


def test_accuracy_agrees_with_topk_on_random_logits():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 20, generator=generator)
    targets = torch.randint(0, 20, (300,), generator=generator)
    top = logits.topk(5, dim=1).indices
    for k in (1, 3, 5):
        expected = (top[:, :k] == targets[:, None]).any(1).float().mean().item()
        assert accuracy(logits, targets, topk=(k,))[f"top{k}"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("logits", "targets", "topk", "error", "message"),
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), (1,), ValueError, "logits must be"),
        (torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), (1,), ValueError, "targets must be"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), (1,), ValueError, "empty batch"),
        (
            torch.zeros(2, 2),
            torch.tensor([0, 2]),
            (1,),
            ValueError,
            r"targets must lie in \[0, 2\)",
        ),
        (torch.zeros(2, 2), torch.tensor([0, -1]), (1,), ValueError, "targets must lie"),
        (torch.zeros(2, 2), torch.tensor([0.0, 1.0]), (1,), TypeError, "integer class indices"),
        (torch.full((1, 2), float("nan")), torch.tensor([0]), (1,), ValueError, "NaN"),
        (torch.zeros(1, 2), torch.tensor([0]), (), ValueError, "topk must be"),
        (torch.zeros(1, 2), torch.tensor([0]), (0,), ValueError, "topk must be"),
    ],
)
def test_accuracy_rejects_bad_inputs(logits, targets, topk, error, message):
    with pytest.raises(error, match=message):
        accuracy(logits, targets, topk=topk)


def test_evaluate_zero_shot_matches_full_batch_accuracy(model):
    classifier = build_zero_shot_classifier(model, tokenize, CLASSNAMES, TEMPLATES)
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(23, 3, 32, 32, generator=generator)
    targets = torch.randint(0, len(CLASSNAMES), (23,), generator=generator)
    with torch.no_grad():
        logits = model.encode_image(images, normalize=True) @ classifier
    expected = accuracy(logits, targets, topk=(1, 5))

    loader = DataLoader(TensorDataset(images, targets), batch_size=5)  # last batch is short
    model.train()
    try:
        result = evaluate_zero_shot(model, classifier, loader, progress=False)
        assert model.training
    finally:
        model.eval()
    assert result["count"] == 23
    assert result["top1"] == pytest.approx(expected["top1"])
    assert result["top5"] == pytest.approx(expected["top5"]) == 1.0


def test_evaluate_zero_shot_rejects_bad_inputs(model):
    classifier = torch.randn(64, 3)
    batch = (torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="yielded no images"):
        evaluate_zero_shot(model, classifier, [], progress=False)
    with pytest.raises(ValueError, match="classifier expects 32"):
        evaluate_zero_shot(model, torch.randn(32, 3), [batch], progress=False)
    with pytest.raises(ValueError, match="classifier must be"):
        evaluate_zero_shot(model, torch.randn(64), [batch], progress=False)
    with pytest.raises(ValueError, match=r"\(images, targets\) pairs"):
        evaluate_zero_shot(model, classifier, [batch[0]], progress=False)
    with pytest.raises(ValueError, match="targets must lie"):
        evaluate_zero_shot(model, classifier, [(batch[0], torch.tensor([0, 3]))], progress=False)
