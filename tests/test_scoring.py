import pytest
import torch

from detector.config import InferenceConfig, VariantConfig
from detector.scoring import RawPredictions, Selector, VariantScores, confidence, detect, reference_select, select


def _raw(p, q, iou_truth=None, boxes=None):
    p = torch.tensor(p, dtype=torch.float32).view(1, -1, 1)
    n = p.shape[1]
    if boxes is None:
        boxes = torch.tensor([[i * 20.0, 0, i * 20 + 10, 10] for i in range(n)]).view(1, n, 4)
    return RawPredictions(boxes, p, torch.tensor([q], dtype=torch.float32),
                          None if iou_truth is None else torch.tensor([iou_truth], dtype=torch.float32), [n])


def test_power_combination_in_both_paper_conventions():
    raw = _raw([0.64], [0.25])
    ours = lambda **kw: confidence(raw, VariantConfig(name="v", **kw)).item()
    assert ours(combine="power", alpha=0.5) == pytest.approx(0.4)                     # sqrt(0.64 * 0.25)
    assert ours(combine="power", alpha=0.25) == pytest.approx(0.64 ** 0.25 * 0.25 ** 0.75)  # 000: alpha on p
    assert ours(combine="power", alpha=0.25, convention="conf") == pytest.approx(0.25 ** 0.25 * 0.64 ** 0.75)  # 004: alpha on q
    assert ours(combine="product") == pytest.approx(0.16)
    assert ours(combine="cls") == pytest.approx(0.64)
    assert ours(combine="power", alpha=1.0) == pytest.approx(0.64)


def test_q_filter_and_truth_source():
    raw = _raw([0.5, 0.5], [0.4, 0.9], iou_truth=[0.81, 0.04])
    filt = confidence(raw, VariantConfig(name="f", combine="cls", q_filter=True)).view(-1)
    assert filt.tolist() == pytest.approx([0.0, 0.5])
    truth = confidence(raw, VariantConfig(name="t", combine="power", alpha=0.5, quality_source="truth")).view(-1)
    assert truth.tolist() == pytest.approx([(0.5 * 0.81) ** 0.5, (0.5 * 0.04) ** 0.5])  # IoU_truth replaces q


def test_variant_needs_alpha_only_for_power():
    with pytest.raises(ValueError, match="needs alpha"):
        VariantConfig(name="x", combine="power")
    with pytest.raises(ValueError, match="alpha only applies"):
        VariantConfig(name="x", combine="product", alpha=0.3)
    with pytest.raises(ValueError):
        VariantConfig(name="x", combine="power", alpha=1.5)


def test_combined_confidence_is_applied_before_the_score_threshold():
    # p = 0.9 passes 0.05 alone, but p^0.5 q^0.5 = sqrt(0.9 * 0.001) = 0.03 does not
    raw = _raw([0.9, 0.3], [0.001, 0.9])
    cfg = InferenceConfig()
    by_cls = select(raw, VariantScores.of(raw, VariantConfig(name="c", combine="cls")), cfg)[0]
    by_pow = select(raw, VariantScores.of(raw, VariantConfig(name="a", combine="power", alpha=0.5)), cfg)[0]
    assert len(by_cls.scores) == 2
    assert by_pow.scores.tolist() == pytest.approx([(0.3 * 0.9) ** 0.5])


def test_per_level_topk_happens_after_rescoring():
    # one level of 3 priors, top-1: under cls prior 0 wins, under the product prior 2 wins
    raw = _raw([0.9, 0.2, 0.6], [0.1, 0.1, 0.95])
    cfg = InferenceConfig(topk_per_level=1)
    out = detect(raw, [VariantConfig(name="cls", combine="cls"), VariantConfig(name="prod", combine="product")], cfg)
    assert out["cls"][0].boxes[0, 0].item() == 0.0
    assert out["prod"][0].boxes[0, 0].item() == 40.0


def test_nms_suppresses_overlapping_boxes_of_the_same_class():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [1.0, 0, 11, 10], [50.0, 50, 60, 60]]])
    raw = _raw([0.9, 0.8, 0.7], [1.0, 1.0, 1.0], boxes=boxes)
    d = select(raw, VariantScores.of(raw, VariantConfig(name="c", combine="cls")), InferenceConfig())[0]
    assert d.scores.tolist() == pytest.approx([0.9, 0.7])


def test_boxes_are_clipped_to_their_image_before_scoring():
    """A prediction [-20, -20, 50, 50] of the GT [0, 0, 50, 50] at the image's corner: IoU 2500 / 4900 = 0.51
    unclipped, 1.0 clipped, as the authors' code, torchvision and mmdetection score it."""
    from detector.boxes import batched_box_iou, clip_to_images

    pred = torch.tensor([[[-20.0, -20, 50, 50], [90, 40, 130, 70]], [[-20.0, -20, 50, 50], [90, 40, 130, 70]]])
    gt = torch.tensor([[[0.0, 0, 50, 50]]])
    assert batched_box_iou(pred[:1, :1], gt).item() == pytest.approx(2500 / 4900, abs=1e-6)
    clipped = clip_to_images(pred, torch.tensor([[100.0, 100], [60, 120]]))  # (height, width) per image
    assert clipped[0].tolist() == [[0, 0, 50, 50], [90, 40, 100, 70]]
    assert clipped[1].tolist() == [[0, 0, 50, 50], [90, 40, 120, 60]]
    assert batched_box_iou(clipped[:1, :1], gt).item() == pytest.approx(1.0)


