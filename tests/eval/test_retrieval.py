"""Retrieval recall: chunked computation against a brute-force full-matrix reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcl.eval import retrieval_recall


def brute_force_recall(images, texts, text_to_image, ks):
    """Full similarity matrix, ranks from a stable descending sort (lower index wins ties)."""
    scores = images.float() @ texts.float().T  # (num_images, num_texts)
    text_rank = torch.empty(len(texts), dtype=torch.long)
    for t in range(len(texts)):
        order = torch.sort(-scores[:, t], stable=True).indices
        text_rank[t] = (order == text_to_image[t]).nonzero().item()
    image_rank = torch.empty(len(images), dtype=torch.long)
    for i in range(len(images)):
        order = torch.sort(-scores[i], stable=True).indices
        own_positions = (text_to_image[order] == i).nonzero().flatten()
        image_rank[i] = own_positions.min()
    result = {f"image_to_text_R@{k}": int((image_rank < k).sum()) / len(images) for k in ks}
    result.update({f"text_to_image_R@{k}": int((text_rank < k).sum()) / len(texts) for k in ks})
    return result


def random_problem(num_images, seed, dim=16):
    """Normalised random features, 1-4 captions per image, captions in shuffled order."""
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(num_images, dim, generator=generator), dim=-1)
    captions_per_image = torch.randint(1, 5, (num_images,), generator=generator)
    owner = torch.repeat_interleave(torch.arange(num_images), captions_per_image)
    owner = owner[torch.randperm(len(owner), generator=generator)]
    # Captions near their image, so recall is neither 0 nor 1 everywhere.
    texts = F.normalize(
        images[owner] + 0.9 * torch.randn(len(owner), dim, generator=generator), dim=-1
    )
    return images, texts, owner


@pytest.mark.parametrize("num_images", [1, 7, 40])
@pytest.mark.parametrize("chunk_size", [1, 3, 16, 1024])
def test_matches_brute_force(num_images, chunk_size):
    images, texts, owner = random_problem(num_images, seed=num_images)
    ks = (1, 2, 5, 10)
    got = retrieval_recall(images, texts, owner, ks=ks, chunk_size=chunk_size)
    expected = brute_force_recall(images, texts, owner, ks)
    assert list(got) == [f"image_to_text_R@{k}" for k in ks] + [f"text_to_image_R@{k}" for k in ks]
    assert got == pytest.approx(expected, abs=1e-12)


def test_random_problem_is_not_trivial():
    images, texts, owner = random_problem(40, seed=40)
    result = retrieval_recall(images, texts, owner, ks=(1, 10))
    assert 0.0 < result["text_to_image_R@1"] < result["text_to_image_R@10"] <= 1.0
    assert 0.0 < result["image_to_text_R@1"] < 1.0


def test_hand_worked_example():
    # image i has feature e_i; captions 0,1 belong to image 0, caption 2 to image 1,
    # caption 3 to image 2.
    images = torch.eye(3)
    texts = torch.tensor(
        [
            [0.0, 1.0, 0.0],  # image 0's caption, but it points at image 1: t2i rank 1
            [0.6, 0.8, 0.0],  # image 0's caption: image 1 scores 0.8 > 0.6, t2i rank 1
            [0.0, 0.0, 1.0],  # image 1's caption: image 2 scores higher, image 0 ties -> rank 2
            [0.0, 0.0, 1.0],  # image 2's caption: t2i rank 0
        ]
    )
    owner = torch.tensor([0, 0, 1, 2])
    # image 0 scores captions [0, 0.6, 0, 0]: its caption 1 ranks 0          -> hit at 1
    # image 1 scores captions [1, 0.8, 0, 0]: its caption 2 ranks 2 (tie with 3, lower index)
    # image 2 scores captions [0, 0, 1, 1]: its caption 3 ties caption 2, which wins -> rank 1
    assert retrieval_recall(images, texts, owner, ks=(1, 2, 3), chunk_size=2) == {
        "image_to_text_R@1": 1 / 3,
        "image_to_text_R@2": 2 / 3,
        "image_to_text_R@3": 1.0,
        "text_to_image_R@1": 1 / 4,
        "text_to_image_R@2": 3 / 4,
        "text_to_image_R@3": 1.0,
    }


def test_ties_are_broken_towards_the_lower_index():
    # Every image looks the same, so every score ties; a stable sort ranks by index.
    images = torch.ones(4, 2)
    texts = torch.ones(4, 2)
    owner = torch.tensor([3, 2, 1, 0])  # caption t belongs to image 3 - t
    result = retrieval_recall(images, texts, owner, ks=(1, 2, 3, 4), chunk_size=3)
    # text -> image: caption t's image 3 - t has rank 3 - t; image -> text: image i's caption
    # 3 - i has rank 3 - i.
    for direction in ("image_to_text", "text_to_image"):
        assert [result[f"{direction}_R@{k}"] for k in (1, 2, 3, 4)] == [0.25, 0.5, 0.75, 1.0]
    assert result == brute_force_recall(images, texts, owner, (1, 2, 3, 4))


def test_k_beyond_the_candidates_counts_everything():
    images, texts, owner = random_problem(3, seed=3)
    result = retrieval_recall(images, texts, owner, ks=(50,))
    assert result == {"image_to_text_R@50": 1.0, "text_to_image_R@50": 1.0}


def test_accepts_half_precision_and_index_lists():
    images, texts, owner = random_problem(10, seed=10)
    expected = retrieval_recall(images, texts, owner)
    got = retrieval_recall(images.half(), texts.half(), owner.tolist())
    # Rounding to half may reorder near-ties, but not by much on this problem.
    assert got == pytest.approx(expected, abs=0.15)


def test_never_builds_the_full_matrix(monkeypatch):
    images, texts, owner = random_problem(30, seed=30)
    shapes = []
    original = torch.Tensor.__matmul__

    def recording_matmul(self, other):
        result = original(self, other)
        shapes.append(tuple(result.shape))
        return result

    monkeypatch.setattr(torch.Tensor, "__matmul__", recording_matmul)
    retrieval_recall(images, texts, owner, chunk_size=7)
    assert shapes, "the similarity blocks were not computed with @"
    assert max(rows for rows, _ in shapes) <= 7


@pytest.mark.parametrize(
    ("images", "texts", "owner", "error", "message"),
    [
        (torch.randn(3), torch.randn(3, 4), [0, 1, 2], ValueError, "image_features must be"),
        (torch.randn(0, 4), torch.randn(3, 4), [0, 1, 2], ValueError, "image_features must be"),
        (torch.randn(3, 4), torch.randn(3, 5), [0, 1, 2], ValueError, "4 dims, text features 5"),
        (torch.randn(3, 4), torch.randn(3, 4).int(), [0, 1, 2], TypeError, "floating point"),
        (torch.randn(3, 4), torch.randn(3, 4), [0, 1], ValueError, r"shape \(3,\), one image"),
        (torch.randn(3, 4), torch.randn(3, 4), [0, 1, 3], ValueError, r"lie in \[0, 3\)"),
        (torch.randn(3, 4), torch.randn(3, 4), [0, -1, 2], ValueError, "lie in"),
        (torch.randn(3, 4), torch.randn(3, 4), [0.0, 1.0, 2.0], TypeError, "integer image"),
        (
            torch.randn(3, 4),
            torch.randn(3, 4),
            [0, 0, 2],
            ValueError,
            r"1 image\(s\) have no caption",
        ),
        (torch.full((3, 4), float("nan")), torch.randn(3, 4), [0, 1, 2], ValueError, "NaN"),
    ],
)
def test_rejects_bad_inputs(images, texts, owner, error, message):
    with pytest.raises(error, match=message):
        retrieval_recall(images, texts, owner)


@pytest.mark.parametrize(
    ("ks", "chunk_size", "message"),
    [((), 4, "ks must be"), ((0, 1), 4, "ks must be"), ((1,), 0, "chunk_size must be")],
)
def test_rejects_bad_settings(ks, chunk_size, message):
    images, texts, owner = random_problem(3, seed=0)
    with pytest.raises(ValueError, match=message):
        retrieval_recall(images, texts, owner, ks=ks, chunk_size=chunk_size)
