"""The user's main path on studies/table3.yaml: run the smoke profile end to end, print the paper's table,
open the HTML report in headless Chromium, and find the study's runs in the MLflow UI."""
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from selenium.webdriver.common.by import By

from platform_helpers import ablab_env, free_port, headless_chromium, wait_for_http, wait_until

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "table3.yaml"


def ablab(*args, env, cwd, timeout=1500):
    return subprocess.run([sys.executable, "-m", "ablab.cli", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def table3(tmp_path_factory):
    """`ablab run studies/table3.yaml --profile smoke` as shipped, from another folder (its synthetic data goes to
    the checkout's data/, as the study file says)."""
    cwd = tmp_path_factory.mktemp("table3")
    out = cwd / "outputs"
    env = ablab_env(out)
    run = ablab("run", str(STUDY), "--profile", "smoke", env=env, cwd=cwd)
    assert run.returncode == 0, run.stderr[-4000:]
    return cwd, out, env


def test_table3_smoke_runs_end_to_end_and_prints_its_table(table3):
    cwd, out, env = table3
    r = ablab("table", str(STUDY), "--profile", "smoke", env=env, cwd=cwd)
    assert r.returncode == 0, r.stderr
    table, claims = r.stdout.split("Claims of the paper")
    lines = [l for l in table.splitlines() if l.startswith("| ") and "row" not in l]
    assert len(lines) == 10  # baseline, none, alpha 1.0 ... 0.3
    assert lines[0].startswith("| baseline (ResNet50 -> ResNet10) ")  # the paper's backbone, and the one trained
    header = next(l for l in table.splitlines() if l.startswith("| row")).split("|")[2:-1]
    by_area = [i for i, c in enumerate(header) if c.strip() in ("APs", "APm", "APl")]  # not bootstrapped
    for line in lines:  # every cell measured: ours±interval / paper (delta), no '-'
        cells = line.split("|")[2:-1]
        assert len(cells) == 10 and all(" - /" not in c for c in cells), line
        assert all("±" in c for i, c in enumerate(cells) if i not in by_area), line
    assert "profile 'smoke': synthetic val (500 images), 128 px, ResNet10 from scratch, 16 epochs, 1 seed" in table
    verdicts = [l.split("|")[5].strip() for l in claims.splitlines() if l.startswith("| ") and "verdict" not in l]
    assert len(verdicts) == 8 and set(verdicts) <= {"reproduced", "contradicted", "inconclusive"}, claims


def test_plots_are_written_and_logged_on_the_launch_run(table3):
    cwd, out, env = table3
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
    cwd, out, env = table3
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
        links = driver.find_elements(By.CSS_SELECTOR, "table.runs a")
        assert len(links) == 2 and all("/#/experiments/" in a.get_attribute("href") for a in links)
        driver.get(index.as_uri())
        assert "table3 (smoke)" in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()


def test_mlflow_ui_lists_the_study_and_its_trial_runs_in_headless_chromium(table3):
    cwd, out, env = table3
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{out / 'table3' / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    driver = None
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=90)
        exp_id = MlflowClient(f"http://127.0.0.1:{port}").get_experiment_by_name("ablab/table3").experiment_id
        driver = headless_chromium()
        driver.get(f"http://127.0.0.1:{port}/#/experiments")
        wait_until(lambda: "ablab/table3" in driver.page_source, 60, "experiment listed")
        driver.get(f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs")
        launch = wait_until(lambda: driver.find_elements(By.LINK_TEXT, "table3:smoke"), 60, "launch run listed")[0]
        # Trial runs are nested under the launch run: expand it.
        launch.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]").find_element(By.TAG_NAME, "button").click()
        wait_until(lambda: driver.find_elements(By.LINK_TEXT, "baseline_seed0")
                   and driver.find_elements(By.LINK_TEXT, "iou_aware_seed0"), 30, "trial runs listed")
    finally:
        if driver:
            driver.quit()
        server.terminate()
        server.wait(30)