def test_iou_truth_is_taken_over_the_boxes_that_are_scored_not_crowd():
    """IoU_truth (the Table 6 upper bound) of a prediction lying exactly on a crowd box is 0, as in the authors'
    code, which takes it over non-crowd GT; on the same box not crowd it is 1."""
    from detector.families import AnchorFamily
    from detector.scoring import raw_predictions
    from detector.structures import HeadOutput, Targets

    family = AnchorFamily(anchor_scale=4.0)
    priors = family.priors([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], torch.device("cpu"))
    n = priors.boxes.shape[0]
    out = HeadOutput(torch.zeros(1, n, 1), torch.zeros(1, n, 4), None, None)  # zero deltas: boxes = anchors
    anchor = priors.boxes[100]
    for crowd, expected in ((False, 1.0), (True, 0.0)):
        targets = Targets(anchor.view(1, 1, 4), torch.tensor([[0]]), torch.tensor([[crowd]]))
        raw = raw_predictions(out, priors, family, targets)
        assert raw.iou_truth[0, 100].item() == pytest.approx(expected)


SWEEP = [VariantConfig(name="cls", combine="cls"), VariantConfig(name="a.5", combine="power", alpha=0.5),
         VariantConfig(name="prod", combine="product"), VariantConfig(name="a1", combine="power", alpha=1.0),
         VariantConfig(name="filter", combine="cls", q_filter=True)]
"""Variants whose scores are exact in any kernel (no pow but sqrt): cls, alpha 1 and p*q rank alike."""


