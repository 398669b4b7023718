import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from detector.criterion import Criterion, Matches, sigmoid_focal_loss_sum
from detector.families import AnchorFamily
from detector.structures import Assignment, HeadOutput


def test_focal_sum_matches_torchvision_with_one_hot_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 3, generator=g)
    pos = torch.tensor([[1, 0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 1]], dtype=torch.bool)
    cls = torch.tensor([[2, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]])
    onehot = torch.zeros_like(logits)
    onehot[pos] = torch.nn.functional.one_hot(cls[pos], 3).float()
    ref = (sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="none").sum(-1) * valid).sum()
    got = sigmoid_focal_loss_sum(logits, valid, pos, cls, 0.25, 2.0)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def _criterion(**quality) -> Criterion:
    return Criterion(AnchorFamily(), quality_loss=quality.pop("loss", "bce"), **quality)


def _matches(pred: torch.Tensor, gt: torch.Tensor) -> Matches:
    zeros = torch.zeros(len(pred), dtype=torch.long)
    return Matches(zeros, zeros, torch.zeros_like(pred), pred, gt, zeros[None])


def _quality_loss(kind: str, logit: float, target_iou: float, **q) -> float:
    """Criterion.loss_quality on one positive (and one negative) whose predicted box has IoU target_iou with its GT."""
    crit = _criterion(loss=kind, **q)
    # GT [0,0,10,10]; predicted [0,0,10,h] has IoU h/10
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0 * target_iou]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    state = torch.tensor([[1, 0]], dtype=torch.int8)
    out = HeadOutput(torch.zeros(1, 2, 1), torch.zeros(1, 2, 4), quality_logits=torch.tensor([[logit, 0.0]]))
    assignment = Assignment(state, torch.zeros(1, 2, dtype=torch.long))
    return crit.loss_quality(out, assignment, _matches(pred, gt), torch.tensor(1.0)).item()


def test_quality_losses_hand_values():
    ln2 = math.log(2)
    assert _quality_loss("bce", 0.0, 0.5) == pytest.approx(ln2, rel=1e-5)           # -0.5 ln .5 - 0.5 ln .5
    assert _quality_loss("l2", 0.0, 0.8) == pytest.approx(0.09, rel=1e-5)            # (0.5 - 0.8)^2
    assert _quality_loss("l1", 0.0, 0.8) == pytest.approx(0.3, rel=1e-5)
    assert _quality_loss("smooth_l1", 0.0, 0.8) == pytest.approx(0.5 * 0.09 / 1.0, rel=1e-5)  # |d| < quality.beta 1
    assert _quality_loss("gfocal", 0.0, 0.8) == pytest.approx(0.09 * ln2, rel=1e-5)  # |y-p|^2 * BCE(0.5, 0.8) = 0.09 ln 2
    # bce_neg adds w * BCE(negative, 0) = w * ln 2 for the one negative with logit 0
    assert _quality_loss("bce_neg", 0.0, 0.5, quality_neg_weight=0.5) == pytest.approx(ln2 + 0.5 * ln2, rel=1e-5)


def test_quality_loss_gradient_reaches_the_target_only_without_detach():
    """Equ. 5 of paper 000: with the target not detached, dBCE/dIoU_hat = log((1 - IoU)/IoU)."""
    for detach in (True, False):
        pred = torch.tensor([[0.0, 0.0, 10.0, 6.0]], requires_grad=True)
        gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        logit = math.log(0.7 / 0.3)  # predicted IoU 0.7
        out = HeadOutput(torch.zeros(1, 1, 1), torch.zeros(1, 1, 4), quality_logits=torch.tensor([[logit]], requires_grad=True))
        assignment = Assignment(torch.ones(1, 1, dtype=torch.int8), torch.zeros(1, 1, dtype=torch.long))
        _criterion(detach_quality=detach).loss_quality(out, assignment, _matches(pred, gt), torch.tensor(1.0)).backward()
        if detach:
            assert pred.grad is None or torch.all(pred.grad == 0)
        else:
            # d target / d y2 = 1/10 for this geometry, so d loss / d y2 = log(0.3/0.7) / 10
            assert pred.grad[0, 3].item() == pytest.approx(math.log(0.3 / 0.7) / 10, rel=1e-4)


def test_the_quality_smooth_l1_has_its_own_beta_defaulting_to_mmdetections_1():
    """sigmoid(0) = 0.5 against an IoU target of 1: |d| = 0.5 < beta = 1 -> 0.5 d^2 / beta = 0.125; with the box
    loss's beta 0.11 it would be |d| - beta / 2 = 0.445."""
    from detector.config import ModelConfig
    from detector.options import QUALITY_LOSSES

    logit, target, negatives = torch.zeros(1), torch.ones(1), torch.zeros(0)
    assert ModelConfig().quality.beta == 1.0 and ModelConfig().smooth_l1_beta == 0.11
    assert QUALITY_LOSSES.bind("smooth_l1", beta=1.0)(logit, target, negatives).item() == pytest.approx(0.125)
    assert QUALITY_LOSSES.bind("smooth_l1", beta=0.11)(logit, target, negatives).item() == pytest.approx(0.445)
