"""The bootstrap over val images (detector.bootstrap): with every image drawn once it is COCO's and VOC's own
metric, to the last digits; an image drawn twice is that image duplicated; a hand-computed case; and its
95% interval covers the true AP about 95% of the time on simulated data sets."""
import numpy as np
import pytest

from coco_reference import coco_metrics
from detector import coco
from detector.bootstrap import (ClassMatches, coco_replicates, image_draws, percentile_interval, voc_matches,
                                voc_replicates, weighted_ap, VOC_RECALLS)
from detector.data.datasets import Record
from detector.evaluation import VOC_THRESHOLDS, DetectionTable, voc_class_matches, voc_metrics


def _random_set(n_images=60, n_classes=4, seed=1):
    """COCO GT (10% crowd) and COCO results near the GT boxes, with the VOC records of the same boxes."""
    rng = np.random.default_rng(seed)
    images = [{"id": 3 * i + 7, "width": 128, "height": 128} for i in range(n_images)]
    anns, dets, records = [], [], []
    for img in images:
        boxes, labels, crowd = [], [], []
        for _ in range(int(rng.integers(1, 7))):
            x, y = rng.uniform(0, 90, 2)
            w, h = rng.uniform(8, 38, 2)
            c, is_crowd = int(rng.integers(n_classes)), bool(rng.random() < 0.1)
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": c + 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(is_crowd)})
            boxes.append([x, y, x + w, y + h]), labels.append(c), crowd.append(is_crowd)
        records.append(Record(img["id"], None, 128, 128, np.array(boxes), np.array(labels), np.array(crowd)))
        mine = anns[-len(boxes):]
        for _ in range(int(rng.integers(0, 40))):
            a = mine[int(rng.integers(len(mine)))]
            x, y, w, h = np.array(a["bbox"]) + rng.normal(0, 3, 4) * [1, 1, 0.5, 0.5]
            cat = a["category_id"] if rng.random() < 0.8 else int(rng.integers(n_classes)) + 1
            bbox = [float(x), float(y), float(abs(w) + 1), float(abs(h) + 1)]
            dets.append({"image_id": img["id"], "category_id": cat, "label": cat - 1, "bbox": bbox,
                         "box": [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]],
                         "score": float(rng.random())})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": k + 1, "name": str(k)} for k in range(n_classes)]}
    return gt, dets, records


def _coco_array(dets):
    """COCO result dicts as the (D, 7) array detector.coco reads."""
    return np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets], np.float64)


def coco_matches(gt, detections):
    """Each category's ranked matches (area all, 100 detections), as the evaluation hands the bootstrap."""
    return coco.evaluate(coco.CocoGroundTruth.of(gt), [detections])[0].matches


def test_every_image_drawn_once_is_cocos_and_vocs_own_metric():
    gt, dets, records = _random_set()
    ones = np.ones((1, len(records)), np.int64)
    ours = coco_replicates(coco_matches(gt, _coco_array(dets)), ones)
    reference = coco_metrics(gt, dets, backend="pycocotools")
    for metric in ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90"):
        assert ours[metric][0] == pytest.approx(reference[metric], abs=1e-12), metric
    table = DetectionTable.from_dicts(dets)
    voc = voc_replicates(voc_matches(records, voc_class_matches(records, table, 4)), ones, VOC_THRESHOLDS)
    for metric, value in voc_metrics(records, table, 4).items():
        assert voc[metric][0] == pytest.approx(value, abs=1e-12), metric


def test_an_image_drawn_twice_is_that_image_duplicated():
    gt, dets, records = _random_set(n_images=20, seed=2)
    weights = np.ones((1, 20), np.int64)
    weights[0, 3], weights[0, 5] = 2, 0  # image 3 twice, image 5 not at all
    dup_id = 10_000
    kept = [i for n, i in enumerate(gt["images"]) if n != 5]
    twin = {**gt["images"][3], "id": dup_id}
    source = gt["images"][3]["id"]
    anns = [a for a in gt["annotations"] if a["image_id"] != gt["images"][5]["id"]]
    anns += [{**a, "id": 50_000 + a["id"], "image_id": dup_id} for a in gt["annotations"] if a["image_id"] == source]
    dets2 = [d for d in dets if d["image_id"] != gt["images"][5]["id"]]
    dets2 += [{**d, "image_id": dup_id} for d in dets if d["image_id"] == source]
    reference = coco_metrics({**gt, "images": kept + [twin], "annotations": anns}, dets2, backend="pycocotools")
    ours = coco_replicates(coco_matches(gt, _coco_array(dets)), weights)
    for metric in ("AP", "AP50", "AP75", "AP90"):
        assert ours[metric][0] == pytest.approx(reference[metric], abs=1e-9), metric


