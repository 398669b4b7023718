"""The study driver's MLflow writes, through an on-disk journal that a background thread writes out.

Every write is appended to ``mlflow_journal.jsonl`` in the study profile's folder and applied in order by one
thread, so no Tune callback waits on an MLflow write. When the store cannot take a write (the server is down, the
disk is full: an MLflow error with an HTTP status >= 500, or an OS error), the thread keeps it and tries again
every ``RETRY_S`` seconds; everything after it waits behind it. Nothing is lost if the driver dies: the journal
holds what was not yet written, ``ablab resume`` writes it out first, and ``ablab sync`` writes it out alone.

Entries name runs by ``launch`` or by trial key, never by run id, so a run can be created by an entry that
waits behind an outage; :class:`MlflowWriter` applies an entry, finding run ids in the study's
:class:`RunRegistry`. ``mlflow_journal.applied`` counts the entries already written.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .logs import log

JOURNAL_FILE, APPLIED_FILE = "mlflow_journal.jsonl", "mlflow_journal.applied"
RETRY_S = 5.0
"""While the store does not answer, the journal's writer tries again this often."""
FLUSH_WAIT_S = float(os.environ.get("ABLAB_TRACKING_FLUSH_S", "120"))
"""How long the end of a study (or ``ablab sync``) waits for MLflow to take the journal's last writes."""


RETRIED_HTTP = (401, 403, 429)
"""Client errors worth waiting out: credentials being renewed, a proxy's rate limit."""


