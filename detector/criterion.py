"""Training losses, for the whole batch at once. Each ``loss_*`` method computes one term, already
normalised: by N_pos (the batch's positives, averaged across DDP workers and clamped to >= 1), as RetinaNet,
FCOS and the three papers do, or, for the box term with a centerness branch, by the sum of the positives'
centerness targets (the FCOS / Pseudo-IoU code).

The box and quality losses the papers compare are registered in BOX_LOSSES and QUALITY_LOSSES.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from .boxes import paired_iou
from .families import DetectorFamily
from .structures import NEGATIVE, Assignment, HeadOutput, Priors, Targets


def sigmoid_focal_loss_sum(logits: Tensor, valid: Tensor, pos: Tensor, pos_class: Tensor,
                           alpha: float, gamma: float) -> Tensor:
    """Sum of the sigmoid focal loss over valid priors and all classes, without a one-hot target.

    Every entry is first charged its negative loss (1-alpha) p^gamma (-log(1-p)); the entries of
    positives at their class are then corrected to the positive loss alpha (1-p)^gamma (-log p).
    This keeps the (B, N, C) temporaries to a few elementwise ops.
    logits: (B, N, C); valid, pos: (B, N) bool; pos_class: (B, N) long (read where pos).
    """
    logits = logits.float()
    p = logits.sigmoid()
    neg = (1 - alpha) * p.pow(gamma) * F.softplus(logits)
    total = (neg.sum(-1) * valid).sum()
    x = logits[pos].gather(1, pos_class[pos][:, None]).squeeze(1)
    px = x.sigmoid()
    pos_loss = alpha * (1 - px).pow(gamma) * F.softplus(-x)
    neg_at_pos = (1 - alpha) * px.pow(gamma) * F.softplus(x)
    return total + (pos_loss - neg_at_pos).sum()


@dataclass
class Matches:
    """The batch's positives, each with its ground truth. index: (P,) prior index of each positive (its
    image is ``image``, (P,)); box_reg (P, 4) the head's raw box output there; boxes (P, 4) decoded from it;
    gt_boxes (P, 4) and labels (B, N) (read where positive) of the matched GT."""

    image: Tensor
    index: Tensor
    box_reg: Tensor
    boxes: Tensor
    gt_boxes: Tensor
    labels: Tensor


# Per-positive box losses (P,). ``beta``: model.smooth_l1_beta.
BOX_LOSSES: dict[str, Callable[[Matches, Tensor, float], Tensor]] = {
    # on the family's regression target (deltas): RetinaNet
    "smooth_l1": lambda m, target, beta: F.smooth_l1_loss(m.box_reg, target, beta=beta, reduction="none").sum(-1),
    "l1": lambda m, target, beta: (m.box_reg - target).abs().sum(-1),
    # on the decoded boxes: UnitBox's -ln(IoU) and GIoU
    "iou": lambda m, target, beta: -paired_iou(m.boxes, m.gt_boxes).clamp(min=1e-6).log(),
    "giou": lambda m, target, beta: generalized_box_iou_loss(m.boxes, m.gt_boxes, reduction="none"),
}
BOX_LOSSES_ON_DELTAS = ("smooth_l1", "l1")


def _gfocal(logit: Tensor, target: Tensor, beta: float, gamma: float) -> Tensor:
    # paper 004 eq. 13: |y - p|^gamma * BCE(p, y)
    bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    return ((target - logit.sigmoid()).abs().pow(gamma) * bce).sum()


# Quality losses on the positives, summed: (logit (P,), target IoU (P,), beta, gamma) -> (). ``bce_neg`` adds
# neg_weight x BCE of the negatives against 0 (Criterion.loss_quality).
def _bce(logit: Tensor, target: Tensor, beta: float, gamma: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logit, target, reduction="sum")


QUALITY_LOSSES: dict[str, Callable[[Tensor, Tensor, float, float], Tensor]] = {
    "bce": _bce,
    "bce_neg": _bce,  # CELoss^w of paper 004: the negatives' term is added by the criterion
    "l2": lambda logit, t, beta, gamma: (logit.sigmoid() - t).pow(2).sum(),
    "l1": lambda logit, t, beta, gamma: (logit.sigmoid() - t).abs().sum(),
    "smooth_l1": lambda logit, t, beta, gamma: F.smooth_l1_loss(logit.sigmoid(), t, beta=beta, reduction="sum"),
    "gfocal": _gfocal,
}
QUALITY_LOSSES_WITH_NEGATIVES = ("bce_neg",)


def _mean_over_workers(x: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


class Criterion:
    """The detector's loss: focal classification + box regression + optional quality and centerness.

    family: where the priors are and how they are assigned; box_loss / quality_loss: names in BOX_LOSSES /
    QUALITY_LOSSES (quality_loss None: no quality branch); detach_quality: the quality target carries no
    gradient to the box branch (False: the dagger variant of paper 000); centerness: the branch is on (its
    targets also weight the box loss).
    """

    def __init__(self, family: DetectorFamily, *, box_loss: str = "smooth_l1", box_loss_weight: float = 1.0,
                 smooth_l1_beta: float = 0.11, quality_loss: Optional[str] = None, quality_weight: float = 1.0,
                 detach_quality: bool = True, quality_neg_weight: float = 1e-4, centerness: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        self.family = family
        self.box_loss, self.box_loss_weight, self.smooth_l1_beta = BOX_LOSSES[box_loss], box_loss_weight, smooth_l1_beta
        self.box_on_deltas = box_loss in BOX_LOSSES_ON_DELTAS
        self.quality_loss = QUALITY_LOSSES[quality_loss] if quality_loss else None
        self.quality_neg_weight = quality_neg_weight if quality_loss in QUALITY_LOSSES_WITH_NEGATIVES else 0.0
        self.quality_weight, self.detach_quality = quality_weight, detach_quality
        self.centerness = centerness
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def __call__(self, out: HeadOutput, priors: Priors, targets: Targets) -> dict[str, Tensor]:
        with torch.no_grad():
            assignment = self.family.assign(priors, targets)
        pos = assignment.positive
        num_pos = _mean_over_workers(pos.sum().float()).clamp(min=1.0)
        m = self.matches(out, priors, targets, assignment)
        ctr_target = self.family.centerness_target(priors, m.index, m.gt_boxes) if self.centerness else None

        losses = {"loss_cls": self.loss_cls(out, assignment, m, num_pos),
                  "loss_box": self.box_loss_weight * self.loss_box(priors, m, ctr_target, num_pos)}
        if self.quality_loss is not None:
            losses["loss_quality"] = self.quality_weight * self.loss_quality(out, assignment, m, num_pos)
        if self.centerness:
            losses["loss_centerness"] = self.loss_centerness(out, pos, ctr_target, num_pos)
        losses["loss"] = sum(losses.values())
        losses["num_pos"] = pos.sum().float().detach()
        return losses

    def matches(self, out: HeadOutput, priors: Priors, targets: Targets, assignment: Assignment) -> Matches:
        pos = assignment.positive
        image, index = pos.nonzero(as_tuple=True)
        gt_idx = assignment.gt_index
        gt_boxes = targets.boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))[pos]
        box_reg = out.box_reg.float()[image, index]
        return Matches(image, index, box_reg, self.family.decode(priors, box_reg, index), gt_boxes,
                       targets.labels.gather(1, gt_idx))

    def loss_cls(self, out: HeadOutput, assignment: Assignment, m: Matches, num_pos: Tensor) -> Tensor:
        return sigmoid_focal_loss_sum(out.cls_logits, assignment.valid, assignment.positive, m.labels,
                                      self.focal_alpha, self.focal_gamma) / num_pos

    def loss_box(self, priors: Priors, m: Matches, ctr_target: Optional[Tensor], num_pos: Tensor) -> Tensor:
        target = self.family.encode(priors, m.index, m.gt_boxes) if self.box_on_deltas else None
        per_box = self.box_loss(m, target, self.smooth_l1_beta)
        if ctr_target is not None:
            # FCOS / Pseudo-IoU code: weight each positive by its centerness target, normalise by their sum.
            weight_sum = _mean_over_workers(ctr_target.sum().detach()).clamp(min=1e-6)
            return (per_box * ctr_target).sum() / weight_sum
        return per_box.sum() / num_pos

    def loss_quality(self, out: HeadOutput, assignment: Assignment, m: Matches, num_pos: Tensor) -> Tensor:
        """Quality (IoU / object-confidence) loss; target = IoU(predicted box, its GT)."""
        assert out.quality_logits is not None and self.quality_loss is not None
        target = paired_iou(m.boxes, m.gt_boxes)
        if self.detach_quality:
            target = target.detach()
        logits = out.quality_logits.float()
        loss = self.quality_loss(logits[assignment.positive], target, self.smooth_l1_beta, self.focal_gamma)
        if self.quality_neg_weight:
            loss = loss + self.quality_neg_weight * F.softplus(logits[assignment.state == NEGATIVE]).sum()
        return loss / num_pos

    def loss_centerness(self, out: HeadOutput, pos: Tensor, ctr_target: Optional[Tensor], num_pos: Tensor) -> Tensor:
        assert out.centerness_logits is not None and ctr_target is not None
        return F.binary_cross_entropy_with_logits(out.centerness_logits.float()[pos], ctr_target,
                                                  reduction="sum") / num_pos
