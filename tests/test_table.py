"""Paper tables rebuilt from results: ours beside the paper's, deltas, missing cells never invented."""
import pandas as pd
import pytest

from ablab.launch import Launch
from ablab.rows import ResultSet
from ablab.study import Study
from ablab.table import build_table, caption, render


def _study() -> Study:
    return Study.model_validate({
        "study": "t", "paper": "iou_aware", "table": "3", "variants": ["cls", "alpha=0.4"],
        "trials": [{"name": "base"}, {"name": "iou", "set": {"model.quality.branch": "iou"}}],
        "profiles": {"smoke": {}},
        "layout": {"caption": "Table 3", "columns": ["AP", "AP90"], "rows": [
            {"label": "YOLOv3", "cited": True, "reference": {"AP": 33.0, "AP90": None}},
            {"label": "baseline", "trial": "base", "variant": "cls", "reference": {"AP": 34.4, "AP90": 10.9}},
            {"label": "0.4", "trial": "iou", "variant": "alpha=0.4", "reference": {"AP": 35.5, "AP90": 12.5}}]}})


def test_ours_beside_paper_with_delta_and_seed_mean():
    df = pd.DataFrame([
        {"trial": "base", "variant": "cls", "status": "FINISHED", "AP": 0.30, "AP90": 0.10},
        {"trial": "base", "variant": "cls", "status": "FINISHED", "AP": 0.32, "AP90": 0.12},  # second seed
        {"trial": "iou", "variant": "alpha=0.4", "status": "FAILED", "AP": 0.99, "AP90": 0.99}])
    rows = build_table(_study(), ResultSet(df))
    cited, base, iou = (cells for _, cells in rows)
    assert cited[0].ours is None and cited[0].paper == 33.0  # cited rows are never run
    assert base[0].ours == pytest.approx(31.0) and base[0].delta == pytest.approx(31.0 - 34.4)
    assert iou[0].ours is None and iou[0].delta is None     # failed trial: missing, not invented


def test_renderings_show_missing_cells_as_missing():
    df = pd.DataFrame([{"trial": "base", "variant": "cls", "status": "FINISHED", "AP": 0.31, "AP90": 0.11}])
    study = _study()
    table = build_table(study, ResultSet(df))
    cap = caption(Launch.of(study, "smoke"), "synthetic val")
    md = render(study, table, "md", cap)
    assert "| baseline" in md and "31.0 / 34.4 (-3.4)" in md and "YOLOv3 (cited)" in md
    assert "- / 35.5 (-)" in md and "profile 'smoke': synthetic val" in md
    assert "<caption>" in render(study, table, "html", cap)
    assert r"\begin{tabular}" in render(study, table, "latex", cap)
    csv = render(study, table, "csv", cap).splitlines()
    assert csv[0].startswith("row,cited,not_reproduced,AP_ours,AP_ours_lo,AP_ours_hi,AP_paper,AP_delta")
    assert csv[2].startswith("baseline,false,,31.0000,,,34.4,-3.4000")


def test_exports_stay_well_formed_whatever_a_label_holds():
    import csv
    import io

    study = _study()
    nasty = 'R50 "x", 100% & $5 #1 {a_b} ~^ \\ <b>|</b>'
    study.table_layout.rows[1].label = nasty
    df = pd.DataFrame([{"trial": "base", "variant": "cls", "status": "FINISHED", "AP": 0.31, "AP90": 0.11}])
    table = build_table(study, ResultSet(df))
    cap = caption(Launch.of(study, "smoke"), "synthetic val")
    rows = list(csv.reader(io.StringIO(render(study, table, "csv", cap))))
    assert rows[2][0] == nasty and len(rows[2]) == len(rows[0])
    latex = render(study, table, "latex", cap)
    assert (r'R50 "x", 100\% \& \$5 \#1 \{a\_b\} \textasciitilde{}\textasciicircum{} \textbackslash{} <b>|</b>'
            in latex)
    html_text = render(study, table, "html", cap)
    assert "<b>|</b>" not in html_text and "&lt;b&gt;|&lt;/b&gt;" in html_text
    md_line = next(l for l in render(study, table, "md", cap).splitlines() if l.startswith("| R50"))
    assert md_line.count(" | ") == len(study.table_layout.columns)  # the label's | is escaped


