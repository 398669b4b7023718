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
    recall is at its first rank, a true positive. So the sums are gathered at those ranks alone. Weights are
    integers, so every sum is exact and the comparisons are the unweighted metric's."""
    reps, thresholds = weights.shape[0], m.tp.shape[0]
    weights = np.asarray(weights, np.float64)
    n_pos = weights @ m.gt_count  # (R,)
    ap = np.zeros((reps, thresholds))
    hit_ranks = [np.flatnonzero(m.tp[t]) for t in range(thresholds)]
    ranks = np.unique(np.concatenate(hit_ranks))  # the ranks where recall rises at some threshold
    seen = _weight_up_to(weights, m.image, ranks)  # (R, U): weight of every detection up to each of them
    reach = recall_counts(np.maximum(n_pos, 1e-12), recalls)  # (R, P): the same at every threshold
    for t, hits in enumerate(hit_ranks):
        if not hits.size:
            continue
        tp = np.cumsum(weights[:, m.image[hits]], axis=1)  # (R, H)
        ignored = np.flatnonzero(m.ignored[t])
        counted = seen[:, np.searchsorted(ranks, hits)]
        if ignored.size:  # weight of ignored detections ranked at or above each hit
            upto = np.searchsorted(ignored, hits, side="right")
            ig_cum = np.concatenate([np.zeros((reps, 1)), np.cumsum(weights[:, m.image[ignored]], axis=1)], axis=1)
            counted = counted - ig_cum[:, upto]
        precision = tp / (counted + np.spacing(1))  # COCO's guard against 0 / 0
        envelope = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
        first = _first_reaching(tp, reach)
        reached = first < hits.size
        values = take_rows(envelope, np.minimum(first, hits.size - 1)) * reached
        ap[:, t] = values.mean(axis=1)
    ap[n_pos == 0] = np.nan
    return ap


def _weight_up_to(weights: np.ndarray, image: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """(R, U) the total weight (R, N) of the detections (D,) ranked at or above each of ``ranks`` (U,), sorted:
    the weights of the detections between two of them summed at once (reduceat over (D, R) rows), then
    accumulated."""
    if not ranks.size:
        return np.zeros((len(weights), 0))
    per_detection = weights.T[image[: ranks[-1] + 1]]  # (D', R)
    return np.cumsum(np.add.reduceat(per_detection, np.r_[0, ranks[:-1] + 1], axis=0), axis=0).T


def take_rows(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(R, P) ``values[r, index[r, p]]`` of values (R, H): ``np.take_along_axis(values, index, axis=1)``, as one
    take of flat indices (twice as fast on these sizes)."""
    return np.take(values, index + (np.arange(len(values)) * values.shape[1])[:, None])


def recall_counts(n_pos: np.ndarray, recalls: np.ndarray) -> np.ndarray:
    """(R, P) for each row's n_pos (R,) and each recall x, the least count k with ``k / n_pos >= x`` as floats
    compare it: the count of true positives at which the recall ``tp / n_pos`` reaches x. Division by n_pos is
    monotone, so k is ceil(x n) moved by the odd one where the rounding crosses x."""
    n = n_pos[:, None]
    k = np.ceil(recalls[None, :] * n)
    for _ in range(2):  # the rounding of x n and of k / n move k by at most one each
        k = np.where((k - 1) / n >= recalls, k - 1, k)
        k = np.where(k / n < recalls, k + 1, k)
    return k


def _first_reaching(tp: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(R, P) ``np.searchsorted(tp[r], counts[r], side="left")`` for every row r at once: the first rank at
    which each row's running count tp (R, H) (non-decreasing, integer-valued) reaches each of its counts (R, P)
    (integer-valued), i.e. how many of its ranks are below it. Counted, not searched: a histogram of each
    row's values, summed up."""
    rows, ranks = tp.shape
    top = int(tp.max(initial=0.0)) + 1  # every value is in 0 .. top - 1
    cells = (tp.astype(np.int64) + np.arange(rows)[:, None] * top).ravel()
    at_most = np.bincount(cells, minlength=rows * top).reshape(rows, top).cumsum(axis=1)  # ranks with value <= v
    below = take_rows(at_most, np.clip(counts - 1, 0, top - 1).astype(np.int64))
    return np.where(counts <= 0, 0, np.where(counts > top - 1, ranks, below))


CHUNK = 20_000_000
"""Replicates x detections held at once by weighted_ap (a few float64 arrays of it: ~1 GB at COCO scale
without chunking)."""


def replicate_aps(classes: list[ClassMatches], weights: np.ndarray, recalls: np.ndarray) -> np.ndarray:
    """(R, T, K) AP of every class under each replicate's weights (NaN: no GT of it drawn), replicates taken in
    chunks of at most CHUNK replicate-detections."""
    out, weights = [], np.asarray(weights, np.float64)  # converted once, not per class
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


# ---- VOC's matching as ClassMatches (COCO's: detector.coco) ----

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
