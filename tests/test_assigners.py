import pytest
import torch

from detector.assigners import (IGNORE, NEGATIVE, POSITIVE, assign_max_iou, assign_points, centerness, point_rule,
                                pseudo_iou)


def _gt(boxes, labels, ignore=None):
    b = torch.tensor([boxes], dtype=torch.float32)
    lab = torch.tensor([labels])
    ign = torch.tensor([ignore or [False] * len(labels)])
    return b, lab, ign


# ---- max_iou (RetinaNet) ----

def test_max_iou_thresholds_positive_ignore_negative():
    anchors = torch.tensor([[0.0, 0, 10, 10],   # IoU 1.0 with GT -> positive
                            [0.0, 0, 10, 5],    # IoU 0.5 -> positive (>= 0.5)
                            [0.0, 0, 10, 4.5],  # IoU 0.45 -> ignore (between 0.4 and 0.5)
                            [0.0, 0, 10, 3],    # IoU 0.3 -> negative
                            [50.0, 50, 60, 60]])
    a = assign_max_iou(anchors, *_gt([[0, 0, 10, 10]], [2]))
    assert a.state[0].tolist() == [POSITIVE, POSITIVE, IGNORE, NEGATIVE, NEGATIVE]
    assert a.gt_index[0, :2].tolist() == [0, 0]


def test_max_iou_keeps_best_anchor_of_a_poorly_covered_gt():
    anchors = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 40, 40]])
    # GT 0 matched at IoU 1; GT 1 (a thin box) reaches at most 0.25 with anchor 1 -> that anchor becomes positive for GT 1
    a = assign_max_iou(anchors, *_gt([[0, 0, 10, 10], [0, 0, 40, 10]], [0, 1]))
    assert a.state[0].tolist() == [POSITIVE, POSITIVE]
    assert a.gt_index[0].tolist() == [0, 1]


def test_max_iou_is_batched_and_ignores_padding_and_crowd():
    anchors = torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30], [40.0, 40, 50, 50]])
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 0, 0]],
                          [[20.0, 20, 30, 30], [40, 40, 50, 50]]])
    labels = torch.tensor([[1, -1], [0, 3]])
    ignore = torch.tensor([[False, False], [False, True]])
    a = assign_max_iou(anchors, boxes, labels, ignore)
    assert a.state[0].tolist() == [POSITIVE, NEGATIVE, NEGATIVE]
    # image 1: anchor 1 matches GT 0; anchor 2 lies on a crowd box: never a positive, and a plain negative as in
    # the papers' code (mmdetection's ignore_iof_thr=-1) ...
    assert a.state[1].tolist() == [NEGATIVE, POSITIVE, NEGATIVE]
    # ... or ignored, as detectron2 does (model.assigner.near_crowd: ignore)
    a = assign_max_iou(anchors, boxes, labels, ignore, ignore_near_crowd=True)
    assert a.state[1].tolist() == [NEGATIVE, POSITIVE, IGNORE]


def test_max_iou_with_no_gt_is_all_negative():
    anchors = torch.tensor([[0.0, 0, 10, 10]])
    a = assign_max_iou(anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool))
    assert (a.state == NEGATIVE).all() and a.state.shape == (2, 1)


# ---- Pseudo-IoU, Algorithm 1 of paper 003 ----

def test_pseudo_iou_is_one_at_the_centre():
    assert pseudo_iou(torch.tensor([5.0, 3.0, 5.0, 3.0])).item() == pytest.approx(1.0)


def test_pseudo_iou_at_the_corner_of_a_square_is_one_seventh():
    # point at the top-left corner of a 10x10 box: intersection w/2 * h/2, union 2wh - wh/4
    assert pseudo_iou(torch.tensor([0.0, 0.0, 10.0, 10.0])).item() == pytest.approx(1 / 7)


def test_pseudo_iou_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    ltrb = torch.rand(100, 4, generator=g) * 20 + 0.1
    w, h = ltrb[:, 0] + ltrb[:, 2], ltrb[:, 1] + ltrb[:, 3]
    dx, dy = (ltrb[:, 0] - ltrb[:, 2]).abs() / 2, (ltrb[:, 1] - ltrb[:, 3]).abs() / 2
    r = (1 - dx / w) * (1 - dy / h)
    assert torch.allclose(pseudo_iou(ltrb), r / (2 - r), atol=1e-6)


