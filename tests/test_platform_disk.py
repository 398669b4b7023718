"""A disk that fills up mid-study: the output folder is a small tmpfs (mounted for the test; skipped where
mounting is not allowed), the MLflow store lives elsewhere, as a team's server would. When the folder fills up
the trial fails with the reason in MLflow, what was logged stays, and `ablab run` ends with one line that
names the folder and what to do; once space is back, `ablab resume --retry-failed` finishes the trial from its
last checkpoint in the same MLflow run (a Tune state the full disk cut short is kept aside and rebuilt)."""
import errno
import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest

from platform_helpers import ablab_env, study_runs, wait_until, write_study

EPOCHS = 6


def _trial(uri):
    client, runs = study_runs(uri, "full_disk", "trial")
    return client, (runs[0] if runs else None)


def _steps(uri) -> list[int]:
    client, run = _trial(uri)
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) if run else []


def _checkpointed(out) -> bool:
    """A whole first checkpoint is in the study's storage: its state file (in the trial's folder, or in Train's
    checkpoint_* folder) is there and no longer growing."""
    import time

    states = sorted((out / "full_disk" / "smoke" / "train").glob("train-*/**/state.pt"))
    if not states:
        return False
    size = states[0].stat().st_size
    time.sleep(0.1)
    return size > 0 and states[0].stat().st_size == size


@contextmanager
def _tmpfs(mount, size: str):
    """A tmpfs of ``size`` mounted at ``mount`` (the test is skipped where mounting is not allowed)."""
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root or CAP_SYS_ADMIN")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    with _tmpfs(tmp_path / "disk", "300m") as mount:
        yield mount


@pytest.fixture
def tiny_disk(tmp_path):
    with _tmpfs(tmp_path / "tiny", "4m") as mount:
        yield mount


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_checkpoint_that_does_not_fit_raises_enospc_whatever_torch_save_said(tiny_disk, dtype):
    """torch.save reports a full disk as ``RuntimeError: basic_ios::clear`` (fp32 states) or an
    inline_container "unexpected pos" (bf16), with no errno: write_atomic tells it by the file system's free
    space, keeps the old file and leaves no half one."""
    from functools import partial

    import torch

    from ablab.journal import write_atomic

    path = tiny_disk / "state.pt"
    write_atomic(path, b"old")
    state = {"weights": torch.ones(3 << 20, dtype=getattr(torch, dtype))}  # 6-12 MB: more than the disk holds
    with pytest.raises(OSError) as raised:
        write_atomic(path, partial(torch.save, state))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert path.read_bytes() == b"old" and [p.name for p in tiny_disk.iterdir()] == ["state.pt"]


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["train"])  # Train's wrappers around the error: the Tune trial's path is inside them
def test_a_full_disk_fails_the_trial_with_its_reason_stops_the_study_with_one_line_and_resume_finishes_it(
        synthetic_root, tmp_path, small_disk, executor):
    """In fp32, whatever the CPU: torch.save fails an fp32 state's write with no errno at all (the test above
    covers both precisions' writes)."""
    study = write_study(tmp_path / "full_disk.yaml", synthetic_root, epochs=EPOCHS, max_images=40, layout=None,
                        trials=[{"name": "iou", "set": {"model.quality.branch": "iou", "train.precision": "fp32"}}],
                        resources={"workers": 1, "cpus_per_worker": 1, "max_failures": 1,
                                   "executor": executor})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = ablab_env(small_disk / "out")
    cmd = [sys.executable, "-m", "ablab.cli", "run", str(study), "--tracking-uri", uri]
    log = tmp_path / "run.log"
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)
    try:
        # The first checkpoint on disk, seen within a poll (MLflow's view of the epoch lags by seconds, long
        # enough on a fast machine for the trial to finish before the disk fills; 40 images an epoch leave
        # seconds between the first checkpoint and the last, in fp32 on a fast CPU too: 24 did not, once).
        wait_until(lambda: _checkpointed(small_disk / "out") or driver.poll() is not None, 600, "a first checkpoint")
        filler = small_disk / "filler"
        with open(filler, "wb") as f:  # the disk fills up: no room for the next checkpoint
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        # The trial fails (Train retries, then gives up); Tune's own error file in the full folder is truncated,
        # so the study ends with one line naming the folder and what to do, not a traceback.
        assert driver.wait(600) == 2, log.read_text()[-3000:]
        assert any(line.startswith(f"ablab: error: {small_disk / 'out' / 'full_disk' / 'smoke'}: No space left on "
                                   f"device") for line in log.read_text().splitlines()), log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the embedded cluster it started
    client, run = _trial(uri)
    assert run.info.status == "FAILED", log.read_text()[-3000:]
    assert "No space left on device" in run.data.tags["ablab.error"]
    logged = _steps(uri)
    assert logged and logged == sorted(set(logged))  # what was logged before stays, once each


    # Space comes back: `ablab resume --retry-failed` (the line's advice) finishes the trial from its last
    # checkpoint, in the same run, every epoch logged once.
    (small_disk / "filler").unlink()
    resumed = subprocess.run([sys.executable, "-m", "ablab.cli", "resume", str(study), "--retry-failed",
                              "--tracking-uri", uri], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, again = _trial(uri)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED", resumed.stderr[-3000:]
    assert "No space left on device" in again.data.tags["ablab.previous_errors"]
    assert int(again.data.tags["ablab.resumed_at_epoch"]) >= 1
    assert _steps(uri) == list(range(1, EPOCHS + 1))
    assert "AP" in {k.rpartition("/")[2] for k in again.data.metrics}


def test_a_tune_state_cut_short_by_a_full_disk_is_told_from_a_sound_one(tmp_path):
    from ablab.runner import _tune_state_damage

    (tmp_path / "tuner.pkl").write_bytes(b"\x80\x05.")
    state = tmp_path / "experiment_state-2026-12-01_17-19-47.json"
    state.write_text(json.dumps({"trial_data": [["{}", "{}"]], "runner_data": {}}))
    assert _tune_state_damage(tmp_path) is None
    state.write_text(state.read_text()[:20])  # what a full disk leaves: the first block only
    assert "experiment_state-2026-12-01_17-19-47.json is cut short" in _tune_state_damage(tmp_path)
    state.write_text("")
    assert _tune_state_damage(tmp_path) == "experiment_state-2026-12-01_17-19-47.json is empty"
