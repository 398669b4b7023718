"""The COCO evaluation detector.coco replaces, run the way it was: pycocotools' COCOeval (the reference) or
faster-coco-eval (what the engine used before), on COCO result dicts or the (D, 7) array."""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Literal

import numpy as np

from detector.coco import EXTRA_AP, STATS


def coco_metrics(gt_dataset: dict, detections, backend: Literal["faster", "pycocotools"] = "pycocotools"
                 ) -> dict[str, float]:
    """The 12 summary stats plus AP60-AP90 (area all, 100 detections, the mean of the valid entries as the
    summary takes them); no detections scores 0 everywhere (pycocotools cannot load an empty result)."""
    if len(detections) == 0:
        return dict.fromkeys((*STATS, *EXTRA_AP), 0.0)
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
    stats = {k: float(v) for k, v in zip(STATS, ev.stats[:12])}
    precision = np.asarray(ev.eval["precision"])[:, :, :, 0, -1]
    for name, t in EXTRA_AP.items():
        valid = precision[t][precision[t] > -1]
        stats[name] = float(valid.mean()) if valid.size else -1.0
    return stats
