"""Submitting a study as a Ray job, with its runtime environment filled in."""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Optional

from detector.config import ConfigError

from .paths import adopt_credentials
from .preflight import check_tracking_uri
from .launch import Launch, Plan, plan_study
from .trial import TRAIN_ENV

# Environment that a study's job needs from the submitting machine when set there. Never credentials: a job's
# runtime env is shown by `ray job list` and the dashboard's job API. The job takes MLFLOW_TRACKING_USERNAME /
# MLFLOW_TRACKING_PASSWORD from the cluster's own environment (that of `ray start` on each node).
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "ABLAB_OUTPUT_ROOT", "ABLAB_COCO_ROOT", "ABLAB_VOC_ROOT")
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def runtime_env(working_dir: str, tracking_uri: Optional[str], pip: list[str]) -> dict:
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if tracking_uri or "MLFLOW_TRACKING_URI" in env_vars:
        env_vars["MLFLOW_TRACKING_URI"] = adopt_credentials(tracking_uri or env_vars["MLFLOW_TRACKING_URI"])
    # The job's working dir is a copy of this checkout: import its detector/ and platform/ablab/ first.
    env_vars["PYTHONPATH"] = os.pathsep.join(["platform", "."] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    for k, v in TRAIN_ENV.items():
        env_vars.setdefault(k, v)
    # `ray job stop` sends SIGTERM, on which the study stops at its trials' checkpoints (ablab.runner), then
    # SIGKILL after this many seconds (Ray's default, 3, is too short for that).
    env_vars.setdefault("RAY_JOB_STOP_WAIT_TIME_S", "45")
    env: dict = {"working_dir": working_dir, "env_vars": env_vars,
                 "excludes": ["outputs/", "runs/", "data/", ".git/", "*.db", "**/__pycache__/"]}
    if pip:
        env["pip"] = pip
    return env


def entrypoint(study: str, plan: Plan, allow_large_grid: bool, seeds: Optional[int]) -> str:
    """The job's command: ``ablab run`` of ``study`` (relative to the working dir) with the plan's launch (its
    profile and ``--set`` overrides, as parse_sets reads them back) and flags, quoted for the job's shell."""
    command = f"python -m ablab.cli run {shlex.quote(study)} {plan.args}"
    if allow_large_grid:
        command += " --allow-large-grid"
    if seeds is not None:
        command += f" --seeds {int(seeds)}"
    return command


def submit(launch: Launch, address: str, tracking_uri: Optional[str], working_dir: str, pip: list[str],
           wait: bool, allow_large_grid: bool = False, seeds: Optional[int] = None) -> int:
    """Validate the launch here (its data and weights are the cluster's to check; the caller checked the job
    server at ``address``), then submit its run."""
    study_path = launch.study_path
    plan = plan_study(launch, check_data=False, allow_large_grid=allow_large_grid, seeds=seeds)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        check_tracking_uri(adopt_credentials(uri), "--tracking-uri" if tracking_uri else "MLFLOW_TRACKING_URI")
    from ray.job_submission import JobStatus, JobSubmissionClient

    rel = os.path.relpath(Path(study_path).resolve(), Path(working_dir).resolve())
    if rel.startswith(".."):
        raise ConfigError(f"study {study_path} must live inside the working dir {working_dir}")
    command = entrypoint(rel, plan, allow_large_grid, seeds)
    env = runtime_env(working_dir, tracking_uri, pip)
    if any(os.environ.get(k) for k in CREDENTIAL_ENV):
        print("note: MLflow credentials are not sent with the job (its runtime env is readable through the job API); "
              "the job uses MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD from the cluster nodes' environment")
    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=command, runtime_env=env)
    print(f"submitted {job_id} to {address}: {command}")
    print(f"follow: ray job logs --address {address} --follow {job_id}")
    if not wait:
        return 0
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while (status := client.get_job_status(job_id)) not in terminal:
        time.sleep(2)
    print(client.get_job_logs(job_id), end="")
    print(f"job {job_id}: {status}")
    return 0 if status == JobStatus.SUCCEEDED else 1
