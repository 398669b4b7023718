"""COCO's bounding-box evaluation (pycocotools' ``COCOeval``: evaluateImg, accumulate, summarize) on arrays, for
many detection sets against one ground truth at once: an inference sweep's variants are evaluated together.

pycocotools matches image by image and class by class in Python; faster-coco-eval matches in C++ but first
loads the results as one Python dict per detection, which cost more than the matching. Here the detections stay
columns. Only a detection that reaches IoU 0.5 with some GT of its class and image can match at any threshold;
those "contenders" are matched greedily in score order, every (set, class, image) group one contender at a time
as arrays over the area ranges and IoU thresholds. The rules and the float operations are pycocotools' (tests/
test_coco.py compares the summaries with pycocotools and faster-coco-eval), so the metrics are COCO's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .bootstrap import COCO_AP_AT, COCO_RECALLS, COCO_THRESHOLDS, ClassMatches, recall_counts, take_rows

AREA_RANGES = ((0.0, 1e10), (0.0, 32.0 ** 2), (32.0 ** 2, 96.0 ** 2), (96.0 ** 2, 1e10))
"""pycocotools' area ranges: all, small, medium, large (bounds inclusive, on the annotation's ``area``)."""
MAX_DETS = (1, 10, 100)
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR", "ARs", "ARm", "ARl")
"""COCOeval.summarize's 12 numbers, in its order."""
EXTRA_AP = {name: t for name, t in COCO_AP_AT.items() if name not in STATS}
"""AP60-AP90: AP at one more IoU threshold each (area all, 100 detections), by index into COCO_THRESHOLDS."""
IOU_CHUNK = 1 << 14
"""Detections whose IoU with their image's GTs is computed at once (temporaries (chunk, G, 4))."""


