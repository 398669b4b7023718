"""Helpers for platform tests: a tiny two-trial study on the synthetic set, reading what a study logged to MLflow,
and real `mlflow server`s on 127.0.0.1."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import smoke_model


def write_study(path: Path, data_root: Path, trials=None, epochs: int = 1, max_images: int = 8, **extra) -> Path:
    study = {
        "study": path.stem,
        "paper": "iou_aware",
        "table": "test",
        "alpha_convention": "iou_aware",
        "base": {
            "model": smoke_model(fpn_width=32, head={"depth": 1, "width": 32}, anchor_scale=4.0),
            "train": {"epochs": epochs, "batch_size": 4, "warmup_iters": 2},
        },
        "trials": trials or [{"name": "baseline", "set": {}}, {"name": "iou", "set": {"model.quality.branch": "iou"}}],
        "variants": ["cls", "alpha=0.5"],
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "profiles": {"smoke": {"base": {"data": {"kind": "synthetic", "root": str(data_root), "short": 128, "long": 128,
                                                "max_images": max_images}}},
                     "other": {"base": {"data": {"kind": "synthetic", "root": str(data_root), "short": 128, "long": 128,
                                                "max_images": max_images}}}},
        "layout": {"columns": ["AP", "AP50"], "rows": [
            {"label": "RetinaNet", "trial": "baseline", "variant": "cls", "reference": {"AP": 34.4, "AP50": 54.1}},
            {"label": "IoU-aware", "trial": "iou", "variant": "alpha=0.5", "reference": {"AP": 35.5, "AP50": 54.1}}]},
    }
    study.update(extra)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(heading: str) -> list[str]:
    """The lines of the first indented code block under README.md's ``## heading``: the commands a test runs as
    written, so that a README line cannot drift from what works."""
    lines = README.read_text().splitlines()
    block: list[str] = []
    for line in lines[lines.index(f"## {heading}") + 1:]:
        if line.startswith("## ") or (block and line.strip() and not line.startswith("    ")):
            break
        if line.startswith("    "):
            block.append(line[4:])
    assert block, f"README.md: no code block under '## {heading}'"
    return block


def readme_line(block: list[str], start: str) -> str:
    """The one line of a README block that starts with ``start``."""
    (line,) = [line for line in block if line.startswith(start)]
    return line


def run_cli(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    """``ablab ARGS`` as a user runs it, in a fresh process (its output captured as text)."""
    return subprocess.run([sys.executable, "-m", "ablab.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def ablab_env(out_root: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return {**env, "ABLAB_OUTPUT_ROOT": str(out_root), "RAY_AUTH_MODE": "disabled", **extra}


def local_store(out: Path, study: str) -> str:
    """The tracking URI of a study's default store under the output root ``out``."""
    return f"sqlite:///{out / study / 'mlflow.db'}"


def study_runs(uri: str, study: str, role: str | None = None):
    """(client, runs) of a study's MLflow experiment in the store at ``uri``: its launch and trial runs, or those
    of one ``role`` (``trial``, ``launch``); no runs while the experiment does not exist yet."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"ablab/{study}")
    query = f"tags.`ablab.role` = '{role}'" if role else ""
    return client, (client.search_runs([exp.experiment_id], query) if exp else [])


def logged_epochs(out: Path, study: str, trial: str | None = None) -> list[int]:
    """The epochs of train/loss in MLflow of a running study's trial runs (one trial's, if named): read only once
    the driver has created the store and the trial's run (it writes the registry after), since opening a
    half-initialised SQLite store from here would run MLflow's migrations a second time."""
    import json

    registry = out / study / "smoke" / "mlflow_runs.json"
    if not registry.is_file() or (trial and not any(k.startswith(f"{trial}_") for k in
                                                    json.loads(registry.read_text())["trials"])):
        return []
    try:
        client, runs = study_runs(local_store(out, study), study, "trial")
        runs = [r for r in runs if trial is None or r.data.tags.get("ablab.trial") == trial]
        return [m.step for r in runs for m in client.get_metric_history(r.info.run_id, "train/loss")]
    except Exception:  # the store is being created by the driver
        return []


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (SQLite store, local artifacts in ``folder``) whose store and artifacts
    outlive its restarts: ``start``, ``stop``, or ``with MlflowServer(folder) as server``."""

    def __init__(self, folder: Path, env: dict | None = None, start_timeout: float = 240):
        self.folder, self.env, self.start_timeout = folder, env, start_timeout
        self.port, self.proc = free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--default-artifact-root", str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"], env=self.env, stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "mlflow.log", "a"))
        wait_for_http(f"{self.uri}/health", self.start_timeout)  # slow to start on 2 busy cores
        return self

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout: float = 60.0) -> None:
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps dialling Google on this offline machine.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


def headless_chromium():
    """A Selenium driver on Debian's chromium + chromedriver (.ci/run installs both)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if missing:
        raise RuntimeError(f"{missing} not found: apt-get install chromium chromium-driver (.ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"{what} not met within {timeout}s")


def run_watching_listeners(args: list[str], env: dict, timeout: float = 900):
    """Run a command, and while it runs, record every listening TCP socket of it and its descendants (every
    Ray process of an embedded cluster), and what the Ray dashboard answers to a request without a token.
    Returns (CompletedProcess, {(process name, ip, port)}, {HTTP status of GET /api/jobs/ without a token})."""
    import subprocess
    import threading
    import time
    import urllib.error
    import urllib.request

    import psutil

    listeners: set[tuple[str, str, int]] = set()
    unauthenticated: set[int] = set()

    def probe_dashboard(p: "psutil.Process", port: int) -> None:
        if "dashboard/dashboard.py" not in " ".join(p.cmdline()):
            return
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs/", timeout=2).read(64)
            if not body.startswith(b"# HELP"):  # the dashboard's Prometheus exporter answers any path
                unauthenticated.add(200)
        except urllib.error.HTTPError as err:
            unauthenticated.add(err.code)
        except OSError:
            pass

    with subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        out: dict[str, str] = {}
        reader = threading.Thread(target=lambda: out.update(zip(("stdout", "stderr"), proc.communicate())))
        reader.start()
        deadline = time.time() + timeout
        root = psutil.Process(proc.pid)
        while reader.is_alive() and time.time() < deadline:
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    for c in p.net_connections(kind="inet"):
                        if c.status == psutil.CONN_LISTEN:
                            if (p.name(), c.laddr.ip, c.laddr.port) not in listeners:
                                probe_dashboard(p, c.laddr.port)
                            listeners.add((p.name(), c.laddr.ip, c.laddr.port))
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            time.sleep(0.5)
        if reader.is_alive():
            proc.kill()
        reader.join()
    done = subprocess.CompletedProcess(args, proc.returncode, out.get("stdout", ""), out.get("stderr", ""))
    return done, listeners, unauthenticated
