import numpy as np
import pytest

from detector.evaluation import DetectionTable, PaddedGroundTruth, correlations, iou_eval_of, voc07_ap, voc_metrics
from detector.data.datasets import Record


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
    m = voc_metrics([rec], DetectionTable.from_dicts(dets), num_classes=1)
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
    from detector.evaluation import DetectionTable, PaddedGroundTruth, iou_eval_of

    rec = Record(1, None, 100, 100, np.array([[0, 0, 10, 10], [0, 0, 20, 10], [50, 50, 60, 60]], np.float32),
                 np.array([0, 1, 0]), np.array([False, False, True]))
    dets = [{"image_id": 1, "label": 0, "box": [0, 0, 10, 5]},    # class-0 GT: 50 / 100
            {"image_id": 1, "label": 1, "box": [0, 0, 10, 10]},   # class-1 GT (20x10): 100 / 200
            {"image_id": 1, "label": 0, "box": [50, 50, 60, 60]},  # only matches an ignored GT
            {"image_id": 1, "label": 2, "box": [0, 0, 10, 10]}]   # no GT of its class
    assert iou_eval_of(PaddedGroundTruth.of([rec]), DetectionTable.from_dicts(dets)).tolist() == [0.5, 0.5, 0.0, 0.0]


def test_voc_matching_is_greedy_in_score_order_at_each_threshold():
    rec = Record(1, None, 100, 100, np.array([[0, 0, 10, 10]], np.float32), np.array([0]), np.array([False]))
    dets = [{"image_id": 1, "label": 0, "box": [0, 0, 10, 6], "score": 0.95},  # IoU 0.6: takes the GT up to 0.6
            {"image_id": 1, "label": 0, "box": [0, 0, 10, 10], "score": 0.9},  # IoU 1: a duplicate there, tp above
            {"image_id": 1, "label": 0, "box": [0, 0, 10, 9], "score": 0.8}]   # IoU 0.9: always a duplicate
    m = voc_metrics([rec], DetectionTable.from_dicts(dets), num_classes=1)
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
    dets = DetectionTable.from_dicts(dets)
    continuous = voc_metrics([rec], dets, num_classes=1, pixel_offset=VOC_PIXEL_OFFSET["continuous"])
    inclusive = voc_metrics([rec], dets, num_classes=1, pixel_offset=VOC_PIXEL_OFFSET["inclusive"])
    assert [continuous[k] for k in ("mAP85", "mAP90", "mAP95")] == pytest.approx([1.0, 0.0, 0.0])
    assert [inclusive[k] for k in ("mAP85", "mAP90", "mAP95")] == pytest.approx([1.0, 1.0, 0.0])


def _devkit_voc_ap(records, dets, c, thr):
    """The VOC devkit's loop (voc_eval.py), one detection at a time, with mmdetection's IoU >= thr."""
    gts = {r.image_id: (r.boxes[r.labels == c], r.ignore[r.labels == c]) for r in records}
    taken = {i: np.zeros(len(b), bool) for i, (b, _) in gts.items()}
    n_pos = sum(int((~d).sum()) for _, d in gts.values())
    tp, fp = [], []
    for d in sorted((d for d in dets if d["label"] == c), key=lambda d: -d["score"]):
        boxes, difficult = gts[d["image_id"]]
        x0, y0, x1, y1 = d["box"]
        best, j = 0.0, -1
        for k, (a0, b0, a1, b1) in enumerate(boxes):
            inter = max(min(x1, a1) - max(x0, a0), 0) * max(min(y1, b1) - max(y0, b0), 0)
            iou = inter / ((x1 - x0) * (y1 - y0) + (a1 - a0) * (b1 - b0) - inter)
            if iou > best:
                best, j = iou, k
        if best >= thr and difficult[j]:
            continue
        hit = best >= thr and not taken[d["image_id"]][j]
        if hit:
            taken[d["image_id"]][j] = True
        tp.append(float(hit)), fp.append(float(not hit))
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    return voc07_ap(tp / n_pos, tp / np.maximum(tp + fp, np.finfo(float).eps)) if n_pos else None


