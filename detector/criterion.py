"""Training losses, for the whole batch at once. Each ``loss_*`` method computes one term, already
normalised: by N_pos (the batch's positives, averaged across DDP workers and clamped to >= 1), as RetinaNet,
FCOS and the three papers do, or, for the box term with a centerness branch, by the sum of the positives'
centerness targets (the FCOS / Pseudo-IoU code).

The box and quality losses the papers compare are declared in ``options.py`` (BOX_LOSSES, QUALITY_LOSSES)
and implemented here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from .boxes import paired_iou
from .families import DetectorFamily
from .options import BOX_LOSSES, QUALITY_LOSSES
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


# The box and quality losses of detector/options.py (their names, what they are, the fields they read).
@BOX_LOSSES.implements("smooth_l1")
def _smooth_l1_deltas(m: Matches, target: Tensor, *, smooth_l1_beta: float) -> Tensor:
    return F.smooth_l1_loss(m.box_reg, target, beta=smooth_l1_beta, reduction="none").sum(-1)


@BOX_LOSSES.implements("l1")
def _l1_deltas(m: Matches, target: Tensor) -> Tensor:
    return (m.box_reg - target).abs().sum(-1)


@BOX_LOSSES.implements("iou")
def _iou_loss(m: Matches, target: None) -> Tensor:
    return -paired_iou(m.boxes, m.gt_boxes).clamp(min=1e-6).log()


@BOX_LOSSES.implements("giou")
def _giou_loss(m: Matches, target: None) -> Tensor:
    return generalized_box_iou_loss(m.boxes, m.gt_boxes, reduction="none")


@QUALITY_LOSSES.implements("bce")
def _bce(logit: Tensor, target: Tensor, negatives: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logit, target, reduction="sum")


@QUALITY_LOSSES.implements("bce_neg")
def _bce_with_negatives(logit: Tensor, target: Tensor, negatives: Tensor, *, neg_weight: float) -> Tensor:
    return _bce(logit, target, negatives) + neg_weight * F.softplus(negatives).sum()


@QUALITY_LOSSES.implements("l2")
def _l2(logit: Tensor, target: Tensor, negatives: Tensor) -> Tensor:
    return (logit.sigmoid() - target).pow(2).sum()


@QUALITY_LOSSES.implements("l1")
def _l1(logit: Tensor, target: Tensor, negatives: Tensor) -> Tensor:
    return (logit.sigmoid() - target).abs().sum()


@QUALITY_LOSSES.implements("smooth_l1")
def _smooth_l1(logit: Tensor, target: Tensor, negatives: Tensor, *, beta: float) -> Tensor:
    return F.smooth_l1_loss(logit.sigmoid(), target, beta=beta, reduction="sum")


@QUALITY_LOSSES.implements("gfocal")
def _gfocal(logit: Tensor, target: Tensor, negatives: Tensor, *, gamma: float) -> Tensor:
    bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    return ((target - logit.sigmoid()).abs().pow(gamma) * bce).sum()


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
                 detach_quality: bool = True, quality_neg_weight: float = 1e-4, quality_beta: float = 1.0,
                 centerness: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        self.family = family
        self.box_loss = BOX_LOSSES.bind(box_loss, smooth_l1_beta=smooth_l1_beta)
        self.box_loss_weight = box_loss_weight
        self.box_on_deltas = BOX_LOSSES[box_loss].on == "deltas"
        self.quality_loss = QUALITY_LOSSES.bind(quality_loss, neg_weight=quality_neg_weight, gamma=focal_gamma,
                                                beta=quality_beta) if quality_loss else None
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
        per_box = self.box_loss(m, target)
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
        # The negatives as (B, N) logits, -inf elsewhere (softplus 0): no boolean indexing, which on CUDA would
        # wait on the device every step for every loss, though only bce_neg reads them.
        negatives = logits.masked_fill(assignment.state != NEGATIVE, float("-inf"))
        loss = self.quality_loss(logits[assignment.positive], target, negatives)
        return loss / num_pos

    def loss_centerness(self, out: HeadOutput, pos: Tensor, ctr_target: Optional[Tensor], num_pos: Tensor) -> Tensor:
        assert out.centerness_logits is not None and ctr_target is not None
        return F.binary_cross_entropy_with_logits(out.centerness_logits.float()[pos], ctr_target,
                                                  reduction="sum") / num_pos
