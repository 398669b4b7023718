"""The papers' figures, drawn from a study's results (the ``ablab.results`` DataFrame and the trials'
scatter samples): alpha sweeps, assignment-threshold curves, AP vs IoU threshold, and Figure 4 of paper 000
(detection confidence vs IoU_eval with the correlation coefficients). Each function returns a PNG path,
or None when the study has nothing of that kind to show."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ablab.study import Study  # noqa: E402
from ablab.rows import ResultSet  # noqa: E402
from detector.config import parse_variant  # noqa: E402
from detector.options import POINT_RULES  # noqa: E402  (each rule names the field that holds its threshold)

# The AP family read off each model at single IoU thresholds: COCO's named stats, VOC's mAP50 ... mAP95.
COCO_AT = {"AP50": 0.5, "AP60": 0.6, "AP70": 0.7, "AP75": 0.75, "AP80": 0.8, "AP90": 0.9}
VOC_AT = re.compile(r"^mAP(\d\d)$")
SWEEP_METRICS = ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90", "mAP", "mAP50", "mAP60", "mAP70", "mAP80", "mAP90")
MAX_LINES = 10


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _measured_rows(study: Study, df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(label, variant, its results) of every table row that reads one of our runs and has results."""
    layout = study.table_layout
    results = ResultSet(df)
    rows = [(r.label, results.variant_of(r), results.of_row(r)) for r in (layout.rows if layout else []) if r.measured]
    return [(label, variant, sel) for label, variant, sel in rows if not sel.empty]


