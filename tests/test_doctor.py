"""`ablab doctor` reports on this machine without starting anything: a data root that lacks a split is a
problem that names it and makes the exit status 1; one that holds the splits is fine."""
import os
import subprocess
import sys


def _doctor(**env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "ABLAB_COCO_ROOT", "ABLAB_VOC_ROOT")}
    return subprocess.run([sys.executable, "-m", "ablab.cli", "doctor"], capture_output=True, text=True,
                          env={**base, **env}, timeout=120)


def test_doctor_names_a_data_root_that_lacks_its_splits(tmp_path):
    voc = tmp_path / "VOCdevkit"
    for path in ("VOC2007/ImageSets/Main/trainval.txt", "VOC2007/ImageSets/Main/test.txt",
                 "VOC2012/ImageSets/Main/trainval.txt"):
        (voc / path).parent.mkdir(parents=True, exist_ok=True)
        (voc / path).write_text("")
    r = _doctor(ABLAB_COCO_ROOT=str(tmp_path / "coco"), ABLAB_VOC_ROOT=str(voc))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = {line.split()[0]: line for line in r.stdout.splitlines()}
    assert "PROBLEM" in lines["ABLAB_COCO_ROOT"] and "annotations/instances_val2017.json" in lines["ABLAB_COCO_ROOT"]
    assert " ok " in lines["ABLAB_VOC_ROOT"]
    assert {"cpu", "precision", "torch", "cuda", "ray", "mlflow", "browser", "outputs"} <= set(lines)


def test_doctor_passes_on_the_embedded_defaults(tmp_path):
    r = _doctor(ABLAB_OUTPUT_ROOT=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PROBLEM" not in r.stdout
