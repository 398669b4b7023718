"""``--set KEY=VALUE`` on the study commands: one parser, a launch named by its overrides (its folder, its runs'
profile tag), recorded in launch.json, and a resume that takes exactly the launch's. Fast: nothing trains
(tests/test_platform_set.py runs one study with --set end to end)."""
from __future__ import annotations

import json
import shlex

import pytest

from ablab.cli import _parser, main
from ablab.naming import launch_key
from ablab.launch import open_launch, plan_study
from ablab.submit import entrypoint
from conftest import RayStarted
from detector.config import parse_sets, set_text
from platform_helpers import write_study


@pytest.mark.parametrize("item,value", [
    ("train.steps=[8,11]", [8, 11]), ("train.steps=[8, 11]", [8, 11]), ("inference.voc_pixels=continuous", "continuous"),
    ("train.lr=0.0075", 0.0075), ("model.quality.detach=false", False), ("data.train_split='07+12'", "07+12"),
    ("data.val_split='1'", "1"), ("model.backbone={name: resnet18, pretrained: none}", {"name": "resnet18", "pretrained": "none"}),
    ("data.short=", None), ("data.root=a, b", "a, b")])
def test_a_set_item_is_read_as_yaml_and_written_back_as_it_reads(item, value):
    key = item.partition("=")[0]
    assert parse_sets([item]) == {key: value}
    assert parse_sets([set_text(key, value)]) == {key: value}  # what launch.json, tags and hints print


def test_a_launch_is_named_by_its_profile_and_its_overrides_as_a_set():
    assert launch_key("paper", {}) == "paper"
    a = launch_key("paper", parse_sets(["train.steps=[9]", "train.epochs=12"]))
    assert a == launch_key("paper", parse_sets(["train.epochs=12", "train.steps=[9]"]))  # order is no part of it
    assert a.startswith("paper+set-") and len(a) == len("paper+set-") + 8
    assert a not in (launch_key("paper", parse_sets(["train.steps=[8]", "train.epochs=12"])),
                     launch_key("smoke", parse_sets(["train.steps=[9]", "train.epochs=12"])))


@pytest.fixture
def tiny(tmp_path, synthetic_root, monkeypatch):
    """A one-trial study; ABLAB_OUTPUT_ROOT points at tmp/out (`ablab resume` takes no --out-root)."""
    monkeypatch.setenv("ABLAB_OUTPUT_ROOT", str(tmp_path / "out"))
    study = write_study(tmp_path / "tiny.yaml", synthetic_root, trials=[{"name": "a"}], layout=None)
    return str(study), tmp_path / "out" / "tiny"


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ablab: error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_launch_json_holds_the_overrides_and_a_resume_takes_exactly_the_launchs(tiny, no_ray, capsys):
    study, root = tiny
    with pytest.raises(RayStarted):  # everything before Ray passed: the launch is written
        main(["run", study, "--set", "train.lr=0.005", "--set", "train.steps=[1]"])
    folder = root / launch_key("smoke", {"train.lr": 0.005, "train.steps": [1]})
    launch = json.loads((folder / "launch.json").read_text())
    assert (launch["profile"], launch["set"]) == ("smoke", {"train.lr": 0.005, "train.steps": [1]})
    assert not (root / "smoke").exists()  # the launch without overrides is another one

    # A resume with other overrides (or none) is not this launch: refused in one line that names both.
    assert main(["resume", study, "--set", "train.lr=0.01"]) == 2
    line = _error(capsys)
    assert "no launch of --profile smoke --set train.lr=0.01" in line
    assert f"`ablab resume {study} --profile smoke --set train.lr=0.005 --set 'train.steps=[1]'`" in line
    assert main(["resume", study]) == 2
    assert "no launch of --profile smoke (" in _error(capsys)

    # The same overrides, in any order, are the launch: it resumes (up to where Ray would start) ...
    with pytest.raises(RayStarted):
        main(["resume", study, "--set", "train.steps=[1]", "--set", "train.lr=0.005"])
    # ... and a second `run` of them is refused once the first has run, pointing at the resume that finishes it.
    (folder / "tune").mkdir()
    assert main(["run", study, "--set", "train.steps=[1]", "--set", "train.lr=0.005"]) == 2
    line = _error(capsys)
    assert "already holds a run" in line, line
    assert "--set 'train.steps=[1]' --set train.lr=0.005" in line, line
    with pytest.raises(RayStarted):  # while a run without them has its own folder, beside it
        main(["run", study])
    assert json.loads((root / "smoke" / "launch.json").read_text())["set"] == {}


def test_the_overrides_reach_every_trial_config_after_the_trials_own(tmp_path, synthetic_root):
    study = write_study(tmp_path / "two.yaml", synthetic_root, layout=None)  # trial iou sets model.quality.branch
    plan = plan_study(open_launch(str(study), "smoke", ["model.quality.branch=conf", "train.steps=[1]"]),
                      str(tmp_path / "out"), check_data=False)
    assert {c.model.quality.branch for c in plan.configs.values()} == {"conf"}  # the --set wins
    assert {tuple(c.train.steps) for c in plan.configs.values()} == {(1,)}
    assert sorted(plan.configs) == ["baseline_seed0", "iou_seed0"]  # the trials' keys (the rows' ids) stay
    assert plan.out_dir.name == plan.key == launch_key("smoke", plan.launch.sets)


def test_submit_forwards_the_overrides_to_the_jobs_run(tmp_path, synthetic_root):
    study = write_study(tmp_path / "s.yaml", synthetic_root, layout=None)
    plan = plan_study(open_launch(str(study), "smoke", ["train.steps=[8,11]", "data.root=a b"]), check_data=False)
    command = entrypoint("studies/s.yaml", plan, allow_large_grid=False, seeds=2)
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "ablab.cli"]
    args = _parser().parse_args(argv[3:])  # what the job's `ablab run` gets
    assert (args.command, args.study, args.profile, args.seeds) == ("run", "studies/s.yaml", "smoke", 2)
    assert parse_sets(args.overrides) == {"train.steps": [8, 11], "data.root": "a b"}