def test_columns_read_mapped_metrics_and_unreproduced_rows_stay_empty():
    study = Study.model_validate({
        "study": "voc", "paper": "pseudo_iou", "table": "1a", "variants": ["cls"],
        "trials": [{"name": "piou"}], "profiles": {"smoke": {}},
        "layout": {"columns": ["mAP"], "metrics": {"mAP": "mAP50"}, "rows": [
            {"label": "Pseudo-IoU", "trial": "piou", "reference": {"mAP": 79.0}},
            {"label": "Pseudo-IoU DCN", "not_reproduced": "DCN backbone not built", "reference": {"mAP": 43.4}}]}})
    df = pd.DataFrame([{"trial": "piou", "variant": "cls", "status": "FINISHED", "mAP": 0.2, "mAP50": 0.7}])
    (_, (piou,)), (_, (dcn,)) = build_table(study, ResultSet(df))
    assert piou.ours == pytest.approx(70.0)  # the VOC "mAP" column is mAP at IoU 0.5
    assert dcn.ours is None and dcn.paper == 43.4
    md = render(study, build_table(study, ResultSet(df)), "md", "cap")
    assert "Pseudo-IoU DCN (not reproduced: DCN backbone not built)" in md


def test_metrics_mapping_must_name_columns():
    with pytest.raises(ValueError, match="not columns"):
        Study.model_validate({
            "study": "x", "paper": "pseudo_iou", "table": "1", "trials": [{"name": "a"}], "profiles": {"smoke": {}},
            "layout": {"columns": ["mAP"], "metrics": {"AP": "mAP50"}, "rows": [{"label": "a", "trial": "a"}]}})


def test_a_row_reads_the_grid_point_its_where_names(tmp_path):
    """A trial's own sweep (Pseudo-IoU T in Table 1(a)) is one trial with a grid; each row picks its value."""
    import pandas as pd

    from ablab.study import Study
    from ablab.table import build_table

    study = Study.model_validate({
        "study": "t", "paper": "pseudo_iou", "table": "1a", "variants": ["cls"], "profiles": {"smoke": {}},
        "trials": [{"name": "base"}, {"name": "piou", "grid": {"model.assigner.threshold": [0.3, 0.4]}}],
        "layout": {"columns": ["mAP"], "scale": 1, "rows": [
            {"label": "T 0.4", "trial": "piou", "where": {"model.assigner.threshold": 0.4}, "reference": {"mAP": 0.8}},
            {"label": "T 0.3", "trial": "piou", "where": {"model.assigner.threshold": 0.3}}]}})
    assert [p.get("model.assigner.threshold") for p in Launch.of(study, "smoke").trial_points()] == [None, 0.3, 0.4]
    df = pd.DataFrame([{"trial": "piou", "variant": "cls", "model.assigner.threshold": t, "mAP": m, "status": "FINISHED"}
                       for t, m in ((0.3, 0.5), (0.4, 0.7))])
    (r04, cells04), (r03, cells03) = build_table(study, ResultSet(df))
    assert cells04[0].ours == 0.7 and cells04[0].paper == 0.8 and cells03[0].ours == 0.5


def test_a_where_value_outside_the_trials_grid_is_refused():
    import pytest

    from ablab.study import Study
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"layout.rows.0.where.model.assigner.threshold: 0.5 is not a grid value"):
        Study.model_validate({
            "study": "t", "paper": "pseudo_iou", "table": "1a", "profiles": {"smoke": {}},
            "trials": [{"name": "piou", "grid": {"model.assigner.threshold": [0.3, 0.4]}}],
            "layout": {"columns": ["mAP"], "rows": [{"label": "x", "trial": "piou", "where": {"model.assigner.threshold": 0.5}}]}})


