"""The user's main path on studies/table3.yaml, from the README's Use lines as written: run the smoke profile end
to end, print the paper's table, query it from Python, resume it, open the HTML report in headless Chromium, and
browse the study's runs in the MLflow UI started with the command `ablab run` printed."""
import html
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from selenium.webdriver.common.by import By

from platform_helpers import (ablab_env, free_port, headless_chromium, readme_block, readme_line, wait_for_http,
                              wait_until)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
USE = readme_block("Use")
RUN, TABLE, UI = (readme_line(USE, start) for start in ("ablab run ", "ablab table ", "mlflow ui "))


@pytest.fixture(scope="module")
def table3(tmp_path_factory):
    """Every line of the README's Use block but `mlflow ui` (the browser test starts it), in order, as written, in a
    folder laid out as the checkout (its studies/ and data/ linked: the synthetic set goes to the checkout's data/,
    as the study file says) with the default output root, ./outputs. Returns (folder, outputs, env, line -> result)."""
    cwd = Path(os.path.realpath(tmp_path_factory.mktemp("table3")))
    (REPO / "data").mkdir(exist_ok=True)
    for name in ("studies", "data"):
        (cwd / name).symlink_to(REPO / name)
    env = ablab_env(cwd / "outputs")
    env.pop("ABLAB_OUTPUT_ROOT")
    done = {}
    for line in USE:
        if line != UI:
            done[line] = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env, cwd=cwd,
                                        timeout=1500)
            assert done[line].returncode == 0, f"README: {line}\n{done[line].stderr[-4000:]}"
    return cwd, cwd / "outputs", env, done


def test_table3_smoke_runs_end_to_end_and_prints_its_table(table3):
    table, claims = table3[3][TABLE].stdout.split("Claims of the paper")
    lines = [l for l in table.splitlines() if l.startswith("| ") and "row" not in l]
    assert len(lines) == 10  # baseline, none, alpha 1.0 ... 0.3
    assert lines[0].startswith("| baseline (ResNet50 -> ResNet10) ")  # the paper's backbone, and the one trained
    header = next(l for l in table.splitlines() if l.startswith("| row")).split("|")[2:-1]
    by_area = [i for i, c in enumerate(header) if c.strip() in ("APs", "APm", "APl")]  # not bootstrapped
    for line in lines:  # every cell measured: ours±interval / paper (delta), no '-'
        cells = line.split("|")[2:-1]
        assert len(cells) == 10 and all(" - /" not in c for c in cells), line
        assert all("±" in c for i, c in enumerate(cells) if i not in by_area), line
    assert "profile 'smoke': synthetic val (500 images), 128 px, ResNet10 from scratch, 5 epochs, 1 seed" in table
    rows = [l.split("|") for l in claims.splitlines() if l.startswith("| ") and "verdict" not in l]
    kinds, verdicts = [r[2].strip() for r in rows], [r[6].strip() for r in rows]
    assert len(verdicts) == 8 and {v.split(",")[0].split(" (")[0] for v in verdicts} <= {
        "reproduced", "contradicted", "inconclusive"}, claims
    # The alpha sweep's claims read one model (decided on its val images); IoU-aware vs the baseline are two
    # models, trained on one seed: never decided.
    assert {k for k in kinds} == {"within one model", "between models"}, claims
    assert all(v == "inconclusive (needs 3 seeds)" for k, v in zip(kinds, verdicts) if k == "between models"), claims


def test_the_queries_and_the_resume_of_the_use_lines_answer(table3):
    done = table3[3]
    frame = done[readme_line(USE, 'python -c "import ablab; print(ablab.results(')].stdout
    assert "table3   smoke" in frame and "[5 rows x" in frame  # .head(): the first five trial x variant rows
    claims = done[readme_line(USE, 'python -c "import ablab; print(ablab.claims(')].stdout
    assert "[8 rows x" in claims  # the study's eight claims (pandas may fold the verdict column out of sight)
    resumed = done[readme_line(USE, "ablab resume ")].stderr
    assert "2 ok, 0 failed" in resumed and "open: http://127.0.0.1:5000/#/experiments/" in resumed


