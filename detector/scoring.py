"""Inference: from one forward pass to detections under any number of confidence variants.

A forward pass gives :class:`RawPredictions` (decoded boxes, class probabilities p, quality q and
IoU_truth for every prior). Each variant re-scores them, then takes the per-level top-k, the score
threshold, class-wise NMS and the final cap, so an alpha sweep never runs the network twice.
The combined confidence is applied before the top-k and the threshold, on every level.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
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

    def cpu(self) -> "RawPredictions":
        """The same predictions in host memory."""
        host = lambda t: None if t is None else t.cpu()
        return RawPredictions(host(self.boxes), host(self.p), host(self.q), host(self.iou_truth), self.level_sizes)


@dataclass
class Detections:
    """A batch's detections under one variant, image after image, each image's best first: boxes (D, 4) xyxy
    input pixels, scores (D,), labels (D,) 0-based; counts (B,) how many are each image's. It is a sequence of
    images: ``len`` counts them, and indexing or iterating gives each image's own (counts (1,))."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    counts: Tensor

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, image: int) -> "Detections":
        image = range(len(self))[image]  # a negative index counts from the end; past it, IndexError
        start = int(self.counts[:image].sum())
        own = slice(start, start + int(self.counts[image]))
        return Detections(self.boxes[own], self.scores[own], self.labels[own], self.counts[image:image + 1])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


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
    """A variant's confidence over some images of a batch (rows ``images`` (B',) of the raw predictions),
    computed where selection reads it: each prior's best (from best_p (B', N), each prior's best class
    probability, shared by every variant: the confidence is non-decreasing in p), then the classes of the
    priors kept, and in full only for an image that needs it. q: (B', N) the quality the variant reads, None
    for plain classification."""

    raw: RawPredictions
    variant: VariantConfig
    images: Tensor
    best_p: Tensor
    q: Optional[Tensor]

    @classmethod
    def of(cls, raw: RawPredictions, variant: VariantConfig, best_p: Optional[Tensor] = None) -> "VariantScores":
        """Over every image of the batch; ``best_p``: raw.p.amax(-1), when already computed."""
        return cls(raw, variant, torch.arange(len(raw.p), device=raw.p.device),
                   raw.p.amax(-1) if best_p is None else best_p, _quality(raw, variant))

    def rows(self, rows: Tensor) -> "VariantScores":
        """The same scores over these rows (B'',) of this one's images only."""
        return VariantScores(self.raw, self.variant, self.images[rows], self.best_p[rows],
                             None if self.q is None else self.q[rows])

    def per_prior(self) -> Tensor:
        """(B', N) each prior's best confidence."""
        return _combine(self.best_p, self.q, self.variant)

    def at_priors(self, priors: Tensor) -> Tensor:
        """(B', K, C) the confidence of every class of the priors (B', K)."""
        n, c = self.raw.p.shape[1:]
        p = self.raw.p.reshape(-1, c)[self.images[:, None] * n + priors]
        return _combine(p, None if self.q is None else self.q.gather(1, priors)[..., None], self.variant)

    def full(self) -> Tensor:
        """(B', N, C) the confidence of every prior and class."""
        return _combine(self.raw.p[self.images], None if self.q is None else self.q[..., None], self.variant)


_LOW = 0xFFFFFFFF


