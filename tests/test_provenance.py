"""Every study's `paper` profile runs what its provenance records say (studies/profiles/provenance/), so a
changed default cannot silently change what a paper profile trains or how it evaluates."""
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from ablab.cli import _parser, main
from ablab.provenance import PROFILE, flat_settings, other_command, problems, records_for, resolved_trials
from ablab.launch import open_launch, plan_study
from ablab.study import load_study

STUDIES_DIR = Path(__file__).resolve().parents[1] / "studies"
STUDIES = sorted(STUDIES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_paper_profile_matches_its_provenance_records(path):
    """Each resolved field has a record, and its value is the record's (where a trial does not set it itself)."""
    assert problems(load_study(path)) == []


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_the_other_value_is_one_set_away(path, tmp_path, monkeypatch):
    """Where paper and authors' config disagree, the ``ablab run ... --set KEY=VALUE`` that ``ablab show`` prints
    for the record parses as `ablab run`'s command line, and its overrides give every trial of the paper profile a
    valid config that holds the other value."""
    for var in ("ABLAB_VOC_ROOT", "ABLAB_COCO_ROOT"):  # the paper profiles' data roots (not read: check_data=False)
        monkeypatch.setenv(var, str(tmp_path / var))
    study = load_study(path)
    alternatives = 0
    for field, rec in records_for(study).items():
        if not rec.other_sets:
            continue
        argv = shlex.split(other_command(study, rec))
        assert argv[:2] == ["ablab", "run"], field
        args = _parser().parse_args(argv[1:])
        plan = plan_study(open_launch(args.study, args.profile, args.overrides), str(tmp_path / "out"), check_data=False)
        wanted = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in rec.other_sets)}
        resources = plan.resources.model_dump()
        for cfg in plan.configs.values():
            settings = {**flat_settings(cfg), **{f"resources.{k}": v for k, v in resources.items()}}
            assert {k: settings[k] for k in wanted} == wanted, field
        alternatives += len(wanted)
    assert alternatives == OTHER_SETS.get(path.stem, 0)


OTHER_SETS = {"table1": 4, "table2": 4, "table3": 4, "table4": 3, "table5": 6, "table6": 3,
              "pseudo_iou_table1a": 1, "pseudo_iou_table1b": 1, "pseudo_iou_table1c": 1, "pseudo_iou_table2": 1,
              "pseudo_iou_table3": 2, "pseudo_iou_table4": 2, **{f"retinanet_conf_table{i}": 5 for i in range(1, 7)}}
"""The ``--set`` items of each study's records' other values (62 in all): a record that loses its --set fails."""


def test_table5_runs_the_authors_voc_schedule_and_pixel_convention():
    _, settings = resolved_trials(load_study(STUDIES_DIR / "table5.yaml"))[0]
    assert (settings["train.epochs"], settings["train.steps"]) == (12, [8, 11])
    assert (settings["train.lr"], settings["train.batch_size"], settings["train.grad_clip"]) == (0.01, 16, 35.0)
    assert (settings["train.warmup_iters"], settings["train.warmup_ratio"]) == (500, pytest.approx(1 / 3))
    assert settings["inference.voc_pixels"] == "inclusive"


@pytest.fixture
def study_copy(tmp_path):
    """table5.yaml beside a copy of the real profiles and records, to change one of them."""
    shutil.copytree(STUDIES_DIR / "profiles", tmp_path / "profiles")
    shutil.copy(STUDIES_DIR / "table5.yaml", tmp_path / "table5.yaml")
    return tmp_path


def test_a_changed_value_or_a_field_without_record_is_reported(study_copy):
    profile = study_copy / "profiles" / "paper_voc_retinanet.yaml"
    profile.write_text(profile.read_text().replace("grad_clip: 35", "grad_clip: 10"))
    found = problems(load_study(study_copy / "table5.yaml"))
    assert found and all("train.grad_clip = 10.0, the record says 35.0" in p for p in found)
    records = study_copy / "profiles" / "provenance" / "iou_aware.yaml"
    records.write_text(records.read_text().replace("      model.focal.gamma:", "      model.focal.gamma_gone:"))
    assert any("model.focal.gamma = 2.0 has no provenance record" in p for p in problems(load_study(study_copy / "table5.yaml")))


def test_a_field_a_trial_sets_is_the_tables_row_not_a_mismatch():
    """table5's trials set the backbone of their rows: resnet101 is not compared with the record's resnet50."""
    study = load_study(STUDIES_DIR / "table5.yaml")
    names = {name: s["model.backbone.name"] for name, s in resolved_trials(study)}
    assert names["retinanet_r101"] == "resnet101" and records_for(study)["model.backbone.name"].value == "resnet50"
    assert problems(study) == []


def test_show_prints_settings_with_sources_and_user_errors_exit_2(capsys):
    assert main(["show", str(STUDIES_DIR / "table5.yaml"), "--profile", PROFILE]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^train\.steps +\[8, 11\] +<- fork's VOC config: step=\[8, 11\]", out, re.M)
    assert re.search(r"^inference\.voc_pixels +'inclusive' +<- fork: areas and overlaps \+ 1", out, re.M)
    assert "other: continuous, as COCO and mmdetection 2.x: --set inference.voc_pixels=continuous" in out
    assert re.search(r"^ +run it: ablab run \S*studies/table5\.yaml --profile paper --set 'train\.steps=\[9\]'$", out, re.M)
    for argv in (["show", str(STUDIES_DIR / "table5.yaml"), "--profile", "smoke"], ["show", "no_such_study.yaml"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("ablab: error: ") and err.count("\n") == 1