def test_run_printed_an_estimate_within_2x_of_its_wall_and_recorded_both(table3):
    """The estimate `ablab run` prints at its start (a benchmark of each distinct model, measured here) against
    the wall it took, on this real smoke study: in launch.json, on the launch run and in the report."""
    cwd, out, env, done = table3
    run = done[RUN].stderr
    assert "estimate: " in run and "step costs measured here" in run and "baseline_seed0" in run
    launch = json.loads((out / "table3" / "smoke" / "launch.json").read_text())  # kept by the resume after it
    estimate, wall = launch["estimate"]["wall_s"], launch["wall_s"]
    assert 0.5 <= wall / estimate <= 2.0, f"estimate {estimate:.0f}s, took {wall:.0f}s"
    assert re.search(r"estimate \S+, took \S+ \(\d+\.\d\dx\); step costs measured here", run)
    client = MlflowClient(f"sqlite:///{out / 'table3' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ablab/table3")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`ablab.role` = 'launch'")
    assert parent.data.metrics["estimate/wall_s"] == pytest.approx(estimate, abs=0.1)
    assert parent.data.metrics["wall_s"] == pytest.approx(wall, abs=0.1)
    assert parent.data.tags["ablab.estimate"].startswith("estimate ")
    page = (out / "dashboards" / "table3-smoke.html").read_text()
    assert f"Cost of the latest launch: {html.escape(parent.data.tags['ablab.estimate'])}" in page


def test_plots_are_written_and_logged_on_the_launch_run(table3):
    cwd, out, env, _ = table3
    plot_dir = out / "table3" / "smoke" / "plots"
    shown = {"effects_vs_iou.png", "learning_curves.png", "alpha_sweep.png", "confidence_vs_iou.png"}
    assert {p.name for p in plot_dir.glob("*.png")} == shown
    client = MlflowClient(f"sqlite:///{out / 'table3' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ablab/table3")
    launch = client.search_runs([exp.experiment_id], "tags.`ablab.role` = 'launch'")[0]
    assert {a.path for a in client.list_artifacts(launch.info.run_id, "plots")} == {f"plots/{n}" for n in shown}
    assert launch.data.tags["ablab.claims"] and "claim/0/ours" in launch.data.metrics  # the verdicts, on the launch run
    assert Path(exp.artifact_location.removeprefix("file://")).is_relative_to(out / "table3")  # beside the store


def test_report_renders_table_and_images_in_headless_chromium(table3):
    cwd, out, env, done = table3
    page = out / "dashboards" / "table3-smoke.html"
    index = out / "dashboards" / "index.html"
    assert page.is_file() and "table3-smoke.html" in index.read_text()
    driver = headless_chromium()
    try:
        driver.get(page.as_uri())
        rendered = wait_until(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-images-rendered"),
                              what="images decoded")
        images = driver.find_elements(By.TAG_NAME, "img")
        assert int(rendered) == len(images) == 4  # effects vs IoU, learning curves, alpha sweep, Figure 4
        assert all(driver.execute_script("return arguments[0].naturalWidth", img) > 300 for img in images)
        tables = driver.find_elements(By.CSS_SELECTOR, "table.ablab-table")
        assert "effects" in tables[0].get_attribute("class")  # the effect view first
        effects = tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")
        assert effects and all(" vs " in r.find_element(By.TAG_NAME, "th").text for r in effects)
        rows = driver.find_elements(By.CSS_SELECTOR, "table.ablab-table:not(.runs):not(.effects):not(.claims) tbody tr")
        assert [r.find_element(By.TAG_NAME, "th").text for r in rows][:2] == ["baseline (ResNet50 -> ResNet10)",
                                                                              "none (ResNet50 -> ResNet10)"]
        assert len(rows) == 10 and "/ 34.4" in rows[0].text  # ours / the paper's baseline AP
        assert len(driver.find_elements(By.CSS_SELECTOR, "table.claims tbody tr")) == 8
        runs = driver.find_element(By.CSS_SELECTOR, "a.mlflow-runs").get_attribute("href")
        assert runs == printed(done[RUN].stderr, "open")  # the UI's URL and command, as `ablab run` printed them
        assert html.escape(printed(done[RUN].stderr, "browse")) in page.read_text()
        links = driver.find_elements(By.CSS_SELECTOR, "table.runs a")  # each trial's run page in that UI
        assert len(links) == 2 and all(a.get_attribute("href").startswith(runs.split("?")[0] + "/runs/") for a in links)
        driver.get(index.as_uri())
        assert "table3 (smoke)" in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()


