"""Orchestration overhead of a study, per trial: ablab against bare Ray Tune x Ray Train, one run.

Runs a 4-trial smoke study (tiny RetinaNet, synthetic data) with `ablab run` on an embedded local Ray
cluster, at concurrency 1 and 2, and reads each trial's compute (epoch training seconds + evaluation
seconds) back from MLflow. Then runs the same grid as bare Ray: a Tune trial driver per trial building a
TorchTrainer whose loop only reports as often as a smoke trial does (two epochs + the final result), on a
cluster started by ablab's own `start_ray` (same Train settings). Prints, per concurrency, for ablab and
for bare Ray (whose trials compute nothing):

    overhead per trial = (wall time - sum of trial compute / concurrency) / trials

with the wall time of the whole command (process start, Ray startup, everything up to exit) and of the
trials alone (Tune's fit: what a study costs on a running cluster); their difference is what ablab itself
adds (planning, MLflow, detector imports, checkpoints, the report). Also, from Ray Train's controller logs
of the ablab run, the mean time Train spends starting each trial's worker group.

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
    from mlflow.tracking import MlflowClient

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


def _reporting_loop(config: dict) -> None:
    import ray.train

    for epoch in range(config["reports"]):
        ray.train.report({"epoch": float(epoch)})


def _bare_trial(params: dict, *, storage: str, reports: int) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(_reporting_loop, train_loop_config={"reports": reports},
                 scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
                 run_config=ray.train.RunConfig(name=f"bare-{params['trial']}", storage_path=storage,
                                                callbacks=[TuneReportCallback()])).fit()


def bare_ray(trials: int, reports: int, concurrency: int, storage: str) -> None:
    """The same grid with nothing of ablab's in the trials (run in its own process by main); prints the
    trials' wall time in the form ablab's summary line has it."""
    from ablab.runner import start_ray

    start_ray(None)  # before Ray is imported: it reads its settings once
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(_bare_trial, storage=storage, reports=reports),
                                    {"CPU": 0, "memory": 1 << 20})
    tuner = tune.Tuner(trainable, param_space={"trial": tune.grid_search(list(range(trials)))},
                       tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=storage, name="bare", verbose=0))
    t0 = time.perf_counter()
    tuner.fit()
    print(f"(trials {time.perf_counter() - t0:.1f}s)", file=sys.stderr)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall time of the command, wall time of its trials as its summary line gives it)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return wall, float(re.findall(r"\(trials ([0-9.]+)s\)", r.stderr)[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--bare", type=int, metavar="CONCURRENCY", help=argparse.SUPPRESS)  # the bare-Ray subprocess
    ap.add_argument("--storage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        bare_ray(args.trials, args.epochs + 1, args.bare, args.storage)
        return
    # Imported here: the bare-Ray process above should not pay for them.
    from detector.data import write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_synthetic(tmp / "data", train=16, val=8, size=128, seed=0)
        env = {**os.environ, "ABLAB_OUTPUT_ROOT": str(tmp / "out"), "RAY_AUTH_MODE": "disabled"}
        env.pop("MLFLOW_TRACKING_URI", None)
        for conc in (1, 2):
            name = f"overhead_c{conc}"
            study = study_yaml(tmp / f"{name}.yaml", data, args.trials, args.epochs, conc)
            ours = timed([sys.executable, "-m", "ablab.cli", "run", str(study)], env)
            compute = sum(trial_compute(tmp / "out" / name / "mlflow.db", name)) / conc
            phases = train_phases(Path("/tmp/ray/session_latest").resolve())  # the embedded cluster just used
            bare = timed([sys.executable, __file__, "--trials", str(args.trials), "--epochs", str(args.epochs),
                          "--bare", str(conc), "--storage", str(tmp / f"bare_c{conc}")], env)
            print(f"concurrency {conc}: {args.trials} trials, their compute {compute * conc:.1f}s")
            for what, i in (("whole command", 0), ("trials only", 1)):
                a, b = (ours[i] - compute) / args.trials, bare[i] / args.trials
                print(f"    {what + ':':<15} ablab {a:5.1f}s per trial (wall {ours[i]:5.1f}s), bare Ray Tune x Train "
                      f"{b:5.1f}s (wall {bare[i]:5.1f}s); ablab's own share {a - b:4.1f}s per trial")
            print("    Ray Train worker-group start per trial (ablab run): "
                  + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))


if __name__ == "__main__":
    main()