def test_centerness_hand_value():
    # l=2, r=6, t=3, b=3 -> sqrt(2/6 * 1) = 0.5774
    assert centerness(torch.tensor([2.0, 3.0, 6.0, 3.0])).item() == pytest.approx((1 / 3) ** 0.5)


def _grid_points(size=64, stride=8):
    ys, xs = torch.meshgrid(torch.arange(size // stride), torch.arange(size // stride), indexing="ij")
    pts = torch.stack(((xs.reshape(-1) + 0.5) * stride, (ys.reshape(-1) + 0.5) * stride), -1).float()
    lo = torch.full((len(pts),), -1.0)
    hi = torch.full((len(pts),), 64.0)
    return pts, lo, hi


def test_pseudo_iou_threshold_zero_reproduces_inside():
    pts, lo, hi = _grid_points()
    gt = _gt([[3, 5, 50, 45], [30, 30, 60, 62]], [0, 1])
    inside = assign_points(pts, lo, hi, *gt, point_rule("inside"))
    piou0 = assign_points(pts, lo, hi, *gt, point_rule("pseudo_iou", threshold=0.0))
    assert torch.equal(inside.state, piou0.state)
    assert torch.equal(inside.gt_index[inside.positive], piou0.gt_index[piou0.positive])


def test_pseudo_iou_positive_count_falls_monotonically_with_threshold():
    pts, lo, hi = _grid_points()
    gt = _gt([[3, 5, 50, 45], [30, 30, 60, 62]], [0, 1])
    counts = [int(assign_points(pts, lo, hi, *gt, point_rule("pseudo_iou", threshold=t)).positive.sum())
              for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    assert all(a >= b for a, b in zip(counts, counts[1:])), counts
    assert counts[0] > counts[3] > 0


def test_rejected_point_is_a_negative_not_ignored():
    pts, lo, hi = _grid_points()
    a = assign_points(pts, lo, hi, *_gt([[0, 0, 64, 64]], [0]), point_rule("pseudo_iou", threshold=0.9))
    assert (a.state != IGNORE).all()
    assert int(a.positive.sum()) < len(pts)


def test_point_on_two_gts_goes_to_the_smaller():
    pts = torch.tensor([[20.0, 20.0]])
    a = assign_points(pts, torch.tensor([-1.0]), torch.tensor([64.0]),
                      *_gt([[0, 0, 60, 60], [10, 10, 30, 30]], [0, 1]), point_rule("inside"))
    assert a.state[0, 0] == POSITIVE and a.gt_index[0, 0] == 1


def test_regress_range_excludes_points_on_the_wrong_level():
    pts = torch.tensor([[50.0, 50.0], [50.0, 50.0]])
    lo, hi = torch.tensor([-1.0, 64.0]), torch.tensor([64.0, 128.0])
    # max distance from (50,50) to sides of [0,0,120,120] is 70: only the second level is in range
    a = assign_points(pts, lo, hi, *_gt([[0, 0, 120, 120]], [0]), point_rule("inside"))
    assert a.state[0].tolist() == [NEGATIVE, POSITIVE]


def test_scaled_box_and_centerness_rules():
    pts = torch.tensor([[50.0, 50.0], [20.0, 50.0]])  # centre, and a point 30 px left of centre
    lo, hi = torch.full((2,), -1.0), torch.full((2,), 64.0)
    gt = _gt([[10, 10, 90, 90]], [0])  # 80 x 80, centre (50, 50)
    s = assign_points(pts, lo, hi, *gt, point_rule("scaled_box", scale=0.5))  # |dx| < 20
    assert s.state[0].tolist() == [POSITIVE, NEGATIVE]
    c = assign_points(pts, lo, hi, *gt, point_rule("centerness", threshold=0.4))  # ctr of pt 2: sqrt(10/70)=0.378
    assert c.state[0].tolist() == [POSITIVE, NEGATIVE]
