"""Every study file validates without running: schema, trial configs, data, reference numbers."""
from pathlib import Path

import pytest

from ablab.launch import Launch, open_launch, plan_study
from ablab.study import load_study
from detector.config import ConfigError

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_smoke_profile_resolves_with_its_data(path, synthetic_root, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative synthetic roots are generated here, not in the checkout
    plan = plan_study(open_launch(str(path), "smoke"), out_root=str(tmp_path / "out"), check_data=False)
    assert plan.points and all(c.data.kind == "synthetic" for c in plan.configs.values())


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_paper_profile_data_path_comes_from_the_environment(path, monkeypatch, tmp_path):
    study = load_study(path)
    for var in ("ABLAB_COCO_ROOT", "ABLAB_VOC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="ABLAB_(COCO|VOC)_ROOT"):
        plan_study(open_launch(str(path), "paper"), out_root=str(tmp_path / "out"))
    monkeypatch.setenv("ABLAB_COCO_ROOT", str(tmp_path / "no_coco"))
    monkeypatch.setenv("ABLAB_VOC_ROOT", str(tmp_path / "no_voc"))
    with pytest.raises(Exception, match="no_coco|no_voc"):
        plan_study(open_launch(str(path), "paper"), out_root=str(tmp_path / "out"))
    assert study.profile("paper").description


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_reference_numbers_for_every_paper_cell(path):
    layout = load_study(path).table_layout
    assert layout is not None and layout.rows
    for row in layout.rows:
        missing = [c for c in layout.columns if c not in row.reference]
        assert not missing, f"{path.name}: row {row.label!r} lacks reference numbers for {missing}"


def test_trial_overrides_per_profile_and_shared_profile_files(tmp_path):
    """A backbone row gets its paper backbone under `paper` and a smaller stand-in under `smoke`; profiles
    can share a file of config (`extends`) that their own `base` refines."""
    (tmp_path / "shared.yaml").write_text("train: {epochs: 7, lr: 0.02}\nmodel: {fpn_width: 32}\n")
    (tmp_path / "s.yaml").write_text(
        "study: s\npaper: iou_aware\ntable: '1'\n"
        "trials:\n  - {name: r101, profiles: {paper: {model.backbone.name: resnet101}, smoke: {model.backbone.name: resnet34}}}\n"
        "profiles:\n  paper: {}\n  smoke: {extends: shared.yaml, base: {train: {epochs: 3}}}\n")
    study = load_study(tmp_path / "s.yaml")
    point = Launch.of(study, "smoke").trial_points()[0]
    smoke, paper = Launch.of(study, "smoke").trial_config(point), Launch.of(study, "paper").trial_config(point)
    assert (smoke.model.backbone.name, paper.model.backbone.name) == ("resnet34", "resnet101")
    assert (smoke.train.epochs, smoke.train.lr, smoke.model.fpn_width) == (3, 0.02, 32)
    assert paper.train.epochs == 12


def test_trial_override_for_an_unknown_profile_is_an_error(tmp_path):
    (tmp_path / "s.yaml").write_text("study: s\npaper: iou_aware\ntable: '1'\n"
                                     "trials: [{name: a, profiles: {papr: {train.epochs: 1}}}]\nprofiles: {paper: {}}\n")
    with pytest.raises(ConfigError, match="trials.a.profiles: unknown profile 'papr'"):
        load_study(tmp_path / "s.yaml")


def test_missing_shared_profile_file_is_named(tmp_path):
    (tmp_path / "s.yaml").write_text("study: s\npaper: iou_aware\ntable: '1'\ntrials: [{name: a}]\n"
                                     "profiles: {smoke: {extends: nowhere.yaml}}\n")
    with pytest.raises(ConfigError, match="profiles.smoke.extends: file not found: .*nowhere.yaml"):
        load_study(tmp_path / "s.yaml")


@pytest.mark.slow
def test_every_smoke_trial_trains_and_scores_every_variant(tmp_path):
    """Each distinct (model, inference) config of every study's smoke profile trains an epoch on 8 images and
    reports metrics for exactly the variants its table reads: no study fails at run time on its own config."""
    import json

    from detector.config import parse_config
    from detector.engine import evaluate, train

    seen: dict[str, str] = {}
    for path in STUDIES:
        study = load_study(path)
        for point, cfg in Launch.of(study, "smoke").resolve():
            raw = cfg.model_dump()
            key = json.dumps({k: raw[k] for k in ("model", "inference")}, sort_keys=True)
            if key in seen:
                continue
            seen[key] = f"{path.stem}:{point['trial']}"
            raw["train"].update(epochs=1, steps=[], warmup_iters=2, threads=2)
            raw["data"].update(root=str(tmp_path / "data"), max_images=8,
                               synthetic={"train": 8, "val": 8, "size": 128, "seed": 0})
            cfg = parse_config(raw)
            result = evaluate(train(cfg, log=lambda m: None).model, cfg, log=lambda m: None)
            assert {k.split("/")[0] for k in result.metrics} == {v.name for v in cfg.variants()}, seen[key]
    assert len(seen) > 50


def test_seeds_come_from_the_profile_or_from_seeds_n_and_a_resume_keeps_the_launchs(tmp_path):
    import json

    path, out = str(STUDIES[0].parent / "table3.yaml"), str(tmp_path / "out")
    one = plan_study(open_launch(path, "smoke"), out_root=out, check_data=False)
    three = plan_study(open_launch(path, "smoke"), out_root=out, check_data=False, seeds=3)
    assert {p["seed"] for p in one.points} == {0} and {p["seed"] for p in three.points} == {0, 1, 2}
    assert len(three.points) == 3 * len(one.points)
    (three.out_dir).mkdir(parents=True)
    (three.out_dir / "launch.json").write_text(json.dumps({"seeds": [0, 1, 2]}))
    assert len(plan_study(open_launch(path, "smoke"), out_root=out, check_data=False, resume=True).points) == len(three.points)


def test_a_relative_data_root_is_relative_to_the_study_file_not_to_where_the_command_runs(tmp_path, monkeypatch):
    import yaml

    folder = tmp_path / "project" / "studies"
    folder.mkdir(parents=True)
    study = folder / "s.yaml"
    study.write_text(yaml.safe_dump({
        "study": "s", "paper": "iou_aware", "table": "t", "trials": [{"name": "a"}],
        "profiles": {"smoke": {"base": {"data": {"kind": "synthetic", "root": "../data/synthetic"}}}}}))
    monkeypatch.chdir(tmp_path)  # elsewhere
    plan = plan_study(open_launch(str(study.relative_to(tmp_path)), "smoke"), out_root=str(tmp_path / "out"), check_data=False)
    assert [c.data.root for c in plan.configs.values()] == [str(tmp_path / "project" / "data" / "synthetic")]