def printed(stderr: str, tag: str) -> str:
    """The last ``[ablab] <tag>: ...`` line `ablab run` printed, without its tag."""
    return re.findall(rf"^\[ablab\] {tag}: (.*)$", stderr, re.M)[-1]


def test_the_mlflow_ui_opens_on_the_study_s_runs_as_printed(table3):
    """As a user: start the UI with the command `ablab run` printed (the README's line, on a free port), open the URL
    it printed: the launch run, expanded, lists every trial; a trial's page has its final AP and its per-epoch loss
    chart. Then from the front page: **Model training**, then the experiment, shows the runs."""
    cwd, out, env, done = table3
    command, url = (printed(done[RUN].stderr, tag) for tag in ("browse", "open"))
    readme = subprocess.run(["bash", "-c", f"echo {UI.split('#')[0]}"], capture_output=True, text=True, cwd=cwd)
    assert readme.stdout.strip() == command  # the README's line is what `ablab run` printed, in this checkout
    port = free_port()
    server = subprocess.Popen(shlex.split(command.replace("--port 5000", f"--port {port}")), cwd=cwd, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/health", timeout=90)
        driver = headless_chromium()
        follow_the_ui(driver, url.replace("http://127.0.0.1:5000", base), "table3:smoke",
                      ["baseline_seed0", "iou_aware_seed0"], "cls/AP")
        open_from_the_front_page(driver, base, "ablab/table3", "table3:smoke")
    finally:
        if driver:
            driver.quit()
        server.terminate()
        server.wait(30)


def follow_the_ui(driver, url: str, launch: str, trials: list[str], final_metric: str) -> None:
    """At ``url``: the launch run is listed; its + shows every trial run; the last trial's page lists
    ``final_metric`` with a value, and its Model metrics tab, searched for train/loss (the charts of the final
    metrics come first, and the UI draws only what is in view), charts it over the epochs."""
    driver.get(url)
    row = wait_until(lambda: driver.find_elements(By.LINK_TEXT, launch), 60, "launch run listed")[0]
    row.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]").find_element(By.TAG_NAME, "button").click()
    links = wait_until(lambda: all(driver.find_elements(By.LINK_TEXT, t) for t in trials)
                       and driver.find_elements(By.LINK_TEXT, trials[-1]), 30, "every trial run listed")
    links[0].click()
    body = lambda: driver.find_element(By.TAG_NAME, "body").text  # noqa: E731
    wait_until(lambda: re.search(rf"^{re.escape(final_metric)}\n\d", body(), re.M), 60, f"{final_metric} on the run page")
    tab = wait_until(lambda: [t for t in driver.find_elements(By.CSS_SELECTOR, "[role=tab]") if t.text == "Model metrics"],
                     30, "Model metrics tab")[0]
    tab.click()
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "input[placeholder='Search metric charts']"), 30,
               "the chart search")[0].send_keys("train/loss")
    wait_until(lambda: f"{trials[-1]} (train/loss)" in body() and "Step" in body(), 60, "the per-epoch loss chart")


def open_from_the_front_page(driver, base: str, experiment: str, launch: str) -> None:
    """The README's one click: **Model training** on the front page, then the experiment, lists the launch run."""
    driver.get(f"{base}/")
    toggle = wait_until(lambda: [e for e in driver.find_elements(By.XPATH, "//*[normalize-space(text())='Model training']")
                                 if e.is_displayed()], 60, "the Model training switch")[0]
    toggle.click()
    wait_until(lambda: driver.find_elements(By.LINK_TEXT, experiment), 30, "experiment listed")[0].click()
    wait_until(lambda: driver.find_elements(By.LINK_TEXT, launch), 60, "launch run listed after one click")