def test_a_smoke_table_names_the_backbone_it_trained_beside_the_papers():
    from pathlib import Path

    from ablab.study import load_study
    from ablab.labels import as_trained, setting

    study = load_study(Path(__file__).resolve().parents[1] / "studies" / "table5.yaml")
    smoke_full, paper, smoke = (Launch.of(study, p) for p in ("smoke_full", "paper", "smoke"))
    shown = as_trained(smoke_full).study
    labels = [r.label for r in shown.table_layout.rows]
    assert labels[:3] == ["RetinaNet (ResNet-50-FPN -> ResNet10)", "RetinaNet (ResNet-101-FPN -> ResNet18)",
                          "RetinaNet (ResNeXt-32x8d-101-FPN -> ResNet34)"]
    assert as_trained(as_trained(smoke_full)).study.table_layout.rows[1].label == labels[1]  # once, not twice
    assert {c.row for c in shown.claims} <= set(labels) and {c.vs for c in shown.claims} <= set(labels)
    assert as_trained(paper) is paper  # the paper's profile trains the paper's backbones
    # A row the profile does not train keeps the paper's label (smoke: the R50 rows only).
    assert [r.label for r in as_trained(smoke).study.table_layout.rows][:2] == [
        "RetinaNet (ResNet-50-FPN -> ResNet10)", "RetinaNet (ResNet-101-FPN)"]
    assert setting(smoke_full) == ("synthetic val (500 images), 128 px, ResNet10/18/34 from scratch, 5 epochs, "
                                            "1 to 4 seeds per model")  # trial_seeds: the R50 rows on 4
    assert setting(smoke) == "synthetic val (500 images), 128 px, ResNet10 from scratch, 5 epochs, 4 seeds"


@pytest.mark.parametrize("label, trained, shown", [
    ("RetinaNet (ResNet-50-FPN, 1x)", "resnet10", "RetinaNet (ResNet-50-FPN -> ResNet10, 1x)"),
    ("Pseudo-IoU (R-64x4d-FPN-DCN)", "resnet34", "Pseudo-IoU (R-64x4d-FPN-DCN -> ResNet34)"),
    ("cls(obj>0.5)", "resnet10", "cls(obj>0.5) (ResNet50 -> ResNet10)"),
])
def test_the_trained_backbone_goes_beside_the_papers_name_or_after_the_label(label, trained, shown):
    study = Study.model_validate({
        "study": "t", "paper": "iou_aware", "table": "t", "trials": [{"name": "a"}],
        "profiles": {"paper": {"base": {"model": {"backbone": {"name": "resnet50"}}}},
                     "smoke": {"base": {"model": {"backbone": {"name": trained, "pretrained": "none", "norm": "bn"}}}}},
        "layout": {"columns": ["AP"], "rows": [{"label": label, "trial": "a"}]}})
    from ablab.labels import as_trained

    assert as_trained(Launch.of(study, "smoke")).study.table_layout.rows[0].label == shown


def test_the_delta_to_the_paper_is_shown_only_in_the_papers_setting(monkeypatch):
    """ours - paper is printed where a profile trains the paper's data with the paper's backbones (`paper`, and
    table1's `testdev`, which writes results for the COCO server), never on the synthetic stand-in."""
    from pathlib import Path

    from ablab.study import load_study
    from ablab.labels import papers_setting

    monkeypatch.setenv("ABLAB_COCO_ROOT", "/data/coco")
    study = load_study(Path(__file__).resolve().parents[1] / "studies" / "table1.yaml")
    assert papers_setting(Launch.of(study, "paper")) and papers_setting(Launch.of(study, "testdev"))
    assert not papers_setting(Launch.of(study, "smoke"))