def alpha_sweep(study: Study, df: pd.DataFrame, out: Path) -> Optional[Path]:
    """AP, AP50 ... AP90 vs alpha, one panel per trained model with at least three alphas (Tables 3/4 of
    000, Table 5 of 004). The x axis is alpha in the study's own convention."""
    df = ResultSet(df).finished().frame
    sweeps = []
    for trial, group in df.groupby("trial_key", sort=False):  # each trained model
        points = []
        for _, row in group.iterrows():
            v = parse_variant(row["variant"], study.alpha_convention)
            if v.combine == "power" and v.quality_source == "predicted" and not v.q_filter:
                points.append((v.alpha, row))
        if len(points) >= 3:
            sweeps.append((trial, sorted(points, key=lambda p: p[0])))
    if not sweeps:
        return None
    weighs = "p" if study.alpha_convention == "iou_aware" else "obj"
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps), 4), squeeze=False)
    for ax, (trial, points) in zip(axes[0], sweeps):
        alphas = [a for a, _ in points]
        for metric in SWEEP_METRICS:
            values = [row.get(metric) for _, row in points]
            if all(isinstance(x, float) and not np.isnan(x) for x in values):
                ax.plot(alphas, values, marker="o", label=metric)
        ax.set(title=f"{trial}: alpha sweep", xlabel=f"alpha (weighs {weighs})", ylabel="AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, out / "alpha_sweep.png")


def threshold_curves(study: Study, df: pd.DataFrame, out: Path) -> Optional[Path]:
    """The table's first metric vs the assignment threshold, one line per assigner (Tables 1a and 2 of 003):
    Pseudo-IoU T, centerness c, scaled-box s. The inside-box baseline is Pseudo-IoU at T = 0."""
    metric = study.table_layout.metric(study.table_layout.columns[0]) if study.table_layout else None
    df = ResultSet(df).finished().frame
    if metric not in df or "model.assigner.name" not in df or df["model.assigner.name"].isin(["max_iou"]).all():
        return None
    points: dict[tuple[str, float], list[float]] = {}
    for (_, name), group in df.groupby(["trial_key", "model.assigner.name"], sort=False):  # each trained point
        row = group.iloc[0]
        if pd.isna(row[metric]) or name not in POINT_RULES:
            continue
        fields = POINT_RULES[name].fields
        x = row.get(f"model.{fields[0]}") if fields else 0.0  # a rule without one: the T = 0 end
        if x is not None:
            points.setdefault(("pseudo_iou" if name == "inside" else name, float(x)), []).append(float(row[metric]))
    lines: dict[str, list[tuple[float, float]]] = {}
    for (name, x), values in sorted(points.items()):  # the mean over seeds at each setting
        lines.setdefault(name, []).append((x, float(np.mean(values))))
    lines = {k: v for k, v in lines.items() if len(v) >= 3}
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in lines.items():
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
    ax.set(title=f"{study.study}: assignment threshold", xlabel="threshold (T, c or s)", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out / "threshold_curves.png")


def ap_vs_iou(study: Study, df: pd.DataFrame, out: Path) -> Optional[Path]:
    """AP at each single IoU threshold, one line per measured table row."""
    df = ResultSet(df).finished().frame
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    drawn = 0
    for label, _, sel in _measured_rows(study, df)[:MAX_LINES]:
        row = sel.iloc[0]
        voc = sorted((int(m.group(1)) / 100, c) for c in row.index if (m := VOC_AT.match(c)) and pd.notna(row[c]))
        pts = [(t, row[c]) for t, c in voc] or [(t, row[c]) for c, t in sorted(COCO_AT.items(), key=lambda kv: kv[1])
                                                if c in row and pd.notna(row[c])]
        if len(pts) >= 2:
            ax.plot([t for t, _ in pts], [v for _, v in pts], marker="o", label=label)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set(title=f"{study.study}: AP vs IoU threshold", xlabel="IoU threshold", ylabel="AP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / "ap_vs_iou.png")


def confidence_vs_iou(study: Study, df: pd.DataFrame, scatter: dict[str, dict], out: Path) -> Optional[Path]:
    """Figure 4 of paper 000: detection confidence vs IoU_eval per measured row (e.g. the baseline, the
    predicted IoU and the ground-truth IoU), with Pearson and Spearman coefficients in each title.
    scatter: trial key -> {variant: {"confidence": [...], "iou_eval": [...]}} (a row's first seed)."""
    df = ResultSet(df).finished().frame
    panels = []
    for label, variant, sel in _measured_rows(study, df):
        coef = sel.iloc[0]
        samples = scatter.get(coef["trial_key"], {}).get(variant)
        if samples and len(samples["confidence"]) >= 2:
            panels.append((label, samples, coef.get("pearson"), coef.get("spearman")))
    if not panels:
        return None
    panels = panels[:9]
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (label, s, pearson, spearman) in zip(axes.flat, panels):
        ax.scatter(s["iou_eval"], s["confidence"], s=3, alpha=0.35)
        title = label if pearson is None else f"{label}\npearson {pearson:.3f}, spearman {spearman:.3f}"
        ax.set(title=title, xlabel="IoU_eval", ylabel="detection confidence", xlim=(0, 1), ylim=(0, 1))
        ax.title.set_fontsize(8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return _save(fig, out / "confidence_vs_iou.png")


def _thresholds(df: pd.DataFrame) -> list[tuple[float, str]]:
    """(IoU threshold, metric) of the single-threshold APs the results hold: VOC's mAP50 ... mAP95, else
    COCO's AP50 ... AP90."""
    voc = sorted((int(m.group(1)) / 100, c) for c in df.columns if (m := VOC_AT.match(c)) and df[c].notna().any())
    return voc or sorted((t, c) for c, t in COCO_AT.items() if c in df and df[c].notna().any())


def effects_vs_iou(study: Study, results: ResultSet, out: Path) -> Optional[Path]:
    """Each change's effect against its baseline (ablab.evidence.effect_pairs) at every single IoU threshold:
    one small panel per pair, ours with its 95% band, the paper's where its table has that threshold."""
    from ablab.evidence import effect_pairs, metric_difference

    layout = study.table_layout
    pairs, thresholds = effect_pairs(study), _thresholds(results.finished().frame)
    if not layout or not pairs or len(thresholds) < 2:
        return None
    paper_at = {}  # metric -> column, for the paper's references
    for column in layout.columns:
        paper_at[layout.metric(column)] = column
    refs = {r.label: r.reference for r in layout.rows}
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False, sharey=True)
    for ax, (row, vs) in zip(axes.flat, pairs):
        ours = [(t, metric_difference(study, row, vs, m, results)) for t, m in thresholds]
        ours = [(t, e) for t, e in ours if e.value is not None]
        if ours:
            ax.plot([t for t, _ in ours], [e.value for _, e in ours], marker="o", label="ours")
            band = [(t, e) for t, e in ours if e.lo is not None]
            if band:
                ax.fill_between([t for t, _ in band], [e.lo for _, e in band], [e.hi for _, e in band], alpha=0.25,
                                label="ours, 95%")
        paper = [(t, refs[row][paper_at[m]] - refs[vs][paper_at[m]]) for t, m in thresholds
                 if m in paper_at and refs[row].get(paper_at[m]) is not None and refs[vs].get(paper_at[m]) is not None]
        if paper:
            ax.plot([t for t, _ in paper], [d for _, d in paper], marker="s", linestyle="--", label="paper")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(f"{row}\nvs {vs}", fontsize=8)
        ax.set(xlabel="IoU threshold", ylabel=f"difference (x{layout.scale:g})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    return _save(fig, out / "effects_vs_iou.png")


def learning_curves(study: Study, df: pd.DataFrame, histories: dict[str, dict[str, list[tuple[int, float]]]],
                    out: Path) -> Optional[Path]:
    """Each trial's training loss terms per epoch (MLflow's ``train/loss*`` histories, log scale) and its
    per-epoch validation metric (``val/*``, right axis), one small panel per trial, titled with the final
    validation metric (the full evaluation, after training)."""
    runs = df.drop_duplicates("run_id")
    runs = runs[runs["run_id"].isin([r for r, h in histories.items() if h])]
    if runs.empty:
        return None
    metric = study.table_layout.metric(study.table_layout.columns[0]) if study.table_layout else "AP"
    cols = min(3, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.0 * rows), squeeze=False)
    for ax, (_, run) in zip(axes.flat, runs.iterrows()):
        curves = histories[run["run_id"]]
        for key, points in sorted(curves.items()):
            if key.startswith("train/"):
                ax.plot([e for e, _ in points], [v for _, v in points], marker=".", label=key.removeprefix("train/"))
        val = {k: v for k, v in curves.items() if k.startswith("val/")}
        if val:
            right = ax.twinx()
            for key, points in sorted(val.items()):
                right.plot([e for e, _ in points], [v for _, v in points], marker="s", color="black",
                           linestyle="--" if key.endswith("50") else "-", label=key)
            right.set_ylabel("val metric, per epoch", fontsize=7)
            right.legend(fontsize=6, loc="center right")
        mine = df[df["run_id"] == run["run_id"]]  # one row per variant: the first is the trial's first variant
        final = mine[metric].dropna() if metric in mine else pd.Series(dtype=float)
        shown = f"; val {metric} {final.iloc[0]:.3f}" if len(final) else ""
        ax.set_title(f"{run['trial_key']} ({run['status']}){shown}", fontsize=8)
        ax.set(xlabel="epoch", ylabel="loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(runs):]:
        ax.set_visible(False)
    return _save(fig, out / "learning_curves.png")
