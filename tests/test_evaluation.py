import numpy as np
import pytest

from detector.evaluation import (COCO_STATS, ap_at_thresholds, coco_metrics, correlations, voc07_ap, voc_metrics)
from detector.data.datasets import Record


def _gt_and_dets(n_images=30, seed=0):
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(n_images):
        images.append({"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"})
        for _ in range(rng.integers(1, 6)):
            x, y = rng.uniform(0, 120, 2)
            w, h = rng.uniform(5, 80, 2)
            c = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            for _ in range(3):  # jittered detections, some with the wrong class
                j = rng.normal(0, 6, 4)
                dets.append({"image_id": i, "category_id": c if rng.random() < 0.8 else int(rng.integers(1, 4)),
                             "bbox": [x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3])], "score": float(rng.random())})
    gt = {"images": images, "annotations": anns, "categories": [{"id": k, "name": str(k)} for k in (1, 2, 3)]}
    return gt, dets


def test_coco_stats_match_pycocotools_summary_and_faster_coco_eval():
    import contextlib, io
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dets = _gt_and_dets()
    ours_ref = coco_metrics(gt, dets, backend="pycocotools")
    ours_fast = coco_metrics(gt, dets, backend="faster")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate(); ev.accumulate(); ev.summarize()
    for name, value in zip(COCO_STATS, ev.stats):
        assert ours_ref[name] == pytest.approx(value, abs=1e-12), name
        assert ours_fast[name] == pytest.approx(value, abs=1e-9), name
    for name in ("AP60", "AP70", "AP80", "AP90"):
        assert ours_fast[name] == pytest.approx(ours_ref[name], abs=1e-9)
    assert ours_ref["AP50"] >= ours_ref["AP60"] >= ours_ref["AP70"] >= ours_ref["AP80"] >= ours_ref["AP90"]


def test_ap_at_thresholds_reads_area_all_maxdets_100_and_skips_invalid():
    precision = -np.ones((10, 101, 2, 4, 3))
    precision[2, :, 0, 0, 2] = 0.5      # AP60, class 0
    precision[2, :, 1, 0, 2] = 0.7      # AP60, class 1
    precision[2, :, 0, 1, 2] = 0.99     # another area range: must not count
    precision[4, :50, 0, 0, 2] = 0.2    # AP70: half the recall points valid
    precision[4, 50:, 0, 0, 2] = 0.4
    got = ap_at_thresholds(precision)
    assert got["AP60"] == pytest.approx(0.6)
    assert got["AP70"] == pytest.approx((50 * 0.2 + 51 * 0.4) / 101)
    assert got["AP90"] == -1.0


def test_voc07_eleven_point_hand_value():
    # detections ranked tp, fp, tp over 2 GTs: recall .5 .5 1, precision 1 .5 .667
    ap = voc07_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)


def test_voc_metrics_ignore_difficult_boxes():
    rec = Record(1, None, 100, 100, np.array([[0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]], np.float32),
                 np.array([0, 0, 0]), np.array([False, False, True]))
    dets = [{"image_id": 1, "label": 0, "box": [0, 0, 10, 10], "score": 0.9},
            {"image_id": 1, "label": 0, "box": [80, 80, 90, 90], "score": 0.8},   # on the difficult box: ignored
            {"image_id": 1, "label": 0, "box": [20, 20, 30, 30], "score": 0.7},   # fp
            {"image_id": 1, "label": 0, "box": [50, 50, 60, 60], "score": 0.6}]   # tp
    m = voc_metrics([rec], dets, num_classes=1)
    assert m["mAP50"] == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    assert m["mAP"] == pytest.approx(m["mAP50"])  # exact boxes: same at every threshold


def test_correlations_with_ties():
    conf = np.array([0.1, 0.2, 0.2, 0.9])
    iou = np.array([0.0, 0.5, 0.6, 0.9])
    c = correlations(conf, iou)
    assert c["pearson"] == pytest.approx(np.corrcoef(conf, iou)[0, 1])
    assert c["spearman"] == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])


