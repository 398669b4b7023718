"""The driver's MLflow journal: writes are applied in order; while the store refuses them (an OS error, an
MLflow error with HTTP status >= 500) they wait and are tried again; a driver that dies leaves them on disk
for the next journal; a write that is itself wrong (status < 500) is dropped, not retried forever."""
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

from ablab import journal as journal_module
from ablab.journal import JOURNAL_FILE, Journal, pending_entries, unavailable


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(journal_module, "RETRY_S", 0.05)


class Store:
    """Takes entries into ``written``; refuses them with ``error`` while ``down``."""

    def __init__(self, error=None):
        self.written, self.down, self.error = [], False, error or OSError(28, "No space left on device")

    def apply(self, entry):
        if self.down:
            raise self.error
        self.written.append(entry["n"])


def test_writes_wait_while_the_store_is_down_and_go_out_in_order_when_it_is_back(tmp_path):
    store = Store(MlflowException("API request failed: Max retries exceeded"))  # INTERNAL_ERROR: HTTP 500
    journal = Journal(tmp_path, store.apply)
    journal.write("log_batch", run="a", n=0)
    assert journal.drain(5) == 0 and store.written == [0]
    store.down = True
    for n in (1, 2, 3):
        journal.write("log_batch", run="a", n=n)
    assert journal.drain(0.3) == 3 and store.written == [0]
    assert [e["n"] for e in pending_entries(tmp_path)] == [1, 2, 3]  # on disk, should the driver die now
    store.down = False
    assert journal.drain(5) == 0 and store.written == [0, 1, 2, 3]
    assert not (tmp_path / JOURNAL_FILE).exists()  # all written out


def test_a_journal_left_by_a_dead_driver_is_written_out_by_the_next_one(tmp_path):
    dead = Store()
    dead.down = True  # the first driver's store never answers again: as if that driver had died
    first = Journal(tmp_path, dead.apply)
    for n in range(3):
        first.write("log_batch", run="a", n=n)
    with open(tmp_path / JOURNAL_FILE, "a") as f:
        f.write('{"op": "log_batch", "run": "a", "n": ')  # a last line torn by the kill
    store = Store()
    second = Journal(tmp_path, store.apply)
    assert second.drain(5) == 0
    assert store.written == [0, 1, 2] and dead.written == []


def test_only_an_unavailable_store_is_retried():
    assert unavailable(OSError(28, "No space left on device"))
    assert unavailable(MlflowException("connection refused"))  # no status from a server: HTTP 500
    assert not unavailable(MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE))  # HTTP 400
    assert not unavailable(ValueError("a bug"))


def test_a_wrong_write_is_dropped_and_the_rest_go_on(tmp_path):
    store = Store(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST))
    calls = []

    def apply(entry):
        calls.append(entry["n"])
        if entry["n"] == 1:
            raise store.error
        store.written.append(entry["n"])

    journal = Journal(tmp_path, apply)
    for n in range(3):
        journal.write("log_batch", run="a", n=n)
    assert journal.drain(5) == 0
    assert store.written == [0, 2] and calls == [0, 1, 2]


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    """write_atomic replaces a file by text, bytes or what a writer (torch.save) puts in a file; a writer that
    fails half way (a full disk) leaves the old file as it was and no half file beside it."""
    from ablab.journal import write_atomic

    path = tmp_path / "state.pt"
    write_atomic(path, "old")
    write_atomic(path, lambda file: file.write_bytes(b"new"))
    assert path.read_bytes() == b"new"

    for error in (OSError(28, "No space left on device"), RuntimeError("[enforce fail at inline_container.cc]")):
        def fails(file, error=error):  # torch.save reports a full disk as a RuntimeError
            file.write_bytes(b"half")
            raise error

        with pytest.raises(type(error)):
            write_atomic(path, fails)
        assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