def unavailable(err: BaseException) -> bool:
    """True for an error that says the store cannot take writes now (worth trying again later), False for one
    that says the write itself is wrong (it is dropped, with a message)."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return status >= 500 or status in RETRIED_HTTP
    response = getattr(err, "response", None)  # requests' HTTPError from an HTTP artifact store
    if response is not None and getattr(response, "status_code", None):
        return response.status_code >= 500 or response.status_code in RETRIED_HTTP
    if isinstance(err, FileNotFoundError):
        return False  # an artifact that is gone (a retried trial's old error.txt) never comes back
    return isinstance(err, OSError)


class Journal:
    """Append with :meth:`write`; ``apply(entry)`` writes one entry to MLflow (:class:`MlflowWriter`'s).

    ``folder``: where the journal lives. A journal left by an earlier launch is applied first. The file holds
    ``applied`` lines already written and then the queue; while the disk refuses writes the queue lives in
    memory only, and the file is rewritten from it once the disk takes writes again."""

    def __init__(self, folder: Path, apply: Callable[[dict[str, Any]], None]):
        self.path, self.applied_path = folder / JOURNAL_FILE, folder / APPLIED_FILE
        self._apply = apply
        self._entries = pending_entries(folder)
        self._cond = threading.Condition()
        self._applied = 0  # lines of the file already written out (what APPLIED_FILE says)
        self._retry_now = False
        self.outage_since: Optional[float] = None
        self._disk_ok = self._rewrite()  # a fresh file: no torn line from a killed driver, applied 0
        self._thread = threading.Thread(target=self._run, name="ablab-mlflow-journal", daemon=True)
        self._thread.start()

    def write(self, op: str, **args: Any) -> None:
        entry = {"op": op, **args}
        with self._cond:
            self._entries.append(entry)
            if self._disk_ok:
                try:
                    with open(self.path, "a") as f:
                        f.write(json.dumps(entry) + "\n")
                except OSError as err:
                    log.warning(f"tracking: cannot write {self.path} ({err.strerror}); MLflow writes wait in memory "
                                f"until the disk takes writes again")
                    self._disk_ok = False
            else:
                self._disk_ok = self._rewrite()
            self._cond.notify_all()

    def entries_for(self, run: str) -> list[dict[str, Any]]:
        """The entries of one run still waiting."""
        with self._cond:
            return [e for e in self._entries if e.get("run") == run]

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._entries)

    def drain(self, wait_s: float) -> int:
        """Wait up to ``wait_s`` for the journal to be written out; returns the entries still pending (kept on
        disk for ``ablab resume`` / ``ablab sync``)."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            self._retry_now = True  # an outage's wait ends: one more try now
            self._cond.notify_all()
            while self._entries and self._thread.is_alive() and time.monotonic() < deadline:
                self._cond.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            return len(self._entries)

    # ---- the writer thread ----

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._entries:
                    self._cond.wait()
                entry = self._entries[0]
            try:
                self._apply(entry)
            except Exception as err:  # noqa: BLE001 - classified: retried, or dropped with a message
                if unavailable(err):
                    self._wait_out(err)
                    continue
                log.error(f"tracking: an MLflow write failed and is dropped ({entry['op']} of {entry.get('run')}): "
                          f"{type(err).__name__}: {str(err)[:300]}")
            else:
                if self.outage_since is not None:
                    log.info(f"tracking: MLflow is back after {time.monotonic() - self.outage_since:.0f}s; "
                             f"writing out {self.pending} waiting entries")
                    self.outage_since = None
            self._done_one()

    def _wait_out(self, err: BaseException) -> None:
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            log.warning(f"tracking: MLflow cannot take writes ({type(err).__name__}: {str(err)[:200]}); "
                        f"training goes on and the writes wait in {self.path}")
        retry_at = time.monotonic() + RETRY_S
        with self._cond:
            while not self._retry_now and time.monotonic() < retry_at:
                self._cond.wait(retry_at - time.monotonic())
            self._retry_now = False

    def _done_one(self) -> None:
        with self._cond:
            self._entries.pop(0)
            if not self._entries or not self._disk_ok:
                self._disk_ok = self._rewrite()  # all written out (or the disk is back): the file is the queue
            else:
                try:
                    write_atomic(self.applied_path, str(self._applied + 1))
                    self._applied += 1
                except OSError:
                    self._disk_ok = False
            self._cond.notify_all()

    def _rewrite(self) -> bool:
        """Make the file hold exactly the queue, with nothing applied (no file when the queue is empty). The
        applied count goes first: a crash in between can only repeat entries, never skip one."""
        try:
            self.applied_path.unlink(missing_ok=True)
            self._applied = 0
            if self._entries:
                write_atomic(self.path, "".join(json.dumps(e) + "\n" for e in self._entries))
            else:
                self.path.unlink(missing_ok=True)
            return True
        except OSError:
            return False


def pending_entries(folder: Path) -> list[dict[str, Any]]:
    """The journal's entries not yet written out (a torn last line, from a driver killed mid-write, is skipped)."""
    try:
        lines = (folder / JOURNAL_FILE).read_text().splitlines()
    except OSError:  # none (all written out), or removed by a writer that just finished
        return []
    entries = []
    for line in lines[_read_applied(folder / APPLIED_FILE):]:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def _read_applied(path: Path) -> int:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


FULL_DISK_FREE = 1 << 20
"""Free bytes below which a file system counts as full."""


def disk_full(folder: Path) -> bool:
    """The file system that holds ``folder`` (or its nearest existing parent) has no room left."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_FREE
    except OSError:
        return False


def caused_by_full_disk(err: BaseException) -> bool:
    """An ENOSPC OSError anywhere under ``err``: its causes and contexts, and what Ray wraps (a task's ``cause``,
    a Train worker group's ``worker_failures``, its ``controller_failure``)."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        context = None if e.__suppress_context__ else e.__context__  # one handled on the way is not a cause
        todo += [e.__cause__, context, getattr(e, "cause", None), getattr(e, "controller_failure", None),
                 *(getattr(e, "worker_failures", None) or {}).values()]
    return False


def write_atomic(path: Path, data: str | bytes | Callable[[Path], None]) -> None:
    """``path`` replaced whole by ``data`` (or by what ``data(file)`` writes to a file, e.g. ``torch.save``,
    which writes a path much faster than a buffer): a reader sees the old file or the new one, never half of
    one. A write that fails on a full file system raises ENOSPC, whatever the writer raised: torch.save reports
    a full disk as ``RuntimeError: basic_ios::clear: iostream error`` (fp32 states) or an inline_container
    "unexpected pos" (bf16), with no errno under either."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data) if isinstance(data, bytes) else tmp.write_text(data)
    except BaseException as err:  # Ctrl-C (KeyboardInterrupt) too
        # Read before the half file goes: removing it gives its room back.
        full = isinstance(err, Exception) and not caused_by_full_disk(err) and disk_full(tmp.parent)
        tmp.unlink(missing_ok=True)  # never a half file beside the real one, nor a full one filling the disk
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise
    os.replace(tmp, path)


class RunRegistry:
    """{parent_run_id, trials: {key: run_id}} persisted as JSON, written atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"parent": None, "trials": {}}

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=1))


LAUNCH = "launch"
"""The journal's name for the launch (parent) run; trial runs are named by their trial key."""


