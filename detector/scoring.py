"""Inference: from one forward pass to detections under any number of confidence variants.

A forward pass gives :class:`RawPredictions` (decoded boxes, class probabilities p, quality q and
IoU_truth for every prior). Each variant re-scores them, then takes the per-level top-k, the score
threshold, class-wise NMS and the final cap, so an alpha sweep never runs the network twice.
The combined confidence is applied before the top-k and the threshold, on every level.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torchvision.ops import nms

from .boxes import batched_box_iou, clip_to_images
from .config import InferenceConfig, VariantConfig
from .families import DetectorFamily
from .structures import HeadOutput, Priors, Targets


@dataclass
class RawPredictions:
    """Per batch. boxes: (B, N, 4) decoded; p: (B, N, C) class probabilities (times centerness when the
    anchor-free centerness branch is on); q: (B, N) predicted quality or None; iou_truth: (B, N) IoU with
    the nearest GT of any class, or None when no GT was given; level_sizes: priors per FPN level."""

    boxes: Tensor
    p: Tensor
    q: Optional[Tensor]
    iou_truth: Optional[Tensor]
    level_sizes: list[int]


@dataclass
class Detections:
    """One image. boxes (K, 4) xyxy input pixels, scores (K,), labels (K,) 0-based."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def raw_predictions(out: HeadOutput, priors: Priors, family: DetectorFamily,
                    targets: Optional[Targets] = None, image_sizes: Optional[Tensor] = None) -> RawPredictions:
    """Decoded boxes, p, q (and IoU_truth when ``targets`` are given) for every prior of the batch.

    image_sizes (B, 2): each image's (height, width); the boxes are clipped to it before anything scores them,
    as the authors' code, torchvision and mmdetection do (a box reaching past the border would otherwise
    lose IoU against a GT that ends at the border)."""
    boxes = family.decode(priors, out.box_reg.float())
    if image_sizes is not None:
        boxes = clip_to_images(boxes, image_sizes)
    p = out.cls_logits.float().sigmoid()
    if out.centerness_logits is not None:
        p = p * out.centerness_logits.float().sigmoid()[..., None]
    q = out.quality_logits.float().sigmoid() if out.quality_logits is not None else None
    iou_truth = None
    if targets is not None:
        if targets.boxes.shape[1] == 0:
            iou_truth = boxes.new_zeros(boxes.shape[:2])
        else:
            iou = batched_box_iou(boxes, targets.boxes.float())
            # over the GT a box can be scored against: crowd / difficult boxes are not (the authors' code)
            not_scored = (targets.labels < 0) | targets.ignore
            iou_truth = iou.masked_fill(not_scored[:, None, :], 0.0).amax(-1)
    return RawPredictions(boxes, p, q, iou_truth, list(priors.level_sizes))


def _quality(raw: RawPredictions, variant: VariantConfig) -> Optional[Tensor]:
    """(B, N) the quality a variant reads (predicted q or IoU_truth), None for plain classification."""
    if variant.combine == "cls" and not variant.q_filter:
        return None
    q = raw.iou_truth if variant.quality_source == "truth" else raw.q
    if q is None:
        need = "ground truth (evaluate with targets)" if variant.quality_source == "truth" else "a quality branch"
        raise ValueError(f"variant {variant.name!r} needs {need}")
    return q


def _combine(p: Tensor, q: Optional[Tensor], variant: VariantConfig) -> Tensor:
    """p^w q^(1-w) (w the weight on p in the variant's convention), elementwise: p (...) and q broadcast to it.
    Non-decreasing in p, so a prior's best class keeps its best confidence."""
    if q is None or variant.combine == "cls":
        score = p
    elif variant.combine == "product":
        score = p * q
    else:
        w = variant.weight_on_p
        score = p.pow(w) * q.pow(1.0 - w)
    if q is not None and variant.q_filter:
        score = score * (q > 0.5)
    return score


def confidence(raw: RawPredictions, variant: VariantConfig) -> Tensor:
    """(B, N, C) detection confidence of a variant."""
    q = _quality(raw, variant)
    return _combine(raw.p, None if q is None else q[..., None], variant)


@dataclass
class VariantScores:
    """A variant's confidence (B, N, C) over a batch, computed where selection reads it: each prior's best
    (from best_p (B, N), each prior's best class probability, shared by every variant: the confidence is
    non-decreasing in p), then the classes of the priors kept, and in full only for an image that needs it.
    q: (B, N) the quality the variant reads, None for plain classification."""

    raw: RawPredictions
    variant: VariantConfig
    best_p: Tensor
    q: Optional[Tensor]

    @classmethod
    def of(cls, raw: RawPredictions, variant: VariantConfig, best_p: Optional[Tensor] = None) -> "VariantScores":
        return cls(raw, variant, raw.p.amax(-1) if best_p is None else best_p, _quality(raw, variant))

    def per_prior(self) -> Tensor:
        """(B, N) each prior's best confidence."""
        return _combine(self.best_p, self.q, self.variant)

    def at_priors(self, priors: Tensor) -> Tensor:
        """(B, K, C) the confidence of every class of the priors (B, K)."""
        p = self.raw.p.gather(1, priors[..., None].expand(-1, -1, self.raw.p.shape[2]))
        return _combine(p, None if self.q is None else self.q.gather(1, priors)[..., None], self.variant)

    def full(self) -> Tensor:
        """(B, N, C) the whole batch's confidence."""
        return _combine(self.raw.p, None if self.q is None else self.q[..., None], self.variant)

    def image(self, img: int) -> Tensor:
        """(N * C,) one image's confidence of every prior and class, flat (prior * C + class)."""
        q = None if self.q is None else self.q[img, :, None]
        return _combine(self.raw.p[img], q, self.variant).reshape(-1)


