"""The A/A check: how often the verdict rule decides between two arms that are the same model.

It trains K seeds of one trial of a study's smoke profile (``ablab run`` of a copy of the study restricted to
that trial: real Ray, real MLflow), forms every pair of disjoint groups of ``n`` seeds (``n``: the study's seed
minimum), judges each pair as ablab judges a claim between models (ablab.evidence: the seed interval and the
val-image bootstrap, the seed minimum), and reports the rate of decided verdicts with its 95% binomial interval.
Target: at most 5%. It also prints the seed SD of each metric, what a study's power rests on, and the rate at
which the rule that judged on val images alone (one seed) would have decided.

    python bench/aa.py [--study studies/table5.yaml] [--trial retinanet_r50] [--seeds 12] [--per-arm N]
                       [--metrics mAP mAP90] [--out-root DIR]

The pairs share seeds (12 seeds give 2 fully disjoint pairs of 3 + 3 but 9240 overlapping ones), so the binomial
interval, which treats them as independent, is narrower than the truth; the rate itself is unbiased.
"""
from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))


def aa_study(study_path: Path, trial: str, seeds: int, folder: Path) -> Path:
    """A copy of the study with one trial, ``seeds`` seeds and no table, its paths made absolute."""
    from ablab.launch import open_launch

    launch = open_launch(study_path, "smoke")
    study, smoke = launch.study, launch.spec
    trained = launch.first_config(trial)
    if trained is None:
        raise SystemExit(f"bench/aa.py: {study_path}: its smoke profile does not train {trial!r}")
    data_root = study.path_of(trained.data.root)
    raw = yaml.safe_load(study_path.read_text())
    for key in ("layout", "claims"):
        raw.pop(key, None)
    raw["study"] = f"aa_{study.study}_{trial}"
    raw["trials"] = [t for t in raw["trials"] if t["name"] == trial]
    raw["profiles"] = {"smoke": {**{k: v for k, v in raw["profiles"]["smoke"].items() if k != "extends"},
                                 "base": {**smoke.base, "data": {**smoke.base.get("data", {}), "root": str(data_root)}},
                                 "seeds": list(range(seeds))}}
    for key in ("trials", "trial_seeds"):  # of the one trial kept: the seeds are the A/A set
        raw["profiles"]["smoke"].pop(key, None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{raw['study']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, default=REPO / "studies" / "table5.yaml")
    ap.add_argument("--trial", default="retinanet_r50")
    ap.add_argument("--seeds", type=int, default=12)
    ap.add_argument("--per-arm", type=int, default=None, help="seeds per arm (default: the study's seed minimum)")
    ap.add_argument("--metrics", nargs="+", default=None, help="default: the table's columns")
    ap.add_argument("--out-root", type=Path, default=REPO / "outputs")
    ap.add_argument("--no-train", action="store_true", help="judge the seeds an earlier run trained")
    args = ap.parse_args()

    import ablab
    from ablab.evidence import BETWEEN, INCONCLUSIVE, WITHIN, estimate, judge
    from ablab.paths import resolve_tracking_uri
    from ablab.launch import open_launch
    from ablab.store import replicates

    launch = open_launch(args.study, "smoke")
    study = launch.study
    n = args.per_arm or launch.min_seeds
    if args.seeds < 2 * n:
        ap.error(f"--seeds {args.seeds}: an A/A pair of {n} + {n} seeds needs at least {2 * n}")
    layout = study.table_layout
    columns = args.metrics or (layout.columns if layout else ["AP"])
    metrics = {c: layout.metric(c) if layout else c for c in columns}
    scale = layout.scale if layout else 100.0
    path = aa_study(args.study, args.trial, args.seeds, args.out_root / "aa")
    if not args.no_train:
        subprocess.run([sys.executable, "-m", "ablab.cli", "run", str(path), "--profile", "smoke", "--out-root",
                        str(args.out_root)], check=True)
    frame = ablab.results(str(path), profile="smoke", out_root=str(args.out_root))
    frame = frame[frame["status"] == "FINISHED"]
    variant = frame["variant"].iloc[0]
    frame = frame[frame["variant"] == variant].sort_values("seed")
    reps = replicates(frame, resolve_tracking_uri(str(frame["study"].iloc[0]), None, str(args.out_root)))
    seeds = frame["seed"].to_numpy()
    print(f"{args.trial} of {study.study} (smoke), variant {variant}: {len(seeds)} seeds, arms of {n} seeds")
    groups = list(itertools.combinations(range(len(seeds)), n))
    for column, metric in metrics.items():
        values = frame[metric].to_numpy() * scale
        boot = np.stack([reps[r][variant][metric] * scale for r in frame["run_id"]])  # (K, R)
        decided = naive = total = 0
        for a in groups:
            for b in groups:
                if a[0] >= b[0] or set(a) & set(b):
                    continue  # each unordered pair of disjoint groups once
                a_, b_ = list(a), list(b)
                ours = estimate(values[a_] - values[b_], boot[a_] - boot[b_])
                decided += judge(+1.0, ours, BETWEEN, n).verdict != INCONCLUSIVE
                one = estimate(values[a_[:1]] - values[b_[:1]], boot[a_[:1]] - boot[b_[:1]])
                naive += judge(+1.0, one, WITHIN, n).verdict != INCONCLUSIVE  # val images alone
                total += 1
        lo, hi = stats.binomtest(decided, total).proportion_ci(0.95, method="exact")
        print(f"  {column}: seeds {np.round(values, 1).tolist()}, SD {values.std(ddof=1):.2f}; "
              f"A/A decided {decided}/{total} = {decided / total:.1%} [{lo:.1%}, {hi:.1%}] (target <= 5%); "
              f"on val images alone (one seed each) {naive / total:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