@pytest.mark.parametrize("topk_per_level, max_dets, quantized", [
    (500, 100, False),  # the prefix grows within one top-k over the image
    (500, 100, True),   # bf16-like scores: many ties, ranked by index
    (60, 40, True),     # more candidates than topk_per_level: the per-level top-k
])
def test_select_keeps_what_per_image_class_wise_nms_of_every_candidate_keeps(topk_per_level, max_dets, quantized):
    """NMS over each image's best candidates only (growing where suppression leaves fewer than max_dets) keeps
    the detections that NMS over all of them keeps, image by image, tied scores ranked by index (prior, then
    class), under every variant of a sweep (the candidates drawn from each image's best priors; an image's NMS
    shared by the variants that rank its candidates alike), whatever the first round takes. Images 1 and 2 hold
    hundreds of near-copies of few boxes (other boxes in each): their first candidates NMS down to a handful,
    and both go on, in the same later rounds."""
    g = torch.Generator().manual_seed(0)
    b, c, sizes = 4, 4, [64 * 9, 16 * 9, 4 * 9]
    n = sum(sizes)
    xy = torch.rand(b, n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 10 + torch.rand(b, n, 2, generator=g) * 50], -1)
    boxes[1] = torch.tensor([[10.0, 10, 60, 60], [100, 100, 150, 160]]).repeat(n // 2, 1) + torch.rand(n, 4, generator=g)
    boxes[2] = torch.tensor([[30.0, 0, 90, 40], [0, 120, 70, 190], [140, 20, 190, 80]]).repeat(n // 3, 1) + torch.rand(
        n, 4, generator=g)
    p, q = torch.rand(b, n, c, generator=g), torch.rand(b, n, generator=g)
    if quantized:
        p, q = (p * 64).round() / 64, (q * 16).round() / 16
    raw = RawPredictions(boxes, p, q, None, sizes)
    cfg = InferenceConfig(score_thresh=0.05, topk_per_level=topk_per_level, max_dets=max_dets)
    swept = detect(raw, SWEEP, cfg)
    for variant in SWEEP:
        _check_against_nms_of_every_candidate(raw, confidence(raw, variant), cfg, swept[variant.name])
        alone = select(raw, VariantScores.of(raw, variant), cfg)
        assert all(torch.equal(x.scores, y.scores) and torch.equal(x.boxes, y.boxes) for x, y in
                   zip(alone, swept[variant.name]))
    assert len(swept["cls"][1].scores) < 20 and len(swept["cls"][2].scores) < 20  # the prefix grew to every candidate
    assert torch.equal(swept["cls"][-1].boxes, swept["cls"][b - 1].boxes) and len(swept["cls"]) == b
    for first_round in (max_dets, 3 * max_dets, 16 * max_dets):
        again = Selector(SWEEP, cfg, first_round)(raw)
        for variant in SWEEP:
            assert all(torch.equal(x.scores, y.scores) and torch.equal(x.boxes, y.boxes) and
                       torch.equal(x.labels, y.labels) for x, y in zip(again[variant.name], swept[variant.name]))


def test_the_selector_takes_as_many_candidates_first_as_the_batches_before_needed():
    """Where NMS keeps one box of every four, the first round grows to what max_dets needed (a tenth more,
    in steps of 32); where every candidate survives, it shrinks to what max_dets needed."""
    n, max_dets = 4000, 50
    x = torch.arange(n, dtype=torch.float32)[:, None] * 20
    apart = torch.cat([x, torch.zeros(n, 1), x + 10, torch.full((n, 1), 10.0)], 1)
    copies = apart.view(-1, 4, 4)[:, :1].expand(-1, 4, 4).reshape(n, 4) + torch.rand(n, 4) * 0.1  # groups of four
    p = torch.linspace(0.9, 0.1, n)[None, :, None].repeat(2, 1, 1)
    cfg = InferenceConfig(score_thresh=0.05, max_dets=max_dets)
    selector = Selector([SWEEP[0]], cfg)
    selector(RawPredictions(torch.stack([copies, copies]), p, None, None, [n]))
    assert selector.first_round == 224  # 4 * 50 = 200 needed: 220, in steps of 32
    selector(RawPredictions(torch.stack([apart, apart]), p, None, None, [n]))
    assert selector.first_round == 64  # 50 needed: 55, in steps of 32
    capped = Selector([SWEEP[0]], InferenceConfig(score_thresh=0.05, max_dets=max_dets, topk_per_level=128))
    capped(RawPredictions(torch.stack([copies, copies]), p, None, None, [n]))
    assert capped.first_round == 128  # past topk_per_level every prior and class would be scored at once


def _check_against_nms_of_every_candidate(raw, p, cfg, ours):
    want = reference_select(raw, p, cfg)  # NMS over every candidate, an image at a time
    for img in range(p.shape[0]):
        assert torch.equal(ours[img].scores, want[img].scores) and torch.equal(ours[img].labels, want[img].labels), img
        assert torch.equal(ours[img].boxes, want[img].boxes), img


@pytest.mark.parametrize("max_dets", [1, 3])
def test_tied_scores_are_kept_in_index_order_even_past_the_first_top_k(max_dets):
    """2000 priors of one class, every score 0.5, no two boxes overlapping: the image's first top-k returns
    1000 of the ties in no particular order; select keeps the first max_dets priors by index."""
    n = 2000
    x = torch.arange(n, dtype=torch.float32)[:, None] * 20
    boxes = torch.cat([x, torch.zeros(n, 1), x + 10, torch.full((n, 1), 10.0)], 1)[None]
    p = torch.full((1, n, 1), 0.5)
    raw = RawPredictions(boxes, p, None, None, [1000, 1000])
    got = select(raw, VariantScores.of(raw, SWEEP[0]), InferenceConfig(score_thresh=0.05, topk_per_level=1000,
                                                                     max_dets=max_dets))[0]
    assert got.boxes[:, 0].tolist() == [20.0 * k for k in range(max_dets)]


def test_a_candidate_scored_a_unit_apart_in_two_kernels_is_not_lost_past_the_first_round():
    """CPU pow takes a vector kernel for most elements and a scalar loop for a tensor's last few, which can
    differ in the last place: prior 19's class 0 scores 0.8815551 where the image is scored whole and a unit
    less among the gathered candidates. With max_dets 2, six copies of one box fill the first round, and the
    next round must still take that candidate (it goes by which candidates were decided, not by position)."""
    w, n, c, b = 0.3, 20, 3, 2
    p = torch.full((b, n, c), 1e-6)
    p[0, :6, 1] = torch.linspace(0.99, 0.95, 6)
    p[0, 19, 0], p[0, 19, 1] = 0.6568984389305115, 0.6568984985351562
    x0 = torch.arange(n, dtype=torch.float32)[:, None] * 20
    boxes = torch.cat([x0, x0 * 0, x0 + 10, x0 * 0 + 10], 1)[None].repeat(b, 1, 1)
    boxes[0, :6] = boxes[0, 19]
    raw = RawPredictions(boxes, p, torch.ones(b, n), None, [n])
    cfg = InferenceConfig(score_thresh=0.05, topk_per_level=1000, max_dets=2)
    got = select(raw, VariantScores.of(raw, VariantConfig(name="a", combine="power", alpha=w)), cfg)[0]
    assert got.labels.tolist() == [1, 0]


def test_an_empty_batch_selects_nothing():
    raw = RawPredictions(torch.rand(0, 10, 4), torch.rand(0, 10, 3), None, None, [10])
    got = detect(raw, [SWEEP[0]], InferenceConfig())["cls"]
    assert len(got) == 0 and got.boxes.shape == (0, 4) and list(got) == []
    assert len(select(raw, VariantScores.of(raw, SWEEP[0]), InferenceConfig())) == 0