def _class_wise_nms(boxes: Tensor, groups: Tensor, iou: float, shift: Optional[float] = None) -> Tensor:
    """torchvision's NMS within each group at once (its coordinate trick: every group's boxes are moved
    apart, so boxes of two groups never overlap) of K boxes (K, 4) already in score order: kept indices, in
    that order. Moved in float64, where the shift is exact (so any shift past the largest coordinate gives the
    same IoUs): in float32 it would round the coordinates and flip overlaps that sit at the threshold. NMS is
    given ranks, not the scores, so that its own sort cannot reorder tied scores (then a prefix of the
    candidates is decided as in the run over all of them)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    boxes = boxes.double()
    shift = float(boxes.max()) + 1 if shift is None else shift
    ranks = torch.arange(len(boxes), 0, -1, dtype=torch.float64, device=boxes.device)
    return nms(boxes + (groups.double() * shift)[:, None], ranks, iou)


def _ranked(values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """Top-k output (..., K) re-ranked so that tied scores keep index order (prior, then class): top-k's own
    order of ties is unspecified, and bf16 scores tie often."""
    index, by_index = index.sort(dim=-1)
    values, order = values.gather(-1, by_index).sort(dim=-1, descending=True, stable=True)
    return values, index.gather(-1, order)


def _best_candidates(score: Tensor, level_sizes: list[int], classes: int, m: int, topk_per_level: int
                     ) -> tuple[Tensor, Tensor]:
    """Each image's ``m`` best candidates, best first: (values (..., m), flat index prior * C + class (..., m)).
    score: (..., N * C). The candidates are each level's ``topk_per_level`` best (as torchvision and mmdetection
    take them); while ``m <= topk_per_level`` the image's m best overall are all among them, so one top-k
    over the image gives them."""
    if m <= topk_per_level:
        return _ranked(*score.topk(min(m, score.shape[-1])))
    values, index, start = [], [], 0
    for n in level_sizes:
        v, i = score[..., start * classes:(start + n) * classes].topk(min(topk_per_level, n * classes))
        values.append(v), index.append(i + start * classes)
        start += n
    values, index = _ranked(torch.cat(values, -1), torch.cat(index, -1))
    return values[..., :m], index[..., :m]


def _best_of_images(scores: VariantScores, m: int) -> tuple[Tensor, Tensor]:
    """Each image's ``m`` best candidates, best first, as one top-k over all its (prior, class) scores gives
    them (values (B, m), flat index prior * C + class (B, m)), from the classes of its ``m`` best priors only:
    a candidate above the m-th best value is of a prior whose best is above it, and fewer than m priors are.
    (Of candidates tied with the m-th value, top-k returns any; select leaves those to a next round.)"""
    per_prior = scores.per_prior()  # (B, N)
    priors = per_prior.topk(min(m, per_prior.shape[1])).indices  # (B, K)
    candidates = scores.at_priors(priors)  # (B, K, C)
    c = candidates.shape[2]
    values, at = candidates.reshape(len(candidates), -1).topk(min(m, candidates[0].numel()))
    return _ranked(values, priors.gather(1, at // c) * c + at % c)


@dataclass
class _FirstRound:
    """A variant's first NMS round over a batch: each image's candidates (B, m) flat indices, how many of them
    were decided (ready, (B,)) and the positions NMS kept. Another variant with the same candidates and cut
    in an image (cls and alpha 1.0 always; often p*q and alpha 0.5) keeps the same: NMS reads only the order."""

    index: Tensor
    ready: Tensor
    kept: list[Tensor]

    def same_images(self, index: Tensor, ready: Tensor) -> list[int]:
        """The images this round decided exactly as ``index`` and ``ready`` ask."""
        if self.index.shape != index.shape:
            return []
        return torch.nonzero((self.index == index).all(1) & (self.ready == ready)).view(-1).tolist()


def select(raw: RawPredictions, scores: VariantScores, cfg: InferenceConfig,
           earlier: Optional[list[_FirstRound]] = None) -> list[Detections]:
    """Per-level top-k, score threshold, class-wise NMS and max_dets per image, under one variant's scores.

    Greedy NMS keeps a box or not from the boxes scored above it alone, so NMS over an image's ``m`` best
    candidates keeps exactly the first boxes that NMS over all of them keeps: once it keeps max_dets (or the
    candidates run out), the rest cannot change the result. So NMS never compares the thousands of low-scored
    candidates: every image's 4 x max_dets best are fetched and prepared at once, and NMS over them settles
    nearly every image; the few that keep fewer (_more_rounds) go on with twice as many. ``earlier``: the
    first rounds of the batch's other variants, whose NMS an image with the same candidates reuses (this
    variant's is appended)."""
    b, n, c = raw.p.shape
    m = 4 * cfg.max_dets
    if m <= cfg.topk_per_level:
        values, index = _best_of_images(scores, m)  # (B, <= m)
    else:
        values, index = _best_candidates(scores.full().reshape(b, n * c), raw.level_sizes, c, m, cfg.topk_per_level)
    complete = values.shape[1] < m or values.shape[1] == n * c  # every candidate fetched
    passing = (values > cfg.score_thresh).sum(1)  # a prefix of each row
    all_pass = passing == values.shape[1]
    ready = passing
    if not complete:  # where every fetched candidate passes, ties with the last may continue beyond the
        # fetched ones, some of lower index: those are left to the next round
        ready = torch.where(all_pass, (values > values[:, -1:]).sum(1), passing)
    earlier = [] if earlier is None else earlier
    reused: list[Optional[Tensor]] = [None] * b
    for round_ in earlier:
        for img in round_.same_images(index, ready):
            reused[img] = round_.kept[img]
    boxes = raw.boxes.gather(1, (index // c)[..., None].expand(-1, -1, 4)).double()  # (B, m, 4)
    # One class shift for the batch (any shift past the largest coordinate gives the same IoUs)
    shift = float(raw.boxes.max()) + 1 if raw.boxes.numel() else 0.0
    results, kept_positions = [], []
    more = [False] * b if complete else all_pass.tolist()  # may go on past the fetched candidates
    # One NMS call per image, not one for the batch: NMS compares every kept box with every later candidate,
    # so a single call over B images' candidates costs B times the per-image calls together.
    for img, upto in enumerate(ready.tolist()):
        kept = reused[img]
        if kept is None:
            kept = _class_wise_nms(boxes[img, :upto], index[img, :upto] % c, cfg.nms_iou, shift)
        kept_positions.append(kept)
        if len(kept) < cfg.max_dets and more[img]:
            image_scores = scores.image(img)
            flat = _more_rounds(raw.boxes[img], image_scores, raw.level_sizes, c, cfg, index[img, kept],
                                index[img, :upto], 2 * m)[: cfg.max_dets]
            results.append(Detections(raw.boxes[img, flat // c], image_scores[flat], flat % c))
        else:
            kept = kept[: cfg.max_dets]
            flat = index[img, kept]
            results.append(Detections(raw.boxes[img, flat // c], values[img, kept], flat % c))
    earlier.append(_FirstRound(index, ready, kept_positions))
    return results


def _more_rounds(boxes: Tensor, flat: Tensor, level_sizes: list[int], classes: int, cfg: InferenceConfig,
                 kept: Tensor, decided: Tensor, m: int) -> Tensor:
    """One image's NMS continued past the candidates ``decided`` (flat indices, which kept ``kept``), over its
    ``m`` best, m doubling until max_dets are kept or no candidate is left above the threshold. Each round runs
    NMS over the boxes kept so far (which keep each other) and the candidates not yet decided. Those are told
    by index, not by position: the first round's scores come from another tensor than ``flat``, and a CPU
    kernel can round an element a unit apart by where it sits. boxes (N, 4); flat (N * C,) scores; returns the
    kept flat indices (prior * C + class), best first."""
    n_all = flat.shape[0]
    while True:  # ends: m doubles until every candidate is fetched
        v, i = _best_candidates(flat, level_sizes, classes, m, cfg.topk_per_level)
        complete = len(v) < m or len(v) == n_all  # every candidate (per level, at most topk_per_level) fetched
        passing = int((v > cfg.score_thresh).sum())  # a prefix
        ready = passing if complete or passing < len(v) else int((v > v[-1]).sum())
        fresh = i[:ready][~torch.isin(i[:ready], decided)]
        candidates = torch.cat([kept, fresh])
        kept = candidates[_class_wise_nms(boxes[candidates // classes], candidates % classes, cfg.nms_iou)]
        if len(kept) >= cfg.max_dets or passing < len(v) or complete:
            return kept
        decided, m = torch.cat([decided, fresh]), 2 * m


def detect(raw: RawPredictions, variants: list[VariantConfig], cfg: InferenceConfig) -> dict[str, list[Detections]]:
    """Every variant's detections from one set of raw predictions."""
    if not len(raw.p):
        return {v.name: [] for v in variants}
    best_p = raw.p.amax(-1)  # (B, N): each prior's best class, for every variant
    first_rounds: list[_FirstRound] = []
    return {v.name: select(raw, VariantScores.of(raw, v, best_p), cfg, first_rounds) for v in variants}