def test_a_hand_computed_case():
    # Two images with one GT each; ranked: a hit in image A (0.9), a miss in B (0.8), a hit in B (0.7).
    m = ClassMatches(image=np.array([0, 1, 1]), tp=np.array([[True, False, True]]),
                     ignored=np.zeros((1, 3), bool), gt_count=np.array([1, 1]))
    weights = np.array([[1, 1], [2, 0], [0, 2], [1, 2]])
    ap = weighted_ap(m, weights, VOC_RECALLS)[:, 0]
    # Both once: precision 1 up to recall 0.5 (6 of the 11 points), then 2/3.
    # A twice: precision 1 everywhere. B twice: the miss first, precision 1/2 at recall 1.
    # A once, B twice: recall 1/3 at precision 1 (4 points), then 3/5 at recall 1 (7 points).
    assert ap == pytest.approx([(6 + 5 * 2 / 3) / 11, 1.0, 0.5, (4 + 7 * 0.6) / 11])


def test_the_draws_are_the_same_for_every_evaluation_of_a_set():
    a, b = image_draws(50), image_draws(50)
    assert (a == b).all() and (a.sum(axis=1) == 50).all() and a.shape == (200, 50)
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))


def _simulated_set(n_images, rng):
    """One class, one GT per image; each image has one detection that hits with probability 0.7 and two
    misses: scores of hits ~ U(0.3, 1), of misses ~ U(0, 0.8)."""
    hit = rng.random(n_images) < 0.7
    scores = np.concatenate([np.where(hit, rng.uniform(0.3, 1, n_images), rng.uniform(0, 0.8, n_images)),
                             rng.uniform(0, 0.8, 2 * n_images)])
    tp = np.concatenate([hit, np.zeros(2 * n_images, bool)])
    image = np.concatenate([np.arange(n_images)] * 3)
    order = np.argsort(-scores, kind="mergesort")
    return ClassMatches(image[order], tp[order][None], np.zeros((1, 3 * n_images), bool), np.ones(n_images, np.int64))


def test_the_95_percent_interval_covers_the_true_ap_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    truth = weighted_ap(_simulated_set(200_000, rng), np.ones((1, 200_000)), VOC_RECALLS)[0, 0]
    n, sets = 150, 300
    draws = image_draws(n)
    covered = 0
    for _ in range(sets):
        lo, hi = percentile_interval(weighted_ap(_simulated_set(n, rng), draws, VOC_RECALLS)[:, 0])
        covered += lo <= truth <= hi
    # 300 sets: a true 95% gives 0.95 +- 0.025 (two standard errors)
    print(f"coverage {covered / sets:.3f}")
    assert 0.90 <= covered / sets <= 0.99, covered / sets


def test_replicates_in_chunks_are_the_same_replicates(monkeypatch):
    import detector.bootstrap as bootstrap

    gt, dets, records = _random_set(n_images=30, seed=4)
    matches, draws = coco_matches(gt, _coco_array(dets)), image_draws(30)
    whole = coco_replicates(matches, draws)
    monkeypatch.setattr(bootstrap, "CHUNK", 500)  # a few replicates at a time
    chunked = coco_replicates(matches, draws)
    assert all(np.array_equal(whole[k], chunked[k]) for k in whole)


def test_first_reaching_is_a_left_searchsorted_of_every_row():
    from detector.bootstrap import _first_reaching

    rng = np.random.default_rng(5)
    tp = np.cumsum(rng.integers(0, 3, (40, 30)), axis=1).astype(np.float64)  # runs of equal counts
    counts = rng.integers(0, int(tp.max()) + 4, (40, 101)).astype(np.float64)  # 0 and past every row's end too
    expected = np.stack([np.searchsorted(row, c, side="left") for row, c in zip(tp, counts)])
    assert np.array_equal(_first_reaching(tp, counts), expected)
