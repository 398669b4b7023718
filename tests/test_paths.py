"""Names cannot escape the output root: study, profile, trial and variant names are checked when a study is
read, and every study folder is built by one function that checks where it resolves."""
import pytest
import yaml

from ablab.paths import check_name, study_dir, under
from ablab.study import load_study
from detector.config import ConfigError


def _study(tmp_path, **changes):
    raw = {"study": "s", "paper": "iou_aware", "table": "1", "trials": [{"name": "a"}],
           "variants": ["cls"], "profiles": {"smoke": {}}}
    raw.update(changes)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("changes, needle", [
    ({"study": ".."}, "study"),
    ({"study": "../../ESCAPED"}, "study"),
    ({"study": "/abs"}, "study"),
    ({"profiles": {"../../ESCAPED": {}}}, "profiles.../../ESCAPED"),
    ({"profiles": {".hidden": {}}}, "profiles..hidden"),
    ({"trials": [{"name": "a/b"}]}, "trials.0.name"),
    ({"trials": [{"name": ".."}]}, "trials.0.name"),
    ({"variants": [{"name": "../x", "combine": "cls"}]}, "variants"),
    ({"variants": [{"name": "a/b", "combine": "cls"}]}, "variants"),
])
def test_a_name_that_would_leave_the_output_root_is_refused(tmp_path, changes, needle):
    with pytest.raises(ConfigError) as err:
        load_study(_study(tmp_path, **changes))
    assert needle in str(err.value)
    assert not (tmp_path.parent / "ESCAPED").exists()


def test_shorthand_variant_names_stay_valid(tmp_path):
    study = load_study(_study(tmp_path, variants=["cls", "none", "alpha=0.4", "alpha=0.4,truth", "cls,q>0.5"]))
    assert [v.name for v in study.variant_configs()] == ["cls", "none", "alpha=0.4", "alpha=0.4,truth", "cls,q>0.5"]


def test_under_refuses_paths_that_resolve_outside_the_root(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert under(root, "s", "smoke") == (root / "s" / "smoke").resolve()
    with pytest.raises(ConfigError, match="outside the output root"):
        under(root, "..", "x")
    with pytest.raises(ConfigError, match="outside the output root"):
        under(root, "/etc")
    (root / "link").symlink_to(tmp_path.parent)  # a symlink inside the root that points out of it
    with pytest.raises(ConfigError, match="outside the output root"):
        under(root, "link", "x")


def test_study_dir_and_names_checked_in_one_place(tmp_path):
    assert study_dir("table3", "smoke", str(tmp_path)) == (tmp_path / "table3" / "smoke").resolve()
    with pytest.raises(ConfigError, match=r"profile: '\.\./x' is not a valid name"):
        study_dir("table3", "../x", str(tmp_path))
    assert check_name("study", "table5.v2-a_b") == "table5.v2-a_b"
    with pytest.raises(ConfigError, match='quote" is not a valid name'):
        check_name("--profile", "it's-a-quote")


def test_credentials_in_a_tracking_uri_move_to_the_environment(monkeypatch):
    from ablab.paths import adopt_credentials

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(var, "")  # so that monkeypatch restores the variable after the test
        monkeypatch.delenv(var)
    assert adopt_credentials("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"
    import os

    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    assert adopt_credentials("https://alice:s3%2Fcret@mlflow.team:5000/api?x=1") == "https://mlflow.team:5000/api?x=1"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice" and os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3/cret"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-env")  # an explicit variable wins
    assert adopt_credentials("http://bob:other@h:1") == "http://h:1"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "from-env"


def test_a_ray_job_is_known_by_its_supervisor_s_variable_or_its_unpacked_working_dir(tmp_path, monkeypatch):
    """What Ray 2.60 gives a job's entrypoint (test_platform_jobs.py runs a real one): outputs go to ~/ablab-outputs."""
    from ablab.paths import JOB_ENV, output_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in JOB_ENV + ("ABLAB_OUTPUT_ROOT",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert output_root() == tmp_path / "outputs"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {}}')
    assert output_root() == tmp_path / "home" / "ablab-outputs"
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    unpacked = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    unpacked.mkdir(parents=True)
    monkeypatch.chdir(unpacked)
    assert output_root() == tmp_path / "home" / "ablab-outputs"
    assert output_root(str(tmp_path / "mine")) == tmp_path / "mine"  # --out-root still wins


def test_a_checkout_reads_a_study_it_lacks_from_the_jobs_output_root(tmp_path, monkeypatch):
    from ablab.paths import results_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ABLAB_OUTPUT_ROOT", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert results_root("s") is None  # nowhere yet: ./outputs, whose error says so
    (tmp_path / "home" / "ablab-outputs" / "s").mkdir(parents=True)
    assert results_root("s") == str(tmp_path / "home" / "ablab-outputs")
    assert results_root("s", str(tmp_path / "x")) == str(tmp_path / "x")
    (tmp_path / "outputs" / "s").mkdir(parents=True)
    assert results_root("s") is None  # the checkout's own comes first


def test_sync_in_a_checkout_finds_a_ray_job_s_launch_as_resume_does(tmp_path, monkeypatch):
    """`ablab sync` from the checkout of a study that a Ray job ran writes out the job's launch, in
    ~/ablab-outputs (a real CLI process: the line it prints names the folder it synced)."""
    import os
    import subprocess
    import sys

    study = _study(tmp_path)
    home = tmp_path / "home"
    (home / "ablab-outputs" / "s" / "smoke").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("ABLAB_OUTPUT_ROOT", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    r = subprocess.run([sys.executable, "-m", "ablab.cli", "sync", str(study)], cwd=tmp_path, capture_output=True,
                       text=True, env={**env, "HOME": str(home)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"every MLflow write of {home / 'ablab-outputs' / 's' / 'smoke'} is in its store" in r.stderr


def test_the_ui_hint_opens_the_study_s_runs_in_the_model_training_view():
    from ablab.paths import browse_hint, browse_lines, run_url

    assert browse_hint("sqlite:////o/s/mlflow.db", "4") == (
        "mlflow ui --backend-store-uri sqlite:////o/s/mlflow.db --port 5000",
        "http://127.0.0.1:5000/#/experiments/4?workflowType=machine_learning")
    assert browse_lines("https://mlflow.example/", "4") == ["open: https://mlflow.example/#/experiments/4?workflowType=machine_learning"]
    assert run_url("http://h:5000", "4", "abc") == "http://h:5000/#/experiments/4/runs/abc?workflowType=machine_learning"
