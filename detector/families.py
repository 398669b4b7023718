"""The two detector families, as torchvision's RetinaNet and FCOS: where a family puts its priors, how it
codes a box relative to one, and which priors learn which ground-truth box. The head, the criterion and
the scoring use only this interface, so nothing outside the builder asks which family it has.

- :class:`AnchorFamily` (RetinaNet): 9 anchors per location, (dx, dy, dw, dh) deltas, max-IoU assignment.
- :class:`PointFamily` (anchor-free, FCOS-style): one point per location, (l, t, r, b) / stride distances,
  candidates inside a GT in the level's range, kept by a rule of ``assigners.POINT_RULES``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .assigners import assign_max_iou, assign_points, centerness
from .boxes import DeltaCoder, DistanceCoder, point_box_distances
from .priors import NUM_ANCHORS, REGRESS_RANGES, make_priors
from .structures import Assignment, Priors, Targets


class AnchorFamily:
    """RetinaNet's anchors. ``anchor_scale``: the smallest anchor of a level is anchor_scale x stride."""

    priors_per_location = NUM_ANCHORS
    learns_level_scales = False

    def __init__(self, anchor_scale: float = 4.0, pos_iou: float = 0.5, neg_iou: float = 0.4,
                 ignore_near_crowd: bool = False):
        self.anchor_scale, self.pos_iou, self.neg_iou = anchor_scale, pos_iou, neg_iou
        self.ignore_near_crowd = ignore_near_crowd

    def priors(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> Priors:
        return make_priors(feature_sizes, NUM_ANCHORS, device, self.anchor_scale)

    def decode(self, priors: Priors, box_reg: Tensor, index: Optional[Tensor] = None) -> Tensor:
        """Boxes (..., 4) from box_reg (..., N, 4) on all priors, or (P, 4) on the priors ``index`` (P,)."""
        return DeltaCoder.decode(priors.boxes if index is None else priors.boxes[index], box_reg)

    def encode(self, priors: Priors, index: Tensor, boxes: Tensor) -> Tensor:
        """The regression target (P, 4) of boxes (P, 4) on the priors ``index`` (P,), for the smooth-L1 / L1
        box losses (which only this family takes: model.box_loss)."""
        return DeltaCoder.encode(priors.boxes[index], boxes)

    def assign(self, priors: Priors, targets: Targets) -> Assignment:
        return assign_max_iou(priors.boxes, targets.boxes, targets.labels, targets.ignore, self.pos_iou, self.neg_iou,
                              self.ignore_near_crowd)


class PointFamily:
    """Anchor-free points. ``keep``: the bound point rule (``assigners.point_rule(name, **fields)``)."""

    priors_per_location = 1
    learns_level_scales = True
    """A learnable scale per level multiplies the distance output (FCOS)."""

    def __init__(self, keep: Callable[[Tensor], Tensor], ignore_near_crowd: bool = False):
        self.keep, self.ignore_near_crowd = keep, ignore_near_crowd

    def priors(self, feature_sizes: list[tuple[int, int]], device: torch.device) -> Priors:
        return make_priors(feature_sizes, 1, device)

    def decode(self, priors: Priors, box_reg: Tensor, index: Optional[Tensor] = None) -> Tensor:
        """Boxes (..., 4) from box_reg (..., N, 4) on all priors, or (P, 4) on the priors ``index`` (P,)."""
        if index is None:
            return DistanceCoder.decode(priors.points, priors.strides, box_reg)
        return DistanceCoder.decode(priors.points[index], priors.strides[index], box_reg)

    def assign(self, priors: Priors, targets: Targets) -> Assignment:
        ranges = torch.tensor(REGRESS_RANGES, device=priors.points.device)[priors.level]
        return assign_points(priors.points, ranges[:, 0], ranges[:, 1], targets.boxes, targets.labels,
                             targets.ignore, self.keep, self.ignore_near_crowd)

    def centerness_target(self, priors: Priors, index: Tensor, boxes: Tensor) -> Tensor:
        """FCOS centerness (P,) of the priors ``index`` (P,) in their boxes (P, 4) (the centerness branch,
        which only this family has: model.centerness)."""
        return centerness(point_box_distances(priors.points[index], boxes))


DetectorFamily = AnchorFamily | PointFamily
