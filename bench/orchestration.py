"""Orchestration overhead of a study: wall time minus the trials' own compute, per trial.

Runs a 4-trial smoke study (tiny RetinaNet, synthetic data) with `ablab run` on an embedded local
Ray cluster, at concurrency 1 and 2, and reads each trial's compute (epoch training seconds +
evaluation seconds) back from MLflow. Prints, per concurrency:

    overhead per trial = (study wall time - sum of trial compute / concurrency) / trials

and, from Ray Train's controller logs of that run, the mean time Train spends starting each trial's worker
group (creating the worker actors, initialising the train context on them).

    python bench/orchestration.py [--trials 4] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from detector.data import write_synthetic


def study_yaml(path: Path, data_root: Path, trials: int, epochs: int, concurrency: int) -> Path:
    study = {
        "study": path.stem, "paper": "iou_aware", "table": "bench",
        "base": {"model": {"backbone": {"name": "resnet18", "pretrained": "none", "norm": "bn", "frozen_stages": 0},
                           "fpn_width": 32, "head": {"depth": 1, "width": 32, "norm": "gn"}},
                 "train": {"epochs": epochs, "batch_size": 4, "warmup_iters": 2}},
        "trials": [{"name": f"t{i}", "set": {"train.seed": i}} for i in range(trials)],
        "variants": ["cls"],
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": concurrency},
        "profiles": {"smoke": {"base": {"data": {"root": str(data_root), "short": 128, "long": 128, "max_images": 16}}}},
    }
    path.write_text(yaml.safe_dump(study))
    return path


def trial_compute(db: Path, study: str) -> list[float]:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(f"ablab/{study}")
    out = []
    for run in client.search_runs([exp.experiment_id], "tags.`ablab.role` = 'trial'"):
        train = sum(m.value for m in client.get_metric_history(run.info.run_id, "train/train_seconds"))
        out.append(train + run.data.metrics.get("eval_seconds", 0.0))
    return out


TRAIN_PHASES = {"worker actors created": "worker actors", "Train context initialized on workers": "train context",
                "Worker group startup completed": "worker group total"}


def train_phases(ray_session: Path) -> dict[str, float]:
    """Mean seconds per trial of Train's worker-group start phases, read from its controller logs."""
    seen: dict[str, list[float]] = {name: [] for name in TRAIN_PHASES.values()}
    for log in (ray_session / "logs" / "train").glob("ray-train-sys-controller-*.log"):
        for line in log.read_text().splitlines():
            try:
                message = json.loads(line)["message"]
            except (ValueError, KeyError):
                continue
            for phrase, name in TRAIN_PHASES.items():
                if m := re.search(rf"{phrase} in ([0-9.]+)s", message):
                    seen[name].append(float(m.group(1)))
    return {name: sum(v) / len(v) for name, v in seen.items() if v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_synthetic(tmp / "data", train=16, val=8, size=128, seed=0)
        for conc in (1, 2):
            name = f"overhead_c{conc}"
            study = study_yaml(tmp / f"{name}.yaml", data, args.trials, args.epochs, conc)
            env = {**os.environ, "ABLAB_OUTPUT_ROOT": str(tmp / "out"), "RAY_AUTH_MODE": "disabled"}
            env.pop("MLFLOW_TRACKING_URI", None)
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "ablab.cli", "run", str(study)], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(f"study failed:\n{r.stderr[-3000:]}")
            compute = trial_compute(tmp / "out" / name / "mlflow.db", name)
            overhead = (wall - sum(compute) / conc) / args.trials
            print(f"concurrency {conc}: {args.trials} trials, wall {wall:.1f}s (incl. process start and Ray startup), "
                  f"trial compute {sum(compute):.1f}s, overhead {overhead:.1f}s per trial")
            phases = train_phases(Path("/tmp/ray/session_latest").resolve())  # the embedded cluster just used
            print("    Ray Train worker-group start per trial: " + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))


if __name__ == "__main__":
    main()
