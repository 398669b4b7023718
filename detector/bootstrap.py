"""How sure one evaluation is: a bootstrap over the validation images, from the detections already made.

A replicate draws the N val images with replacement. Matching detections to ground truth is decided image
by image, so a replicate's AP is the one matching accumulated with each image's draw count as its weight: the
matches are computed once (COCO's rules or VOC's, as the metric), and each replicate costs a weighted
cumulative sum per class; nothing is re-run or re-matched. Every trial of a study draws the same replicates
(a fixed seed over the val images in id order), so two trials' (or two variants') replicates pair up and
their difference is a paired bootstrap of the difference.

The interval of a metric is the 2.5 and 97.5 percentiles of its replicates (``percentile_interval``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPLICATES = 200
"""Replicates per evaluation (the interval's ends are percentiles 2.5 and 97.5 of them)."""
SEED = 20261201
COCO_RECALLS = np.linspace(0.0, 1.00, 101)
VOC_RECALLS = np.linspace(0.0, 1.0, 11)
COCO_THRESHOLDS = np.linspace(0.5, 0.95, 10)
COCO_AP_AT = {"AP50": 0, "AP60": 2, "AP70": 4, "AP75": 5, "AP80": 6, "AP90": 8}
"""COCO summary metrics read at one threshold: their index into COCO_THRESHOLDS."""


@dataclass
class ClassMatches:
    """One class's detections of a whole val set, in rank order (score, descending, as the metric sorts)."""

    image: np.ndarray
    """(D,) int: the index (0..N-1, val images in id order) of each detection's image."""
    tp: np.ndarray
    """(T, D) bool: a true positive at each IoU threshold."""
    ignored: np.ndarray
    """(T, D) bool: matched to an ignored (crowd / difficult) GT: neither a true nor a false positive."""
    gt_count: np.ndarray
    """(N,) int: the GT boxes of this class that count (not ignored), per image."""


def image_draws(n_images: int, replicates: int = REPLICATES, seed: int = SEED) -> np.ndarray:
    """(R, N) int: how often each val image is drawn in each replicate (each row sums to N)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=replicates)


def weighted_ap(m: ClassMatches, weights: np.ndarray, recalls: np.ndarray) -> np.ndarray:
    """(R, T) AP of one class under (R, N) image weights: the mean over ``recalls`` of the interpolated
    precision (the most precision at any rank whose recall reaches the point), COCO's and VOC07's rule.
    NaN where the class has no GT that counts.

    Only true-positive ranks matter: recall rises there only, and the best precision of a run of ranks at one
    recall is at its first rank, a true positive. So the sums are gathered at those ranks alone."""
    reps, thresholds = weights.shape[0], m.tp.shape[0]
    n_pos = weights @ m.gt_count  # (R,)
    ap = np.zeros((reps, thresholds))
    w = weights[:, m.image].astype(np.float64)  # (R, D)
    seen = np.cumsum(w, axis=1)  # weight of every detection up to each rank
    for t in range(thresholds):
        hits = np.flatnonzero(m.tp[t])
        if not hits.size:
            continue
        tp = np.cumsum(w[:, hits], axis=1)  # (R, H)
        ignored = np.flatnonzero(m.ignored[t])
        counted = seen[:, hits]
        if ignored.size:  # weight of ignored detections ranked at or above each hit
            upto = np.searchsorted(ignored, hits, side="right")
            ig_cum = np.concatenate([np.zeros((reps, 1)), np.cumsum(w[:, ignored], axis=1)], axis=1)
            counted = counted - ig_cum[:, upto]
        precision = tp / (counted + np.spacing(1))  # COCO's guard against 0 / 0
        envelope = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
        recall = tp / np.maximum(n_pos, 1e-12)[:, None]
        # The first hit whose recall reaches each point (recall rises along each row; one search per replicate
        # keeps COCO's exact comparisons).
        first = np.stack([np.searchsorted(row, recalls, side="left") for row in recall])
        reached = first < hits.size
        values = np.take_along_axis(envelope, np.minimum(first, hits.size - 1), axis=1) * reached
        ap[:, t] = values.mean(axis=1)
    ap[n_pos == 0] = np.nan
    return ap


CHUNK = 20_000_000
"""Replicates x detections held at once by weighted_ap (a few float64 arrays of it: ~1 GB at COCO scale
without chunking)."""


def replicate_aps(classes: list[ClassMatches], weights: np.ndarray, recalls: np.ndarray) -> np.ndarray:
    """(R, T, K) AP of every class under each replicate's weights (NaN: no GT of it drawn), replicates taken in
    chunks of at most CHUNK replicate-detections."""
    out = []
    for m in classes:
        step = max(1, CHUNK // max(1, len(m.image)))
        out.append(np.concatenate([weighted_ap(m, weights[i:i + step], recalls) for i in range(0, len(weights), step)]))
    return np.stack(out, axis=2)


def coco_replicates(classes: list[ClassMatches], weights: np.ndarray) -> dict[str, np.ndarray]:
    """COCO's AP (mean over IoU 0.50:0.95 and classes) and its single-threshold APs, per replicate (R,)."""
    aps = replicate_aps(classes, weights, COCO_RECALLS)
    out = {"AP": _mean_present(aps, axis=(1, 2))}
    out.update({name: _mean_present(aps[:, t], axis=1) for name, t in COCO_AP_AT.items()})
    return out


def voc_replicates(classes: list[ClassMatches], weights: np.ndarray, thresholds) -> dict[str, np.ndarray]:
    """VOC07 11-point mAP at each threshold (``mAP50`` ...) and their mean (``mAP``), per replicate (R,)."""
    per_threshold = _mean_present(replicate_aps(classes, weights, VOC_RECALLS), axis=2)  # (R, T)
    out = {f"mAP{round(thr * 100)}": per_threshold[:, t] for t, thr in enumerate(thresholds)}
    out["mAP"] = per_threshold.mean(axis=1)
    return out


def _mean_present(aps: np.ndarray, axis) -> np.ndarray:
    """The mean over the classes a replicate drew GT of (NaN elsewhere); 0 where it drew none (the metrics
    score an empty evaluation 0)."""
    present = ~np.isnan(aps)
    total = np.where(present, aps, 0.0).sum(axis=axis)
    count = present.sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The (lo, hi) percentile interval of bootstrap replicates."""
    lo, hi = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


# ---- matching, once per evaluation ----

def _iou_xywh(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(..., D, 4) x (..., G, 4) xywh -> (..., D, G) IoU as pycocotools computes it: a crowd GT's overlap is
    the intersection over the detection's area."""
    dx0, dy0 = dets[..., :, None, 0], dets[..., :, None, 1]
    dx1, dy1 = dx0 + dets[..., :, None, 2], dy0 + dets[..., :, None, 3]
    gx0, gy0 = gts[..., None, :, 0], gts[..., None, :, 1]
    gx1, gy1 = gx0 + gts[..., None, :, 2], gy0 + gts[..., None, :, 3]
    inter = np.clip(np.minimum(dx1, gx1) - np.maximum(dx0, gx0), 0, None) * \
        np.clip(np.minimum(dy1, gy1) - np.maximum(dy0, gy0), 0, None)
    d_area = dets[..., :, None, 2] * dets[..., :, None, 3]
    union = np.where(crowd[..., None, :], d_area, d_area + gts[..., None, :, 2] * gts[..., None, :, 3] - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def coco_matches(gt_dataset: dict, detections: np.ndarray, max_dets: int = 100) -> list[ClassMatches]:
    """COCO's matching (pycocotools ``evaluateImg``, area 'all', ``max_dets`` per image and class), one
    ClassMatches per category of ``gt_dataset`` in id order. detections: (D, 7) COCO results (image_id, x, y,
    w, h, score, category_id: evaluation.DetectionTable.coco_array).

    Greedy, as pycocotools: each detection in score order takes the unmatched GT of best IoU >= t (a crowd GT
    may be taken again), a non-crowd GT before any crowd one; all (image, class) groups advance one detection
    rank at a time, as arrays."""
    image_ids = np.array(sorted(img["id"] for img in gt_dataset["images"]), np.int64)
    image_index = {int(i): n for n, i in enumerate(image_ids)}
    cat_ids = sorted(c["id"] for c in gt_dataset["categories"])
    thr = np.minimum(COCO_THRESHOLDS, 1 - 1e-10)
    gts: dict[tuple[int, int], list[dict]] = {}
    for a in gt_dataset["annotations"]:
        gts.setdefault((a["category_id"], image_index[a["image_id"]]), []).append(a)
    # Each (class, image) group's detections, best first (a stable sort, as pycocotools'), its first max_dets.
    detections = np.asarray(detections, np.float64).reshape(-1, 7)
    cat, image = detections[:, 6].astype(np.int64), np.searchsorted(image_ids, detections[:, 0].astype(np.int64))
    order = np.lexsort((-detections[:, 5], image, cat))
    detections, cat, image = detections[order], cat[order], image[order]
    group_keys, starts, counts = np.unique(np.stack([cat, image], 1), axis=0, return_index=True, return_counts=True)
    dts = {(int(c), int(n)): slice(lo, lo + min(k, max_dets)) for (c, n), lo, k in zip(group_keys, starts, counts)}
    out = []
    for c in cat_ids:
        gt_count = np.zeros(len(image_ids), np.int64)
        groups = []  # (image, scores (D,), boxes (D, 4), gt boxes (G, 4), gt crowd (G,)), GTs non-crowd first
        for n in range(len(image_ids)):
            g = gts.get((c, n), [])
            crowd = np.array([bool(a.get("iscrowd", 0)) for a in g], bool)
            gt_count[n] = int((~crowd).sum())
            d = dts.get((c, n))
            if d is None:
                continue
            gorder = np.argsort(crowd, kind="mergesort")
            groups.append((n, detections[d, 5], detections[d, 1:5],
                           np.array([g[i]["bbox"] for i in gorder], np.float64).reshape(-1, 4), crowd[gorder]))
        out.append(_match_groups(groups, gt_count, thr))
    return out


def _match_groups(groups, gt_count: np.ndarray, thr: np.ndarray) -> ClassMatches:
    """One class's greedy matching over its (image, detections, GTs) groups, concatenated in image order and
    ranked by score as COCO accumulates them (a stable sort: ties keep image order)."""
    T = len(thr)
    if not groups:
        return ClassMatches(np.zeros(0, np.int64), np.zeros((T, 0), bool), np.zeros((T, 0), bool), gt_count)
    n_det = np.array([len(g[1]) for g in groups])
    n_gt = np.array([len(g[3]) for g in groups])
    Gr, D, G = len(groups), int(n_det.max()), max(1, int(n_gt.max()))
    det_boxes, gt_boxes = np.zeros((Gr, D, 4)), np.zeros((Gr, G, 4))
    crowd, valid_gt = np.zeros((Gr, G), bool), np.zeros((Gr, G), bool)
    for i, (_, _, boxes, g_boxes, g_crowd) in enumerate(groups):
        det_boxes[i, :len(boxes)], gt_boxes[i, :len(g_boxes)] = boxes, g_boxes
        crowd[i, :len(g_crowd)], valid_gt[i, :len(g_crowd)] = g_crowd, True
    iou = np.where(valid_gt[:, None, :], _iou_xywh(det_boxes, gt_boxes, crowd), -1.0)  # (Gr, D, G)
    taken = np.zeros((Gr, T, G), bool)
    tp, ignored = np.zeros((Gr, T, D), bool), np.zeros((Gr, T, D), bool)
    rows = np.arange(Gr)[:, None]
    for d in range(D):
        alive = n_det > d
        cand = (iou[:, d, None, :] >= thr[None, :, None]) & ~(taken & ~crowd[:, None, :])  # (Gr, T, G)
        regular = cand & ~crowd[:, None, :]
        pool = np.where(regular.any(axis=2, keepdims=True), regular, cand & crowd[:, None, :])
        score = np.where(pool, iou[:, d, None, :], -np.inf)
        best = G - 1 - np.argmax(score[:, :, ::-1], axis=2)  # the last of equal IoUs, as pycocotools' scan
        hit = pool.any(axis=2) & alive[:, None]  # (Gr, T)
        on_crowd = crowd[rows, best]
        tp[:, :, d] = hit & ~on_crowd
        ignored[:, :, d] = hit & on_crowd
        gi, ti = np.nonzero(hit)
        taken[gi, ti, best[gi, ti]] = True
    keep = np.arange(D)[None, :] < n_det[:, None]  # (Gr, D)
    scores = np.concatenate([g[1] for g in groups])
    image = np.repeat([g[0] for g in groups], n_det)
    order = np.argsort(-scores, kind="mergesort")
    return ClassMatches(image[order], tp.transpose(1, 0, 2)[:, keep][:, order],
                        ignored.transpose(1, 0, 2)[:, keep][:, order], gt_count)


def voc_matches(records, class_matches) -> list[ClassMatches]:
    """VOC's matching as ClassMatches, from evaluation.voc_class_matches (the one voc_metrics scores, in the
    pixel convention it was made with; a difficult GT counts neither way)."""
    image_ids = np.array(sorted(r.image_id for r in records), np.int64)
    image_index = {int(i): n for n, i in enumerate(image_ids)}
    out = []
    for c, (tp, fp, _, ranked_images) in enumerate(class_matches):
        gt_count = np.zeros(len(image_index), np.int64)
        for r in records:
            gt_count[image_index[r.image_id]] = int(((r.labels == c) & ~r.ignore).sum())
        tp, fp = tp.astype(bool), fp.astype(bool)
        out.append(ClassMatches(np.searchsorted(image_ids, ranked_images), tp, ~tp & ~fp, gt_count))
    return out