class MlflowWriter:
    """Applies journal entries to MLflow; resolves run names (``launch``, trial keys) through the registry."""

    def __init__(self, tracking_uri: str, registry_path: Path):
        from .store import mlflow_client

        self.client = mlflow_client(tracking_uri)  # its own client: it runs in the journal's thread
        self.registry_path = registry_path

    def run_id(self, name: str) -> str:
        data = RunRegistry(self.registry_path).data
        return data["parent"] if name == LAUNCH else data["trials"][name]

    def apply(self, e: dict[str, Any]) -> None:
        op = e["op"]
        if op == "create":
            self._create(e)
            return
        run_id = self.run_id(e["run"])
        if op == "reopen":
            self._reopen(run_id)
        elif op == "log_batch":
            from mlflow.entities import Metric, RunTag

            metrics = [Metric(k, v, ts, step) for k, v, ts, step in e.get("metrics", [])]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
            if e.get("tags"):
                self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in e["tags"]])
        elif op == "artifact":
            self.client.log_artifact(run_id, e["path"], e.get("artifact_path"))
        elif op == "artifacts":
            self.client.log_artifacts(run_id, e["path"], e["artifact_path"])
        elif op == "end":
            self.client.set_terminated(run_id, status=e["status"])
        else:
            raise ValueError(f"unknown journal entry {op!r}")

    def _create(self, e: dict[str, Any]) -> None:
        """A trial's run, made once: its id is in the registry as soon as it exists, and a create retried after a
        partial success (a timeout the server did act on) finds the run by its tags instead of making another."""
        from mlflow.entities import Param

        registry = RunRegistry(self.registry_path)
        run_id = registry.data["trials"].get(e["run"])
        if run_id is None:
            found = self.client.search_runs(
                [e["experiment"]], f"tags.`ablab.trial_key` = '{e['run']}' and "
                                   f"tags.`mlflow.parentRunId` = '{e['tags']['mlflow.parentRunId']}'")
            run_id = found[0].info.run_id if found else self.client.create_run(
                e["experiment"], run_name=e["name"], tags=e["tags"]).info.run_id
            registry.data["trials"][e["run"]] = run_id
            registry.save()
        params = [Param(k, v) for k, v in e["params"]]
        for i in range(0, len(params), 100):  # logging a param again with the same value is allowed
            self.client.log_batch(run_id, params=params[i:i + 100])

    def _reopen(self, run_id: str) -> None:
        """A trial's run continues (resume) or runs again (--retry-failed). An earlier failure stays on it as
        ``ablab.previous_errors`` (a JSON list) and ``ablab.attempts`` counts."""
        tags = self.client.get_run(run_id).data.tags
        if "ablab.interrupted" in tags:
            self.client.delete_tag(run_id, "ablab.interrupted")
        if "ablab.error" in tags:
            previous = json.loads(tags.get("ablab.previous_errors", "[]")) + [tags["ablab.error"][:2000]]
            self.client.set_tag(run_id, "ablab.previous_errors", json.dumps(previous)[:5000])
            self.client.set_tag(run_id, "ablab.attempts", str(len(previous) + 1))
            self.client.delete_tag(run_id, "ablab.error")
        self.client.update_run(run_id, status="RUNNING")


def finished_trials(tracking_uri: str, registry_path: Path) -> frozenset[str]:
    """The trial keys of the launch's registry whose MLflow run has FINISHED (ablab.store.finished_trials)."""
    from .store import finished_trials as finished

    return finished(tracking_uri, RunRegistry(registry_path).data["trials"])


def write_now(tracking_uri: str, registry_path: Path, op: str, **args: Any) -> bool:
    """One write of a launch's after its study (an entry as the journal takes it, e.g. ``log_batch`` on
    ``run=LAUNCH``), made now, in this thread: a store that cannot take it leaves it in the launch's journal (the
    folder of the registry) for ``ablab sync``; a write the store refuses raises. Returns whether it was made."""
    entry = {"op": op, **args}
    try:
        MlflowWriter(tracking_uri, registry_path).apply(entry)
        return True
    except Exception as err:
        if not unavailable(err):
            raise
    with open(registry_path.parent / JOURNAL_FILE, "a") as f:  # after whatever waits there (pending_entries)
        f.write(json.dumps(entry) + "\n")
    log.warning(f"tracking: {tracking_uri} did not take a write ({op} of the {args.get('run')} run); it waits in "
                f"{registry_path.parent / JOURNAL_FILE}")
    return False
