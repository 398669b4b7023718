"""Detection metrics: the detections as columns, VOC07 11-point mAP (COCO's: detector.coco), and the
correlation between detection confidence and localisation quality (IoU_eval)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
from scipy import stats

from .coco import index_of, padded_slots

VOC_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
VOC_PIXEL_OFFSET = {"continuous": 0.0, "inclusive": 1.0}
"""``inference.voc_pixels`` -> what the VOC metric adds to a box's width and height (and to an overlap's).

``inclusive`` is mmdetection 1.x's: its VOC loader also subtracts 1 from every corner, but that moves the
ground truth and (through training) the detections alike, and IoU does not change when both move, so the
metric needs only the ``+ 1``; the loader keeps the files' corners under both conventions. What stays different
from that fork is a training detail: its targets are ours moved one pixel up and left, except the x corners in a
horizontally flipped image, which agree (its flip is ``w - x - 1``, ours ``w - x``)."""


@dataclass
class DetectionTable:
    """A val set's detections under one variant, as columns: D rows, image by image, each image's best
    first. image_id, label (0-based), category_id: (D,) int64; score: (D,) float64; box: (D, 4) float64 xyxy
    in the image's original pixels."""

    image_id: np.ndarray
    label: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    box: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def concat(cls, parts: list["DetectionTable"]) -> "DetectionTable":
        if not parts:
            return cls.from_dicts([])
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    @classmethod
    def from_dicts(cls, detections: list[dict]) -> "DetectionTable":
        """From dicts with image_id, label, score, box (xyxy) and, optionally, category_id."""
        col = lambda k, dtype: np.array([d.get(k, -1) for d in detections], dtype)  # noqa: E731
        return cls(col("image_id", np.int64), col("label", np.int64), col("category_id", np.int64),
                   col("score", np.float64), np.array([d["box"] for d in detections], np.float64).reshape(-1, 4))

    def ranked_alike(self, other: "DetectionTable") -> bool:
        """The same detections (images, classes, boxes, in order) with scores in the same order, ties alike:
        every metric that only compares scores (COCO's, VOC's and their bootstraps) scores both the same."""
        return (len(self) == len(other) and np.array_equal(self.image_id, other.image_id)
                and np.array_equal(self.label, other.label) and np.array_equal(self.box, other.box)
                and np.array_equal(np.unique(self.score, return_inverse=True)[1],
                                   np.unique(other.score, return_inverse=True)[1]))

    def coco_array(self) -> np.ndarray:
        """(D, 7) COCO results as detector.coco.evaluate (and pycocotools' ``loadRes``) read an array: image_id,
        x, y, w, h, score, category_id."""
        xywh = np.concatenate([self.box[:, :2], self.box[:, 2:] - self.box[:, :2]], axis=1)
        return np.column_stack([self.image_id, xywh, self.score, self.category_id]).astype(np.float64)

    def coco_results(self) -> list[dict]:
        """COCO result dicts (the detections file's JSON)."""
        xywh = self.coco_array()[:, 1:5].tolist()
        return [{"image_id": i, "category_id": c, "bbox": b, "score": s}
                for i, c, b, s in zip(self.image_id.tolist(), self.category_id.tolist(), xywh, self.score.tolist())]


