"""How sure a result is, and whether each claim of the paper holds here.

A cell (one row, one column) or a claim's difference (``row - vs``) is estimated from two sources of
variation, each where the study has it:

- **images**: each trial's bootstrap over its val images (detector.bootstrap). Every trial draws the same
  replicates, so a difference is bootstrapped pairwise: replicate by replicate, averaged over seeds;
  its interval is the 2.5 / 97.5 percentiles.
- **seeds**: with two or more seeds, the Student t 95% interval of the mean over seeds (a difference paired by
  seed). The same val images serve every seed, so this is training noise alone.

With both, each side's half-width is the root sum of squares of the two (independent sources). The verdict
of a claim compares our interval with 0 on the side of the paper's difference: *reproduced* (it excludes 0
there), *contradicted* (it excludes 0 on the other side) or *inconclusive*.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats

from .study import Row, Study
from .table import finished, row_results, row_variant

LEVEL = 0.95
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"

Replicates = dict[str, dict[str, dict[str, np.ndarray]]]
"""run id -> variant -> metric -> (R,) bootstrap replicates (a trial's bootstrap.json)."""


@dataclass
class Estimate:
    value: Optional[float]
    lo: Optional[float] = None
    hi: Optional[float] = None
    seeds: int = 0
    source: str = ""
    """What the interval covers: ``seeds+images``, ``images``, ``seeds``, or "" (no interval)."""


def seed_half_width(values: np.ndarray, level: float = LEVEL) -> Optional[float]:
    """Half-width of the Student t interval of the mean of ``values`` (one per seed); None below 2 seeds."""
    n = len(values)
    if n < 2:
        return None
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def estimate(per_seed: np.ndarray, replicates: Optional[np.ndarray], level: float = LEVEL) -> Estimate:
    """A mean over seeds with its interval. per_seed: (S,) values; replicates: (S, R) bootstrap replicates of
    the same quantity per seed, or None."""
    if not len(per_seed):
        return Estimate(None)
    value = float(np.mean(per_seed))
    seed_h = seed_half_width(per_seed, level)
    if replicates is not None:
        lo_i, hi_i = np.percentile(replicates.mean(axis=0), [50 * (1 - level), 50 * (1 + level)])
        below, above = max(value - lo_i, 0.0), max(hi_i - value, 0.0)
        if seed_h is None:
            return Estimate(value, value - below, value + above, len(per_seed), "images")
        return Estimate(value, value - math.hypot(below, seed_h), value + math.hypot(above, seed_h),
                        len(per_seed), "seeds+images")
    if seed_h is not None:
        return Estimate(value, value - seed_h, value + seed_h, len(per_seed), "seeds")
    return Estimate(value, seeds=len(per_seed))


def verdict(paper: float, ours: Estimate) -> str:
    if ours.lo is None:
        return INCONCLUSIVE
    if (paper > 0 and ours.lo > 0) or (paper < 0 and ours.hi < 0):
        return REPRODUCED
    if (paper > 0 and ours.hi < 0) or (paper < 0 and ours.lo > 0):
        return CONTRADICTED
    return INCONCLUSIVE


def _per_seed(row: Row, done: pd.DataFrame, metric: str, replicates: Replicates, scale: float):
    """A row's value per seed (its runs of that seed averaged, e.g. over a grid it spans) and, where every run
    has them, their replicates: (seeds (S,), values (S,), replicates (S, R) or None)."""
    mine = row_results(row, done)
    if metric not in mine or mine[metric].isna().all():
        return np.zeros(0, int), np.zeros(0), None
    mine = mine[mine[metric].notna()]
    variant = row_variant(row, done)
    seeds = np.array(sorted(mine["seed"].unique()))
    values = np.array([mine.loc[mine["seed"] == s, metric].mean() for s in seeds]) * scale
    reps = []
    for s in seeds:
        arrays = [replicates.get(run, {}).get(variant, {}).get(metric) for run in mine.loc[mine["seed"] == s, "run_id"]]
        if any(a is None for a in arrays):
            return seeds, values, None
        reps.append(np.mean(arrays, axis=0) * scale)
    return seeds, values, np.stack(reps)


def cell_estimate(study: Study, row: Row, column: str, results: pd.DataFrame, replicates: Replicates) -> Estimate:
    """One table cell: the row's mean over seeds (in the table's units) with its interval."""
    layout = study.table_layout
    _, values, reps = _per_seed(row, finished(results), layout.metric(column), replicates, layout.scale)
    return estimate(values, reps)


def difference_estimate(study: Study, row: str, vs: str, column: str, results: pd.DataFrame,
                        replicates: Replicates) -> Estimate:
    """Ours for row - vs on a column (row labels): over the seeds both have, paired by seed and by bootstrap
    replicate."""
    return metric_difference(study, row, vs, study.table_layout.metric(column), results, replicates)


def metric_difference(study: Study, row: str, vs: str, metric: str, results: pd.DataFrame,
                      replicates: Replicates) -> Estimate:
    """difference_estimate on a metric as the evaluation names it (e.g. ``mAP85``, no column of its own)."""
    layout = study.table_layout
    rows = {r.label: r for r in layout.rows}
    done = finished(results)
    s_a, v_a, r_a = _per_seed(rows[row], done, metric, replicates, layout.scale)
    s_b, v_b, r_b = _per_seed(rows[vs], done, metric, replicates, layout.scale)
    common = np.intersect1d(s_a, s_b)
    ia, ib = np.searchsorted(s_a, common), np.searchsorted(s_b, common)
    reps = r_a[ia] - r_b[ib] if r_a is not None and r_b is not None else None
    return estimate(v_a[ia] - v_b[ib], reps)


def claims_frame(study: Study, results: pd.DataFrame, replicates: Replicates) -> pd.DataFrame:
    """One row per claim of the study: the paper's difference, ours with its 95% interval (table units), the
    seeds it pairs, what the interval covers, and the verdict."""
    out = []
    for i, claim in enumerate(study.claims):
        ours = difference_estimate(study, claim.row, claim.vs, claim.metric, results, replicates)
        out.append({"claim": i, "row": claim.row, "vs": claim.vs, "metric": claim.metric, "paper": claim.paper,
                    "ours": ours.value, "lo": ours.lo, "hi": ours.hi, "seeds": ours.seeds, "interval": ours.source,
                    "verdict": verdict(claim.paper, ours) if ours.value is not None else "not measured",
                    "says": claim.says})
    return pd.DataFrame(out, columns=["claim", "row", "vs", "metric", "paper", "ours", "lo", "hi", "seeds",
                                      "interval", "verdict", "says"])


def effect_pairs(study: Study) -> list[tuple[str, str]]:
    """(row, baseline) label pairs whose effect the study reads: its claims' pairs, in order, then each layout
    row's ``baseline``."""
    pairs = [(c.row, c.vs) for c in study.claims]
    pairs += [(r.label, r.baseline) for r in (study.table_layout.rows if study.table_layout else []) if r.baseline]
    return list(dict.fromkeys(pairs))


def effects_frame(study: Study, results: pd.DataFrame, replicates: Replicates) -> pd.DataFrame:
    """Each change's effect against its baseline, per column: ours (row - vs, table units) with its 95%
    interval, the paper's (the rows' references), and the verdict where the paper gives a difference."""
    layout = study.table_layout
    refs = {r.label: r.reference for r in layout.rows}
    out = []
    for row, vs in effect_pairs(study):
        for column in layout.columns:
            ours = difference_estimate(study, row, vs, column, results, replicates)
            a, b = refs[row].get(column), refs[vs].get(column)
            paper = None if a is None or b is None else round(a - b, 6)
            word = "" if ours.value is None else verdict(paper, ours) if paper else ""
            out.append({"row": row, "vs": vs, "column": column, "ours": ours.value, "lo": ours.lo, "hi": ours.hi,
                        "paper": paper, "seeds": ours.seeds, "interval": ours.source, "verdict": word})
    return pd.DataFrame(out, columns=["row", "vs", "column", "ours", "lo", "hi", "paper", "seeds", "interval",
                                      "verdict"])
