"""CoCa's caption loss on a hand-worked case: the label shift, and padding ignored."""

import math

import torch
from torch.nn import functional as F

from mmcl.train.losses import ClipLoss, CoCaLoss, caption_loss


def hand_worked_case():
    """Two captions over a vocabulary of 4 (0 is the pad). Targets after the shift:
    row 0 -> [1, 2, pad], row 1 -> [2, pad, pad]: three tokens count."""
    tokens = torch.tensor([[3, 1, 2, 0], [3, 2, 0, 0]])
    logits = torch.full((2, 4, 4), 100.0)  # wherever a target is padding, or past the end
    logits[0, 0] = torch.tensor([0.1, 0.5, 0.2, 0.2]).log()  # predicts token 1: p = 0.5
    logits[0, 1] = torch.tensor([0.25, 0.25, 0.25, 0.25]).log()  # predicts token 2: p = 0.25
    logits[1, 0] = torch.tensor([0.1, 0.1, 0.4, 0.4]).log()  # predicts token 2: p = 0.4
    logits[0, 3] = torch.tensor([9.0, -9.0, 9.0, 9.0])  # the last position predicts nothing
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.4)) / 3
    return logits, tokens, expected


def test_caption_loss_shifts_labels_and_ignores_padding_by_hand():
    logits, tokens, expected = hand_worked_case()
    assert abs(caption_loss(logits, tokens, pad_id=0).item() - expected) < 1e-6


def test_caption_loss_is_blind_to_logits_at_padded_targets():
    logits, tokens, _ = hand_worked_case()
    changed = logits.clone()
    changed[0, 2] = torch.randn(4) * 50  # its target is padding
    changed[:, -1] = torch.randn(2, 4) * 50  # no target at all
    assert torch.equal(caption_loss(changed, tokens), caption_loss(logits, tokens))


def test_coca_loss_weighs_contrastive_and_caption_terms():
    logits, tokens, expected = hand_worked_case()
    features = F.normalize(torch.randn(2, 8), dim=-1)
    other = F.normalize(torch.randn(2, 8), dim=-1)
    scale = torch.tensor(10.0)
    terms = CoCaLoss(caption_weight=2.0, contrastive_weight=0.5)(
        features, other, scale, logits, tokens
    )
    assert abs(terms["caption"].item() - 2 * expected) < 1e-5
    assert torch.allclose(terms["contrastive"], 0.5 * ClipLoss()(features, other, scale))
