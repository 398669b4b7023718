"""Intervals and verdicts (ablab.evidence): the seed interval, power and detectable effect by hand and by
simulation (identical arms decided in <= 5% of draws, a known effect at its computed power); claims between
models undecided below the seed minimum whatever their val-image interval, claims within one model decided
from one seed; reproduced, contradicted and inconclusive claims, and one smaller than the paper's, from runs and
bootstrap artifacts written to a real MLflow store, as `ablab.claims`, `ablab table` and the report show them."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from scipy import stats

from ablab.evidence import (BETWEEN, CONTRADICTED, INCONCLUSIVE, LARGER, REPRODUCED, SMALLER, WITHIN, Estimate,
                            against_paper, detectable, estimate, judge, power, seed_half_width, verdict)


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


def test_an_interval_that_excludes_the_papers_difference_says_smaller_or_larger():
    assert against_paper(+3.8, Estimate(1.0, 0.2, 1.8)) == SMALLER  # reproduced, but smaller than the paper's
    assert against_paper(+3.8, Estimate(1.0, -0.5, 2.5)) == SMALLER  # inconclusive, and not the paper's size
    assert against_paper(+0.5, Estimate(1.0, 0.8, 1.2)) == LARGER
    assert against_paper(-0.5, Estimate(-1.0, -1.2, -0.8)) == LARGER  # in the paper's direction (down)
    assert against_paper(-3.0, Estimate(-1.0, -1.2, -0.8)) == SMALLER
    assert against_paper(+3.8, Estimate(3.0, 1.0, 5.0)) == ""
    assert against_paper(+3.8, Estimate(3.0)) == ""


def test_power_and_the_detectable_difference_by_hand():
    # 3 seeds, interval +-4.3027 (t(0.975, 2) x SE 1): against +5, power = P(noncentral t(2, 5) > 4.3027)
    ours = Estimate(0.0, -4.3027, 4.3027, seeds=3, source="seeds", seed_half=4.3027)
    assert power(5.0, ours) == pytest.approx(stats.nct.sf(4.3027, 2, 5.0), abs=1e-4)
    # (Z + 5) / sqrt(chi2(2) / 2) > 4.3027 in 0.7196 of 2,000,000 draws
    assert power(5.0, ours) == pytest.approx(0.7196, abs=2e-3)
    assert power(-5.0, ours) == power(5.0, ours)
    d = detectable(ours)  # the difference called reproduced 80% of the time
    assert stats.nct.sf(4.3027, 2, d) == pytest.approx(0.8, abs=1e-3) and 5 < d < 6.5  # above the 5 at 0.72
    assert power(5.0, Estimate(0.0, -1.0, 1.0, seeds=1)) is None and detectable(Estimate(0.0)) is None


def test_a_claim_between_models_needs_the_seed_minimum_and_one_within_a_model_does_not():
    images_only = Estimate(2.0, 1.5, 2.5, seeds=1, source="images")  # narrow: val images alone
    assert judge(+2.0, images_only, BETWEEN, 3).text == "inconclusive (needs 3 seeds)"
    assert judge(+2.0, images_only, WITHIN, 3).text == "reproduced"
    two = Estimate(2.0, 1.5, 2.5, seeds=2, source="seeds+images")
    assert judge(+2.0, two, BETWEEN, 3).verdict == INCONCLUSIVE and judge(+2.0, two, BETWEEN, 2).verdict == REPRODUCED
    j = judge(+4.0, Estimate(2.0, 1.5, 2.5, seeds=3, seed_half=0.5), BETWEEN, 3)
    assert j.text == "reproduced, smaller than the paper's" and j.power > 0.99 and j.detectable < 1
    assert judge(+4.0, Estimate(2.0, 1.5, 2.5, seeds=3, seed_half=0.5), WITHIN, 3).power is None


def _simulated_arms(rng, effect: float, seeds: int, sd: float, image_sd: float, draws: int):
    """Per draw: (seeds,) paired differences of two arms trained with ``sd`` of noise each, measured on one val
    set (its sampling error, of SD ``image_sd``, shared by every seed), and (seeds, 200) val-image bootstrap
    replicates of each seed's difference (each replicate one resample of the images: one shift for all seeds)."""
    per_seed = (effect + rng.normal(0, image_sd, (draws, 1)) + rng.normal(0, sd, (draws, seeds))
                - rng.normal(0, sd, (draws, seeds)))
    replicates = per_seed[..., None] + rng.normal(0, image_sd, (draws, 1, 200))
    return per_seed, replicates