def _top_ranked(values: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best of (..., L) values (non-negative) and their indices (..., L) (< 2^32), best first, tied values
    in index order (prior, then class): top-k's own order of ties is unspecified, and bf16 scores tie often.
    One top-k over int64 keys: a non-negative float's bits order as integers, so the value's bits above the
    index's (reversed) order by value, then index. (Scores are finite: training stops at a non-finite loss.)"""
    keys = values.float().contiguous().view(torch.int32).to(torch.int64) << 32 | (_LOW - index)
    top = keys.topk(min(k, keys.shape[-1])).values
    return (top >> 32).to(torch.int32).view(torch.float32), _LOW - (top & _LOW)


def _best_candidates(score: Tensor, level_sizes: list[int], classes: int, m: int, topk_per_level: int
                     ) -> tuple[Tensor, Tensor]:
    """Each image's ``m`` best candidates among each level's ``topk_per_level`` best (as torchvision and
    mmdetection take them), best first: (values (..., m), flat index prior * C + class (..., m)). score:
    (..., N * C). (While ``m <= topk_per_level`` the image's m best overall are all among them:
    _best_of_images.)"""
    flat = torch.arange(score.shape[-1], device=score.device).expand_as(score)
    values, index, start = [], [], 0
    for n in level_sizes:
        level = slice(start * classes, (start + n) * classes)
        v, i = _top_ranked(score[..., level], flat[..., level], topk_per_level)
        values.append(v), index.append(i)
        start += n
    return _top_ranked(torch.cat(values, -1), torch.cat(index, -1), m)


def _best_of_images(parts: list[VariantScores], m: int) -> tuple[Tensor, Tensor]:
    """Each row's ``m`` best candidates (the rows: every part's images, one part after the other), best first,
    as one top-k over all its (prior, class) scores gives them (values (R, m), flat index prior * C + class
    (R, m)), from the classes of its ``m`` best priors only: a candidate above the m-th best value is of a prior
    whose best is above it, and fewer than m priors are. (Of candidates tied with the m-th value, top-k returns
    any; select leaves those to a next round.) Every part's rows in one top-k each."""
    per_prior = torch.cat([s.per_prior() for s in parts])  # (R, N)
    priors = per_prior.topk(min(m, per_prior.shape[1])).indices  # (R, K)
    candidates = torch.cat([s.at_priors(k) for s, k in zip(parts, priors.split([len(s.images) for s in parts]))])
    c = candidates.shape[2]  # candidates: (R, m, C)
    flat = priors[..., None] * c + torch.arange(c, device=priors.device)  # (R, m, C)
    return _top_ranked(candidates.reshape(len(candidates), -1), flat.reshape(len(candidates), -1), m)


@dataclass
class _Fetched:
    """The best candidates of some rows (variant x image), best first: values and flat indices (prior * C +
    class), (R, K); ready (R,): how many of them are decided (they pass the threshold and no candidate left
    unfetched can rank above them); more (R,): candidates past the fetched ones may still pass."""

    values: Tensor
    index: Tensor
    ready: Tensor
    more: Tensor

    @classmethod
    def of(cls, parts: list[VariantScores], cfg: InferenceConfig, m: int) -> "_Fetched":
        """The ``m`` best candidates of every part's images, one part after the other: from the classes of
        their best priors, or (m past ``topk_per_level``) each level's top-k of every prior and class."""
        n, c = parts[0].raw.p.shape[1:]
        if m <= cfg.topk_per_level:
            values, index = _best_of_images(parts, m)  # (R, <= m)
        else:
            # every prior and class of one image at a time (~40 MB at COCO's scale, each)
            best = [_best_candidates(s.rows(torch.tensor([i], device=s.images.device)).full().reshape(1, n * c),
                                     s.raw.level_sizes, c, m, cfg.topk_per_level)
                    for s in parts for i in range(len(s.images))]
            values, index = torch.cat([v for v, _ in best]), torch.cat([i for _, i in best])
        complete = values.shape[1] < m or values.shape[1] == n * c  # every candidate fetched
        passing = (values > cfg.score_thresh).sum(1)  # a prefix of each row
        if complete:
            return cls(values, index, passing, torch.zeros_like(passing, dtype=torch.bool))
        # Where every fetched candidate passes, ties with the last may continue beyond the fetched ones, some
        # of lower index: those are left to the next round.
        all_pass = passing == values.shape[1]
        return cls(values, index, torch.where(all_pass, (values > values[:, -1:]).sum(1), passing), all_pass)


def _apart(boxes: Tensor, groups: Tensor, shift: float) -> Tensor:
    """Boxes (..., K, 4) in float64, each moved ``group * shift`` along both axes: torchvision's trick for NMS
    within each group at once (boxes of two groups never overlap, given a shift past the largest coordinate).
    In float64 the shift is exact, so any such shift gives the same IoUs; in float32 it would round the
    coordinates and flip overlaps that sit at the threshold."""
    return boxes.double() + (groups.double() * shift)[..., None]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
"""(process, threads) -> the threads that run NMS beside the caller's (a forked process gets its own)."""


def _nms_in_order(jobs: list[Tensor], iou: float) -> list[Tensor]:
    """torchvision's NMS of each job, boxes (K, 4) already in score order (_apart): the kept indices, in that
    order. NMS is given ranks, not the scores, so that its own sort cannot reorder tied scores (then a prefix
    of the candidates is decided as in the run over all of them). On a CPU the jobs are shared among as many
    threads as torch may use for one op (torch.get_num_threads(): the trial's cores; the caller's and a pool's
    kept for the process): NMS releases the GIL, and one NMS call is single-threaded."""
    if not jobs:
        return []
    ranks = torch.arange(max(len(j) for j in jobs), 0, -1, dtype=torch.float64, device=jobs[0].device)
    run = lambda part: [nms(boxes, ranks[: len(boxes)], iou) for boxes in part]  # noqa: E731
    threads = min(torch.get_num_threads(), len(jobs)) if jobs[0].device.type == "cpu" else 1
    if threads <= 1:
        return run(jobs)
    key = (os.getpid(), threads - 1)
    pool = _POOLS.get(key) or _POOLS.setdefault(key, ThreadPoolExecutor(threads - 1, thread_name_prefix="nms"))
    others = [pool.submit(run, jobs[t::threads]) for t in range(1, threads)]
    kept: list[Tensor] = [torch.empty(0)] * len(jobs)
    kept[0::threads] = run(jobs[0::threads])
    for t, future in enumerate(others, 1):
        kept[t::threads] = future.result()
    return kept


def select(raw: RawPredictions, scores: VariantScores, cfg: InferenceConfig) -> Detections:
    """One variant's detections of each image of the batch (detect's, for one variant)."""
    return _select(raw, [scores], cfg, 4 * cfg.max_dets)[0][0]


def detect(raw: RawPredictions, variants: list[VariantConfig], cfg: InferenceConfig) -> dict[str, Detections]:
    """Every variant's detections from one set of raw predictions."""
    return Selector(variants, cfg)(raw)


@dataclass
class Selector:
    """Every variant's detections, batch after batch of one model's predictions (:func:`detect` over each).

    Each image's first NMS round takes the ``first_round`` best candidates of each variant; an image that keeps
    fewer than max_dets goes on in further rounds, which cost about as much again. How many candidates NMS needs
    for max_dets depends on the model (how much of its output it suppresses), so after each batch the first
    round takes what 90% of that batch's (variant, image) rows needed, and a tenth more (at most
    ``topk_per_level``: past it every prior and class is scored). The detections are the same whatever it
    takes: it only decides how much NMS runs at once."""

    variants: list[VariantConfig]
    cfg: InferenceConfig
    first_round: int = 0
    """0: 4 x max_dets, until a batch tells."""

    def __call__(self, raw: RawPredictions) -> dict[str, Detections]:
        best_p = raw.p.amax(-1)  # (B, N): each prior's best class, for every variant
        m = self.first_round or min(4 * self.cfg.max_dets, self.cfg.topk_per_level)
        selected, needed = _select(raw, [VariantScores.of(raw, v, best_p) for v in self.variants], self.cfg, m)
        if needed:
            at_90 = sorted(needed)[(9 * len(needed)) // 10]
            self.first_round = min(max(self.cfg.max_dets, -(-int(1.1 * at_90) // 32) * 32), self.cfg.topk_per_level)
        return {v.name: s for v, s in zip(self.variants, selected)}


@dataclass
class _Row:
    """One (variant, image)'s selection past its first round: the candidates kept so far and those fetched but
    not yet decided (flat indices prior * C + class and values, best first); every candidate fetched so far, by
    index, not by position (a later round scores them in another tensor, and a CPU kernel can round an element
    a unit apart by where it sits); and whether candidates past the fetched ones may still pass."""

    image: int
    kept_index: Tensor
    kept_values: Tensor
    fetched: Tensor
    more: bool
    waiting_index: Optional[Tensor] = None
    waiting_values: Optional[Tensor] = None

    def take(self, index: Tensor, values: Tensor, more: bool) -> None:
        """A round's decided candidates (best first): those not fetched before wait for NMS."""
        fresh = ~torch.isin(index, self.fetched)
        self.fetched = torch.cat([self.fetched, index[fresh]])
        self.waiting_index, self.waiting_values, self.more = index[fresh], values[fresh], more

    def next_chunk(self, max_dets: int) -> tuple[Tensor, Tensor]:
        """The kept candidates followed by the next waiting ones: about as many as the image still needs, at
        the rate NMS has kept them so far (NMS over the kept boxes costs little: they keep each other)."""
        size = max(32, 4 * (max_dets - len(self.kept_index)))
        chunk = (self.waiting_index[:size], self.waiting_values[:size])
        self.waiting_index, self.waiting_values = self.waiting_index[size:], self.waiting_values[size:]
        return torch.cat([self.kept_index, chunk[0]]), torch.cat([self.kept_values, chunk[1]])


def _no_detections(raw: RawPredictions) -> Detections:
    """An empty batch's."""
    empty = raw.p.new_zeros(0, dtype=torch.long)
    return Detections(raw.boxes.new_zeros(0, 4), raw.p.new_zeros(0), empty, empty)


def _select(raw: RawPredictions, scores: list[VariantScores], cfg: InferenceConfig, m: int
            ) -> tuple[list[Detections], list[int]]:
    """Per-level top-k, score threshold, class-wise NMS and max_dets per image, under each variant's scores
    (each over every image of the batch), and how many candidates each (variant, image) that kept max_dets
    needed for them (at least m + 1 where the first round's m were not enough).

    Greedy NMS keeps a box or not from the boxes scored above it alone, so NMS over an image's ``m`` best
    candidates keeps exactly the first boxes that NMS over all of them keeps: once it keeps max_dets (or the
    candidates run out), the rest cannot change the result. So NMS never compares the thousands of low-scored
    candidates: every image's m best are fetched at once, under every variant, and NMS over them settles most
    images. An image whose candidates and cut are an earlier variant's (cls and alpha 1.0 always; often p*q and
    alpha 0.5) takes that variant's NMS: NMS reads only the order. A (variant, image) row that keeps fewer goes
    on: its NMS runs again over the boxes kept so far (they keep each other) and a few more candidates at a
    time, from rounds of twice as many fetched candidates."""
    b, n, c = raw.p.shape
    if not b:
        return [_no_detections(raw) for _ in scores], []
    # One class shift for the batch (any shift past the largest coordinate gives the same IoUs)
    shift = float(raw.boxes.max()) + 1 if raw.boxes.numel() else 0.0
    kept_index, kept_values, pending, needed = _first_round(raw, scores, cfg, m, shift)
    _more_rounds(raw, scores, cfg, m, shift, pending, kept_index, kept_values)
    return _as_detections(raw, len(scores), cfg.max_dets, kept_index, kept_values), needed


def _first_round(raw: RawPredictions, scores: list[VariantScores], cfg: InferenceConfig, m: int, shift: float):
    """NMS over every (variant, image) row's ``m`` best candidates, once per image ranked alike: each row's kept
    (prior x class) indices and scores, the rows that must go on (kept fewer than max_dets, with candidates
    left), and how many candidates each row that kept max_dets needed."""
    b, n, c = raw.p.shape
    first = _Fetched.of(scores, cfg, m)  # rows variant by variant: (V * B, m)
    index, ready = first.index.view(len(scores), b, -1), first.ready.view(len(scores), b)
    alike = (index[:, None] == index[None]).all(-1) & (ready[:, None] == ready[None])  # (V, V, B)
    # (V * B): the row of the first variant that decides each row's image alike, whose NMS it takes
    decider = (alike.int().argmax(0) * b + torch.arange(b, device=alike.device)).view(-1).tolist()
    images = torch.arange(b, device=raw.p.device)
    apart = _apart(raw.boxes.reshape(-1, 4)[(images.repeat(len(scores)) * n)[:, None] + first.index // c],
                   first.index % c, shift)
    jobs = {row: apart[row, :upto] for row, upto in enumerate(first.ready.tolist()) if decider[row] == row}
    first_kept = dict(zip(jobs, _nms_in_order(list(jobs.values()), cfg.nms_iou)))
    kept_index, kept_values, pending, needed = [], [], [], []
    for row, (upto, more) in enumerate(zip(first.ready.tolist(), first.more.tolist())):
        k = first_kept[decider[row]]
        kept_index.append(first.index[row, k])
        kept_values.append(first.values[row, k])
        if len(k) >= cfg.max_dets:
            needed.append(int(k[cfg.max_dets - 1]) + 1)
        elif more:
            pending.append((row, _Row(row % b, kept_index[row], kept_values[row], first.index[row, :upto], more)))
            needed.append(m + 1)
    return kept_index, kept_values, pending, needed


def _more_rounds(raw: RawPredictions, scores: list[VariantScores], cfg: InferenceConfig, m: int, shift: float,
                 pending: list[tuple[int, "_Row"]], kept_index: list[Tensor], kept_values: list[Tensor]) -> None:
    """The rows the first round left short: NMS again over their kept boxes and a few more candidates at a time,
    fetching twice as many candidates for the rows that have none waiting, until each keeps max_dets or runs
    out. Updates ``kept_index`` / ``kept_values`` in place."""
    b, _, c = raw.p.shape
    while pending:
        hungry = [(row, r) for row, r in pending if r.waiting_index is None or not len(r.waiting_index)]
        if hungry:  # fetch twice as many candidates for the rows that have none waiting
            m *= 2
            by_variant: dict[int, list[int]] = {}
            for row, _ in hungry:
                by_variant.setdefault(row // b, []).append(row % b)
            fetched = _Fetched.of([scores[v].rows(torch.tensor(imgs, device=raw.p.device))
                                   for v, imgs in by_variant.items()], cfg, m)
            for at, ((_, r), upto, more) in enumerate(zip(hungry, fetched.ready.tolist(), fetched.more.tolist())):
                r.take(fetched.index[at, :upto], fetched.values[at, :upto], more)
        chunks = [r.next_chunk(cfg.max_dets) for _, r in pending]
        kept = _nms_in_order([_apart(raw.boxes[r.image, i // c], i % c, shift) for (_, r), (i, _) in
                              zip(pending, chunks)], cfg.nms_iou)
        still = []
        for (row, r), (i, v), k in zip(pending, chunks, kept):
            r.kept_index, r.kept_values = kept_index[row], kept_values[row] = i[k], v[k]
            if len(k) < cfg.max_dets and (len(r.waiting_index) or r.more):
                still.append((row, r))
        pending = still


def _as_detections(raw: RawPredictions, variants: int, max_dets: int, kept_index: list[Tensor],
                   kept_values: list[Tensor]) -> list[Detections]:
    """Each variant's first ``max_dets`` kept per image, as one Detections over the batch."""
    b, _, c = raw.p.shape
    images = torch.arange(b, device=raw.p.device)
    detections = []
    for v in range(variants):
        index = torch.cat([i[:max_dets] for i in kept_index[v * b:(v + 1) * b]])
        values = torch.cat([x[:max_dets] for x in kept_values[v * b:(v + 1) * b]])
        counts = torch.tensor([min(len(i), max_dets) for i in kept_index[v * b:(v + 1) * b]], device=raw.p.device)
        detections.append(Detections(raw.boxes[images.repeat_interleave(counts), index // c], values, index % c, counts))
    return detections


def reference_select(raw: RawPredictions, p: Tensor, cfg: InferenceConfig) -> Detections:
    """What ``select`` keeps, written plainly, torchvision RetinaNet's way: per image, each level's top-k
    (prior, class) scores, the score threshold, class-wise NMS over every candidate, the first max_dets; tied
    scores ranked by index (prior, then class), as ``select`` ranks them. It is ``select``'s spec, for the
    tests: an image and a level at a time, and NMS over thousands of candidates where ``select`` compares a few.
    ``p``: (B, N, C) the variant's confidences (``confidence``)."""
    from torchvision.ops import batched_nms

    b, _, c = p.shape
    boxes, scores, labels, counts = [], [], [], []
    for img in range(b):
        start, top_v, top_i = 0, [], []
        for size in raw.level_sizes:
            v, i = p[img, start:start + size].reshape(-1).topk(min(cfg.topk_per_level, size * c))
            top_v.append(v), top_i.append(i + start * c)
            start += size
        i, by_index = torch.cat(top_i).sort()
        v, order = torch.cat(top_v)[by_index].sort(descending=True, stable=True)
        i = i[order]
        above = v > cfg.score_thresh
        v, i = v[above], i[above]
        box, label = raw.boxes[img, i // c], i % c
        ranks = torch.arange(len(v), 0, -1, dtype=torch.float64)  # ties broken by index
        keep = batched_nms(box.double(), ranks, label, cfg.nms_iou)[: cfg.max_dets]
        boxes.append(box[keep]), scores.append(v[keep]), labels.append(label[keep]), counts.append(len(keep))
    return Detections(torch.cat(boxes), torch.cat(scores), torch.cat(labels), torch.tensor(counts, device=p.device))
