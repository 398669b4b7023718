"""One real `ablab run --set` (local Ray, MLflow on SQLite, one trial of one epoch): the override reaches the
trained trial's config in MLflow, the launch is named by it, and the reading commands find it with the same
--set (and only with it)."""
import json

import pytest

from ablab.naming import launch_key
from platform_helpers import ablab_env, local_store, run_cli, study_runs, write_study

pytestmark = pytest.mark.slow

SETS = ["train.lr=0.005", "train.steps=[1]"]


@pytest.fixture(scope="module")
def launched(synthetic_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("set_study")
    layout = {"columns": ["AP", "AP50"], "rows": [
        {"label": "IoU-aware", "trial": "iou", "variant": "alpha=0.5", "reference": {"AP": 35.5, "AP50": 54.1}}]}
    study = write_study(tmp / "set_study.yaml", synthetic_root, trials=[{"name": "iou", "set": {"model.quality.branch": "iou"}}],
                        layout=layout)
    env = ablab_env(tmp / "out")
    r = run_cli("run", str(study), "--profile", "smoke", *[w for s in SETS for w in ("--set", s)], env=env)
    return str(study), tmp / "out", env, r


def test_the_override_reaches_the_trained_trials_config_in_mlflow(launched):
    study, out, env, r = launched
    assert r.returncode == 0, r.stderr[-3000:]
    key = launch_key("smoke", {"train.lr": 0.005, "train.steps": [1]})
    folder = out / "set_study" / key
    assert json.loads((folder / "launch.json").read_text())["set"] == {"train.lr": 0.005, "train.steps": [1]}
    assert json.loads((folder / "trials" / "iou_seed0" / "config.json").read_text())["train"]["lr"] == 0.005
    runs = study_runs(local_store(out, "set_study"), "set_study")[1]
    assert {x.data.tags["ablab.role"] for x in runs} == {"launch", "trial"} and len(runs) == 2
    for run in runs:  # the launch run and the trial's carry the launch's name and its overrides
        assert run.data.tags["ablab.profile"] == key and run.info.status == "FINISHED"
        assert json.loads(run.data.tags["ablab.set"]) == {"train.lr": 0.005, "train.steps": [1]}
    trial = next(x for x in runs if x.data.tags["ablab.role"] == "trial")
    assert (trial.data.params["train.lr"], trial.data.params["train.steps"]) == ("0.005", "[1]")
    assert trial.data.tags["ablab.trial_key"] == "iou_seed0"  # the row's trial key is the same as without --set
    assert "--set train.lr=0.005 --set 'train.steps=[1]'" in r.stderr  # the hints name the launch
    assert (out / "dashboards" / f"set_study-{key}.html").is_file()  # the report `ablab run` builds


def test_the_reading_commands_find_the_launch_by_the_same_set(launched):
    import ablab as api

    study, out, env, r = launched
    assert r.returncode == 0, r.stderr[-3000:]
    table = run_cli("table", study, "--profile", "smoke", "--set", SETS[1], "--set", SETS[0], env=env)  # any order
    assert table.returncode == 0, table.stderr
    assert "IoU-aware" in table.stdout and "1 seed with --set train.steps=[1] --set train.lr=0.005" in table.stdout
    df = api.results(study, profile="smoke", overrides=SETS, out_root=str(out))
    assert set(df["variant"]) == {"cls", "alpha=0.5"} and set(df["train.lr"]) == {0.005}
    assert set(df["profile"]) == {launch_key("smoke", {"train.lr": 0.005, "train.steps": [1]})}
    assert api.results(study, profile="smoke", out_root=str(out)).empty  # the launch without --set never ran
    plain = run_cli("table", study, "--profile", "smoke", env=env)
    assert plain.returncode == 2 and "no runs of profile 'smoke' in MLflow yet" in plain.stderr
    resumed = run_cli("resume", study, "--profile", "smoke", "--set", "train.lr=0.01", env=env, timeout=120)
    assert resumed.returncode == 2 and "no launch of --profile smoke --set train.lr=0.01" in resumed.stderr
    assert "--profile smoke --set train.lr=0.005 --set 'train.steps=[1]'" in resumed.stderr