@dataclass
class PaddedGroundTruth:
    """A val set's GT boxes, one row per image (in the records' order), padded to the most boxes of any
    image: boxes (I, G, 4) xyxy, labels (I, G) 0-based with -1 for padding, ignore (I, G) crowd / difficult;
    image_ids (I,)."""

    image_ids: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray

    @classmethod
    def of(cls, records) -> "PaddedGroundTruth":
        g = max([len(r.labels) for r in records] + [1])
        boxes, labels = np.zeros((len(records), g, 4)), np.full((len(records), g), -1, np.int64)
        ignore = np.zeros((len(records), g), bool)
        for n, r in enumerate(records):
            k = len(r.labels)
            boxes[n, :k], labels[n, :k], ignore[n, :k] = r.boxes, r.labels, r.ignore
        return cls(np.array([r.image_id for r in records], np.int64), boxes, labels, ignore)

    def row_of(self, image_id: np.ndarray) -> np.ndarray:
        """(D,) the row of each image id."""
        order = np.argsort(self.image_ids, kind="stable")
        return order[np.searchsorted(self.image_ids, image_id, sorter=order)]


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP: mean over r in {0, 0.1, ..., 1} of max precision at recall >= r."""
    ap = 0.0
    for t in np.linspace(0, 1, 11):
        p = precision[recall >= t]
        ap += (p.max() if p.size else 0.0) / 11
    return float(ap)


def _iou_with_own_gts(box: np.ndarray, gt_boxes: np.ndarray, rows: np.ndarray, offset: float = 0.0,
                      chunk: int = 1 << 14) -> np.ndarray:
    """(D, 4) detections x the GT boxes of each one's image (``gt_boxes[rows]``: (I, G, 4) padded boxes, (D,)
    image rows) -> (D, G) IoU in float64, as torchvision's box_iou computes it, ``chunk`` detections at a time
    (the temporaries are (chunk, G, 4)). ``offset`` (VOC_PIXEL_OFFSET) is added to every far corner: with 1 that
    is mmdetection 1.x's IoU exactly, areas ``(x1 - x0 + 1) (y1 - y0 + 1)`` and overlap
    ``max(min(x1) - max(x0) + 1, 0)`` per side. A padding GT (zero box) overlaps nothing."""
    out = np.zeros((len(box), gt_boxes.shape[1]))
    for lo in range(0, len(box), chunk):
        a = box[lo:lo + chunk, None, :].astype(np.float64)
        b = gt_boxes[rows[lo:lo + chunk]].astype(np.float64)
        a_far, b_far = a[..., 2:] + offset, b[..., 2:] + offset
        area_a = (a_far[..., 0] - a[..., 0]) * (a_far[..., 1] - a[..., 1])
        area_b = (b_far[..., 0] - b[..., 0]) * (b_far[..., 1] - b[..., 1])
        wh = np.clip(np.minimum(a_far, b_far) - np.maximum(a[..., :2], b[..., :2]), 0, None)
        inter = wh[..., 0] * wh[..., 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:lo + chunk] = np.nan_to_num(inter / (area_a + area_b - inter))
    return out


def _match_class(score: np.ndarray, image_id: np.ndarray, iou: np.ndarray, gt_of_class: np.ndarray,
                 difficult: np.ndarray, n_pos: int, thresholds: tuple[float, ...]
                 ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Greedy VOC matching of one class's D detections at every IoU threshold at once: (tp, fp), each (T, D)
    over the detections in score order, the number of non-difficult GTs, and each ranked detection's image id.
    score, image_id: (D,); iou: (D, G) with the GTs of each one's image, of which gt_of_class (D, G) are of
    this class and difficult (D, G) are difficult.

    Each detection's best GT of the class (difficult ones included, as the devkit does) does not depend on the
    threshold; at a threshold, the first detection in score order to reach a non-difficult GT is its true
    positive, later ones are false positives, and one on a difficult GT counts neither way."""
    order = np.argsort(-score, kind="stable")
    score, image_id, iou, gt_of_class, difficult = (x[order] for x in (score, image_id, iou, gt_of_class, difficult))
    iou = np.where(gt_of_class, iou, -1.0)  # G >= 1 (PaddedGroundTruth)
    j = iou.argmax(axis=1)
    rows = np.arange(len(score))
    has_gt = gt_of_class.any(axis=1)
    best_iou = np.where(has_gt, iou[rows, j], 0.0)
    best_difficult = has_gt & difficult[rows, j]
    # (image, GT) pairs as one integer: a GT is taken once
    _, image_row = np.unique(image_id, return_inverse=True)
    best_gt = image_row * iou.shape[1] + j
    tp, fp = np.zeros((len(thresholds), len(score))), np.zeros((len(thresholds), len(score)))
    for t, thr in enumerate(thresholds):
        hit = best_iou >= thr
        counted = np.flatnonzero(hit & ~best_difficult)
        _, first = np.unique(best_gt[counted], return_index=True)  # np.unique keeps the first (best-scored) rank
        tp[t, counted[first]] = 1
        fp[t] = ~hit | (hit & ~best_difficult & (tp[t] == 0))
    return tp, fp, n_pos, image_id