def test_split_without_annotations_yields_detections_and_no_metrics(synthetic_root, tmp_path):
    """COCO test-dev ships image info only: evaluation writes detections for the server, computes nothing."""
    import json
    import shutil

    from conftest import tiny_config
    from detector.config import parse_config
    from detector.data import build_split
    from detector.engine import evaluate
    from detector.model import build_detector

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copytree(synthetic_root / "VOCdevkit", root / "test2017" / "VOCdevkit")  # file_name is relative
    info = json.loads((synthetic_root / "annotations" / "instances_val.json").read_text())
    info.pop("annotations")
    (root / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(info))
    cfg = parse_config(tiny_config(root, data={"kind": "coco", "val_split": "test-dev2017", "max_images": 4},
                                   inference={"score_thresh": 0.0}))
    test_dev = build_split(cfg.data, "test-dev2017")
    assert not test_dev.labelled and len(test_dev) == 4
    result = evaluate(build_detector(cfg.model, len(test_dev.classes)), cfg, test_dev)
    assert set(result.metrics) == {"cls/num_detections"}
    assert len(result.detections["cls"]) == result.metrics["cls/num_detections"] > 0


def test_iou_eval_is_the_best_same_class_non_ignored_gt():
    import numpy as np

    from detector.data.datasets import Record
    from detector.evaluation import iou_eval_of

    rec = Record(1, None, 100, 100, np.array([[0, 0, 10, 10], [0, 0, 20, 10], [50, 50, 60, 60]], np.float32),
                 np.array([0, 1, 0]), np.array([False, False, True]))
    dets = [{"image_id": 1, "label": 0, "box": [0, 0, 10, 5]},    # class-0 GT: 50 / 100
            {"image_id": 1, "label": 1, "box": [0, 0, 10, 10]},   # class-1 GT (20x10): 100 / 200
            {"image_id": 1, "label": 0, "box": [50, 50, 60, 60]},  # only matches an ignored GT
            {"image_id": 1, "label": 2, "box": [0, 0, 10, 10]}]   # no GT of its class
    assert iou_eval_of({1: rec}, dets).tolist() == [0.5, 0.5, 0.0, 0.0]


def test_voc_matching_is_greedy_in_score_order_at_each_threshold():
    rec = Record(1, None, 100, 100, np.array([[0, 0, 10, 10]], np.float32), np.array([0]), np.array([False]))
    dets = [{"image_id": 1, "label": 0, "box": [0, 0, 10, 6], "score": 0.95},  # IoU 0.6: takes the GT up to 0.6
            {"image_id": 1, "label": 0, "box": [0, 0, 10, 10], "score": 0.9},  # IoU 1: a duplicate there, tp above
            {"image_id": 1, "label": 0, "box": [0, 0, 10, 9], "score": 0.8}]   # IoU 0.9: always a duplicate
    m = voc_metrics([rec], dets, num_classes=1)
    assert m["mAP50"] == m["mAP60"] == pytest.approx(1.0)  # tp, fp, fp
    assert m["mAP70"] == m["mAP95"] == pytest.approx(0.5)  # fp, tp, fp


def test_voc_pixel_convention_moves_a_match_across_iou_0_9():
    """GT (0, 0, 9, 9) and a detection (0, 0, 9, 8), by hand. Continuous: areas 81 and 72, overlap 72, IoU
    72 / 81 = 0.889, a miss at 0.9. Inclusive (mmdetection 1.x, ``+ 1``): areas 100 and 90, overlap 90, IoU
    90 / 100 = 0.9, a hit at 0.9 (VOC's test is IoU >= threshold). Both hit at 0.85, both miss at 0.95."""
    from detector.config import parse_config
    from detector.evaluation import VOC_PIXEL_OFFSET

    rec = Record(1, None, 20, 20, np.array([[0, 0, 9, 9]], np.float32), np.array([0]), np.array([False]))
    dets = [{"image_id": 1, "label": 0, "box": [0, 0, 9, 8], "score": 0.9}]
    assert parse_config({}).inference.voc_pixels == "continuous"
    continuous = voc_metrics([rec], dets, num_classes=1, pixel_offset=VOC_PIXEL_OFFSET["continuous"])
    inclusive = voc_metrics([rec], dets, num_classes=1, pixel_offset=VOC_PIXEL_OFFSET["inclusive"])
    assert [continuous[k] for k in ("mAP85", "mAP90", "mAP95")] == pytest.approx([1.0, 0.0, 0.0])
    assert [inclusive[k] for k in ("mAP85", "mAP90", "mAP95")] == pytest.approx([1.0, 1.0, 0.0])
