"""Where ablab writes, and which names may become part of a path. No Ray, no MLflow.

Study ids, profile names and trial names become folders under the output root; they match NAME (letters,
digits, ``._-``, no leading dot), so ``..``, ``/`` and absolute paths are refused when the study is read.
Every folder ablab writes for a study is then built by ``under``, which checks once more that it resolves
inside the output root.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlsplit, urlunsplit

from detector.config import ConfigError

from .logs import log, setup_logging
from .naming import launch_key

NAME = r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$"
_NAME = re.compile(NAME)


def check_name(field: str, value: str) -> str:
    """``value`` if it is a safe name, else a ConfigError that names the field and the value."""
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > 128:
        raise ConfigError(f"{field}: {value!r} is not a valid name (letters, digits, '.', '_', '-'; "
                          f"no leading dot; at most 128 characters)")
    return value


JOB_OUTPUT_ROOT = "~/ablab-outputs"
"""Where a Ray job's outputs go by default: its working dir is a temporary copy that Ray deletes."""
JOB_ENV = ("RAY_JOB_CONFIG_JSON_ENV_VAR", "RAY_JOB_SUBMISSION_ID")
"""Set in a Ray job's entrypoint: Ray 2.60's job supervisor sets the first (and RAY_ADDRESS), older Rays the second.
(Not RAY_JOB_ID: Ray sets it in every worker process, job or not.)"""


def in_ray_job() -> bool:
    """Whether this process is a Ray job's entrypoint: by the job supervisor's variables, or by a working dir
    inside Ray's runtime resources (where a job's uploaded working dir is unpacked)."""
    if any(os.environ.get(k) for k in JOB_ENV):
        return True
    try:
        return "/runtime_resources/working_dir_files/" in str(Path.cwd())
    except OSError:  # a working dir that was deleted under us
        return False


def output_root(explicit: Optional[str] = None) -> Path:
    """--out-root > $ABLAB_OUTPUT_ROOT > ./outputs, except inside a Ray job whose working dir is a
    temporary copy: there ~/ablab-outputs, so results outlive the job."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get("ABLAB_OUTPUT_ROOT"):
        return Path(os.environ["ABLAB_OUTPUT_ROOT"]).expanduser().resolve()
    if in_ray_job():
        return Path(JOB_OUTPUT_ROOT).expanduser().resolve()
    return Path("outputs").resolve()


def results_root(study_id: str, explicit: Optional[str] = None) -> Optional[str]:
    """The output root to read a study from: as output_root, except that a study absent from ./outputs but
    present in ~/ablab-outputs (a Ray job's results, seen from the user's checkout) is read from there, with a
    line on stderr that says so. Returns what to pass on as ``out_root``."""
    root = output_root(explicit)
    if explicit or os.environ.get("ABLAB_OUTPUT_ROOT") or (root / check_name("study", study_id)).is_dir():
        return explicit
    jobs = Path(JOB_OUTPUT_ROOT).expanduser().resolve()
    if jobs == root or not (jobs / study_id).is_dir():
        return explicit
    setup_logging()  # also for ablab.results() in a user's script: the line says which store it read
    log.info(f"reading {study_id} from {jobs} (where Ray jobs write; {root} has no {study_id}); --out-root picks another")
    return str(jobs)


def under(root: Path, *parts: str) -> Path:
    """``root / parts...``, refused unless it resolves inside ``root`` (symlinks followed)."""
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(f"output path {root.joinpath(*parts)} resolves to {path}, outside the output root {root}")
    return path


def study_dir(study_id: str, profile: str, root: Optional[str] = None, sets: Optional[dict[str, Any]] = None) -> Path:
    """The folder of one launch of a study profile: ``<output root>/<study>/<profile>``, or with ``--set``
    overrides ``<output root>/<study>/<profile>+set-<digest>`` (naming.launch_key)."""
    launch = launch_key(check_name("profile", profile), sets or {})
    return under(output_root(root), check_name("study", study_id), launch)


def resolve_tracking_uri(study_id: str, tracking_uri: Optional[str] = None, out_root: Optional[str] = None) -> str:
    """--tracking-uri > $MLFLOW_TRACKING_URI > the local default: one SQLite file per study, beside its
    profiles' folders (profiles are told apart by a tag). Credentials in the URI move to the environment
    (adopt_credentials): the URI returned is safe to write and print."""
    default = f"sqlite:///{under(output_root(out_root), check_name('study', study_id), 'mlflow.db')}"
    return adopt_credentials(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default)


def adopt_credentials(uri: str) -> str:
    """``uri`` without the ``user:password@`` it may carry, which move to MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD of this process (MLflow's client reads them; an explicit variable wins). Every
    URI ablab writes or prints (launch.json, logs, tags, reports, job runtime envs) is the clean one."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    if parts.username:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username))
    if parts.password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


UI_PORT = 5000
"""The port of `mlflow ui` (its default) in the command ablab prints."""


def browse_hint(tracking_uri: str, experiment_id: Optional[str]) -> tuple[Optional[str], str]:
    """How to browse a study in the MLflow UI: the command that starts the UI on a local store (None for a
    tracking server, which serves its own UI) and the URL of the study's runs. MLflow 3.17 opens an experiment
    in its GenAI view (traces, no runs) unless the URL asks for the model-training one; no experiment tag changes
    that."""
    if tracking_uri.startswith(("http://", "https://")):
        base, command = tracking_uri.rstrip("/"), None
    else:
        base = f"http://127.0.0.1:{UI_PORT}"
        command = f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --port {UI_PORT}"
    page = f"/#/experiments/{experiment_id}" if experiment_id else "/#/experiments"
    return command, f"{base}{page}?workflowType=machine_learning"


def browse_lines(tracking_uri: str, experiment_id: Optional[str]) -> list[str]:
    """browse_hint for a terminal, a line each, so that either can be copied whole."""
    command, url = browse_hint(tracking_uri, experiment_id)
    return ([f"browse: {command}"] if command else []) + [f"open: {url}"]


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of one run (the UI of browse_hint)."""
    page = browse_hint(tracking_uri, experiment_id)[1]
    return page.replace("?", f"/runs/{run_id}?", 1)