@pytest.mark.parametrize("seeds", [3, 5])
def test_identical_arms_are_decided_in_at_most_5_percent_of_draws(seeds):
    rng = np.random.default_rng(7)
    per_seed, reps = _simulated_arms(rng, 0.0, seeds, sd=0.85, image_sd=0.4, draws=2000)
    # judge() is verdict() on two or more seeds above the minimum (the test above); verdict() alone is faster
    decided = np.mean([verdict(+2.2, estimate(d, r)) != INCONCLUSIVE for d, r in zip(per_seed, reps)])
    assert decided <= 0.05, decided
    # The same arms judged on val images alone, the unsound rule this replaced, decide far more often.
    naive = np.mean([verdict(+2.2, estimate(d[:1], r[:1])) != INCONCLUSIVE for d, r in zip(per_seed, reps)])
    assert naive > 0.3, naive


@pytest.mark.parametrize("image_sd", [0.0, 0.6])
def test_a_known_effect_is_reproduced_at_its_computed_power(image_sd):
    """power(), given the true spreads, against the rule's rate on simulated launches: the paired t test's power
    without images; with them, the seed and image parts as the rule adds them."""
    rng = np.random.default_rng(11)
    seeds, sd, effect = 4, 0.85, 2.2
    crit, z = stats.t.ppf(0.975, seeds - 1), stats.norm.ppf(0.975)
    truth = Estimate(0.0, seeds=seeds, seed_half=crit * sd * np.sqrt(2) / np.sqrt(seeds),
                     image_below=z * image_sd, image_above=z * image_sd)
    expected = power(effect, truth)
    per_seed, reps = _simulated_arms(rng, effect, seeds, sd=sd, image_sd=image_sd, draws=3000)
    rate = np.mean([verdict(effect, estimate(d, r if image_sd else None)) == REPRODUCED for d, r in zip(per_seed, reps)])
    assert 0.3 < expected < 0.95 and rate == pytest.approx(expected, abs=0.03), (rate, expected)


STUDY = {
    "study": "claims_t", "paper": "iou_aware", "table": "t", "variants": ["cls", "alpha=0.5"],
    "trials": [{"name": n} for n in ("base", "up", "down", "same")],
    "seeds": [0, 1, 2], "profiles": {"smoke": {}, "strict": {"min_seeds": 4}, "partial": {"trials": ["base", "up"]}},
    "layout": {"columns": ["AP"], "rows": [
        {"label": "Baseline", "trial": "base", "variant": "cls", "reference": {"AP": 30.0}},
        {"label": "Up", "trial": "up", "variant": "cls", "reference": {"AP": 33.0}},
        {"label": "Down", "trial": "down", "variant": "cls", "reference": {"AP": 32.0}},
        {"label": "Same", "trial": "same", "variant": "cls", "reference": {"AP": 31.0}},
        {"label": "Up rescored", "trial": "up", "variant": "alpha=0.5", "reference": {"AP": 34.0}}]},
    "claims": [{"row": "Up", "vs": "Baseline", "metric": "AP", "says": "up by 3"},
               {"row": "Down", "vs": "Baseline", "metric": "AP"},
               {"row": "Same", "vs": "Baseline", "metric": "AP"},
               {"row": "Up rescored", "vs": "Up", "metric": "AP", "says": "rescoring adds 1"}],
}
# Our AP per trial and seed (cls; alpha=0.5 adds 0.4 points to up's); every trial's replicates are the baseline's
# noise shifted (as paired draws are).
OURS = {"base": (0.30, 0.31, 0.305), "up": (0.35, 0.36, 0.355), "down": (0.25, 0.26, 0.255),
        "same": (0.305, 0.305, 0.305)}


