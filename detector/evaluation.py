"""Detection metrics: COCO (faster-coco-eval, pycocotools as the reference), VOC07 11-point mAP, and the
correlation between detection confidence and localisation quality (IoU_eval)."""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Literal

import numpy as np
from scipy import stats
import torch
from torchvision.ops import box_iou

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR", "ARs", "ARm", "ARl")
# Indices into COCOeval's IoU thresholds 0.50:0.05:0.95.
EXTRA_THRESHOLDS = {"AP60": 2, "AP70": 4, "AP80": 6, "AP90": 8}
VOC_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))
VOC_PIXEL_OFFSET = {"continuous": 0.0, "inclusive": 1.0}
"""``inference.voc_pixels`` -> what the VOC metric adds to a box's width and height (and to an overlap's).

``inclusive`` is mmdetection 1.x's: its VOC loader also subtracts 1 from every corner, but that moves the
ground truth and (through training) the detections alike, and IoU does not change when both move, so the
metric needs only the ``+ 1``; the loader keeps the files' corners under both conventions. What stays different
from that fork is a training detail: its targets are ours moved one pixel up and left, except the x corners in a
horizontally flipped image, which agree (its flip is ``w - x - 1``, ours ``w - x``)."""


def ap_at_thresholds(precision: np.ndarray) -> dict[str, float]:
    """AP60/70/80/90 from COCOeval's precision array (T, R, K, A, M): area 'all', maxDets 100,
    mean over recall points and classes of the valid (> -1) entries, as COCOeval's own summary."""
    out = {}
    for name, t in EXTRA_THRESHOLDS.items():
        p = precision[t, :, :, 0, -1]
        valid = p[p > -1]
        out[name] = float(valid.mean()) if valid.size else -1.0
    return out


def coco_metrics(gt_dataset: dict, detections: list[dict], backend: Literal["faster", "pycocotools"] = "faster") -> dict[str, float]:
    """The 12 COCO summary stats plus AP60-AP90. detections: COCO result dicts (image_id, category_id,
    bbox xywh, score). No detections scores 0 everywhere (pycocotools cannot load an empty result)."""
    if not detections:
        return {**{k: 0.0 for k in COCO_STATS}, **{k: 0.0 for k in EXTRA_THRESHOLDS}}
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster

            gt = COCO(copy.deepcopy(gt_dataset))
            ev = COCOeval_faster(gt, gt.loadRes(copy.deepcopy(detections)), iouType="bbox", print_function=lambda *a: None)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            gt = COCO()
            gt.dataset = copy.deepcopy(gt_dataset)
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(v) for k, v in zip(COCO_STATS, ev.stats[:12])}
    stats.update(ap_at_thresholds(np.asarray(ev.eval["precision"])))
    return stats


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP: mean over r in {0, 0.1, ..., 1} of max precision at recall >= r."""
    ap = 0.0
    for t in np.linspace(0, 1, 11):
        p = precision[recall >= t]
        ap += (p.max() if p.size else 0.0) / 11
    return float(ap)


def _pairwise_iou(a: np.ndarray, b: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU, in float64 (torchvision's op; GT boxes have positive area).
    ``offset`` (VOC_PIXEL_OFFSET) is added to every far corner: with 1 that is mmdetection 1.x's IoU exactly,
    areas ``(x1 - x0 + 1) (y1 - y0 + 1)`` and overlap ``max(min(x1) - max(x0) + 1, 0)`` per side."""
    a, b = np.array(a, np.float64).reshape(-1, 4), np.array(b, np.float64).reshape(-1, 4)
    a[:, 2:] += offset
    b[:, 2:] += offset
    return box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _match_class(dets: list[tuple[int, float, np.ndarray]], gts: dict[int, tuple[np.ndarray, np.ndarray]],
                 thresholds: tuple[float, ...], pixel_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, int, list[int]]:
    """Greedy VOC matching for one class at every IoU threshold at once: (tp, fp), each (T, D) over the
    detections in score order, the number of non-difficult GTs, and each ranked detection's image id.
    dets: (image_id, score, box);
    gts: image_id -> (boxes (G, 4), difficult (G,));
    pixel_offset: the pixel convention's (VOC_PIXEL_OFFSET).

    Each detection's best GT (difficult ones included, as the devkit does) does not depend on the threshold,
    so the IoUs are computed once per image; at a threshold, the first detection in score order to reach a
    non-difficult GT is its true positive, later ones are false positives, and one on a difficult GT counts
    neither way."""
    n_pos = int(sum((~d).sum() for _, d in gts.values()))
    order = sorted(range(len(dets)), key=lambda i: -dets[i][1])
    best_iou, best_gt, best_difficult = np.zeros(len(dets)), np.full(len(dets), -1), np.zeros(len(dets), bool)
    by_image: dict[int, list[int]] = {}
    for rank, i in enumerate(order):
        by_image.setdefault(dets[i][0], []).append(rank)
    offset = 0  # GTs numbered across images, so (image, GT) pairs become one integer
    for img, ranks in by_image.items():
        g_boxes, difficult = gts.get(img, (np.zeros((0, 4)), np.zeros(0, bool)))
        if len(g_boxes):
            iou = _pairwise_iou(np.stack([dets[order[r]][2] for r in ranks]), g_boxes, pixel_offset)
            j = iou.argmax(axis=1)
            best_iou[ranks], best_gt[ranks], best_difficult[ranks] = iou.max(axis=1), j + offset, difficult[j]
            offset += len(g_boxes)
    tp, fp = np.zeros((len(thresholds), len(dets))), np.zeros((len(thresholds), len(dets)))
    for t, thr in enumerate(thresholds):
        hit = best_iou >= thr
        counted = np.flatnonzero(hit & ~best_difficult)
        _, first = np.unique(best_gt[counted], return_index=True)  # np.unique keeps the first (best-scored) rank
        tp[t, counted[first]] = 1
        fp[t] = ~hit | (hit & ~best_difficult & (tp[t] == 0))
    return tp, fp, n_pos, [dets[i][0] for i in order]