def voc_class_matches(records, detections: DetectionTable, num_classes: int, pixel_offset: float = 0.0,
                      gt: Optional[PaddedGroundTruth] = None):
    """_match_class of every class: (tp, fp, n_pos, ranked image ids) per class, 0-based labels.
    ``pixel_offset``: VOC_PIXEL_OFFSET of the pixel convention (0: continuous boxes, as COCO's); ``gt``: the
    records' PaddedGroundTruth, when already made."""
    gt = gt or PaddedGroundTruth.of(records)
    rows = gt.row_of(detections.image_id)
    out = []
    for c in range(num_classes):
        m = detections.label == c
        r = rows[m]
        iou = _iou_with_own_gts(detections.box[m], gt.boxes, r, pixel_offset)
        n_pos = int(((gt.labels == c) & ~gt.ignore).sum())
        out.append(_match_class(detections.score[m], detections.image_id[m], iou, gt.labels[r] == c, gt.ignore[r],
                                n_pos, VOC_THRESHOLDS))
    return out


def voc_metrics(records, detections: DetectionTable, num_classes: int, matches=None,
                pixel_offset: float = 0.0) -> dict[str, float]:
    """VOC07 11-point mAP at each IoU of 0.50:0.05:0.95 (``mAP50``, ``mAP55``, ..., ``mAP95``) and their mean
    (``mAP``: the "AP" of IoU-aware Table 5). Difficult / ignore boxes count neither way.
    records: the dataset's Records.
    ``matches``: their voc_class_matches, when already made (the bootstrap uses the same); else they are made
    with ``pixel_offset`` (VOC_PIXEL_OFFSET)."""
    aps: list[list[float]] = [[] for _ in VOC_THRESHOLDS]
    for tp, fp, n_pos, _ in matches or voc_class_matches(records, detections, num_classes, pixel_offset):
        if n_pos == 0:
            continue
        tp_c, fp_c = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
        for t in range(len(VOC_THRESHOLDS)):
            precision = tp_c[t] / np.maximum(tp_c[t] + fp_c[t], np.finfo(float).eps)
            aps[t].append(voc07_ap(tp_c[t] / n_pos, precision))
    out = {f"mAP{round(thr * 100)}": float(np.mean(a)) if a else 0.0 for thr, a in zip(VOC_THRESHOLDS, aps)}
    out["mAP"] = float(np.mean(list(out.values())))
    return out


def correlations(confidence: np.ndarray, iou_eval: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation of detection confidence with IoU_eval (0 when either is constant)."""
    if len(confidence) < 2 or np.std(confidence) == 0 or np.std(iou_eval) == 0:
        return {"pearson": 0.0, "spearman": 0.0}
    return {"pearson": float(stats.pearsonr(confidence, iou_eval).statistic),
            "spearman": float(stats.spearmanr(confidence, iou_eval).statistic)}


def iou_eval_of(gt: PaddedGroundTruth, detections: DetectionTable) -> np.ndarray:
    """(D,) IoU_eval per detection: the max IoU with a non-ignore GT of the same class in its image (0 if none),
    computed against those GTs only (padded per image and class)."""
    classes = int(max(gt.labels.max(initial=-1), detections.label.max(initial=-1))) + 1
    img, at = np.nonzero((gt.labels >= 0) & ~gt.ignore)
    keys, order, group, slot = padded_slots(img * classes + gt.labels[img, at])
    boxes = np.zeros((len(keys) + 1, int(slot.max(initial=0)) + 1, 4))  # the last group: none, for no GT
    valid = np.zeros(boxes.shape[:2], bool)
    boxes[group, slot], valid[group, slot] = gt.boxes[img[order], at[order]], True
    rows = index_of(keys, gt.row_of(detections.image_id) * classes + detections.label)  # -1: the last group
    iou = _iou_with_own_gts(detections.box, boxes, rows)
    return np.where(valid[rows], iou, 0.0).max(axis=1, initial=0.0)
