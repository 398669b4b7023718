"""Scoring a val split's detections, detectron2's DatasetEvaluator way: ``process`` each batch's selected
detections, then ``evaluate`` once: COCO and VOC metrics per inference variant, their bootstrap intervals over
the val images, and the confidence / IoU_eval correlations. It runs on the CPU, whatever the network ran on."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from . import coco
from .bootstrap import coco_replicates, image_draws, percentile_interval, voc_matches, voc_replicates
from .config import InferenceConfig, VariantConfig
from .data.datasets import DetectionSet, category_ids, records_to_coco
from .evaluation import (VOC_PIXEL_OFFSET, VOC_THRESHOLDS, DetectionTable, PaddedGroundTruth, correlations,
                         iou_eval_of, voc_class_matches, voc_metrics)
from .scoring import Detections


@dataclass
class EvalResult:
    """metrics: ``{variant}/{metric}`` -> value, with ``{metric}_lo`` / ``_hi``: its 95% bootstrap interval.
    detections: variant -> its DetectionTable (original pixels). scatter: variant -> (confidence, IoU_eval)
    samples for the Figure 4 plot."""

    metrics: dict[str, float]
    detections: dict[str, DetectionTable]
    scatter: dict[str, tuple[np.ndarray, np.ndarray]]
    bootstrap: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """variant -> metric -> (R,) replicates over val images (detector.bootstrap); the same draws in every
    evaluation of the same val set, so two results' replicates pair up."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the evaluation's time went: forward (network + decoding), select (scoring, top-k, NMS), assemble
    (the result records), metrics (COCO / VOC, correlations), bootstrap."""


def _evaluated_gt(gt_dataset: dict, val_set: DetectionSet) -> dict:
    """The COCO ground truth of the images evaluated: ``data.max_images`` keeps the first of a split, and
    COCOeval would count the GT of the others as missed."""
    ids = {r.image_id for r in val_set.records}
    if len(ids) == len(gt_dataset["images"]):
        return gt_dataset
    return {**gt_dataset, "images": [i for i in gt_dataset["images"] if i["id"] in ids],
            "annotations": [a for a in gt_dataset.get("annotations", []) if a["image_id"] in ids]}


def _detection_table(batch, detections: Detections, cat_ids: Tensor) -> DetectionTable:
    """One batch's detections under one variant as columns, boxes in each image's original pixels."""
    counts, labels = detections.counts.cpu(), detections.labels.cpu()
    scale = torch.tensor(batch.scales, dtype=torch.float64).repeat_interleave(counts)
    return DetectionTable(torch.tensor(batch.image_ids).repeat_interleave(counts).numpy(), labels.numpy(),
                          cat_ids[labels].numpy(), detections.scores.cpu().double().numpy(),
                          (detections.boxes.cpu().double() / scale[:, None]).numpy())


class DetectionEvaluator:
    """Every variant's detections of one val split, scored. ``seconds``: where the evaluation's time went (the
    caller adds its forward and select)."""

    def __init__(self, val_set: DetectionSet, variants: list[VariantConfig], inference: InferenceConfig,
                 intervals: bool, log: Callable[[str], None]):
        self.val_set, self.variants, self.inference, self.intervals, self.log = (val_set, variants, inference,
                                                                                 intervals, log)
        self.cat_ids = torch.tensor(category_ids(val_set))
        self.parts: dict[str, list[DetectionTable]] = {v.name: [] for v in variants}
        self.seconds = dict.fromkeys(("forward", "select", "assemble", "metrics", "bootstrap"), 0.0)

    def process(self, batch, selected: dict[str, Detections]) -> None:
        """One batch's detections under each variant (``Selector``'s output), kept as columns."""
        t = time.perf_counter()
        for name, detections in selected.items():
            self.parts[name].append(_detection_table(batch, detections, self.cat_ids))
        self.seconds["assemble"] += time.perf_counter() - t

    def evaluate(self) -> EvalResult:
        dets = {name: DetectionTable.concat(p) for name, p in self.parts.items()}
        val_set = self.val_set
        if not val_set.labelled:
            self.log(f"[eval] {val_set.name} has no annotations (e.g. COCO test-dev): detections written, no metrics")
            return EvalResult({f"{v.name}/num_detections": float(len(dets[v.name])) for v in self.variants}, dets, {},
                              seconds=self.seconds)
        t_metrics = time.perf_counter()
        padded_gt = PaddedGroundTruth.of(val_set.records)
        # A variant ranked alike an earlier one (cls and alpha 1.0 always) has its COCO / VOC metrics and intervals.
        first_alike: dict[str, str] = {}
        distinct: list[str] = []
        for name, d in dets.items():
            first_alike[name] = next((f for f in distinct if dets[f].ranked_alike(d)), name)
            if first_alike[name] == name:
                distinct.append(name)
        ranked = self._ranked_metrics(dets, distinct, padded_gt)
        metrics: dict[str, float] = {}
        scatter, replicates = {}, {}
        rng = np.random.default_rng(0)
        iou_evals: dict[str, np.ndarray] = {}  # a variant ranked alike an earlier one has its boxes too
        for v in self.variants:
            d = dets[v.name]
            m, reps = (dict(x) for x in ranked[first_alike[v.name]])
            replicates[v.name] = reps
            conf = d.score
            iou_eval = iou_evals.get(first_alike[v.name])
            if iou_eval is None:
                iou_eval = iou_evals[v.name] = iou_eval_of(padded_gt, d)
            m.update(correlations(conf, iou_eval))
            m["num_detections"], m["val_images"] = float(len(d)), float(len(val_set.records))
            for k, val in m.items():
                metrics[f"{v.name}/{k}"] = val
            n = min(len(d), self.inference.correlation_samples)
            pick = rng.choice(len(d), n, replace=False) if n < len(d) else np.arange(len(d))
            scatter[v.name] = (conf[pick], iou_eval[pick])
        self.seconds["metrics"] = time.perf_counter() - t_metrics - self.seconds["bootstrap"]
        return EvalResult(metrics, dets, scatter, replicates, self.seconds)

    def _ranked_metrics(self, dets: dict[str, DetectionTable], distinct: list[str], padded_gt: PaddedGroundTruth
                        ) -> dict[str, tuple[dict[str, float], dict[str, np.ndarray]]]:
        """COCO / VOC metrics and their bootstrap replicates (with each one's interval), once per variant ranked
        differently from every other."""
        val_set, metric_kinds = self.val_set, self.inference.metrics
        draws = image_draws(len(val_set.records)) if self.intervals else None
        coco_results = {}
        if "coco" in metric_kinds:  # every variant in one pass over the ground truth
            gt_dataset = _evaluated_gt((val_set.coco_gt or records_to_coco(val_set)).dataset, val_set)
            coco_results = dict(zip(distinct, coco.evaluate(coco.CocoGroundTruth.of(gt_dataset),
                                                            [dets[name].coco_array() for name in distinct])))
        voc_offset = VOC_PIXEL_OFFSET[self.inference.voc_pixels]
        t_boot, out = 0.0, {}
        for name in distinct:
            m, reps = {}, {}
            if name in coco_results:
                m.update(coco_results[name].stats)
                t = time.perf_counter()
                if self.intervals:
                    reps.update(coco_replicates(coco_results[name].matches, draws))
                t_boot += time.perf_counter() - t
            if "voc" in metric_kinds:
                matches = voc_class_matches(val_set.records, dets[name], len(val_set.classes), voc_offset, padded_gt)
                m.update(voc_metrics(val_set.records, dets[name], len(val_set.classes), matches=matches))
                t = time.perf_counter()
                if self.intervals:
                    reps.update(voc_replicates(voc_matches(val_set.records, matches), draws, VOC_THRESHOLDS))
                t_boot += time.perf_counter() - t
            for k, r in reps.items():
                m[f"{k}_lo"], m[f"{k}_hi"] = percentile_interval(r)
            out[name] = (m, reps)
        self.seconds["bootstrap"] = t_boot
        if self.intervals:
            self.log(f"[eval] intervals: {len(draws)} bootstrap replicates of {len(val_set.records)} images in "
                     f"{t_boot:.2f}s")
        return out
