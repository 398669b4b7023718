"""Training losses, for the whole batch at once. Each method computes one term.

All terms are sums normalised by N_pos (the batch's positives, averaged across DDP workers and
clamped to >= 1), as RetinaNet, FCOS and the three papers do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .assigners import NEGATIVE, Assignment, assign_max_iou, assign_points, centerness
from .boxes import DeltaCoder, DistanceCoder, paired_giou, paired_iou
from .config import ModelConfig
from .priors import REGRESS_RANGES, Priors


@dataclass
class HeadOutput:
    """Dense predictions over the N priors of each image (all FPN levels concatenated).

    cls_logits: (B, N, C). box_reg: (B, N, 4), deltas (anchors) or l/t/r/b over stride (points).
    quality_logits: (B, N) or None. centerness_logits: (B, N) or None.
    """

    cls_logits: Tensor
    box_reg: Tensor
    quality_logits: Optional[Tensor] = None
    centerness_logits: Optional[Tensor] = None


@dataclass
class Targets:
    """Padded ground truth. boxes: (B, G, 4) xyxy in input pixels; labels: (B, G), -1 = padding;
    ignore: (B, G) crowd / difficult boxes."""

    boxes: Tensor
    labels: Tensor
    ignore: Tensor

    def to(self, device: torch.device) -> "Targets":
        return Targets(self.boxes.to(device), self.labels.to(device), self.ignore.to(device))


def decode_boxes(arch: str, priors: Priors, box_reg: Tensor) -> Tensor:
    """Predicted boxes (..., N, 4) from box_reg (..., N, 4) on the given priors."""
    if arch == "retinanet":
        return DeltaCoder.decode(priors.boxes, box_reg)
    return DistanceCoder.decode(priors.points, priors.strides, box_reg)


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


def _mean_over_workers(x: Tensor) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


class Criterion:
    """The detector's loss: focal classification + box regression + optional quality and centerness."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg

    def __call__(self, out: HeadOutput, priors: Priors, targets: Targets) -> dict[str, Tensor]:
        assignment = self.assign(priors, targets)
        pos = assignment.positive
        num_pos = _mean_over_workers(pos.sum().float()).clamp(min=1.0)
        gt_idx = assignment.gt_index
        matched_boxes = targets.boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))[pos]  # (P, 4)
        matched_labels = targets.labels.gather(1, gt_idx)
        pred_boxes = self._decode_positive(out, priors, pos)

        losses = {"loss_cls": self.classification(out, assignment, matched_labels) / num_pos}
        ctr_target = self._centerness_target(priors, pos, matched_boxes) if self.cfg.arch == "anchor_free" else None
        losses["loss_box"] = self.cfg.box_loss_weight * self.box(out, priors, pos, pred_boxes, matched_boxes, ctr_target, num_pos)
        if out.quality_logits is not None:
            losses["loss_quality"] = self.cfg.quality.weight * self.quality(out, assignment, pred_boxes, matched_boxes) / num_pos
        if out.centerness_logits is not None:
            losses["loss_centerness"] = self.centerness(out, pos, ctr_target) / num_pos
        losses["loss"] = sum(losses.values())
        losses["num_pos"] = pos.sum().float().detach()
        return losses

    def assign(self, priors: Priors, targets: Targets) -> Assignment:
        with torch.no_grad():
            if self.cfg.arch == "retinanet":
                a = self.cfg.assigner
                return assign_max_iou(priors.boxes, targets.boxes, targets.labels, targets.ignore, a.pos_iou, a.neg_iou)
            ranges = torch.tensor(REGRESS_RANGES, device=priors.points.device)[priors.level]
            return assign_points(priors.points, ranges[:, 0], ranges[:, 1], targets.boxes, targets.labels,
                                 targets.ignore, self.cfg.assigner)

    def _decode_positive(self, out: HeadOutput, priors: Priors, pos: Tensor) -> Tensor:
        """Decoded predicted boxes of the positives, (P, 4)."""
        b_idx, n_idx = pos.nonzero(as_tuple=True)
        reg = out.box_reg.float()[b_idx, n_idx]
        if self.cfg.arch == "retinanet":
            return DeltaCoder.decode(priors.boxes[n_idx], reg)
        return DistanceCoder.decode(priors.points[n_idx], priors.strides[n_idx], reg)

    def _centerness_target(self, priors: Priors, pos: Tensor, matched_boxes: Tensor) -> Tensor:
        n_idx = pos.nonzero(as_tuple=True)[1]
        pts = priors.points[n_idx]
        ltrb = torch.cat((pts - matched_boxes[:, :2], matched_boxes[:, 2:] - pts), dim=-1)
        return centerness(ltrb)

    def classification(self, out: HeadOutput, assignment: Assignment, matched_labels: Tensor) -> Tensor:
        f = self.cfg.focal
        return sigmoid_focal_loss_sum(out.cls_logits, assignment.valid, assignment.positive, matched_labels, f.alpha, f.gamma)

    def box(self, out: HeadOutput, priors: Priors, pos: Tensor, pred_boxes: Tensor, gt_boxes: Tensor,
            ctr_target: Optional[Tensor], num_pos: Tensor) -> Tensor:
        kind = self.cfg.box_loss
        if kind in ("smooth_l1", "l1"):
            n_idx = pos.nonzero(as_tuple=True)[1]
            reg = out.box_reg.float()[pos]
            target = DeltaCoder.encode(priors.boxes[n_idx], gt_boxes)
            if kind == "l1":
                return F.l1_loss(reg, target, reduction="sum") / num_pos
            return F.smooth_l1_loss(reg, target, beta=self.cfg.smooth_l1_beta, reduction="sum") / num_pos
        if kind == "giou":
            per_box = 1.0 - paired_giou(pred_boxes, gt_boxes)
        else:  # iou, UnitBox's -ln(IoU)
            per_box = -paired_iou(pred_boxes, gt_boxes).clamp(min=1e-6).log()
        if ctr_target is not None and self.cfg.centerness:
            # FCOS / Pseudo-IoU code: weight each positive by its centerness target, normalise by their sum.
            weight_sum = _mean_over_workers(ctr_target.sum().detach()).clamp(min=1e-6)
            return (per_box * ctr_target).sum() / weight_sum
        return per_box.sum() / num_pos

    def quality(self, out: HeadOutput, assignment: Assignment, pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """Quality (IoU / object-confidence) loss, summed; target = IoU(predicted box, its GT)."""
        q_cfg = self.cfg.quality
        assert out.quality_logits is not None
        target = paired_iou(pred_boxes, gt_boxes)
        if q_cfg.detach:
            target = target.detach()
        logit = out.quality_logits.float()[assignment.positive]
        kind = q_cfg.loss
        if kind in ("bce", "bce_neg"):
            loss = F.binary_cross_entropy_with_logits(logit, target, reduction="sum")
            if kind == "bce_neg":
                neg_logit = out.quality_logits.float()[assignment.state == NEGATIVE]
                loss = loss + q_cfg.neg_weight * F.softplus(neg_logit).sum()  # BCE against target 0
            return loss
        q = logit.sigmoid()
        if kind == "l2":
            return (q - target).pow(2).sum()
        if kind == "l1":
            return (q - target).abs().sum()
        if kind == "smooth_l1":
            return F.smooth_l1_loss(q, target, beta=self.cfg.smooth_l1_beta, reduction="sum")
        # gfocal, paper 004 eq. 13: |y - p|^gamma * BCE(p, y)
        bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
        return ((target - q).abs().pow(self.cfg.focal.gamma) * bce).sum()

    def centerness(self, out: HeadOutput, pos: Tensor, ctr_target: Optional[Tensor]) -> Tensor:
        assert out.centerness_logits is not None and ctr_target is not None
        return F.binary_cross_entropy_with_logits(out.centerness_logits.float()[pos], ctr_target, reduction="sum")
