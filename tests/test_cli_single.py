"""`ablab train` / `ablab evaluate` / `ablab data synthetic` as a user runs them (single process)."""
import json
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_config


def ablab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ablab.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_data_synthetic_writes_coco_and_voc(tmp_path):
    r = ablab("data", "synthetic", "--out", str(tmp_path / "ds"), "--train", "5", "--val", "3", "--size", "64", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ds" / "annotations" / "instances_train.json").is_file()
    assert len(list((tmp_path / "ds" / "VOCdevkit" / "VOC2007" / "Annotations").glob("*.xml"))) == 8


def test_train_then_evaluate_variants_from_one_checkpoint(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, model={"quality": {"branch": "iou"}}, data={"max_images": 8})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = ablab("train", str(path), "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "[train] epoch 1/1" in r.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "alpha=0.5/AP" in metrics and "alpha=0.5/AP90" in metrics
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    r = ablab("evaluate", str(path), "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"),
              "--variants", "cls", "none", "alpha=0.3", "alpha=0.3,truth", "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {k.rpartition("/")[0] for k in ev} == {"cls", "none", "alpha=0.3", "alpha=0.3,truth"}
    assert "1 variant" not in r.stderr and "4 variant(s)" in r.stderr  # one pass served all four


@pytest.mark.parametrize("override,needle", [
    ({"model": {"quality": {"loss": "hinge"}}}, "model.quality.loss"),
    ({"inference": {"variants": [{"name": "a", "alpha": 1.5}]}}, "inference.variants.0.alpha"),
    ({"train": {"epochz": 3}}, "train.epochz"),
    ({"data": {"kind": "coco", "root": "/nonexistent/coco"}}, "/nonexistent/coco"),
])
def test_bad_input_fails_before_training_with_the_field_named(synthetic_root, tmp_path, override, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_config(synthetic_root, **override)))
    r = ablab("train", str(path), "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert needle in r.stderr
    assert "[train] epoch" not in r.stderr


class _Payload:
    """Unpickling this object opens (so creates) a marker file: code run from a checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("form", ["torch_zip", "raw_pickle"])
def test_evaluate_refuses_a_checkpoint_that_would_run_code(form, tmp_path):
    import pickle

    import torch

    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pt"
    if form == "torch_zip":
        torch.save({"model": _Payload(marker)}, evil)
    else:
        evil.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    # The data root does not exist: the checkpoint is refused before any data set (or model) is built.
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "no_data_here")))
    r = ablab("evaluate", str(path), "--checkpoint", str(evil))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ablab: error: --checkpoint {evil}: not a checkpoint"), r.stderr
    assert not marker.exists()


def test_evaluate_names_a_checkpoint_of_another_architecture(synthetic_root, tmp_path):
    import torch

    from detector.config import parse_config
    from detector.model import build_detector

    other = parse_config(tiny_config(synthetic_root, model={"arch": "anchor_free", "assigner": {"name": "inside"},
                                                              "box_loss": "giou"}))
    torch.save(build_detector(other.model, 6).state_dict(), tmp_path / "anchor_free.pt")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny_config(synthetic_root)))
    r = ablab("evaluate", str(path), "--checkpoint", str(tmp_path / "anchor_free.pt"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "do not fit the config's model (model.arch retinanet" in r.stderr
