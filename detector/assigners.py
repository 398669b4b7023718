"""Label assignment for a whole batch at once.

Ground truth is padded per batch: ``gt_boxes`` (B, G, 4), ``gt_labels`` (B, G) with -1 for padding,
``gt_ignore`` (B, G) for crowd / VOC-difficult boxes, which are never positives. Priors near them are
negatives, as in the papers' code (mmdetection's ``ignore_iof_thr=-1``); ``ignore_near_crowd=True`` makes
them neither positive nor negative instead (detectron2's choice).

Every assigner returns an :class:`~detector.structures.Assignment` over the N priors of each image. The
anchor-free rules that decide which candidate points stay positive are declared in ``options.POINT_RULES``
(with the config fields each reads) and implemented here.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .boxes import batched_box_iou, point_box_distances
from .options import POINT_RULES
from .structures import IGNORE, NEGATIVE, POSITIVE, Assignment

__all__ = ["IGNORE", "NEGATIVE", "POSITIVE", "Assignment", "assign_max_iou",
           "assign_points", "centerness", "point_rule", "pseudo_iou"]


def _trainable(gt_labels: Tensor, gt_ignore: Tensor) -> Tensor:
    return (gt_labels >= 0) & ~gt_ignore


def _ignore_overlapping(state: Tensor, iou: Tensor, gt_labels: Tensor, gt_ignore: Tensor, thresh: float) -> Tensor:
    """Turn negatives that overlap an ignore region by IoU >= thresh into IGNORE."""
    ignore_cols = (gt_labels >= 0) & gt_ignore
    if not bool(ignore_cols.any()):
        return state
    ign = iou.masked_fill(~ignore_cols[:, None, :], -1.0).amax(-1)
    return torch.where((state == NEGATIVE) & (ign >= thresh), torch.full_like(state, IGNORE), state)


def assign_max_iou(anchors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_ignore: Tensor,
                   pos_iou: float = 0.5, neg_iou: float = 0.4, ignore_near_crowd: bool = False) -> Assignment:
    """RetinaNet MaxIoU: positive at IoU >= pos_iou, negative below neg_iou, ignored between;
    every GT also keeps the anchors of its highest IoU (min_pos_iou 0, all ties), as mmdetection.

    anchors: (N, 4); gt_*: (B, G, ...). Cost: one (B, N, G) IoU matrix.
    """
    b, n = gt_boxes.shape[0], anchors.shape[0]
    if gt_boxes.shape[1] == 0:
        zeros = torch.zeros(b, n, dtype=torch.long, device=anchors.device)
        return Assignment(zeros.to(torch.int8), zeros)
    iou = batched_box_iou(anchors.expand(b, n, 4), gt_boxes)  # (B, N, G)
    trainable = _trainable(gt_labels, gt_ignore)
    iou_t = iou.masked_fill(~trainable[:, None, :], -1.0)
    best_iou, gt_index = iou_t.max(-1)  # (B, N)

    state = torch.full((b, n), NEGATIVE, dtype=torch.int8, device=anchors.device)
    state[best_iou >= neg_iou] = IGNORE
    state[best_iou >= pos_iou] = POSITIVE

    # Each GT keeps its best anchor(s), even below pos_iou; such an anchor goes to that GT.
    gt_best = iou_t.amax(1, keepdim=True)  # (B, 1, G)
    is_gt_best = (iou_t == gt_best) & (gt_best > 0)  # (B, N, G)
    low_quality = is_gt_best.any(-1)
    best_for = torch.where(is_gt_best, iou_t, torch.full_like(iou_t, -2.0)).argmax(-1)
    gt_index = torch.where(low_quality & (state != POSITIVE), best_for, gt_index)
    state[low_quality] = POSITIVE

    if ignore_near_crowd:
        state = _ignore_overlapping(state, iou, gt_labels, gt_ignore, neg_iou)
    return Assignment(state, gt_index)


def pseudo_iou(ltrb: Tensor) -> Tensor:
    """Algorithm 1 of the Pseudo-IoU paper, vectorised. ltrb: (..., 4) distances (l, t, r, b) from a point
    inside box B to B's sides -> (...) IoU between B and the pseudo box A of B's size centred on the point."""
    l_b, t_b, r_b, b_b = ltrb.unbind(-1)
    l_a = r_a = (l_b + r_b) / 2
    t_a = b_a = (t_b + b_b) / 2
    s_b = (l_b + r_b) * (t_b + b_b)
    s_a = (l_a + r_a) * (t_a + b_a)
    s_inter = (torch.minimum(l_a, l_b) + torch.minimum(r_a, r_b)) * (torch.minimum(t_a, t_b) + torch.minimum(b_a, b_b))
    return s_inter / (s_a + s_b - s_inter).clamp(min=1e-7)


def centerness(ltrb: Tensor) -> Tensor:
    """FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)). ltrb: (..., 4) -> (...)."""
    l, t, r, b = ltrb.clamp(min=0).unbind(-1)
    lr = torch.minimum(l, r) / torch.maximum(l, r).clamp(min=1e-7)
    tb = torch.minimum(t, b) / torch.maximum(t, b).clamp(min=1e-7)
    return (lr * tb).sqrt()


# The point rules of detector/options.py (POINT_RULES: their names and the fields they read).
@POINT_RULES.implements("inside")
def _inside(ltrb: Tensor) -> Tensor:
    return torch.ones(ltrb.shape[:-1], dtype=torch.bool, device=ltrb.device)


@POINT_RULES.implements("pseudo_iou")
def _pseudo_iou_at_least(ltrb: Tensor, *, threshold: float) -> Tensor:
    return pseudo_iou(ltrb) >= threshold


@POINT_RULES.implements("centerness")
def _centerness_at_least(ltrb: Tensor, *, threshold: float) -> Tensor:
    return centerness(ltrb) >= threshold


@POINT_RULES.implements("scaled_box")
def _scaled_box(ltrb: Tensor, *, scale: float) -> Tensor:
    # |x - xc| < s w / 2  <=>  |l - r| < s (l + r), likewise vertically.
    l, t, r, b = ltrb.unbind(-1)
    return ((l - r).abs() < scale * (l + r)) & ((t - b).abs() < scale * (t + b))


def point_rule(name: str, **fields: float) -> Callable[[Tensor], Tensor]:
    """The rule ``name`` of POINT_RULES with its fields bound (``threshold=0.4``): ltrb (..., 4) -> keep (...)."""
    return POINT_RULES.bind(name, **fields)


def assign_points(points: Tensor, regress_lo: Tensor, regress_hi: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                  gt_ignore: Tensor, keep: Callable[[Tensor], Tensor], ignore_near_crowd: bool = False) -> Assignment:
    """Anchor-free assignment. Candidates as FCOS: the point lies strictly inside a GT and the GT's largest
    l/t/r/b distance falls in the point's level range (regress_lo, regress_hi]; of several, the smallest GT.
    Then ``keep`` (a bound POINT_RULES entry) keeps or rejects that candidate; a rejected point is a negative.

    points: (N, 2); regress_lo/hi: (N,); gt_*: (B, G, ...).
    """
    b, n = gt_boxes.shape[0], points.shape[0]
    if gt_boxes.shape[1] == 0:
        zeros = torch.zeros(b, n, dtype=torch.long, device=points.device)
        return Assignment(zeros.to(torch.int8), zeros)
    ltrb = point_box_distances(points[None, :, None, :], gt_boxes[:, None, :, :])  # (B, N, G, 4)
    inside = ltrb.amin(-1) > 0
    reach = ltrb.amax(-1)
    in_range = (reach > regress_lo[None, :, None]) & (reach <= regress_hi[None, :, None])
    wh = gt_boxes[..., 2:] - gt_boxes[..., :2]
    area = (wh[..., 0] * wh[..., 1])[:, None, :].expand(b, n, -1)

    trainable = _trainable(gt_labels, gt_ignore)[:, None, :]
    candidate = inside & in_range & trainable
    cand_area = torch.where(candidate, area, torch.full_like(area, float("inf")))
    min_area, gt_index = cand_area.min(-1)  # (B, N)
    has_gt = torch.isfinite(min_area)

    chosen = ltrb.gather(2, gt_index[:, :, None, None].expand(b, n, 1, 4)).squeeze(2)  # (B, N, 4)
    state = torch.where(has_gt & keep(chosen), POSITIVE, NEGATIVE).to(torch.int8)
    # ignore_near_crowd: points inside a crowd / difficult box are not negatives either.
    ignore_cols = (gt_labels >= 0) & gt_ignore
    if ignore_near_crowd and bool(ignore_cols.any()):
        in_ignore = (inside & ignore_cols[:, None, :]).any(-1)
        state = torch.where((state == NEGATIVE) & in_ignore, torch.full_like(state, IGNORE), state)
    return Assignment(state, gt_index)
