"""Ray jobs against the README's `ray start --head`, with the README's job lines run as written; some jobs log to a
real `mlflow server` on 127.0.0.1."""
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from platform_helpers import (MlflowServer, ablab_env, free_port, local_store, readme_block, readme_line, study_runs,
                              wait_for_http, write_study)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
JOBS = readme_block("Ray clusters and jobs")
HEAD = readme_line(JOBS, "ray start --head")
DASHBOARD, GCS = "http://127.0.0.1:8265", 6379
"""What `ray start --head` listens on by default: the README's job lines name the dashboard."""


def port_taken(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """An mlflow server, and the README's Ray head: its `ray start --head` line as written, in the foreground
    (`--block`), on 2 CPUs, with its own temp folder and, where another Ray on this machine holds the default
    ports, on free ones. The head has HOME in a temporary folder, so that a job's default outputs (~/ablab-outputs)
    land there, and no tracking URI: a plain job logs to its default store. ``env`` is the user's shell (that
    HOME, no tracking URI, no output root); ``server_env`` adds the server's URI."""
    tmp = tmp_path_factory.mktemp("services")
    home = tmp / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # AF_UNIX socket paths must stay under 108 bytes
    env = {**ablab_env(tmp), "HOME": str(home)}
    env.pop("ABLAB_OUTPUT_ROOT")
    server = MlflowServer(tmp, env=env, start_timeout=90)
    server_env = {**env, "MLFLOW_TRACKING_URI": server.uri}
    dashboard, ports = DASHBOARD, ["--dashboard-agent-listen-port", str(free_port())]
    if port_taken(8265) or port_taken(GCS):  # someone else's Ray: ours moves, and the job lines follow it
        dash_port = free_port()
        dashboard, ports = f"http://127.0.0.1:{dash_port}", ports + ["--port", str(free_port()), "--dashboard-port", str(dash_port)]
    head = subprocess.Popen(shlex.split(HEAD.split("#")[0]) + ["--block", "--num-cpus", "2", "--temp-dir", ray_tmp, *ports],
                            env=env, stdout=open(tmp / "ray.log", "w"), stderr=subprocess.STDOUT)
    try:
        server.start()
        wait_for_http(f"{dashboard}/api/version", 120)
        yield {"mlflow": server.uri, "ray": dashboard, "env": env, "server_env": server_env,
               "tmp": tmp, "home": home}
    finally:
        head.terminate()
        if server.proc is not None:
            server.stop()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _working_dir(tmp: Path, data_root: Path, name: str) -> Path:
    """A checkout-like working dir holding the study, as a user's repo would."""
    wd = tmp / f"wd_{name}"
    (wd / "studies").mkdir(parents=True)
    write_study(wd / "studies" / f"{name}.yaml", data_root, trials=[{"name": "iou", "set": {"model.quality.branch": "iou"}}],
                layout=None)
    return wd


def _job_runs(services, study):
    runs = study_runs(services["mlflow"], study)[1]
    assert runs, f"no runs of {study} on the mlflow server"
    return runs


def test_the_readme_s_job_lines_keep_their_results_for_the_checkout(services, synthetic_root):
    """The README's job lines after `ray start`, as written, in order, in a checkout whose studies/table3.yaml is
    the suite's tiny two-trial study: the job writes to ~/ablab-outputs (not its temporary working dir) and its log
    says so; `ablab table` and `ablab.results()` in the checkout read it from there; a resume job finds it."""
    wd = services["tmp"] / "checkout"
    (wd / "studies").mkdir(parents=True)
    write_study(wd / "studies" / "table3.yaml", synthetic_root)
    done = {}
    for line in JOBS[1:]:
        done[line] = subprocess.run(["bash", "-c", line.replace(DASHBOARD, services["ray"])], cwd=wd, capture_output=True,
                                    text=True, env=services["env"], timeout=900)
        assert done[line].returncode == 0, f"README: {line}\n{(done[line].stdout + done[line].stderr)[-3000:]}"
    run, table, frame, resume = (done[line] for line in JOBS[1:])
    root = services["home"] / "ablab-outputs"
    assert (root / "table3" / "mlflow.db").is_file() and (root / "table3" / "smoke" / "launch.json").is_file()
    assert not (wd / "outputs").exists()
    assert "its working dir" in run.stdout and f"are in {root}" in run.stdout, run.stdout[-3000:]
    assert f"reading table3 from {root}" in table.stderr
    assert "| RetinaNet" in table.stdout and "| IoU-aware" in table.stdout
    assert "baseline" in frame.stdout and "iou" in frame.stdout
    assert "2 ok, 0 failed" in resume.stdout, resume.stdout[-3000:]
    runs = study_runs(local_store(root, "table3"), "table3")[1]
    roles = sorted(r.data.tags["ablab.role"] for r in runs)
    assert roles == ["launch", "trial", "trial"] and all(r.info.status == "FINISHED" for r in runs)  # resumed, not re-run


def test_ablab_submit_fills_in_the_runtime_env_and_keeps_secrets_out_of_it(services, synthetic_root):
    """Submitted with a password in the environment and in the tracking URI: the job still logs to the
    server, and the password is nowhere the job API, its logs or its outputs show."""
    import json
    import urllib.request

    secret = "hunter2-s3cret"
    wd = _working_dir(services["tmp"], synthetic_root, "job_submit")
    env = {**services["server_env"], "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": secret}
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
    out_root = services["home"] / "ablab-outputs"  # a job's default, as for a plain `ray job submit`
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
                       cwd=wd, capture_output=True, text=True, env=services["server_env"], timeout=300)
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
