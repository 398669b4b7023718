"""Losing a node: a study on a real 2-node Ray cluster (ray.cluster_utils: a head holding no CPUs and two
worker nodes of one CPU each, each its own raylet) survives the worker node that its trial trains on being
killed mid-trial. Train restarts the worker on the node that is left, from the last epoch's checkpoint; the
study finishes with one MLflow run, every epoch logged once, and the metrics of a run that lost nothing."""
import os
import signal
import subprocess
import sys

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import TRIAL_PROCESS
from platform_helpers import ablab_env, local_store, logged_epochs, study_runs, wait_until, write_study

pytestmark = pytest.mark.slow
EPOCHS = 4


def _trial_run(out, study):
    (run,) = study_runs(local_store(out, study), study, "trial")[1]
    return run


def _train_here(study_path):
    """The study's one trial trained and evaluated in this process: its final metrics under MLflow's names, and
    its per-epoch losses."""
    from ablab.naming import metric_key
    from ablab.launch import open_launch, plan_study
    from detector.engine import evaluate, train

    import torch

    (cfg,) = plan_study(open_launch(str(study_path), "smoke")).configs.values()
    cfg.train.threads = 1
    threads = torch.get_num_threads()
    try:
        state = train(cfg, log=lambda m: None)
        result = evaluate(state.model, cfg, precision=state.precision, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    metrics = {metric_key(*k.rsplit("/", 1)): v for k, v in result.metrics.items()}
    return metrics, [h["loss"] for h in state.history]


def _train_worker_node(cluster, executor):
    """The cluster node whose raylet started the (one) process the trial trains in."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.worker_nodes}
    for proc in psutil.process_iter(["cmdline"]):
        if TRIAL_PROCESS[executor] in " ".join(proc.info["cmdline"] or []):
            for parent in proc.parents():
                if parent.pid in raylets:
                    return raylets[parent.pid]
    return None


def test_a_study_survives_losing_the_node_its_trial_trains_on(synthetic_root, tmp_path, monkeypatch, executor):
    from ray.cluster_utils import Cluster

    def study(name):
        return write_study(tmp_path / f"{name}.yaml", synthetic_root, epochs=EPOCHS, max_images=16, layout=None,
                           trials=[{"name": "iou", "set": {"model.quality.branch": "iou", "train.precision": "fp32"}}],
                           resources={"workers": 1, "cpus_per_worker": 1, "max_failures": 2,
                                      "executor": executor})

    # The reference: the same trial's config trained and evaluated in this process, nothing lost (the trial
    # trains with cpus_per_worker threads: 1).
    reference = _train_here(study("reference"))

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        driver = subprocess.Popen([sys.executable, "-m", "ablab.cli", "run", str(study("node_loss")),
                                   "--address", cluster.address], env=ablab_env(tmp_path / "out"),
                                  stdout=subprocess.DEVNULL, stderr=open(tmp_path / "run.log", "w"), start_new_session=True)
        try:
            # Once an epoch is in MLflow, Train has registered that epoch's checkpoint.
            wait_until(lambda: logged_epochs(tmp_path / "out", "node_loss") or driver.poll() is not None,
                       600, "the trial's first epoch")
            assert driver.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            node = wait_until(lambda: _train_worker_node(cluster, executor), 30, "the trial's node")
            lost_at = max(logged_epochs(tmp_path / "out", "node_loss"))
            cluster.remove_node(node, allow_graceful=False)  # its raylet and every process of it, at once
            assert driver.wait(600) == 0, (tmp_path / "run.log").read_text()[-3000:]
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    finally:
        cluster.shutdown()

    run = _trial_run(tmp_path / "out", "node_loss")
    assert run.info.status == "FINISHED"
    assert lost_at < EPOCHS, "the node was lost after training had ended: nothing was tested"
    assert int(run.data.tags["ablab.resumed_at_epoch"]) >= lost_at  # restarted from a checkpoint, not from 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'node_loss' / 'mlflow.db'}")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1))  # every epoch exactly once
    # Resumed at an epoch boundary with that epoch's data order: the metrics of the run that lost nothing.
    metrics, losses = reference
    finals = {k: v for k, v in run.data.metrics.items()
              if not k.startswith(("train/", "val/")) and k != "eval_seconds"}  # the final evaluation's
    assert finals == pytest.approx(metrics, abs=0, rel=0, nan_ok=True)
    history = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert history == losses
