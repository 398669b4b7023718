"""Ray jobs against a real `ray start --head`, logging to a real `mlflow server` on 127.0.0.1."""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from platform_helpers import ablab_env, free_port, wait_for_http, write_study

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """An mlflow server and a Ray head (dashboard + job server), both on 127.0.0.1, torn down after."""
    tmp = tmp_path_factory.mktemp("services")
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # AF_UNIX socket paths must stay under 108 bytes
    mlflow_port, dash_port, gcs_port = free_port(), free_port(), free_port()
    env = ablab_env(tmp / "out", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
                               "--default-artifact-root", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(mlflow_port),
                               "--workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "mlflow.log", "w"))
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--port", str(gcs_port), "--num-cpus", "2",
                             "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                             "--temp-dir", ray_tmp], env=env, stdout=open(tmp / "ray.log", "w"),
                            stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{mlflow_port}/health", 90)
        wait_for_http(f"http://127.0.0.1:{dash_port}/api/version", 120)
        yield {"mlflow": f"http://127.0.0.1:{mlflow_port}", "ray": f"http://127.0.0.1:{dash_port}", "env": env, "tmp": tmp}
    finally:
        head.terminate()
        server.terminate()
        for p in (head, server):
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _working_dir(tmp: Path, data_root: Path, name: str) -> Path:
    """A checkout-like working dir holding the study, as a user's repo would."""
    wd = tmp / f"wd_{name}"
    (wd / "studies").mkdir(parents=True)
    write_study(wd / "studies" / f"{name}.yaml", data_root, trials=[{"name": "iou", "set": {"model.quality.branch": "iou"}}],
                layout=None)
    return wd


def _job_runs(services, study):
    client = MlflowClient(services["mlflow"])
    exp = client.get_experiment_by_name(f"ablab/{study}")
    assert exp is not None, f"no experiment for {study} on the mlflow server"
    return client.search_runs([exp.experiment_id])


def test_ray_job_submit_runs_a_study(services, synthetic_root):
    wd = _working_dir(services["tmp"], synthetic_root, "job_cli")
    r = subprocess.run(["ray", "job", "submit", "--address", services["ray"], "--working-dir", ".", "--",
                        "ablab", "run", "studies/job_cli.yaml", "--profile", "smoke"],
                       cwd=wd, capture_output=True, text=True, env=services["env"], timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = [j for j in JobSubmissionClient(services["ray"]).list_jobs() if "studies/job_cli.yaml" in j.entrypoint]
    assert len(jobs) == 1 and jobs[0].status == JobStatus.SUCCEEDED
    runs = _job_runs(services, "job_cli")
    trials = [x for x in runs if x.data.tags.get("ablab.role") == "trial"]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    assert "alpha_0.5/AP" in trials[0].data.metrics


def test_ablab_submit_fills_in_the_runtime_env_and_keeps_secrets_out_of_it(services, synthetic_root):
    """Submitted with a password in the environment and in the tracking URI: the job still logs to the
    server, and the password is nowhere the job API, its logs or its outputs show."""
    import json
    import urllib.request

    secret = "hunter2-s3cret"
    wd = _working_dir(services["tmp"], synthetic_root, "job_submit")
    env = {**services["env"], "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": secret}
    uri = services["mlflow"].replace("http://", f"http://alice:{secret}@")
    r = subprocess.run([sys.executable, "-m", "ablab.cli", "submit", "studies/job_submit.yaml", "--address", services["ray"],
                        "--tracking-uri", uri, "--wait"], cwd=wd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "SUCCEEDED" in r.stdout and "credentials are not sent with the job" in r.stdout
    trials = [x for x in _job_runs(services, "job_submit") if x.data.tags.get("ablab.role") == "trial"]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED"
    listing = subprocess.run(["ray", "job", "list", "--address", services["ray"]], capture_output=True, text=True,
                             env=services["env"], timeout=120)
    api = urllib.request.urlopen(f"{services['ray']}/api/jobs/", timeout=30).read().decode()
    assert "job_submit" in api and "PYTHONPATH" in api  # the runtime env is there, without the secret
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(services["ray"])
    job = next(j for j in client.list_jobs() if "studies/job_submit.yaml" in j.entrypoint)
    seen = {"ray job list": listing.stdout + listing.stderr, "GET /api/jobs/": api,
            "job logs": client.get_job_logs(job.submission_id), "submit output": r.stdout + r.stderr,
            "runtime env": json.dumps(job.runtime_env)}
    out_root = Path(services["env"]["ABLAB_OUTPUT_ROOT"])
    for path in (p for p in out_root.rglob("*") if p.is_file() and p.suffix in (".json", ".html", ".txt", ".log", ".csv")):
        seen[str(path)] = path.read_text(errors="replace")
    leaked = [where for where, text in seen.items() if secret in text]
    assert not leaked, f"the password appears in {leaked}"
    assert any("job_submit" in where and where.endswith("launch.json") for where in seen)  # outputs were checked


def test_ray_job_stop_stops_a_study_that_a_resume_job_finishes(services, synthetic_root):
    """`ray job stop` sends the study's driver SIGTERM (then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S, 45 s in
    `ablab submit`'s runtime env): the trials stop at their last checkpoint and their runs end KILLED with
    `ablab.interrupted`; an `ablab resume` job then finishes the study in the same runs."""
    import re
    import time

    from ray.job_submission import JobStatus, JobSubmissionClient

    wd = services["tmp"] / "wd_job_stop"
    (wd / "studies").mkdir(parents=True)
    write_study(wd / "studies" / "job_stop.yaml", synthetic_root, epochs=6, max_images=24, layout=None,
                trials=[{"name": "iou", "set": {"model.quality.branch": "iou"}}])
    r = subprocess.run([sys.executable, "-m", "ablab.cli", "submit", "studies/job_stop.yaml", "--address", services["ray"]],
                       cwd=wd, capture_output=True, text=True, env=services["env"], timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    job_id = re.search(r"submitted (\S+) to", r.stdout).group(1)
    client = JobSubmissionClient(services["ray"])
    mlflow = MlflowClient(services["mlflow"])

    def epochs() -> int:
        exp = mlflow.get_experiment_by_name("ablab/job_stop")
        runs = mlflow.search_runs([exp.experiment_id], "tags.`ablab.role` = 'trial'") if exp else []
        return len(mlflow.get_metric_history(runs[0].info.run_id, "train/loss")) if runs else 0

    deadline = time.time() + 600
    while epochs() < 1 and time.time() < deadline:
        assert client.get_job_status(job_id) in (JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(job_id)[-3000:]
        time.sleep(1)
    t0 = time.time()
    stop = subprocess.run(["ray", "job", "stop", "--address", services["ray"], job_id], capture_output=True, text=True,
                          env=services["env"], timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    while client.get_job_status(job_id) not in (JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED):
        assert time.time() - t0 < 120, "the stopped job never ended"
        time.sleep(0.5)
    assert client.get_job_status(job_id) == JobStatus.STOPPED and time.time() - t0 < 45
    logs = client.get_job_logs(job_id)
    assert "SIGTERM: stopping the trials" in logs, logs[-3000:]
    (trial,) = [x for x in _job_runs(services, "job_stop") if x.data.tags.get("ablab.role") == "trial"]
    assert trial.info.status == "KILLED" and trial.data.tags["ablab.interrupted"] == "true", logs[-3000:]

    r = subprocess.run(["ray", "job", "submit", "--address", services["ray"], "--working-dir", ".", "--",
                        "ablab", "resume", "studies/job_stop.yaml"],
                       cwd=wd, capture_output=True, text=True, env=services["env"], timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    runs = _job_runs(services, "job_stop")
    trials = [x for x in runs if x.data.tags.get("ablab.role") == "trial"]
    assert len(trials) == 1 and trials[0].info.status == "FINISHED" and "alpha_0.5/AP" in trials[0].data.metrics
    steps = [m.step for m in mlflow.get_metric_history(trials[0].info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 7))  # every epoch once, across the two jobs