@dataclass
class CocoGroundTruth:
    """A COCO ground truth as columns: the evaluated images and categories (sorted ids, as COCOeval takes them)
    and one row per annotation in the dataset's order (N_gt rows): image and category (indices into those),
    box (N_gt, 4) xywh, area (the annotation's own ``area``, which the area ranges read), crowd."""

    image_ids: np.ndarray
    cat_ids: np.ndarray
    image: np.ndarray
    cat: np.ndarray
    box: np.ndarray
    area: np.ndarray
    crowd: np.ndarray

    @classmethod
    def of(cls, dataset: dict) -> "CocoGroundTruth":
        """From a COCO dataset dict (images, annotations, categories)."""
        image_ids = np.array(sorted(i["id"] for i in dataset["images"]), np.int64)
        cat_ids = np.array(sorted(c["id"] for c in dataset["categories"]), np.int64)
        anns = list(dataset.get("annotations", []))
        img = np.array([a["image_id"] for a in anns], np.int64)
        cat = np.array([a["category_id"] for a in anns], np.int64)
        image, cat_index = index_of(image_ids, img), index_of(cat_ids, cat)
        keep = (image >= 0) & (cat_index >= 0)  # COCOeval reads the evaluated images' and categories' GT only
        box = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        area = np.array([a["area"] for a in anns], np.float64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        return cls(image_ids, cat_ids, image[keep], cat_index[keep], box[keep], area[keep], crowd[keep])

    def ignored(self) -> np.ndarray:
        """(N_gt, A) a GT that counts neither way under each area range: a crowd, or its area outside the range."""
        lo, hi = np.array(AREA_RANGES).T
        return self.crowd[:, None] | (self.area[:, None] < lo) | (self.area[:, None] > hi)


@dataclass
class CocoEvaluation:
    """One detection set's evaluation. stats: the 12 summary numbers and AP60-AP90 (-1 where COCO has none,
    e.g. APs without a small GT); precision (T, R, K, A): COCOeval's ``eval['precision']`` at 100 detections
    (the only one the summary reads); recall (T, K, A, M); matches: each category's ranked matches (area all,
    100 detections), which the bootstrap re-weights."""

    stats: dict[str, float]
    precision: np.ndarray
    recall: np.ndarray
    matches: list[ClassMatches]


def index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The index of each id in ``sorted_ids``, -1 where absent."""
    at = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[at] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
    return np.where(found, at, -1)


def padded_slots(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Items (N,) laid out one row per distinct key, padded: keys (K,) sorted; order (N,) the items by key, in
    their own order within a key; row, slot (N,) where each item of ``order`` goes in a (K, slot.max() + 1)
    array."""
    order = np.argsort(key, kind="stable")
    keys, first, count = np.unique(key[order], return_index=True, return_counts=True)
    return keys, order, np.repeat(np.arange(len(keys)), count), np.arange(len(order)) - np.repeat(first, count)


def _iou_xywh(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, 4) detections x (D, G, 4) GTs, xywh -> (D, G) IoU as pycocotools' ``maskUtils.iou`` computes it: the
    same float64 operations in the same order, and a crowd GT's overlap is the intersection over the
    detection's area."""
    dx0, dy0 = dets[:, None, 0], dets[:, None, 1]
    gx0, gy0 = gts[..., 0], gts[..., 1]
    w = np.minimum(dx0 + dets[:, None, 2], gx0 + gts[..., 2]) - np.maximum(dx0, gx0)
    h = np.minimum(dy0 + dets[:, None, 3], gy0 + gts[..., 3]) - np.maximum(dy0, gy0)
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    d_area = dets[:, None, 2] * dets[:, None, 3]
    union = np.where(crowd, d_area, d_area + gts[..., 2] * gts[..., 3] - inter)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _greedy_match(iou: np.ndarray, counts: np.ndarray, ignored: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' greedy matching of the contenders of Gc groups at every area range and threshold at once.

    iou: (Gc, K, G) each group's contenders (best first) x its GTs (-1: padding); counts: (Gc,) contenders per
    group, descending (so the groups still matching at step k are a prefix); ignored: (Gc, A, G) per area range;
    crowd: (Gc, G). Returns (Gc, K, A, T) the matched GT of each contender, -1 for none.

    A contender takes, among the GTs not yet taken (a crowd may be taken again) with IoU >= t, the best of
    those that count, else the best ignored one; of equal IoUs the last, as pycocotools' scan keeps."""
    n_groups, k_max, g = iou.shape
    n_areas, thresholds = ignored.shape[1], np.minimum(COCO_THRESHOLDS, 1 - 1e-10)
    taken = np.zeros((n_groups, n_areas, len(thresholds), g), bool)
    match = np.full((n_groups, k_max, n_areas, len(thresholds)), -1, np.int64)
    reusable = crowd[:, None, None, :]
    for k in range(k_max):
        n = int((counts > k).sum())
        row = iou[:n, k, None, None, :]  # (n, 1, 1, G)
        cand = (row >= thresholds[None, None, :, None]) & ~(taken[:n] & ~reusable[:n])  # (n, A, T, G)
        ign = ignored[:n, :, None, :]
        counting = cand & ~ign
        pool = np.where(counting.any(axis=3, keepdims=True), counting, cand & ign)
        best = g - 1 - np.argmax(np.where(pool, row, -np.inf)[..., ::-1], axis=3)  # (n, A, T)
        hit = pool.any(axis=3)
        match[:n, k] = np.where(hit, best, -1)
        gi, ai, ti = np.nonzero(hit)
        taken[gi, ai, ti, best[gi, ai, ti]] = True
    return match


def _accumulate(tp: np.ndarray, fp: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """(A, T, R) COCOeval.accumulate's interpolated precision of one class under A area ranges: tp, fp (A, T, D)
    over its detections in rank order (an ignored one is neither), n_pos (A,) its GTs that count (> 0).

    Read at the true positives only: the first rank whose recall reaches a recall point is the k-th true
    positive (k: recall_counts, the least count whose recall ``k / n_pos`` reaches it as floats compare), and the
    most precision at or past a rank is at a true positive (precision falls at every false positive). The
    precisions are pycocotools' float operations: ``tp / (fp + tp + eps)`` of the running counts."""
    areas, thresholds, n = tp.shape
    if n == 0:
        return np.zeros((areas, thresholds, len(COCO_RECALLS)))
    rows = tp.reshape(-1, n)
    counted = np.cumsum((tp | fp).reshape(-1, n), axis=1, dtype=np.float64)  # fp + tp at every rank
    row, rank = np.nonzero(rows)  # each row's true positives, in rank order
    hits = np.bincount(row, minlength=len(rows))
    nth = np.arange(len(row)) - np.repeat(np.cumsum(hits) - hits, hits)  # 0, 1, ... within each row
    precision = np.zeros((len(rows), max(1, int(hits.max(initial=0)))))  # padding 0 never raises a maximum
    precision[row, nth] = (nth + 1.0) / (counted[row, rank] + np.spacing(1))
    envelope = np.flip(np.maximum.accumulate(np.flip(precision, axis=1), axis=1), axis=1)
    k = np.repeat(recall_counts(n_pos.astype(np.float64), COCO_RECALLS), thresholds, axis=0).astype(np.int64)
    reached = take_rows(envelope, np.clip(k - 1, 0, envelope.shape[1] - 1))
    return np.where(k <= hits[:, None], reached, 0.0).reshape(areas, thresholds, -1)


def _mean_valid(s: np.ndarray) -> float:
    """COCOeval._summarize's mean of the entries > -1 (-1 when there are none)."""
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """COCOeval.summarize's 12 stats and AP60-AP90 from precision (T, R, K, A) at 100 detections and recall
    (T, K, A, M)."""
    stats = [_mean_valid(precision[..., 0]), _mean_valid(precision[COCO_AP_AT["AP50"], ..., 0]),
             _mean_valid(precision[COCO_AP_AT["AP75"], ..., 0])]
    stats += [_mean_valid(precision[..., a]) for a in (1, 2, 3)]
    stats += [_mean_valid(recall[:, :, 0, m]) for m in range(len(MAX_DETS))]
    stats += [_mean_valid(recall[:, :, a, -1]) for a in (1, 2, 3)]
    out = dict(zip(STATS, stats))
    out.update({name: _mean_valid(precision[t, ..., 0]) for name, t in EXTRA_AP.items()})
    return out


@dataclass
class _Ranked:
    """Detections as columns, sorted by set, category, image, then score (best first; a stable sort, so ties
    keep the results' order, as pycocotools'), the first 100 of each (set, category, image) group: box (D, 4)
    xywh, score, and each one's set, category and image (indices), its group (a number per (set, category,
    image)) and its rank in the group."""

    box: np.ndarray
    score: np.ndarray
    set: np.ndarray
    cat: np.ndarray
    image: np.ndarray
    group: np.ndarray
    rank: np.ndarray

    @classmethod
    def of(cls, gt: CocoGroundTruth, detection_sets: Sequence[np.ndarray]) -> "_Ranked":
        sets = [np.asarray(d, np.float64).reshape(-1, 7) for d in detection_sets]
        det = np.concatenate(sets)
        det_set = np.repeat(np.arange(len(sets)), [len(d) for d in sets])
        image = index_of(gt.image_ids, det[:, 0].astype(np.int64))
        if (image < 0).any():
            raise ValueError(f"detections of image {int(det[np.argmax(image < 0), 0])}, which the ground truth "
                             f"does not have")
        cat = index_of(gt.cat_ids, det[:, 6].astype(np.int64))
        keep = cat >= 0  # COCOeval evaluates the GT's categories only
        det, det_set, image, cat = det[keep], det_set[keep], image[keep], cat[keep]
        group = (det_set * len(gt.cat_ids) + cat) * len(gt.image_ids) + image
        order = np.lexsort((-det[:, 5], group))
        group = group[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
        rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
        first = rank < MAX_DETS[-1]
        order = order[first]
        return cls(det[order, 1:5], det[order, 5], det_set[order], cat[order], image[order], group[first], rank[first])

    def __len__(self) -> int:
        return len(self.score)


@dataclass
class _GroupTruth:
    """Each (category, image) with GT, its GTs padded to the most of any, in the dataset's order: keys (Kg,)
    ``category * images + image``, box (Kg, G, 4) xywh, valid and crowd (Kg, G), ignored (Kg, A, G)."""

    keys: np.ndarray
    box: np.ndarray
    valid: np.ndarray
    crowd: np.ndarray
    ignored: np.ndarray

    @classmethod
    def of(cls, gt: CocoGroundTruth) -> "_GroupTruth":
        keys, by_key, row, slot = padded_slots(gt.cat * len(gt.image_ids) + gt.image)
        g = int(slot.max(initial=0)) + 1
        box, valid, crowd = np.zeros((len(keys), g, 4)), np.zeros((len(keys), g), bool), np.zeros((len(keys), g), bool)
        ignored = np.zeros((len(keys), len(AREA_RANGES), g), bool)
        box[row, slot], valid[row, slot], crowd[row, slot] = gt.box[by_key], True, gt.crowd[by_key]
        ignored[row, :, slot] = gt.ignored()[by_key]
        return cls(keys, box, valid, crowd, ignored)

    def contenders(self, dets: _Ranked, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The detections that reach IoU 0.5 with a GT of their row (``row``: -1 for none), in order, and their
        IoU with each GT of it: (Nc,), (Nc, G) (-1: padding). IoU is computed IOU_CHUNK detections at a time
        and kept for the contenders only (at COCO's scale all of it would be detections x the most GTs of one
        class in an image)."""
        index, iou = [], []
        has = np.flatnonzero(row >= 0)
        for lo in range(0, len(has), IOU_CHUNK):
            at = has[lo:lo + IOU_CHUNK]
            r = row[at]
            chunk = np.where(self.valid[r], _iou_xywh(dets.box[at], self.box[r], self.crowd[r]), -1.0)
            reach = (chunk >= COCO_THRESHOLDS[0]).any(axis=1)
            index.append(at[reach]), iou.append(chunk[reach])
        return (np.concatenate(index) if index else np.zeros(0, np.int64),
                np.concatenate(iou) if iou else np.zeros((0, self.box.shape[1])))


def _outcomes(dets: _Ranked, truth: _GroupTruth, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """(tp, ignored), each (D, A, T): a detection is a true positive, or ignored (matched to an ignored GT, or
    unmatched with its own area outside the range), else a false positive, per area range and threshold.

    Only a contender (IoU >= 0.5 with a GT of its group) can match; contenders are matched greedily, group by
    group in rank order (_greedy_match), the groups with the most contenders first."""
    row = index_of(truth.keys, dets.cat * n_images + dets.image)
    contender, iou = truth.contenders(dets, row)
    _, first, count = np.unique(dets.group[contender], return_index=True, return_counts=True)  # in group order
    by_count = np.argsort(-count, kind="stable")
    slot_of_group = np.empty(len(count), np.int64)
    slot_of_group[by_count] = np.arange(len(count))
    slot, pos = np.repeat(slot_of_group, count), np.arange(len(contender)) - np.repeat(first, count)
    grouped = np.full((len(count), int(count.max(initial=0)), iou.shape[1]), -1.0)
    grouped[slot, pos] = iou
    group_row = row[contender[first[by_count]]]
    match = _greedy_match(grouped, count[by_count], truth.ignored[group_row], truth.crowd[group_row])[slot, pos]
    hit = match >= 0  # (Nc, A, T)
    on_ignored = hit & np.take_along_axis(truth.ignored[row[contender]], np.maximum(match, 0), axis=2)
    low, high = np.array(AREA_RANGES).T
    area = dets.box[:, 2] * dets.box[:, 3]
    outside = (area[:, None] < low) | (area[:, None] > high)  # (D, A)
    tp = np.zeros((len(dets), *hit.shape[1:]), bool)
    tp[contender] = hit & ~on_ignored
    ignored = np.repeat(outside[:, :, None], hit.shape[2], axis=2)
    ignored[contender] = on_ignored | (~hit & outside[contender][:, :, None])
    return tp, ignored


def _recall(dets: _Ranked, tp: np.ndarray, n_pos: np.ndarray, n_sets: int) -> np.ndarray:
    """(S, T, K, A, M) recall at each max-dets: the true positives among each image's first m of a category,
    over its GTs that count (n_pos (K, A); -1 where none)."""
    n_cat, n_areas, n_thr = n_pos.shape[0], tp.shape[1], tp.shape[2]
    d, a, t = np.nonzero(tp)
    cell = ((dets.set[d] * n_cat + dets.cat[d]) * n_areas + a) * n_thr + t
    out = np.full((n_sets, n_thr, n_cat, n_areas, len(MAX_DETS)), -1.0)
    for m, limit in enumerate(MAX_DETS):
        hits = np.bincount(cell[dets.rank[d] < limit], minlength=n_sets * n_cat * n_areas * n_thr)
        hits = hits.reshape(n_sets, n_cat, n_areas, n_thr).astype(np.float64)
        recall = np.where((n_pos > 0)[..., None], hits / np.maximum(n_pos, 1)[..., None], -1.0)
        out[..., m] = recall.transpose(0, 3, 1, 2)
    return out


def evaluate(gt: CocoGroundTruth, detection_sets: Sequence[np.ndarray]) -> list[CocoEvaluation]:
    """Each (D, 7) detection set (image_id, x, y, w, h, score, category_id: DetectionTable.coco_array) evaluated
    as COCOeval(iouType='bbox') would, with its default parameters. A set without detections is what COCOeval
    gives a result with none of the GT's categories (it cannot load an empty one): 0 where there is GT, -1 where
    an area range has none. Detections of a category the GT does not have are not evaluated, as COCOeval's; an
    image the GT does not have is refused, as its ``loadRes``. The GT's annotation ids play no part (pycocotools
    needs them unique and from 1: the dataset loader checks them)."""
    n_img, n_cat, n_sets = len(gt.image_ids), len(gt.cat_ids), len(detection_sets)
    if not n_sets:
        return []
    dets = _Ranked.of(gt, detection_sets)
    tp, ignored = _outcomes(dets, _GroupTruth.of(gt), n_img)
    fp = ~tp & ~ignored
    counts = ~gt.ignored()  # GTs that count, per area range
    n_pos = np.stack([np.bincount(gt.cat, weights=counts[:, a], minlength=n_cat) for a in range(len(AREA_RANGES))], 1)
    per_image = np.zeros((n_cat, n_img), np.int64)  # for the bootstrap: area all
    np.add.at(per_image, (gt.cat, gt.image), counts[:, 0])
    recall = _recall(dets, tp, n_pos, n_sets)
    # Precision at 100 detections: each category's detections ranked over its images (a stable sort, so ties
    # keep image order, as accumulate's concatenation in image order does).
    segment = dets.set * n_cat + dets.cat
    ranked = np.lexsort((-dets.score, segment))
    bounds = np.searchsorted(segment[ranked], np.arange(n_sets * n_cat + 1))
    precision = np.full((n_sets, len(COCO_THRESHOLDS), len(COCO_RECALLS), n_cat, len(AREA_RANGES)), -1.0)
    results = []
    for s in range(n_sets):
        matches = []
        for k in range(n_cat):
            idx = ranked[bounds[s * n_cat + k]:bounds[s * n_cat + k + 1]]
            areas = np.flatnonzero(n_pos[k] > 0)
            if areas.size:  # (none: a category without GT among these images; its precision stays -1)
                # integer indices beside an index array: the indexed view's axes are (A, T, R)
                precision[s, :, :, k, areas] = _accumulate(
                    *(np.ascontiguousarray(x[idx][:, areas].transpose(1, 2, 0)) for x in (tp, fp)), n_pos[k, areas])
            matches.append(ClassMatches(dets.image[idx], tp[idx, 0].T, ignored[idx, 0].T, per_image[k]))
        results.append(CocoEvaluation(summarize(precision[s], recall[s]), precision[s], recall[s], matches))
    return results
