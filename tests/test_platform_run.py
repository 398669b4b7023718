"""A real study end to end: local Ray cluster, Ray Tune x Ray Train, MLflow (SQLite), results()."""
import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from detector.precision import hardware_summary, resolve_precision

from platform_helpers import ablab_env, run_cli, run_watching_listeners, write_study

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_study(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    study = write_study(tmp / "two_trials.yaml", synthetic_root)
    env = ablab_env(tmp / "out")
    home_token = Path.home() / ".ray" / "auth_token"
    before = home_token.read_text() if home_token.is_file() else None
    r, listeners, unauthenticated = run_watching_listeners(
        [sys.executable, "-m", "ablab.cli", "run", str(study), "--profile", "smoke"], env)
    after = home_token.read_text() if home_token.is_file() else None
    return study, tmp / "out", env, r, (listeners, unauthenticated, before == after)


def _loopback(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    return (addr.ipv4_mapped or addr).is_loopback if addr.version == 6 else addr.is_loopback


def test_the_embedded_cluster_listens_on_loopback_only_with_token_auth(finished_study):
    study, out, env, r, (listeners, unauthenticated, home_token_unchanged) = finished_study
    assert r.returncode == 0, r.stderr[-3000:]
    names = {name for name, _, _ in listeners}
    # GCS, raylet, the dashboard and its agent, and the trials' workers were all seen listening.
    assert {"gcs_server", "raylet"} <= names and len(listeners) >= 6, listeners
    exposed = {x for x in listeners if not _loopback(x[1])}
    assert not exposed, f"listening beyond loopback: {sorted(exposed)}"
    # Token auth was on (though the environment said RAY_AUTH_MODE=disabled): the dashboard refused a request
    # without the launch's token, and no token was left behind for a later `ray start` to pick up.
    assert env["RAY_AUTH_MODE"] == "disabled" and unauthenticated == {401}, unauthenticated
    assert home_token_unchanged
    # The launch's Ray folder (its token, sockets and Ray's logs) went with the cleanly finished study.
    ray_files = Path(re.search(r"its files in (/tmp/ablab-ray-\S+)\)", r.stderr).group(1))
    assert not ray_files.exists() and "logs are kept" not in r.stderr


def test_two_trial_study_runs_and_is_tracked(finished_study):
    study, out, env, r, _ = finished_study
    assert r.returncode == 0, r.stderr[-3000:]
    assert "browse: mlflow ui --backend-store-uri sqlite:///" in r.stderr
    client = MlflowClient(f"sqlite:///{out / 'two_trials' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ablab/two_trials")
    assert "paper iou_aware, table test" in exp.tags["mlflow.note.content"] and "profile smoke" in exp.tags["mlflow.note.content"]
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if x.data.tags.get("ablab.role") == "launch"]
    children = [x for x in runs if x.data.tags.get("ablab.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(x.info.status == "FINISHED" for x in runs)
    iou = next(c for c in children if c.data.tags["ablab.trial"] == "iou")
    assert iou.data.params["model.quality.branch"] == '"iou"'  # params are JSON: read back typed, never guessed
    assert iou.data.tags["ablab.profile"] == "smoke" and iou.data.tags["ablab.study"] == "two_trials"
    # precision: auto, resolved by the trial's worker on this machine, is told apart in MLflow.
    auto = resolve_precision("auto", torch.device("cpu")).name
    assert iou.data.params["train.precision"] == '"auto"' and iou.data.tags["ablab.precision"] == auto
    assert iou.data.tags["ablab.hardware"] == hardware_summary(torch.device("cpu"))
    assert "alpha_0.5/AP75" in iou.data.metrics and "cls/AP" in iou.data.metrics
    assert [m.step for m in client.get_metric_history(iou.info.run_id, "train/loss")] == [1]
    artifacts = {a.path for a in client.list_artifacts(iou.info.run_id)}
    assert {"config.json", "metrics.json", "detections", "model.pt"} <= artifacts
    submitted = {a.path for a in client.list_artifacts(iou.info.run_id, "detections")}
    assert submitted == {"detections/alpha_0.5.json", "detections/cls.json"}  # one COCO results file per variant
    registry = json.loads((out / "two_trials" / "smoke" / "mlflow_runs.json").read_text())
    assert set(registry["trials"].values()) == {c.info.run_id for c in children}


def test_results_round_trip_and_parquet(finished_study, tmp_path):
    import ablab

    study, out, env, r, _ = finished_study
    df = ablab.results("two_trials", profile="smoke", out_root=str(out))
    assert len(df) == 3  # baseline: cls only (no quality branch); iou: cls and alpha=0.5
    assert set(df["variant"]) == {"cls", "alpha=0.5"}
    assert set(df["precision"]) == {resolve_precision("auto", torch.device("cpu")).name}
    assert {"AP", "AP50", "AP90", "model.quality.branch", "train.epochs"} <= set(df.columns)
    assert df["train.epochs"].dtype.kind == "i"  # params typed back from MLflow's strings
    metrics = json.loads((out / "two_trials" / "smoke" / "trials" / "iou_seed0" / "metrics.json").read_text())
    row = df[(df.trial == "iou") & (df.variant == "alpha=0.5")].iloc[0]
    assert row["AP"] == pytest.approx(metrics["alpha=0.5/AP"])
    only_iou = ablab.results(str(study), profile="smoke", out_root=str(out), **{"model.quality.branch": "iou"})
    assert set(only_iou["trial"]) == {"iou"}
    pq = tmp_path / "res.parquet"
    r = run_cli("results", str(study), "--profile", "smoke", "--parquet", str(pq), env=env)
    assert r.returncode == 0, r.stderr
    back = pd.read_parquet(pq)
    assert len(back) == 3 and back["AP"].tolist() == pytest.approx(df["AP"].tolist())


def test_validate_checks_without_running(finished_study, tmp_path, synthetic_root):
    study, out, env, _, _ = finished_study
    r = run_cli("validate", str(study), "--profile", "smoke", env=env, timeout=120)
    assert r.returncode == 0 and "2 trials" in r.stdout
    bad = write_study(tmp_path / "bad.yaml", tmp_path / "missing_root_does_not_get_made" / "x",
                      trials=[{"name": "a", "set": {"model.quality.brnch": "iou"}}], layout=None)
    r = run_cli("validate", str(bad), "--profile", "smoke", env=env, timeout=120)
    assert r.returncode == 2 and "model.quality.brnch" in r.stderr


def test_a_trial_trains_with_ddp_over_two_workers_each_on_its_shard_on_loopback(synthetic_root, tmp_path):
    study = write_study(tmp_path / "ddp.yaml", synthetic_root, max_images=16, layout=None,
                        trials=[{"name": "iou", "set": {"model.quality.branch": "iou"}}],
                        resources={"workers": 2, "cpus_per_worker": 1})
    r, listeners, _ = run_watching_listeners([sys.executable, "-m", "ablab.cli", "run", str(study)],
                                             ablab_env(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rank 0/2: 8 of 16 images" in r.stderr and "rank 1/2: 8 of 16 images" in r.stderr
    # torch.distributed's store and gloo's pairs too stay on 127.0.0.1 (ablab.loopback)
    workers = {x for x in listeners if x[0].startswith("ray::RayTrainWorker")}
    assert workers and all(_loopback(ip) for _, ip, _ in listeners), sorted(listeners)


def test_table_is_rebuilt_from_mlflow(finished_study):
    import ablab

    study, out, env, _, _ = finished_study
    r = run_cli("table", str(study), "--profile", "smoke", "--out-root", str(out), env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    df = ablab.results("two_trials", profile="smoke", out_root=str(out))
    ap = df[(df.trial == "iou") & (df.variant == "alpha=0.5")].iloc[0]["AP"] * 100
    line = next(l for l in r.stdout.splitlines() if l.startswith("| IoU-aware"))
    # ours±interval / paper, no delta: the smoke profile is not the paper's setting (the effects compare)
    assert f"| {ap:.1f}±" in line and " / 35.5 |" in line and "(-" not in line and "(+" not in line
    # A profile that has not run yet: one line that says so, not a KeyError.
    r = run_cli("table", str(study), "--profile", "other", "--out-root", str(out), env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"ablab: error: {study}: no runs of profile 'other' in MLflow yet; `ablab run {study} --profile other` makes them"]
