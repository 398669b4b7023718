"""Soak: a study of many short trials on a long-lived Ray cluster, and what it leaves behind.

Starts `ray start --head` (2 CPUs, loopback), runs `ablab run --address` on a study of N one-epoch trials of
the tiny smoke model (1 worker x 1 CPU, 2 at a time), samples the driver's resident memory every 0.5 s, and
then asks the cluster (Ray's state API) what is still alive: actors, placement groups, worker processes.
Checks the MLflow store: one run per trial, every run FINISHED. Prints the figures.

    python bench/soak.py [--trials 40]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from platform_helpers import free_port  # noqa: E402


def study_yaml(path: Path, data_root: Path, trials: int) -> Path:
    from conftest import smoke_model

    study = {
        "study": path.stem, "paper": "iou_aware", "table": "soak",
        "base": {"model": smoke_model(fpn_width=32, head={"depth": 1, "width": 32}, anchor_scale=4.0),
                 "train": {"epochs": 1, "batch_size": 4, "warmup_iters": 2}},
        "trials": [{"name": f"t{i}", "set": {"train.seed": i}} for i in range(trials)],
        "variants": ["cls"],
        "resources": {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 2},
        "profiles": {"smoke": {"base": {"data": {"root": str(data_root), "short": 128, "long": 128, "max_images": 8}}}},
    }
    path.write_text(yaml.safe_dump(study))
    return path


def sample_rss(pid: int, samples: list[tuple[float, int]], stop: threading.Event) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            samples.append((time.monotonic(), proc.memory_info().rss))
        except psutil.Error:
            return
        time.sleep(0.5)


def leftovers(address: str) -> dict[str, list[str]]:
    """What the cluster still holds: alive actors (by class), placement groups not removed, live worker
    processes (those that are not an alive actor's)."""
    from ray.util.state import list_actors, list_placement_groups, list_workers

    actors = [a for a in list_actors(address=address, limit=10_000) if a.state != "DEAD"]
    pgs = [p for p in list_placement_groups(address=address, limit=10_000) if p.state != "REMOVED"]
    actor_pids = {a.pid for a in actors}
    workers = [w for w in list_workers(address=address, limit=10_000)
               if w.is_alive and w.worker_type == "WORKER" and w.pid not in actor_pids]
    return {"alive actors": sorted(f"{a.class_name} ({a.state})" for a in actors),
            "placement groups not removed": sorted(f"{p.name or p.placement_group_id} ({p.state})" for p in pgs),
            "idle worker processes": [str(w.pid) for w in workers]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    args = ap.parse_args()
    from detector.data import write_synthetic
    from mlflow.tracking import MlflowClient

    tmp = Path(tempfile.mkdtemp(prefix="ablab-soak-"))
    data = write_synthetic(tmp / "data", train=40, val=16, size=128, seed=3)
    study = study_yaml(tmp / "soak.yaml", data, args.trials)
    port, dash = free_port(), free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "ABLAB_OUTPUT_ROOT": str(tmp / "out")}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run(["ray", "start", "--head", "--port", str(port), "--num-cpus", "2", "--node-ip-address", "127.0.0.1",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--temp-dir", ray_tmp],
                   env=env, check=True, capture_output=True)
    address = f"127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        driver = subprocess.Popen([sys.executable, "-m", "ablab.cli", "run", str(study), "--address", address],
                                  env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "run.log", "w"))
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_rss, args=(driver.pid, samples, stop))
        sampler.start()
        rc = driver.wait()
        wall = time.monotonic() - t0
        stop.set()
        sampler.join()
        log = (tmp / "run.log").read_text()
        if rc != 0:
            sys.exit(f"ablab run exited {rc}: {log[-3000:]}")
        time.sleep(10)  # actors and worker processes exit asynchronously after the driver
        left = leftovers(address)
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True)

    client = MlflowClient(f"sqlite:///{tmp / 'out' / 'soak' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ablab/soak").experiment_id], max_results=10_000)
    trials = [r for r in runs if r.data.tags.get("ablab.role") == "trial"]
    keys = {r.data.tags["ablab.trial_key"] for r in trials}
    # The driver's memory once the first trials have run (Ray and MLflow imported, the store open) and at the end.
    warm = next((rss for t, rss in samples if t - t0 > wall * 0.1), samples[0][1])
    print(f"{args.trials} trials of one epoch on 2 cores: wall {wall:.0f} s ({wall / args.trials:.1f} s per trial, "
          f"2 at a time)")
    print(f"driver memory: {warm / 2**20:.0f} MiB after 10% of the wall, {samples[-1][1] / 2**20:.0f} MiB at the end, "
          f"peak {max(r for _, r in samples) / 2**20:.0f} MiB: growth {(samples[-1][1] - warm) / 2**20:+.0f} MiB "
          f"({(samples[-1][1] - warm) / 2**10 / args.trials:+.0f} KiB per trial)")
    print("left on the cluster 10 s after the study: " + "; ".join(f"{k}: {len(v)} {v[:6]}" for k, v in left.items()))
    print(f"MLflow: {len(trials)} trial runs for {len(keys)} trials; statuses "
          f"{sorted({r.info.status for r in runs})}; launch runs {len(runs) - len(trials)}")
    # Ray's own detached singletons live as long as the cluster by design (Train's state actor serves the
    # dashboard; Ray Data's autoscaling coordinator, which Train V2 uses, is one per cluster): not leaks.
    leaked = [a for a in left["alive actors"] if not a.startswith(("TrainStateActor", "_AutoscalingCoordinatorActor"))]
    ok = (len(trials) == len(keys) == args.trials and {r.info.status for r in runs} == {"FINISHED"}
          and not leaked and not left["placement groups not removed"])
    print("consistent" if ok else "NOT consistent")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
