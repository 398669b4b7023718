"""detector.coco: COCO's bbox evaluation on arrays gives pycocotools' summary to the last bit (and
faster-coco-eval's, which the engine used before, to 1e-9), on sets built to reach every rule: crowds, the
annotation's own area for the ranges, tied scores and tied IoUs, detections of other categories, images
without GT; many sets evaluated together are each set alone; and hand-checked cases."""
import numpy as np
import pytest

from coco_reference import coco_metrics
from detector import coco


def _random_set(seed, n_images=40, n_classes=3, most_dets=30):
    """COCO GT and result dicts. Boxes on a coarse grid and scores from a few values, so IoUs and scores tie;
    15% crowds; a third of the areas 0.7x the box's (the ranges read the annotation's area, IoU the box's);
    sizes from 4 to 150 px (small, medium and large); up to ``most_dets`` detections per image, 10% of them of a
    category without GT."""
    rng = np.random.default_rng(seed)
    images = [{"id": 5 * i + 2, "width": 400, "height": 400} for i in range(n_images)]
    anns, dets = [], []
    for img in images:
        mine = []
        for _ in range(int(rng.integers(0, 8))):
            x, y = rng.integers(0, 300, 2).astype(float)
            w, h = rng.choice([4, 8, 16, 40, 100, 150], 2).astype(float)
            a = {"id": len(anns) + 1, "image_id": img["id"], "category_id": int(rng.integers(n_classes)) + 1,
                 "bbox": [x, y, w, h], "area": float(w * h * rng.choice([1.0, 1.0, 0.7])),
                 "iscrowd": int(rng.random() < 0.15)}
            anns.append(a), mine.append(a)
        for _ in range(int(rng.integers(0, most_dets))):
            if mine and rng.random() < 0.8:
                a = mine[int(rng.integers(len(mine)))]
                x, y, w, h = np.array(a["bbox"]) + rng.integers(-3, 4, 4) * np.array([1, 1, 2, 2])
                cat = a["category_id"] if rng.random() < 0.8 else int(rng.integers(n_classes + 1)) + 1
            else:
                (x, y), (w, h) = rng.integers(0, 300, 2), rng.integers(2, 120, 2)
                cat = int(rng.integers(n_classes)) + 1
            score = float(rng.choice([0.1, 0.3, 0.5, 0.9])) if rng.random() < 0.5 else float(rng.random())
            dets.append({"image_id": img["id"], "category_id": cat, "score": score,
                         "bbox": [float(x), float(y), float(max(w, 1)), float(max(h, 1))]})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": k + 1, "name": str(k)} for k in range(n_classes)]}
    return gt, dets


def _array(dets):
    return np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets], np.float64).reshape(-1, 7)


def _ours(gt, *sets):
    return coco.evaluate(coco.CocoGroundTruth.of(gt), [_array(d) for d in sets])


@pytest.mark.parametrize("seed", range(12))
def test_the_summary_is_pycocotools_to_the_last_bit_and_faster_coco_evals(seed):
    gt, dets = _random_set(seed)
    ours = _ours(gt, dets)[0].stats
    reference = coco_metrics(gt, dets, backend="pycocotools")
    assert ours == reference
    faster = coco_metrics(gt, dets, backend="faster")
    assert ours == pytest.approx(faster, abs=1e-9)
    assert {k for k, v in ours.items() if v == -1} <= {"APs", "APm", "APl", "ARs", "ARm", "ARl"}


@pytest.mark.parametrize("seed", range(3))
def test_beyond_100_detections_of_a_class_in_an_image_only_the_best_100_count(seed):
    gt, dets = _random_set(100 + seed, n_images=5, n_classes=2, most_dets=400)
    per_group = np.unique([(d["image_id"], d["category_id"]) for d in dets], axis=0, return_counts=True)[1]
    assert per_group.max() > 100
    assert _ours(gt, dets)[0].stats == coco_metrics(gt, dets, backend="pycocotools")


def test_a_category_the_images_hold_no_ground_truth_of_is_pycocotools_too():
    """A category that the GT lists but none of its images holds (a val subset): its detections are false
    positives of nothing and its AP is absent (-1) from the means, as in pycocotools."""
    gt, dets = _random_set(7)
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 2]
    dets = dets + [{"image_id": gt["images"][0]["id"], "category_id": 2, "score": 0.7, "bbox": [1.0, 1.0, 30.0, 30.0]}]
    assert _ours(gt, dets)[0].stats == coco_metrics(gt, dets, backend="pycocotools")