def test_voc_metrics_and_iou_eval_equal_a_detection_by_detection_loop():
    """The array VOC matching and IoU_eval against the devkit's loop and a direct max, on random sets
    (difficult boxes, several classes, images without detections)."""
    rng = np.random.default_rng(5)
    records, dets = [], []
    for i in range(25):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1)
        labels, ignore = rng.integers(0, 3, n), rng.random(n) < 0.15
        records.append(Record(100 + i, None, 128, 128, boxes, labels, ignore))
        for _ in range(int(rng.integers(0, 30)) if n else 3):
            k = int(rng.integers(n)) if n else 0
            b = (boxes[k] if n else np.array([10, 10, 30, 30.0])) + rng.normal(0, 3, 4)
            b[2:] = np.maximum(b[2:], b[:2] + 1)
            dets.append({"image_id": 100 + i, "label": int(labels[k] if n and rng.random() < 0.8 else rng.integers(3)),
                         "box": b.tolist(), "score": float(rng.random())})
    table = DetectionTable.from_dicts(dets)
    ours = voc_metrics(records, table, num_classes=3)
    for thr in (0.5, 0.7, 0.9):
        aps = [a for a in (_devkit_voc_ap(records, dets, c, thr) for c in range(3)) if a is not None]
        assert ours[f"mAP{round(thr * 100)}"] == pytest.approx(np.mean(aps), abs=1e-12), thr
    by_id = {r.image_id: r for r in records}
    expected = []
    for d in dets:
        r = by_id[d["image_id"]]
        same = (r.labels == d["label"]) & ~r.ignore
        x0, y0, x1, y1 = d["box"]
        ious = [max(min(x1, a1) - max(x0, a0), 0) * max(min(y1, b1) - max(y0, b0), 0) for a0, b0, a1, b1 in r.boxes[same]]
        ious = [i / ((x1 - x0) * (y1 - y0) + (a1 - a0) * (b1 - b0) - i) for i, (a0, b0, a1, b1) in zip(ious, r.boxes[same])]
        expected.append(max(ious, default=0.0))
    assert iou_eval_of(PaddedGroundTruth.of(records), table) == pytest.approx(expected, abs=1e-12)


def test_tables_rank_alike_when_only_the_score_values_differ():
    table = DetectionTable(np.array([1, 1, 2]), np.array([0, 1, 0]), np.array([1, 2, 1]), np.array([0.9, 0.4, 0.4]),
                           np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 8, 8]], np.float64))
    squared = DetectionTable(table.image_id, table.label, table.category_id, table.score ** 2, table.box)
    assert table.ranked_alike(squared)  # a monotone map of the scores, ties kept
    untied = DetectionTable(table.image_id, table.label, table.category_id, np.array([0.9, 0.4, 0.39]), table.box)
    assert not table.ranked_alike(untied)
    moved = DetectionTable(table.image_id, table.label, table.category_id, table.score, table.box + 1)
    assert not table.ranked_alike(moved)


def test_a_variant_scores_the_same_whichever_variants_are_evaluated_with_it(synthetic_root):
    """Variants ranked alike (cls and alpha 1.0) share one evaluation; every variant's metrics and intervals
    are the ones it gets evaluated alone."""
    import torch

    from conftest import tiny_config
    from detector.config import parse_config, parse_variant
    from detector.engine import evaluate
    from detector.model import build_detector

    cfg = parse_config(tiny_config(synthetic_root, model={"quality": {"branch": "iou"}}, data={"max_images": 16},
                                   inference={"score_thresh": 0.0, "metrics": ["coco", "voc"]}))
    torch.manual_seed(0)
    model = build_detector(cfg.model, 6)
    sweep = [parse_variant(v) for v in ("cls", "alpha=1.0", "none", "alpha=0.5")]
    together = evaluate(model, cfg, variants=sweep, log=lambda m: None)
    assert together.metrics["alpha=1.0/AP"] == together.metrics["cls/AP"]
    for v in sweep:
        alone = evaluate(model, cfg, variants=[v], log=lambda m: None)
        assert alone.metrics == {k: x for k, x in together.metrics.items() if k.startswith(f"{v.name}/")}
        assert all(np.array_equal(alone.bootstrap[v.name][k], r) for k, r in together.bootstrap[v.name].items())
