"""How sure a result is, and whether each claim of the paper holds here.

A cell (one row, one column) or a claim's difference (``row - vs``) is estimated from two sources of
variation, each where the study has it:

- **images**: each trial's bootstrap over its val images (detector.bootstrap). Every trial draws the same
  replicates, so a difference is bootstrapped pairwise: replicate by replicate, averaged over seeds;
  its interval is the 2.5 / 97.5 percentiles.
- **seeds**: with two or more seeds, the Student t 95% interval of the mean over seeds (a difference paired by
  seed). The same val images serve every seed, so this is training noise alone.

With both, each side's half-width is the root sum of squares of the two (independent sources).

A claim is of one of two kinds:

- *within one model*: both rows read the same trained weights (two inference variants of one trial). Training
  noise is common to both sides, so the val-image bootstrap is a sound interval and one seed may decide.
- *between models*: the rows are separately trained models. Two seeds of one config differ by far more than the
  val-image interval (AP90 by up to 6 points on the smoke set), so a verdict needs the seed interval: at least
  ``min_seeds`` paired seeds (3 unless the study or profile says otherwise). Below that the claim shows its value
  and is *inconclusive (needs N seeds)*.

The verdict compares our interval with 0 on the side of the paper's difference: *reproduced* (it excludes 0
there), *contradicted* (it excludes 0 on the other side) or *inconclusive*. It is also weighed against the
paper's own difference: where our interval excludes it, the effect here is *smaller* (or *larger*) than the
paper's. For a between-model claim, ``power`` is the chance that the rule, on seeds and images as ours are, calls
the claim reproduced were the true difference the paper's, and ``detectable`` the smallest difference it calls
reproduced 80% of the time (power()).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .launch import Launch
from .study import Row, Study
from .rows import ResultSet

LEVEL = 0.95
POWER = 0.8
"""The power at which ``detectable`` is stated."""
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
NOT_MEASURED = "not measured"
WITHIN, BETWEEN = "within one model", "between models"
SMALLER, LARGER = "smaller", "larger"

"""run id -> variant -> metric -> (R,) bootstrap replicates (a trial's bootstrap.json)."""


@dataclass
class Estimate:
    value: Optional[float]
    lo: Optional[float] = None
    hi: Optional[float] = None
    seeds: int = 0
    source: str = ""
    """What the interval covers: ``seeds+images``, ``images``, ``seeds``, or "" (no interval)."""
    seed_half: Optional[float] = None
    """The seed interval's half-width (Student t), where there are two or more seeds."""
    image_below: float = 0.0
    """How far below the value the val-image interval reaches (0 without replicates); ``image_above`` above it."""
    image_above: float = 0.0


def _t_crit(seeds: int, level: float = LEVEL) -> float:
    return float(stats.t.ppf(0.5 + level / 2, seeds - 1))


def seed_half_width(values: np.ndarray, level: float = LEVEL) -> Optional[float]:
    """Half-width of the Student t interval of the mean of ``values`` (one per seed); None below 2 seeds."""
    n = len(values)
    if n < 2:
        return None
    return _t_crit(n, level) * float(np.std(values, ddof=1)) / math.sqrt(n)


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
            return Estimate(value, value - below, value + above, len(per_seed), "images", None, below, above)
        return Estimate(value, value - math.hypot(below, seed_h), value + math.hypot(above, seed_h),
                        len(per_seed), "seeds+images", seed_h, below, above)
    if seed_h is not None:
        return Estimate(value, value - seed_h, value + seed_h, len(per_seed), "seeds", seed_h)
    return Estimate(value, seeds=len(per_seed))


def verdict(paper: float, ours: Estimate) -> str:
    if ours.lo is None:
        return INCONCLUSIVE
    if (paper > 0 and ours.lo > 0) or (paper < 0 and ours.hi < 0):
        return REPRODUCED
    if (paper > 0 and ours.hi < 0) or (paper < 0 and ours.lo > 0):
        return CONTRADICTED
    return INCONCLUSIVE


def against_paper(paper: float, ours: Estimate) -> str:
    """SMALLER / LARGER where our interval excludes the paper's difference (in the paper's direction), else ""."""
    if ours.lo is None:
        return ""
    lo, hi = (ours.lo, ours.hi) if paper > 0 else (-ours.hi, -ours.lo)  # in the paper's direction
    return SMALLER if hi < abs(paper) else LARGER if lo > abs(paper) else ""


POWER_DRAWS = 20_000
"""Monte Carlo draws behind power() where the interval has a val-image part (fixed: the same figure every time)."""


def power(effect: float, ours: Estimate, level: float = LEVEL) -> Optional[float]:
    """The chance that the verdict rule, on seeds and images as ours are, calls a true difference ``effect``
    reproduced. The rule: the interval, the seeds' t half-width (of ``seeds - 1`` degrees of freedom) and the
    val-image half-width on the paper's side added in quadrature, excludes 0. Our mean then scatters by the
    seeds' standard error (seed half-width / t) and the images' (image half-width / z) together, and the seed
    half-width with the seeds' sample SD. With no image part that is the paired t test's power, a noncentral t;
    with one, it is drawn (POWER_DRAWS, a fixed generator). None without two or more seeds."""
    if ours.seed_half is None or ours.seeds < 2:
        return None
    df, crit = ours.seeds - 1, _t_crit(ours.seeds, level)
    seed_se = ours.seed_half / crit
    image_h = ours.image_below if effect > 0 else ours.image_above
    if image_h == 0:
        # No spread to speak of: scipy's noncentral t gives NaN far out, where the power is 1 to 15 digits.
        nc = abs(effect) / seed_se if seed_se > 0 else math.inf if effect else 0.0
        return float(stats.nct.sf(crit, df, nc)) if nc < 1e4 else 1.0
    rng = np.random.default_rng(0)
    z, spread = rng.standard_normal(POWER_DRAWS), np.sqrt(rng.chisquare(df, POWER_DRAWS) / df)  # s / sigma
    mean = abs(effect) + z * math.hypot(seed_se, image_h / stats.norm.ppf(0.5 + level / 2))
    return float(np.mean(mean > np.hypot(crit * seed_se * spread, image_h)))


def detectable(ours: Estimate, level: float = LEVEL, at_power: float = POWER) -> Optional[float]:
    """The smallest difference the rule, on seeds and images as ours are, calls reproduced with probability
    ``at_power`` (power() of it is ``at_power``)."""
    at_zero = power(0.0, ours, level)
    if at_zero is None or at_zero >= at_power:  # no interval; or no spread at all, when any difference shows
        return None if at_zero is None else 0.0
    scale = math.hypot(ours.seed_half, max(ours.image_below, ours.image_above)) or 1e-9
    return float(optimize.brentq(lambda d: power(d, ours, level) - at_power, 0.0, 100 * scale, xtol=1e-4 * scale))


@dataclass
class Judgement:
    """A claim's verdict, why it is inconclusive where a rule (not the data) says so, how it stands against the
    paper's difference, and for a between-model claim the power and detectable effect of its seeds."""

    verdict: str
    reason: str = ""
    against_paper: str = ""
    power: Optional[float] = None
    detectable: Optional[float] = None

    @property
    def text(self) -> str:
        """E.g. 'reproduced', 'inconclusive (needs 3 seeds)', 'inconclusive, smaller than the paper's'."""
        return (self.verdict + (f" ({self.reason})" if self.reason else "")
                + (f", {self.against_paper} than the paper's" if self.against_paper else ""))


def judge(paper: float, ours: Estimate, kind: str, min_seeds: int) -> Judgement:
    """The verdict on a claim of ``kind`` (WITHIN / BETWEEN) whose paper difference is ``paper``."""
    if ours.value is None:
        return Judgement(NOT_MEASURED)
    if kind == BETWEEN and ours.seeds < min_seeds:
        return Judgement(INCONCLUSIVE, f"needs {min_seeds} seeds")
    between, word = kind == BETWEEN, verdict(paper, ours)
    return Judgement(word, against_paper=against_paper(paper, ours) if word != CONTRADICTED else "",
                     power=power(paper, ours) if between else None, detectable=detectable(ours) if between else None)


def verdict_text(r) -> str:
    """A claims-frame row's verdict in words: 'reproduced', 'inconclusive (needs 3 seeds)', 'reproduced,
    smaller than the paper's' (Judgement.text): what the table, the report, the run's log and MLflow's tags say."""
    return Judgement(r["verdict"], r["reason"], r["against_paper"]).text


def claim_kind(study: Study, row: str, vs: str) -> str:
    """WITHIN where both rows (labels) read the same trained weights (the same trial and grid point), else
    BETWEEN."""
    rows = {r.label: r for r in study.table_layout.rows}
    a, b = rows[row], rows[vs]
    return WITHIN if (a.trial, a.where) == (b.trial, b.where) else BETWEEN


def _per_seed(row: Row, done: ResultSet, metric: str, scale: float):
    """A row's value per seed (its runs of that seed averaged, e.g. over a grid it spans) and, where every run
    has them, their replicates: (seeds (S,), values (S,), replicates (S, R) or None)."""
    mine = done.of_row(row)
    if metric not in mine or mine[metric].isna().all():
        return np.zeros(0, int), np.zeros(0), None
    mine = mine[mine[metric].notna()]
    variant, replicates = done.variant_of(row), done.replicates or {}
    seeds = np.array(sorted(mine["seed"].unique()))
    values = np.array([mine.loc[mine["seed"] == s, metric].mean() for s in seeds]) * scale
    reps = []
    for s in seeds:
        arrays = [replicates.get(run, {}).get(variant, {}).get(metric) for run in mine.loc[mine["seed"] == s, "run_id"]]
        if any(a is None for a in arrays):
            return seeds, values, None
        reps.append(np.mean(arrays, axis=0) * scale)
    return seeds, values, np.stack(reps)


def cell_estimate(study: Study, row: Row, column: str, results: ResultSet) -> Estimate:
    """One table cell: the row's mean over seeds (in the table's units) with its interval."""
    layout = study.table_layout
    _, values, reps = _per_seed(row, results.finished(), layout.metric(column), layout.scale)
    return estimate(values, reps)


def difference_estimate(study: Study, row: str, vs: str, column: str, results: ResultSet) -> Estimate:
    """Ours for row - vs on a column (row labels): over the seeds both have, paired by seed and by bootstrap
    replicate."""
    return metric_difference(study, row, vs, study.table_layout.metric(column), results)


def metric_difference(study: Study, row: str, vs: str, metric: str, results: ResultSet) -> Estimate:
    """difference_estimate on a metric as the evaluation names it (e.g. ``mAP85``, no column of its own)."""
    layout = study.table_layout
    rows = {r.label: r for r in layout.rows}
    done = results.finished()
    s_a, v_a, r_a = _per_seed(rows[row], done, metric, layout.scale)
    s_b, v_b, r_b = _per_seed(rows[vs], done, metric, layout.scale)
    common = np.intersect1d(s_a, s_b)
    ia, ib = np.searchsorted(s_a, common), np.searchsorted(s_b, common)
    reps = r_a[ia] - r_b[ib] if r_a is not None and r_b is not None else None
    return estimate(v_a[ia] - v_b[ib], reps)


CLAIM_COLUMNS = ["claim", "kind", "row", "vs", "metric", "paper", "ours", "lo", "hi", "seeds", "interval", "verdict",
                 "reason", "against_paper", "power", "detectable", "says"]


def claims_frame(launch: Launch, results: ResultSet) -> pd.DataFrame:
    """One row per claim of the study: its kind, the paper's difference, ours with its 95% interval (table units),
    the seeds it pairs, what the interval covers, the verdict and the rule that kept it inconclusive (``reason``:
    the profile's seed minimum), or why it was not measured (a row the profile does not train), how it stands
    against the paper's difference, and (between models) the power against the paper's difference and the
    smallest difference these seeds detect at 80% power."""
    study = launch.study
    rows = {r.label: r for r in study.table_layout.rows} if study.table_layout else {}
    trained = launch.spec.trials
    out = []
    for i, claim in enumerate(study.claims):
        ours = difference_estimate(study, claim.row, claim.vs, claim.metric, results)
        kind = claim_kind(study, claim.row, claim.vs)
        j = judge(claim.paper, ours, kind, launch.min_seeds)
        untrained = [rows[r].trial for r in (claim.row, claim.vs) if trained is not None and rows[r].trial not in trained]
        if j.verdict == NOT_MEASURED and untrained:
            j.reason = f"profile {launch.profile} does not train {', '.join(dict.fromkeys(untrained))}"
        out.append({"claim": i, "kind": kind, "row": claim.row, "vs": claim.vs, "metric": claim.metric,
                    "paper": claim.paper, "ours": ours.value, "lo": ours.lo, "hi": ours.hi, "seeds": ours.seeds,
                    "interval": ours.source, "verdict": j.verdict, "reason": j.reason,
                    "against_paper": j.against_paper, "power": j.power, "detectable": j.detectable,
                    "says": claim.says})
    return pd.DataFrame(out, columns=CLAIM_COLUMNS)


def effect_pairs(study: Study) -> list[tuple[str, str]]:
    """(row, baseline) label pairs whose effect the study reads: its claims' pairs, in order, then each layout
    row's ``baseline``."""
    pairs = [(c.row, c.vs) for c in study.claims]
    pairs += [(r.label, r.baseline) for r in (study.table_layout.rows if study.table_layout else []) if r.baseline]
    return list(dict.fromkeys(pairs))


def effects_frame(launch: Launch, results: ResultSet) -> pd.DataFrame:
    """Each change's effect against its baseline, per column: ours (row - vs, table units) with its 95%
    interval, the paper's (the rows' references), and where the paper gives a difference the verdict as the
    claims get it (``verdict``: Judgement.text, e.g. 'inconclusive (needs 3 seeds)')."""
    study = launch.study
    layout = study.table_layout
    refs = {r.label: r.reference for r in layout.rows}
    out = []
    for row, vs in effect_pairs(study):
        kind = claim_kind(study, row, vs)
        for column in layout.columns:
            ours = difference_estimate(study, row, vs, column, results)
            a, b = refs[row].get(column), refs[vs].get(column)
            paper = None if a is None or b is None else round(a - b, 6)
            word = judge(paper, ours, kind, launch.min_seeds).text if paper and ours.value is not None else ""
            out.append({"row": row, "vs": vs, "kind": kind, "column": column, "ours": ours.value, "lo": ours.lo,
                        "hi": ours.hi, "paper": paper, "seeds": ours.seeds, "interval": ours.source, "verdict": word})
    return pd.DataFrame(out, columns=["row", "vs", "kind", "column", "ours", "lo", "hi", "paper", "seeds", "interval",
                                      "verdict"])
