"""Every study file validates without running: schema, trial configs, data, reference numbers."""
from pathlib import Path

import pytest

from ablab.runner import plan_study
from ablab.study import load_study
from detector.config import ConfigError

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_smoke_profile_resolves_with_its_data(path, synthetic_root, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative synthetic roots are generated here, not in the checkout
    plan = plan_study(str(path), "smoke", out_root=str(tmp_path / "out"), check_data=False)
    assert plan.points and all(c.data.kind == "synthetic" for c in plan.configs.values())


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_paper_profile_data_path_comes_from_the_environment(path, monkeypatch, tmp_path):
    study = load_study(path)
    for var in ("ABLAB_COCO_ROOT", "ABLAB_VOC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="ABLAB_(COCO|VOC)_ROOT"):
        plan_study(str(path), "paper", out_root=str(tmp_path / "out"))
    monkeypatch.setenv("ABLAB_COCO_ROOT", str(tmp_path / "no_coco"))
    monkeypatch.setenv("ABLAB_VOC_ROOT", str(tmp_path / "no_voc"))
    with pytest.raises(Exception, match="no_coco|no_voc"):
        plan_study(str(path), "paper", out_root=str(tmp_path / "out"))
    assert study.profile("paper").description


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_reference_numbers_for_every_paper_cell(path):
    layout = load_study(path).table_layout
    assert layout is not None and layout.rows
    for row in layout.rows:
        missing = [c for c in layout.columns if c not in row.reference]
        assert not missing, f"{path.name}: row {row.label!r} lacks reference numbers for {missing}"
