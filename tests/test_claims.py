"""Intervals and verdicts (ablab.evidence): the seed interval by hand and by simulation, and a reproduced, a
contradicted and an inconclusive claim from runs and bootstrap artifacts written to a real MLflow store, as
`ablab.claims`, `ablab table` and the report show them."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ablab.evidence import CONTRADICTED, INCONCLUSIVE, REPRODUCED, estimate, seed_half_width, verdict, Estimate


def test_the_seed_interval_by_hand():
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.3027 -> 4.3027 / sqrt(3) = 2.4841
    assert seed_half_width(np.array([1.0, 2.0, 3.0])) == pytest.approx(2.4841, abs=1e-4)
    assert seed_half_width(np.array([5.0])) is None
    e = estimate(np.array([1.0, 2.0, 3.0]), None)
    assert (e.value, e.source) == (2.0, "seeds") and e.lo == pytest.approx(2 - 2.4841, abs=1e-4)


def test_images_and_seeds_add_in_quadrature():
    replicates = np.tile(np.linspace(-3, 3, 201), (2, 1)) + np.array([[1.0], [3.0]])  # per seed, centred on it
    e = estimate(np.array([1.0, 3.0]), replicates)
    seed_h = 12.7062 * np.std([1.0, 3.0], ddof=1) / np.sqrt(2)  # t(0.975, 1)
    image_h = np.percentile(np.linspace(-3, 3, 201), 97.5)
    assert e.source == "seeds+images" and e.value == 2.0
    assert e.hi - 2.0 == pytest.approx(np.hypot(seed_h, image_h), rel=1e-4)
    one = estimate(np.array([1.0]), replicates[:1])
    assert one.source == "images" and (one.lo, one.hi) == pytest.approx((1 - image_h, 1 + image_h))


def test_the_seed_interval_covers_the_mean_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    draws = rng.normal(10.0, 2.0, size=(4000, 3))
    covered = np.mean([abs(d.mean() - 10.0) <= seed_half_width(d) for d in draws])
    assert 0.94 <= covered <= 0.96, covered  # 4000 draws: +- 0.007 at two standard errors


def test_the_verdict_reads_the_interval_on_the_papers_side():
    assert verdict(+3.8, Estimate(1.0, 0.2, 1.8)) == REPRODUCED
    assert verdict(+3.8, Estimate(-1.0, -1.8, -0.2)) == CONTRADICTED
    assert verdict(-0.5, Estimate(-1.0, -1.8, -0.2)) == REPRODUCED
    assert verdict(+3.8, Estimate(1.0, -0.2, 1.8)) == INCONCLUSIVE
    assert verdict(+3.8, Estimate(1.0)) == INCONCLUSIVE  # no interval: one seed, no replicates


STUDY = {
    "study": "claims_t", "paper": "iou_aware", "table": "t", "variants": ["cls"],
    "trials": [{"name": n} for n in ("base", "up", "down", "same")],
    "seeds": [0, 1], "profiles": {"smoke": {}},
    "layout": {"columns": ["AP"], "rows": [
        {"label": "Baseline", "trial": "base", "reference": {"AP": 30.0}},
        {"label": "Up", "trial": "up", "reference": {"AP": 33.0}},
        {"label": "Down", "trial": "down", "reference": {"AP": 32.0}},
        {"label": "Same", "trial": "same", "reference": {"AP": 31.0}}]},
    "claims": [{"row": "Up", "vs": "Baseline", "metric": "AP", "says": "up by 3"},
               {"row": "Down", "vs": "Baseline", "metric": "AP"},
               {"row": "Same", "vs": "Baseline", "metric": "AP"}],
}
# Our AP per trial and seed; every trial's replicates are the baseline's noise shifted (as paired draws are).
OURS = {"base": (0.30, 0.31), "up": (0.35, 0.36), "down": (0.25, 0.26), "same": (0.305, 0.305)}


@pytest.fixture
def store(tmp_path):
    """A real MLflow store holding the study's runs as ablab logs them, with their bootstrap artifacts."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ablab/claims_t", artifact_location=(tmp_path / "art").as_uri())
    noise = np.random.default_rng(0).normal(0, 0.01, 200)
    for trial, values in OURS.items():
        for seed, ap in enumerate(values):
            run = client.create_run(exp, tags={"ablab.role": "trial", "ablab.profile": "smoke", "ablab.trial": trial,
                                               "ablab.seed": str(seed), "ablab.trial_key": f"{trial}_seed{seed}",
                                               "ablab.variants": json.dumps(["cls"])})
            client.log_metric(run.info.run_id, "cls/AP", ap)
            path = tmp_path / "bootstrap.json"
            path.write_text(json.dumps({"cls": {"AP": list(ap + noise + (0.002 * seed if trial == "same" else 0))}}))
            client.log_artifact(run.info.run_id, str(path))
            client.set_terminated(run.info.run_id, "FINISHED")
    study = tmp_path / "claims_t.yaml"
    study.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    return study, uri


