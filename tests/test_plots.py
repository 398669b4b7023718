"""The papers' figures drawn from a results DataFrame: which plots a study gets, and what they show."""
import pandas as pd

from ablab.study import Study
from dashboards import plots

PNG = b"\x89PNG"


def _alpha_study() -> Study:
    return Study.model_validate({
        "study": "t3", "paper": "iou_aware", "table": "3",
        "variants": ["cls", "alpha=0.9", "alpha=0.5", "alpha=0.3", "alpha=0.2,truth"],
        "trials": [{"name": "base"}, {"name": "iou", "set": {"model.quality.branch": "iou"}}], "profiles": {"smoke": {}},
        "layout": {"columns": ["AP", "AP90"], "rows": [
            {"label": "baseline", "trial": "base", "variant": "cls"},
            {"label": "0.5", "trial": "iou", "variant": "alpha=0.5"},
            {"label": "truth", "trial": "iou", "variant": "alpha=0.2,truth"}]}})


def _alpha_results() -> pd.DataFrame:
    rows = [{"trial": "base", "variant": "cls", "AP": 0.30, "AP50": 0.5, "AP75": 0.3, "AP90": 0.1, "pearson": 0.2, "spearman": 0.3}]
    for a, ap in (("0.9", 0.31), ("0.5", 0.33), ("0.3", 0.32)):
        rows.append({"trial": "iou", "variant": f"alpha={a}", "AP": ap, "AP50": 0.5, "AP75": 0.35, "AP90": 0.12,
                     "pearson": 0.4, "spearman": 0.45})
    rows.append({"trial": "iou", "variant": "alpha=0.2,truth", "AP": 0.5, "AP50": 0.6, "AP90": 0.3, "pearson": 0.9, "spearman": 0.9})
    return pd.DataFrame(rows).assign(status="FINISHED", trial_key=lambda d: d["trial"] + "_seed0")


def test_alpha_sweep_draws_models_with_three_or_more_predicted_alphas(tmp_path):
    path = plots.alpha_sweep(_alpha_study(), _alpha_results(), tmp_path)
    assert path == tmp_path / "alpha_sweep.png" and path.read_bytes()[:4] == PNG
    only_cls = _alpha_results().query("variant == 'cls'")
    assert plots.alpha_sweep(_alpha_study(), only_cls, tmp_path / "none") is None  # no sweep: no plot


def test_ap_vs_iou_reads_coco_thresholds_per_table_row(tmp_path):
    assert plots.ap_vs_iou(_alpha_study(), _alpha_results(), tmp_path).read_bytes()[:4] == PNG


def test_figure4_scatter_uses_each_rows_samples(tmp_path):
    samples = {"confidence": [0.1, 0.5, 0.9], "iou_eval": [0.2, 0.6, 0.8]}
    scatter = {"base_seed0": {"cls": samples}, "iou_seed0": {"alpha=0.5": samples, "alpha=0.2,truth": samples}}
    assert plots.confidence_vs_iou(_alpha_study(), _alpha_results(), scatter, tmp_path).read_bytes()[:4] == PNG
    assert plots.confidence_vs_iou(_alpha_study(), _alpha_results(), {}, tmp_path / "none") is None


def test_threshold_curves_put_the_inside_baseline_at_zero(tmp_path):
    study = Study.model_validate({
        "study": "t1a", "paper": "pseudo_iou", "table": "1a", "variants": ["cls"],
        "trials": [{"name": n} for n in ("inside", "p3", "p4", "c3", "c4", "c5")], "profiles": {"smoke": {}},
        "layout": {"columns": ["mAP"], "metrics": {"mAP": "mAP50"}, "rows": [{"label": "x", "trial": "p3"}]}})
    df = pd.DataFrame([
        {"trial": "inside", "model.assigner.name": "inside", "model.assigner.threshold": 0.4, "mAP50": 0.70},
        {"trial": "p3", "model.assigner.name": "pseudo_iou", "model.assigner.threshold": 0.3, "mAP50": 0.72},
        {"trial": "p4", "model.assigner.name": "pseudo_iou", "model.assigner.threshold": 0.4, "mAP50": 0.74},
        {"trial": "c3", "model.assigner.name": "centerness", "model.assigner.threshold": 0.3, "mAP50": 0.71}]
    ).assign(variant="cls", status="FINISHED", trial_key=lambda d: d["trial"] + "_seed0")
    assert plots.threshold_curves(study, df, tmp_path).read_bytes()[:4] == PNG  # pseudo_iou: 0.0, 0.3, 0.4
    assert plots.threshold_curves(study, df[df["trial"] != "inside"], tmp_path / "b") is None  # two points only