@pytest.fixture
def store(tmp_path):
    """A real MLflow store holding the study's runs as ablab logs them (for the launches of both profiles), with
    their bootstrap artifacts."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ablab/claims_t", artifact_location=(tmp_path / "art").as_uri())
    noise = np.random.default_rng(0).normal(0, 0.01, 200)
    for profile in ("smoke", "strict"):
        for trial, values in OURS.items():
            for seed, ap in enumerate(values):
                run = client.create_run(exp, tags={"ablab.role": "trial", "ablab.profile": profile,
                                                   "ablab.trial": trial, "ablab.seed": str(seed),
                                                   "ablab.trial_key": f"{trial}_seed{seed}",
                                                   "ablab.variants": json.dumps(["cls", "alpha=0.5"])})
                rescored = ap + (0.004 if trial == "up" else 0.0)
                client.log_metric(run.info.run_id, "cls/AP", ap)
                client.log_metric(run.info.run_id, "alpha_0.5/AP", rescored)
                path = tmp_path / "bootstrap.json"
                shift = 0.002 * seed if trial == "same" else 0
                path.write_text(json.dumps({"cls": {"AP": list(ap + noise + shift)},
                                            "alpha=0.5": {"AP": list(rescored + noise + shift)}}))
                client.log_artifact(run.info.run_id, str(path))
                client.set_terminated(run.info.run_id, "FINISHED")
    study = tmp_path / "claims_t.yaml"
    study.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    return study, uri


def test_claims_come_out_reproduced_contradicted_and_inconclusive(store):
    import ablab

    study, uri = store
    frame = ablab.claims(str(study), profile="smoke", tracking_uri=uri)
    assert list(frame["verdict"]) == [REPRODUCED, CONTRADICTED, INCONCLUSIVE, REPRODUCED]
    assert list(frame["kind"]) == [BETWEEN, BETWEEN, BETWEEN, WITHIN]
    assert list(frame["paper"]) == [3.0, 2.0, 1.0, 1.0]
    assert frame["ours"].tolist() == pytest.approx([5.0, -5.0, 0.0, 0.4])
    assert list(frame["interval"]) == ["seeds+images"] * 4 and list(frame["seeds"]) == [3] * 4
    # Up: the same difference for every seed (no seed spread) and paired replicates: an interval of width ~0
    assert frame.loc[0, "hi"] - frame.loc[0, "lo"] < 0.01
    assert frame.loc[0, "against_paper"] == LARGER and frame.loc[3, "against_paper"] == SMALLER
    # Same: +0.5, -0.5 and 0 points on the three seeds: t(0.975, 2) makes it wide, and weak against +1
    assert frame.loc[2, "lo"] < 0 < frame.loc[2, "hi"] and frame.loc[2, "power"] < 0.5
    assert frame.loc[2, "detectable"] > 1.0
    assert frame["power"].isna().tolist() == [False, False, False, True]  # within one model: no seeds needed


def test_the_claims_from_the_trials_own_files_are_those_from_mlflow(store, tmp_path):
    """While MLflow lacks a launch's writes, `ablab run` checks its claims on the trials' files: the same verdicts,
    values and intervals as from the runs in MLflow."""
    import ablab
    from ablab.evidence import claims_frame
    from ablab.labels import as_trained
    from ablab.launch import open_launch
    from ablab.query import trial_files

    study, uri = store
    noise = np.random.default_rng(0).normal(0, 0.01, 200)
    for trial, values in OURS.items():  # as the store fixture logged them
        for seed, ap in enumerate(values):
            folder = tmp_path / "out" / "trials" / f"{trial}_seed{seed}"
            folder.mkdir(parents=True)
            rescored, shift = ap + (0.004 if trial == "up" else 0.0), 0.002 * seed if trial == "same" else 0
            (folder / "metrics.json").write_text(json.dumps({"cls/AP": ap, "alpha=0.5/AP": rescored}))
            (folder / "config.json").write_text(json.dumps({"inference": {"variants": [{"name": "cls"},
                                                                                      {"name": "alpha=0.5"}]}}))
            (folder / "bootstrap.json").write_text(json.dumps({"cls": {"AP": list(ap + noise + shift)},
                                                               "alpha=0.5": {"AP": list(rescored + noise + shift)}}))
    launch = open_launch(str(study), "smoke")
    from_files = claims_frame(as_trained(launch), trial_files(launch, tmp_path / "out"))
    from_mlflow = ablab.claims(str(study), profile="smoke", tracking_uri=uri)
    pd.testing.assert_frame_equal(from_files, from_mlflow)


def test_below_the_seed_minimum_a_claim_between_models_is_inconclusive_and_says_why(store):
    import ablab

    study, uri = store
    frame = ablab.claims(str(study), profile="strict", tracking_uri=uri)  # min_seeds: 4, three seeds ran
    assert list(frame["verdict"]) == [INCONCLUSIVE, INCONCLUSIVE, INCONCLUSIVE, REPRODUCED]
    assert list(frame["reason"]) == ["needs 4 seeds"] * 3 + [""]
    assert frame["ours"].tolist() == pytest.approx([5.0, -5.0, 0.0, 0.4])  # the value is still shown
    r = subprocess.run([sys.executable, "-m", "ablab.cli", "table", str(study), "--profile", "strict",
                        "--tracking-uri", uri], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| Up vs Baseline | between models | AP | +3.0 | +5.0 [+5.0, +5.0] | inconclusive (needs 4 seeds) |" in r.stdout
    assert ("Up vs Baseline on AP: 3 paired seeds of these separately trained models, fewer than the 4 seeds a verdict "
            "between models needs") in r.stdout


def test_ablab_table_shows_each_cells_interval_and_each_claims_verdict(store, tmp_path):
    study, uri = store
    r = subprocess.run([sys.executable, "-m", "ablab.cli", "table", str(study), "--tracking-uri", uri],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ("| Up vs Baseline | between models | AP | +3.0 | +5.0 [+5.0, +5.0] | reproduced, larger than the "
            "paper's | 1.00 (detects 0.0) | seeds+images (3 seeds) |") in r.stdout
    assert "| Down vs Baseline | between models | AP | +2.0 | -5.0" in r.stdout and "| contradicted |" in r.stdout
    assert "| inconclusive |" in r.stdout and "one model: seeds not needed" in r.stdout
    assert "Same vs Baseline on AP: its 3 seeds had only" in r.stdout  # a weak claim says so
    assert "| Baseline    | 30.5±2.3 / 30.0 |" in r.stdout  # the mean of 30, 31 and 30.5, with its interval and "(+0.5)" not in r.stdout  # smoke is not the paper's setting: no delta

    from ablab.launch import open_launch
    from dashboards.report import build_report

    page = build_report(open_launch(str(study), "smoke"), uri, dashboards_dir=str(tmp_path / "dash")).read_text()
    assert 'class="ablab-table claims"' in page and "reproduced" in page and "contradicted" in page
    assert "(needs" not in page and 'class="findings"' in page and "excludes the paper&#x27;s +3.0" in page


def test_the_effect_view_gives_each_change_against_its_baseline(store, tmp_path):
    import ablab

    study, uri = store
    frame = ablab.effects(str(study), profile="smoke", tracking_uri=uri)
    # ours: mean over seeds of up - base = +5 points, and so on; paper: the references' differences
    assert list(zip(frame["row"], frame["vs"])) == [("Up", "Baseline"), ("Down", "Baseline"), ("Same", "Baseline"),
                                                    ("Up rescored", "Up")]
    assert frame["ours"].tolist() == pytest.approx([5.0, -5.0, 0.0, 0.4])
    assert frame["paper"].tolist() == [3.0, 2.0, 1.0, 1.0]
    assert list(frame["verdict"]) == ["reproduced, larger than the paper's", CONTRADICTED, INCONCLUSIVE,
                                      "reproduced, smaller than the paper's"]
    r = subprocess.run([sys.executable, "-m", "ablab.cli", "table", str(study), "--effects", "--tracking-uri", uri],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| Up vs Baseline | +5.0 [+5.0, +5.0] / +3.0 (reproduced, larger than the paper's) |" in r.stdout
    assert "| Down vs Baseline | -5.0 " in r.stdout and "/ +2.0 (contradicted) |" in r.stdout
    strict = ablab.effects(str(study), profile="strict", tracking_uri=uri)
    assert list(strict["verdict"])[:3] == ["inconclusive (needs 4 seeds)"] * 3


def test_a_claim_on_a_row_the_profile_does_not_train_says_so(tmp_path):
    import pandas as pd

    from ablab.evidence import NOT_MEASURED, claims_frame, verdict_text
    from ablab.launch import open_launch
    from ablab.rows import ResultSet

    path = tmp_path / "claims_t.yaml"
    path.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    frame = claims_frame(open_launch(path, "partial"), ResultSet(pd.DataFrame(), {}))  # nothing ran yet
    assert list(frame["verdict"]) == [NOT_MEASURED] * 4
    assert list(frame["reason"]) == ["", "profile partial does not train down", "profile partial does not train same", ""]
    assert verdict_text(frame.iloc[1]) == "not measured (profile partial does not train down)"
