"""Orchestration overhead of a study, per trial: ablab against bare Ray doing the same training, one run.

Two cases, each a 4-trial smoke study (a tiny RetinaNet on synthetic data) run with `ablab run` on an
embedded local Ray cluster, and the same trials run by bare Ray on a cluster started by ablab's own
`start_ray` (same Ray settings), whose trials call the detector's engine directly (train, report every epoch,
evaluate) and nothing else (no MLflow, no checkpoints, no trial files):

  1 worker per trial, 2 at a time: ablab trains in the Tune trial's process (executor tune); bare Ray Tune
    runs a function trainable;
  2 workers per trial (DDP over gloo), 1 at a time: ablab's trial runs a Ray Train TorchTrainer; bare Ray
    Tune x Train runs a TorchTrainer per trial.

Prints for each, with the wall time of the trials (Tune's fit) and of the whole command (process start,
Ray start-up, everything up to exit):

    overhead per trial = (wall time - sum of trial compute / concurrency) / trials

with the trials' compute (training + evaluation seconds) read from each side's own reports, and the ratio
ablab / bare of the trials' wall time.

    python bench/orchestration.py [--trials 4] [--epochs 2]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


STUDY_MODEL = {"backbone": {"name": "resnet18", "pretrained": "none", "norm": "bn", "frozen_stages": 0},
               "fpn_width": 32, "head": {"depth": 1, "width": 32, "norm": "gn"}}
CASES = {"1 worker per trial, 2 at a time": (1, 2), "2 workers per trial (DDP), 1 at a time": (2, 1)}
"""case -> (workers per trial, concurrency)."""


def study_yaml(path: Path, data_root: Path, trials: int, epochs: int, workers: int, concurrency: int) -> Path:
    study = {
        "study": path.stem, "paper": "iou_aware", "table": "bench",
        "base": {"model": STUDY_MODEL, "train": {"epochs": epochs, "batch_size": 4, "warmup_iters": 2}},
        "trials": [{"name": f"t{i}", "set": {"train.seed": i}} for i in range(trials)],
        "variants": ["cls"],
        "resources": {"workers": workers, "cpus_per_worker": 1, "max_concurrent_trials": concurrency},
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


def _bare_config(params: dict, data_root: str, epochs: int, workers: int) -> dict:
    """The config ablab's trial would train: the study's model and data, as plain arguments."""
    return {"model": STUDY_MODEL, "data": {"root": data_root, "short": 128, "long": 128, "max_images": 16},
            "train": {"epochs": epochs, "batch_size": 4, "warmup_iters": 2, "seed": params["trial"], "threads": 1,
                      "val_every": 1},
            "inference": {"variants": [{"name": "cls", "combine": "cls"}]}}


def _train_and_report(config: dict, report) -> None:
    """The detector's engine, nothing else: train (reporting every epoch), evaluate, report the metrics."""
    from detector.config import parse_config
    from detector.engine import evaluate, train

    cfg = parse_config(config)
    state = train(cfg, on_epoch_end=lambda st, m: report(dict(m)), log=lambda m: None)
    t0 = time.perf_counter()
    if not torch_rank():
        metrics = evaluate(state.model, cfg, precision=state.precision, log=lambda m: None).metrics
        report({**metrics, "compute": sum(h["train_seconds"] for h in state.history) + time.perf_counter() - t0})
    else:
        report({})


def torch_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _bare_function_trial(params: dict, *, data_root: str, epochs: int) -> None:
    import ray.tune

    _train_and_report(_bare_config(params, data_root, epochs, 1), ray.tune.report)


def _bare_train_loop(config: dict) -> None:
    import ray.train

    _train_and_report(config, ray.train.report)


def _bare_train_trial(params: dict, *, data_root: str, epochs: int, storage: str) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(_bare_train_loop, train_loop_config=_bare_config(params, data_root, epochs, 2),
                 scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 run_config=ray.train.RunConfig(name=f"bare-{params['trial']}", storage_path=storage,
                                                callbacks=[TuneReportCallback()])).fit()


def bare_ray(trials: int, epochs: int, workers: int, concurrency: int, data_root: str, storage: str) -> None:
    """The same trials with nothing of ablab's (run in its own process by main); prints the trials' wall time
    and compute in the form ablab's summary line has the first."""
    from ablab.cluster import start_ray

    start_ray(None)  # before Ray is imported: it reads its settings once
    from ray import tune

    if workers == 1:
        trainable = tune.with_resources(tune.with_parameters(_bare_function_trial, data_root=data_root, epochs=epochs),
                                        {"CPU": 1})
    else:
        trainable = tune.with_resources(tune.with_parameters(_bare_train_trial, data_root=data_root, epochs=epochs,
                                                             storage=storage), {"CPU": 0, "memory": 1 << 20})
    tuner = tune.Tuner(trainable, param_space={"trial": tune.grid_search(list(range(trials)))},
                       tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=storage, name="bare", verbose=0))
    t0 = time.perf_counter()
    results = tuner.fit()
    compute = sum(r.metrics.get("compute", 0.0) for r in results)
    print(f"(trials {time.perf_counter() - t0:.1f}s) (compute {compute:.1f}s)", file=sys.stderr)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall time of the command, wall time of its trials as its summary line gives it, its stderr)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return wall, float(re.findall(r"\(trials ([0-9.]+)s\)", r.stderr)[-1]), r.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--bare", type=int, nargs=2, metavar=("WORKERS", "CONCURRENCY"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)  # the bare-Ray subprocess's
    ap.add_argument("--storage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:
        bare_ray(args.trials, args.epochs, *args.bare, args.data, args.storage)
        return
    # Imported here: the bare-Ray process above should not pay for them.
    from detector.data import write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_synthetic(tmp / "data", train=16, val=8, size=128, seed=0)
        env = {**os.environ, "ABLAB_OUTPUT_ROOT": str(tmp / "out"), "RAY_AUTH_MODE": "disabled"}
        env.pop("MLFLOW_TRACKING_URI", None)
        for n, (case, (workers, conc)) in enumerate(CASES.items()):
            name = f"overhead_{n}"
            study = study_yaml(tmp / f"{name}.yaml", data, args.trials, args.epochs, workers, conc)
            ours = timed([sys.executable, "-m", "ablab.cli", "run", str(study)], env)
            compute = sum(trial_compute(tmp / "out" / name / "mlflow.db", name)) / conc
            bare = timed([sys.executable, __file__, "--trials", str(args.trials), "--epochs", str(args.epochs),
                          "--bare", str(workers), str(conc), "--data", str(data), "--storage", str(tmp / f"bare_{n}")], env)
            bare_compute = float(re.findall(r"\(compute ([0-9.]+)s\)", bare[2])[-1]) / conc
            print(f"{case}: {args.trials} trials of {args.epochs} epochs; compute ablab {compute * conc:.1f}s, "
                  f"bare {bare_compute * conc:.1f}s")
            for what, i in (("whole command", 0), ("trials only", 1)):
                a, b = (ours[i] - compute) / args.trials, (bare[i] - bare_compute) / args.trials
                print(f"    {what + ':':<15} overhead per trial: ablab {a:5.1f}s (wall {ours[i]:5.1f}s), bare Ray "
                      f"{b:5.1f}s (wall {bare[i]:5.1f}s); ablab / bare wall {ours[i] / bare[i]:.2f}")


if __name__ == "__main__":
    main()