def voc_class_matches(records, detections: list[dict], num_classes: int, pixel_offset: float = 0.0):
    """_match_class of every class: (tp, fp, n_pos, ranked image ids) per class, 0-based labels.
    ``pixel_offset``: VOC_PIXEL_OFFSET of the pixel convention (0: continuous boxes, as COCO's)."""
    per_class_gt: list[dict] = [dict() for _ in range(num_classes)]
    for r in records:
        for c in range(num_classes):
            m = r.labels == c
            if m.any():
                per_class_gt[c][r.image_id] = (r.boxes[m], r.ignore[m])
    per_class_det: list[list] = [[] for _ in range(num_classes)]
    for d in detections:
        per_class_det[d["label"]].append((d["image_id"], d["score"], np.asarray(d["box"])))
    return [_match_class(per_class_det[c], per_class_gt[c], VOC_THRESHOLDS, pixel_offset) for c in range(num_classes)]


def voc_metrics(records, detections: list[dict], num_classes: int, matches=None,
                pixel_offset: float = 0.0) -> dict[str, float]:
    """VOC07 11-point mAP at each IoU of 0.50:0.05:0.95 (``mAP50``, ``mAP55``, ..., ``mAP95``) and their mean
    (``mAP``: the "AP" of IoU-aware Table 5). Difficult / ignore boxes count neither way.
    records: the dataset's Records; detections: dicts with image_id, label (0-based), box (xyxy), score.
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


def iou_eval_of(records_by_id: dict, detections: list[dict]) -> np.ndarray:
    """IoU_eval per detection: the max IoU with a non-ignore GT of the same class in its image (0 if none).
    One (D, G) IoU matrix per image."""
    out = np.zeros(len(detections))
    by_image: dict[int, list[int]] = {}
    for i, d in enumerate(detections):
        by_image.setdefault(d["image_id"], []).append(i)
    for image_id, idx in by_image.items():
        r = records_by_id[image_id]
        gt_boxes, gt_labels = r.boxes[~r.ignore], r.labels[~r.ignore]
        if not len(gt_boxes):
            continue
        labels = np.asarray([detections[i]["label"] for i in idx])
        iou = _pairwise_iou(np.asarray([detections[i]["box"] for i in idx]).reshape(-1, 4), gt_boxes)
        iou[labels[:, None] != gt_labels[None, :]] = 0.0
        out[idx] = iou.max(axis=1)
    return out
