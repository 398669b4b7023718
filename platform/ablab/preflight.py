"""Checks made before any compute is spent: the Ray address, the MLflow tracking URI, what the embedded
cluster can hold, where outputs go. Each failure is one ConfigError naming the option and its value, and
nothing here waits more than a few seconds: an unreachable server fails fast instead of being retried for
minutes (MLflow's client retries 7 times with backoff by default, Ray's for a minute).

No Ray import; MLflow only inside ``tracking_uri``'s store lookup and ``probe_tracking_server``.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from detector.config import ConfigError

CONNECT_TIMEOUT_S = 5.0
"""Per connection attempt; an unreachable address fails well within 15 s."""


def _host_port(value: str, field: str, default_port: Optional[int] = None) -> tuple[str, int]:
    """``host:port`` (or ``scheme://host:port``) split and checked."""
    parts = urlsplit(value if "://" in value else f"//{value}")
    try:
        port = parts.port or default_port
    except ValueError:  # a port that is not a number in 0..65535
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{field}: {value!r} is not an address of the form HOST:PORT"
                          + ("" if default_port is None else " or http://HOST:PORT"))
    return parts.hostname, port


def probe(host: str, port: int, field: str, what: str) -> None:
    """Open and close one TCP connection, or fail naming the address (within CONNECT_TIMEOUT_S)."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or type(err).__name__)
        raise ConfigError(f"{field}: cannot reach {what} at {host}:{port} ({reason})") from None


def check_ray_address(address: str, field: str = "--address") -> None:
    """A Ray cluster to join: ``auto`` (Ray finds the local one), ``HOST:PORT`` (its GCS) or
    ``ray://HOST:PORT`` (Ray Client); anything else, or nothing listening there, is an error."""
    if address == "auto":
        return
    scheme = urlsplit(address).scheme if "://" in address else ""
    if scheme not in ("", "ray"):
        raise ConfigError(f"{field}: {address!r}: a Ray cluster address is auto, HOST:PORT or ray://HOST:PORT "
                          f"(http:// addresses are for `ablab submit`, the job server)")
    host, port = _host_port(address, field)
    probe(host, port, field, "a Ray cluster")


def check_job_server(address: str, field: str = "--address") -> None:
    """The Ray job server (the dashboard) that ``ablab submit`` posts to: ``http(s)://HOST:PORT``."""
    scheme = urlsplit(address).scheme
    if scheme not in ("http", "https"):
        raise ConfigError(f"{field}: {address!r}: the job server's address is http://HOST:PORT "
                          f"(the dashboard, 8265 by default)")
    host, port = _host_port(address, field, default_port=443 if scheme == "https" else 80)
    probe(host, port, field, "the Ray job server")


def check_tracking_uri(uri: str, field: str = "tracking URI") -> None:
    """A URI whose scheme MLflow has a store for (sqlite, file, http(s), databases, databricks)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    scheme = urlsplit(uri).scheme
    # MLflow's own table of schemes (a private name; it has held since MLflow 1). A database URI may name
    # its driver: postgresql+psycopg2://.
    known = set(_tracking_store_registry._registry)
    if scheme.split("+")[0] not in known:
        raise ConfigError(f"{field}: {uri!r}: MLflow has no store for the scheme {scheme!r} "
                          f"(it opens {', '.join(sorted(s for s in known if s))} or a path)")


def probe_tracking_server(uri: str, field: str = "tracking URI") -> None:
    """For an http(s) URI, one request to the tracking server without retries, so a server that is down or
    refuses the credentials fails now, by name, instead of after MLflow's minutes of retries."""
    if urlsplit(uri).scheme not in ("http", "https"):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "POST",
                                max_retries=0, timeout=CONNECT_TIMEOUT_S, json={"max_results": 1})
    except MlflowException as err:
        text = str(err)
        reason = next((r for r in ("connection refused", "timed out", "name or service not known") if r in text.lower()),
                      text.splitlines()[0][:200])
        raise ConfigError(f"{field}: cannot reach the MLflow server at {uri} ({reason})") from None
    except OSError as err:  # requests' ConnectionError / Timeout are OSErrors
        raise ConfigError(f"{field}: cannot reach the MLflow server at {uri} ({type(err).__name__})") from None
    if response.status_code in (401, 403):
        raise ConfigError(f"{field}: the MLflow server at {uri} refused the credentials (HTTP {response.status_code}; "
                          f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN)")
    if response.status_code >= 400:
        raise ConfigError(f"{field}: {uri} answered HTTP {response.status_code}: is it an MLflow tracking server?")


def check_embedded_resources(workers: int, cpus_per_worker: float, gpus_per_worker: float) -> None:
    """What one trial asks for, against what the embedded cluster (this machine) has."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers * cpus_per_worker > cpus:
        raise ConfigError(f"resources: a trial needs {workers * cpus_per_worker:g} CPUs ({workers} workers x "
                          f"cpus_per_worker {cpus_per_worker:g}) and this machine has {cpus}: lower "
                          f"resources.workers / resources.cpus_per_worker, or pass --address of a bigger cluster")
    if gpus_per_worker:
        import torch

        gpus = torch.cuda.device_count()
        if workers * gpus_per_worker > gpus:
            raise ConfigError(f"resources.gpus_per_worker: {gpus_per_worker:g} x {workers} workers, and this machine "
                              f"has {gpus} GPU{'s' if gpus != 1 else ''}: set it to 0, or pass --address of a GPU cluster")


def check_output_dir(path: Path, field: str = "--out-root", create: bool = True) -> None:
    """Make ``path`` (a folder this process will write), or fail naming why it cannot be one. ``create=False``
    (validate) only checks that the nearest existing folder above it is writable."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{field}: {existing} is a file, so {path} cannot be a folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"{field}: cannot create {path} ({err.strerror or type(err).__name__})") from None
        existing = path
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: {existing} is not writable, so outputs cannot go to {path}")