def test_claims_come_out_reproduced_contradicted_and_inconclusive(store):
    import ablab

    study, uri = store
    frame = ablab.claims(str(study), profile="smoke", tracking_uri=uri)
    assert list(frame["verdict"]) == [REPRODUCED, CONTRADICTED, INCONCLUSIVE]
    assert list(frame["paper"]) == [3.0, 2.0, 1.0]
    assert frame["ours"].tolist() == pytest.approx([5.0, -5.0, 0.0])
    assert list(frame["interval"]) == ["seeds+images"] * 3 and list(frame["seeds"]) == [2, 2, 2]
    # Up: the same difference for both seeds (no seed spread) and paired replicates: an interval of width ~0
    assert frame.loc[0, "hi"] - frame.loc[0, "lo"] < 0.01
    # Same: +0.5 and -0.5 points on the two seeds: t(0.975, 1) makes it wide
    assert frame.loc[2, "lo"] < 0 < frame.loc[2, "hi"]


def test_ablab_table_shows_each_cells_interval_and_each_claims_verdict(store, tmp_path):
    study, uri = store
    r = subprocess.run([sys.executable, "-m", "ablab.cli", "table", str(study), "--tracking-uri", uri],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| Up vs Baseline | AP | +3.0 | +5.0 [+5.0, +5.0] | reproduced | seeds+images (2 seeds) |" in r.stdout
    assert "| Down vs Baseline | AP | +2.0 | -5.0" in r.stdout and "| contradicted |" in r.stdout
    assert "| inconclusive |" in r.stdout
    assert "30.5±" in r.stdout  # the baseline's cell: the mean of 30 and 31, with its interval

    from dashboards.report import build_report

    page = build_report(str(study), "smoke", uri, dashboards_dir=str(tmp_path / "dash")).read_text()
    assert 'class="ablab-table claims"' in page and "reproduced" in page and "contradicted" in page


def test_the_effect_view_gives_each_change_against_its_baseline(store, tmp_path):
    import ablab

    study, uri = store
    frame = ablab.effects(str(study), profile="smoke", tracking_uri=uri)
    # ours: (0.35 + 0.36) / 2 - (0.30 + 0.31) / 2 = +5 points, and so on; paper: the references' differences
    assert list(zip(frame["row"], frame["vs"])) == [("Up", "Baseline"), ("Down", "Baseline"), ("Same", "Baseline")]
    assert frame["ours"].tolist() == pytest.approx([5.0, -5.0, 0.0])
    assert frame["paper"].tolist() == [3.0, 2.0, 1.0]
    assert list(frame["verdict"]) == [REPRODUCED, CONTRADICTED, INCONCLUSIVE]
    r = subprocess.run([sys.executable, "-m", "ablab.cli", "table", str(study), "--effects", "--tracking-uri", uri],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| Up vs Baseline | +5.0 [+5.0, +5.0] / +3.0 (reproduced) |" in r.stdout
    assert "| Down vs Baseline | -5.0 " in r.stdout and "/ +2.0 (contradicted) |" in r.stdout
