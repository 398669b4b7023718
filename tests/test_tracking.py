"""The study driver's MLflow logger against a real SQLite store: metric names MLflow accepts, epochs a
killed driver never logged are backfilled from the checkpoint's history, and a store that cannot be opened
is a clear error."""
import json
from types import SimpleNamespace

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from ablab.study import Study
from ablab.naming import metric_key
from ablab.tracking import MlflowStudyLogger
from detector.coco import EXTRA_AP, STATS as COCO_STATS
from detector.evaluation import DetectionTable, voc_metrics


def _study() -> Study:
    return Study.model_validate({"study": "trk", "paper": "iou_aware", "table": "t", "trials": [{"name": "a"}],
                                 "profiles": {"smoke": {}}})


def test_every_metric_the_evaluation_reports_has_a_valid_mlflow_name(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = client.create_run(client.create_experiment("names", artifact_location=tmp_path.as_uri()))
    voc = voc_metrics([], DetectionTable.from_dicts([]), num_classes=1)  # names only
    metrics = [*COCO_STATS, *EXTRA_AP, *voc, "pearson", "spearman", "num_detections"]
    variants = ["cls", "none", "alpha=0.4", "alpha=0.2,truth", "cls,q>0.5", "alpha=0.4,q>0.5"]
    keys = [metric_key(v, m) for v in variants for m in metrics]
    client.log_batch(run.info.run_id, metrics=[Metric(k, 0.5, 0, 0) for k in keys])  # raises on any bad name
    assert len(set(keys)) == len(keys) and "alpha_0.2-truth/mAP95" in keys and "cls-qgt0.5/AP" in keys


def test_epochs_reported_but_never_logged_are_backfilled_from_history(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    config = {"train": {"epochs": 3}, "inference": {"variants": []}}
    point = {"trial": "a", "seed": 0}
    logger = MlflowStudyLogger(uri, _study(), "smoke", {"a_seed0": config}, tmp_path / "trials", tmp_path / "runs.json")
    logger.setup()
    trial = SimpleNamespace(config=point)
    logger.on_trial_result(0, [], trial, {"epoch": 1, "loss": 3.0})
    # The driver missed epoch 2 (killed in between); epoch 3's checkpoint carries the whole history.
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "history.json").write_text(json.dumps([{"epoch": e, "loss": 4.0 - e} for e in (1, 2, 3)]))
    logger.on_trial_result(0, [], trial, {"epoch": 3, "loss": 1.0, "checkpoint_path": str(ckpt)})
    logger.on_trial_result(0, [], trial, {"epoch": 3, "loss": 1.0, "checkpoint_path": str(ckpt)})  # a restored trial re-reports
    assert logger.journal.drain(30) == 0
    run_id = json.loads((tmp_path / "runs.json").read_text())["trials"]["a_seed0"]
    history = MlflowClient(uri).get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 3.0), (2, 2.0), (3, 1.0)]


def test_epochs_checkpointed_before_a_kill_are_backfilled_from_the_finished_trial(tmp_path):
    """The driver died after epoch 1 was logged while Train had already checkpointed epochs 2 and 3: the
    resumed trial only reports its final result, which carries no checkpoint; the trial folder's history
    fills the gap."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    logger = MlflowStudyLogger(uri, _study(), "smoke", {"a_seed0": {"inference": {"variants": []}}},
                               tmp_path / "trials", tmp_path / "runs.json")
    logger.setup()
    trial = SimpleNamespace(config={"trial": "a", "seed": 0})
    logger.on_trial_result(0, [], trial, {"epoch": 1, "loss": 3.0})
    (tmp_path / "trials" / "a_seed0").mkdir(parents=True)
    (tmp_path / "trials" / "a_seed0" / "history.json").write_text(
        json.dumps([{"epoch": e, "loss": 4.0 - e} for e in (1, 2, 3)]))
    logger.on_trial_result(0, [], trial, {"epoch": 3, "done": 1.0, "cls/AP": 0.5})
    assert logger.journal.drain(30) == 0
    run_id = json.loads((tmp_path / "runs.json").read_text())["trials"]["a_seed0"]
    client = MlflowClient(uri)
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")) == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert client.get_run(run_id).data.metrics["cls/AP"] == 0.5


def test_querying_results_imports_neither_ray_nor_torch(tmp_path):
    """`ablab.results` is for notebooks and dashboards: it reads MLflow and needs no cluster library."""
    import subprocess
    import sys

    code = ("import sys, ablab\n"
            "try:\n    ablab.results('nothing', out_root=sys.argv[1])\nexcept FileNotFoundError:\n    pass\n"
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