def test_sets_evaluated_together_are_each_set_alone():
    gt, first = _random_set(20)
    sets = [first, _random_set(20)[1][::2], [], [dict(d, score=1 - d["score"]) for d in first]]
    together = _ours(gt, *sets)
    for dets, result in zip(sets, together):
        alone = _ours(gt, dets)[0]
        assert alone.stats == result.stats
        assert np.array_equal(alone.precision, result.precision) and np.array_equal(alone.recall, result.recall)
        for a, b in zip(alone.matches, result.matches):
            assert np.array_equal(a.image, b.image) and np.array_equal(a.tp, b.tp)
            assert np.array_equal(a.ignored, b.ignored) and np.array_equal(a.gt_count, b.gt_count)
    # No detections: what pycocotools gives a result with none of the GT's categories (it cannot load an empty one).
    absent = [{"image_id": gt["images"][0]["id"], "category_id": 99, "score": 0.5, "bbox": [0.0, 0.0, 9.0, 9.0]}]
    assert together[2].stats == coco_metrics(gt, absent, backend="pycocotools")
    assert coco.evaluate(coco.CocoGroundTruth.of(gt), []) == []


def _one_image(anns, dets):
    gt = {"images": [{"id": 1}], "categories": [{"id": 1}],
          "annotations": [{"id": n + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, **a} for n, a in enumerate(anns)]}
    return gt, [{"image_id": 1, "category_id": 1, **d} for d in dets]


def test_hand_checked_rules():
    # Two 100x100 GTs (large). Ranked: an exact hit on A, a duplicate of A (a false positive: A is taken), a box
    # at IoU 0.6 on B (a hit at 0.50-0.60 only). AP50 = 1 for the first recall half, then 2/3 to recall 1.
    big = [{"bbox": [0, 0, 100, 100], "area": 10_000}, {"bbox": [200, 0, 100, 100], "area": 10_000}]
    dets = [{"bbox": [0, 0, 100, 100], "score": 0.9}, {"bbox": [0, 0, 100, 100], "score": 0.8},
            {"bbox": [200, 0, 100, 60], "score": 0.7}]
    result = _ours(*_one_image(big, dets))[0]
    assert result.stats["AP50"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    assert result.stats["AP75"] == pytest.approx(51 / 101)  # only A counts: recall 0.5
    assert result.stats["AR1"] == pytest.approx(0.5) and result.stats["AR"] == pytest.approx((3 * 1.0 + 7 * 0.5) / 10)
    assert result.stats["APs"] == result.stats["APm"] == -1.0  # no small or medium GT
    assert result.stats["APl"] == result.stats["AP"]
    # A detection on a crowd is neither: the one hit keeps precision 1. The crowd's overlap is over the
    # detection's area, so a box inside it matches at any threshold.
    crowd = [{"bbox": [0, 0, 100, 100], "area": 10_000}, {"bbox": [200, 0, 200, 200], "area": 40_000, "iscrowd": 1}]
    dets = [{"bbox": [210, 10, 50, 50], "score": 0.95}, {"bbox": [0, 0, 100, 100], "score": 0.9}]
    result = _ours(*_one_image(crowd, dets))[0]
    assert result.stats["AP"] == pytest.approx(1.0)
    assert result.matches[0].ignored.all(axis=0).tolist() == [True, False]
    # The ranges read the annotation's area: a 40x40 box annotated with area 900 is small. An unmatched
    # detection outside a range is ignored there: the 40x40 miss ranked first (area 1600, medium) halves the
    # precision of 'all' but not of 'small'.
    small = [{"bbox": [0, 0, 40, 40], "area": 900}]
    dets = [{"bbox": [300, 300, 40, 40], "score": 0.95}, {"bbox": [0, 0, 40, 40], "score": 0.9}]
    result = _ours(*_one_image(small, dets))[0]
    assert result.stats["APs"] == pytest.approx(1.0) and result.stats["APm"] == -1.0
    assert result.stats["AP"] == pytest.approx(0.5)
    assert result.stats == coco_metrics(*_one_image(small, dets))


def test_summarize_reads_its_slices_and_skips_invalid_entries():
    precision = -np.ones((10, 101, 2, 4))
    precision[2, :, 0, 0] = 0.5      # AP60, class 0
    precision[2, :, 1, 0] = 0.7      # AP60, class 1
    precision[2, :, 0, 1] = 0.99     # small: must not count
    precision[4, :50, 0, 0] = 0.2    # AP70: every recall point valid
    precision[4, 50:, 0, 0] = 0.4
    recall = -np.ones((10, 2, 4, 3))
    recall[:, 0, 0, 0], recall[:, 1, 0, 0] = 0.25, 0.75
    got = coco.summarize(precision, recall)
    assert got["AP60"] == pytest.approx(0.6)
    assert got["AP70"] == pytest.approx((50 * 0.2 + 51 * 0.4) / 101)
    assert got["AP90"] == -1.0 and got["AR10"] == -1.0
    assert got["AR1"] == pytest.approx(0.5) and got["APs"] == pytest.approx(0.99)


def test_detections_of_an_image_the_ground_truth_lacks_are_refused():
    gt, dets = _one_image([{"bbox": [0, 0, 10, 10], "area": 100}], [{"bbox": [0, 0, 10, 10], "score": 0.5}])
    with pytest.raises(ValueError, match="image 7"):
        _ours(gt, [dict(dets[0], image_id=7)])
