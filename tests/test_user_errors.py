"""The catalogue of bad inputs: each ends with exit 2 and one line ``ablab: error: ...`` that names the file or
option, the field path and the offending value; never a traceback, never a Ray cluster started, and nothing
left behind that would break a retry. Fast: nothing trains.

Each case is (id, how to build its argv in a fresh folder, words its error line must contain).
"""
from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from ablab.cli import main
from platform_helpers import write_study
from conftest import tiny_config


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Case:
    """Files for one case under ``tmp``; every helper returns the path it wrote."""

    def __init__(self, tmp: Path, synthetic_root: Path):
        self.tmp, self.data = tmp, synthetic_root
        self.out = tmp / "outputs"

    def study(self, name: str = "s", **extra) -> str:
        if "trials" in extra:
            extra.setdefault("layout", None)  # the helper's layout reads its own two trials
        return str(write_study(self.tmp / f"{name}.yaml", self.data, **extra))

    def study_with(self, text: str | bytes, name: str = "s") -> str:
        path = self.tmp / f"{name}.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def study_on(self, data: dict, **extra) -> str:
        """A study whose smoke profile reads ``data`` (a data config)."""
        path = Path(self.study(**extra))
        raw = yaml.safe_load(path.read_text())
        raw["profiles"]["smoke"]["base"]["data"] = data
        path.write_text(yaml.safe_dump(raw))
        return str(path)

    def config(self, **overrides) -> str:
        path = self.tmp / "cfg.yaml"
        path.write_text(yaml.safe_dump(tiny_config(self.data, **overrides)))
        return str(path)

    def coco(self, instances) -> dict:
        root = self.tmp / "coco"
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        text = instances if isinstance(instances, str) else json.dumps(instances)
        for split in ("train", "val"):
            (root / "annotations" / f"instances_{split}.json").write_text(text)
            (root / split).mkdir(exist_ok=True)
            images = instances.get("images") if isinstance(instances, dict) else None
            for image in images if isinstance(images, list) else []:
                (root / split / image["file_name"]).touch()  # present; never decoded by a check
        return {"kind": "coco", "root": str(root), "train_split": "train", "val_split": "val"}

    def file(self, name: str, data: bytes = b"x") -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def read_only_dir(self) -> str:
        """A folder nobody may create anything in: /sys/fs for root (which chmod does not stop), else a
        folder without write permission."""
        if os.geteuid() == 0:
            return "/sys/fs/ablab-outputs"
        path = self.tmp / "read_only"
        path.mkdir(mode=0o555)
        return str(path / "outputs")


GOOD_COCO = {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}],
             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "area": 100}],
             "categories": [{"id": 1, "name": "thing"}]}


def coco_with(**annotation) -> dict:
    return {**GOOD_COCO, "annotations": [{**GOOD_COCO["annotations"][0], **annotation}]}


def voc_without_size(c: Case) -> dict:
    base = c.tmp / "VOCdevkit" / "VOC2007"
    for sub in ("ImageSets/Main", "Annotations"):
        (base / sub).mkdir(parents=True)
    (base / "ImageSets/Main/trainval.txt").write_text("img1\n")
    (base / "Annotations/img1.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    return {"kind": "voc", "root": str(c.tmp / "VOCdevkit"), "train_split": "2007_trainval", "val_split": "2007_trainval"}


ALIAS_BOMB = "study: s\nbase:\n" + "".join(
    f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10) if i else '1, 2, 3, 4, 5, 6, 7, 8, 9, 10'}]\n" for i in range(7))

CASES = [
    # --- study files
    ("study_not_utf8", lambda c: ["validate", c.study_with(b"study: caf\xe9\n")], ["s.yaml", "not UTF-8", "0xe9"]),
    ("study_binary", lambda c: ["validate", c.study_with(b"\x7fELF\x02\x01\x01\x00\x00\x00")],
     ["s.yaml", "not valid YAML", "#x007f", "offset 0"]),
    ("study_recursive_alias", lambda c: ["validate", c.study_with("study: s\nbase: &b\n  model: *b\n")],
     ["s.yaml", "base.model", "recursive alias"]),
    ("study_alias_bomb", lambda c: ["validate", c.study_with(ALIAS_BOMB)], ["s.yaml", "aliases", "100000"]),
    ("study_top_level_list", lambda c: ["validate", c.study_with("- a\n- b\n")], ["s.yaml", "top level", "list"]),
    ("study_missing", lambda c: ["validate", str(c.tmp / "nope.yaml")], ["nope.yaml", "not found"]),
    ("variant_unknown", lambda c: ["validate", c.study(variants=["cls", "alpha=0.5", "cls", "bogus"])],
     ["s.yaml", "variants.3", "'bogus'"]),
    ("study_id_escapes", lambda c: ["validate", c.study(study="..")], ["s.yaml", "study", "'..'"]),
    ("trial_name_with_slash", lambda c: ["validate", c.study(trials=[{"name": "a/b"}])], ["s.yaml", "trials.0.name", "'a/b'"]),
    ("nan_in_config", lambda c: ["validate", c.study_with(
        Path(c.study()).read_text().replace("warmup_iters: 2", "warmup_iters: 2\n    lr: .nan"))],
     ["s.yaml", "train.lr", "nan"]),
    ("seed_too_large", lambda c: ["validate", c.study(seeds=[2**32])], ["s.yaml", "seeds.0", "4294967296"]),
    ("seeds_zero", lambda c: ["validate", c.study(), "--seeds", "0"], ["--seeds", "0", "at least 1"]),
    ("min_seeds_below_2", lambda c: ["validate", c.study(min_seeds=1)], ["s.yaml", "min_seeds", "greater than or equal to 2", "1"]),
    ("trial_seeds_of_no_trial", lambda c: ["validate", c.study(profiles={"smoke": {"trial_seeds": {"nope": [0, 1]}}})],
     ["s.yaml", "profiles.smoke.trial_seeds", "'nope'", "not a trial of the profile"]),
    ("claim_on_an_unknown_row", lambda c: ["validate", c.study(claims=[{"row": "nope", "vs": "x", "metric": "AP"}])],
     ["s.yaml", "claims.0.row", "'nope'", "layout row"]),
    ("set_into_a_scalar_in_a_study", lambda c: ["validate", c.study(trials=[{"name": "a", "set": {"train.epochs.x": 1}}])],
     ["s.yaml", "trial a", "train.epochs", "not a section"]),
    ("grid_too_large", lambda c: ["validate", c.study(grid={"train.lr": [0.01 + i * 1e-6 for i in range(5001)]})],
     ["s.yaml", "grid", "10002 trials", "--allow-large-grid"]),
    ("weights_file_missing", lambda c: ["validate", c.study(
        base={"model": {"backbone": {"name": "resnet18", "pretrained": str(c.tmp / "w.pth")}}})],
     ["model.backbone.pretrained", "w.pth", "not found"]),
    ("gpus_on_a_cpu_machine", lambda c: ["validate", c.study(resources={"workers": 1, "gpus_per_worker": 1})],
     ["resources.gpus_per_worker", "0 GPUs"], pytest.mark.skipif(torch_cuda(), reason="this machine has a GPU")),
    ("batch_not_split_by_workers", lambda c: ["validate", c.study(resources={"workers": 3})],
     ["s.yaml", "train.batch_size", "resources.workers: 3", "got 4"]),
    ("executor_tune_with_two_workers", lambda c: ["validate", c.study(resources={"workers": 2, "executor": "tune"})],
     ["s.yaml", "resources", "executor", "'tune'", "workers: 2"]),
    ("more_cpus_than_the_machine", lambda c: ["run", c.study(resources={"workers": 2, "cpus_per_worker": 512})],
     ["resources", "1024 CPUs", "cpus_per_worker 512"]),
    ("empty_train_split", lambda c: ["validate", c.study_on({**c.coco({**GOOD_COCO, "images": [], "annotations": []})})],
     ["split 'train'", "no images"]),
    ("split_without_annotations", lambda c: ["validate", c.study_on(c.coco({**GOOD_COCO, "annotations": []}))],
     ["split 'train'", "no annotated box"]),
    ("tracking_scheme_unknown", lambda c: ["run", c.study(), "--tracking-uri", "mongodb://db/x"],
     ["--tracking-uri", "mongodb://db/x", "scheme 'mongodb'"]),
    ("tracking_scheme_unknown_from_the_environment", lambda c: ["validate", c.study()], ["tracking URI", "mongodb"],
     {"MLFLOW_TRACKING_URI": "mongodb://db/x"}),
    ("address_malformed", lambda c: ["run", c.study(), "--address", "head-node:port"],
     ["--address", "'head-node:port'", "HOST:PORT"]),
    ("address_of_the_job_server", lambda c: ["run", c.study(), "--address", "http://127.0.0.1:8265"],
     ["--address", "ray://HOST:PORT", "ablab submit"]),
    ("address_unreachable", lambda c: ["run", c.study(), "--address", f"127.0.0.1:{closed_port()}"],
     ["--address", "cannot reach a Ray cluster", "refused"]),
    ("mlflow_unreachable", lambda c: ["run", c.study(), "--tracking-uri", f"http://127.0.0.1:{closed_port()}"],
     ["--tracking-uri", "cannot reach the MLflow server", "127.0.0.1", "connection refused"]),
    ("submit_address_malformed", lambda c: ["submit", c.study(), "--address", "127.0.0.1:8265", "--working-dir",
                                            str(c.tmp)], ["--address", "http://HOST:PORT"]),
    ("submit_unreachable", lambda c: ["submit", c.study(), "--address", f"http://127.0.0.1:{closed_port()}",
                                      "--working-dir", str(c.tmp)], ["--address", "cannot reach the Ray job server"]),
    ("out_root_is_a_file", lambda c: ["run", c.study(), "--out-root", c.file("occupied")],
     ["--out-root", "occupied", "is a file"]),
    ("out_root_read_only", lambda c: ["run", c.study(), "--out-root", c.read_only_dir()],
     ["--out-root", "cannot create", "ablab-outputs"]),
    # --- --set on the single-process commands
    ("set_python_tag", lambda c: ["train", c.config(), "--set", "train.lr=!!python/object/apply:os.system ['true']"],
     ["--set", "train.lr=", "not valid YAML", "python/object/apply:os.system"]),
    ("set_into_a_scalar", lambda c: ["train", c.config(), "--set", "train.lr.x=1"], ["--set", "train.lr", "not a section"]),
    ("set_without_equals", lambda c: ["train", c.config(), "--set", "train.lr"], ["--set", "key=value"]),
    ("set_bad_value", lambda c: ["train", c.config(), "--set", "model.quality.loss=hinge"],
     ["cfg.yaml", "model.quality.loss", "'hinge'"]),
    # --- --set on the study commands: named with the key and the value, before Ray starts
    ("run_set_unknown_key", lambda c: ["run", c.study(), "--set", "train.stepz=[9]"],
     ["s.yaml", "--set train.stepz=[9]", "train.stepz", "Extra inputs", "[9]"]),
    ("run_set_bad_value", lambda c: ["run", c.study(), "--set", "model.quality.loss=hinge"],
     ["s.yaml", "--set model.quality.loss=hinge", "model.quality.loss", "'hinge'"]),
    ("run_set_python_tag", lambda c: ["run", c.study(), "--set", "train.lr=!!python/object/apply:os.system ['true']"],
     ["--set", "train.lr=", "not valid YAML", "python/object/apply:os.system"]),
    ("run_set_below_a_number", lambda c: ["run", c.study(), "--set", "train.lr.x=1"],
     ["--set train.lr.x=1", "train.lr", "valid number"]),
    ("run_set_a_field_twice", lambda c: ["run", c.study(), "--set", "train.lr=0.1", "--set", "train=[]"],
     ["--set 'train=[]'", "also set by --set train.lr=0.1", "once"]),
    ("run_set_a_date", lambda c: ["run", c.study(), "--set", "train.lr=2024-01-01"],
     ["--set 'train.lr=2024-01-01'", "datetime.date", "quote it"]),
    ("run_set_resources_bad_value", lambda c: ["run", c.study(), "--set", "resources.workers=0"],
     ["s.yaml", "--set resources.workers=0", "resources.workers", "greater than or equal to 1", "got 0"]),
    ("run_set_resources_unknown_field", lambda c: ["run", c.study(), "--set", "resources.gpus=1"],
     ["s.yaml", "--set resources.gpus=1", "resources.gpus", "Extra inputs"]),
    ("run_set_all_resources", lambda c: ["run", c.study(), "--set", "resources={workers: 2}"],
     ["s.yaml", "--set resources={workers: 2}", "one field", "resources.workers=2"]),
    ("validate_set_workers_that_do_not_split_the_batch", lambda c: ["validate", c.study(), "--set", "resources.workers=3"],
     ["s.yaml", "train.batch_size", "resources.workers: 3", "got 4"]),
    ("run_set_the_seed_axis", lambda c: ["run", c.study(), "--set", "train.seed=3"],
     ["--set train.seed=3", "seed axis", "--seeds"]),
    ("validate_set_a_grid_axis", lambda c: ["validate", c.study(grid={"train.lr": [0.1, 0.2]}), "--set", "train.lr=1"],
     ["--set train.lr=1", "train.lr is a grid axis"]),
    ("run_set_a_section_above_an_axis", lambda c: ["run", c.study(), "--set", "train={lr: 1}"],
     ["--set train={lr: 1}", "train.seed", "seed axis"]),
    ("train_variant_needs_a_quality_branch", lambda c: ["train", c.config(inference={"variants": [
        {"name": "alpha=0.5", "combine": "power", "alpha": 0.5}]})], ["cfg.yaml", "inference.variants.0", "'alpha=0.5'",
                                                                      "model.quality.branch: none"]),
    ("run_set_a_variant_the_model_cannot_score", lambda c: ["run", c.study(variants=[], layout=None), "--set",
                                                            "inference.variants=[{name: a, combine: product}]"],
     ["s.yaml", "trial baseline", "inference.variants.0", "'a'", "model.quality.branch: none"]),
    ("validate_set_a_variant_the_model_cannot_score", lambda c: ["validate", c.study(variants=[], layout=None), "--set",
                                                                 "inference.variants=[{name: a, combine: product}]"],
     ["s.yaml", "inference.variants.0", "model.quality.branch: none"]),
    ("train_out_is_a_file", lambda c: ["train", c.config(), "--out", c.file("occupied")], ["--out", "is a file"]),
    # --- data sets
    ("coco_top_level_list", lambda c: ["validate", c.study_on(c.coco([GOOD_COCO]))],
     ["instances_train.json", "top level", "list"]),
    ("coco_not_json", lambda c: ["validate", c.study_on(c.coco("{images: ["))], ["instances_train.json", "not valid JSON", "line 1"]),
    ("coco_bbox_of_length_2", lambda c: ["validate", c.study_on(c.coco(coco_with(bbox=[1, 2])))],
     ["instances_train.json", "annotations.0.bbox", "[1, 2]"]),
    ("coco_strings_in_bbox", lambda c: ["validate", c.study_on(c.coco(coco_with(bbox=["a", 1, 2, 3])))],
     ["annotations.0.bbox", "'a'"]),
    ("coco_unknown_category", lambda c: ["validate", c.study_on(c.coco(coco_with(category_id=99)))],
     ["annotations.0.category_id", "99"]),
    ("coco_annotation_id_0", lambda c: ["validate", c.study_on(c.coco(coco_with(id=0)))],
     ["instances_train.json", "annotations.0.id", "0", "start at 1"]),
    ("coco_annotation_ids_repeat", lambda c: ["validate", c.study_on(c.coco(
        {**GOOD_COCO, "annotations": GOOD_COCO["annotations"] * 2}))], ["annotations.1.id", "also annotations.0's"]),
    ("coco_image_ids_repeat", lambda c: ["validate", c.study_on(c.coco({**GOOD_COCO, "images": GOOD_COCO["images"] * 2}))],
     ["images.1.id", "also images.0's"]),
    ("coco_annotation_without_area", lambda c: ["validate", c.study_on(c.coco(
        {**GOOD_COCO, "annotations": [{k: v for k, v in GOOD_COCO["annotations"][0].items() if k != "area"}]}))],
     ["annotations.0.area", "expected int/float", "None"]),
    ("coco_negative_area", lambda c: ["validate", c.study_on(c.coco(coco_with(area=-5)))],
     ["annotations.0.area", "finite number >= 0", "-5"]),
    ("coco_images_not_a_list", lambda c: ["validate", c.study_on(c.coco({**GOOD_COCO, "images": {"id": 1}}))],
     ["images", "must be a list"]),
    ("voc_xml_without_size", lambda c: ["validate", c.study_on(voc_without_size(c))], ["img1.xml", "<size>/<width>"]),
    # --- checkpoints
    ("checkpoint_garbage", lambda c: ["evaluate", c.config(), "--checkpoint", c.file("x.pt", b"\x00garbage")],
     ["--checkpoint", "x.pt", "not a checkpoint"]),
    ("checkpoint_is_a_folder", lambda c: ["evaluate", c.config(), "--checkpoint", str(c.tmp)], ["--checkpoint", "not found"]),
    # --- ablab data synthetic
    ("synthetic_negative_count", lambda c: ["data", "synthetic", "--out", str(c.tmp / "d"), "--train", "-3"],
     ["--train", "-3"]),
    ("synthetic_truncation_above_1", lambda c: ["data", "synthetic", "--out", str(c.tmp / "d"), "--truncation", "2"],
     ["--truncation", "less than or equal to 1", "2.0"]),
    ("synthetic_size_0", lambda c: ["data", "synthetic", "--out", str(c.tmp / "d"), "--size", "0"], ["--size", "32", "0"]),
    ("synthetic_too_large", lambda c: ["data", "synthetic", "--out", str(c.tmp / "d"), "--size", "100000"],
     ["--size", "4096", "100000"]),
    ("synthetic_into_a_foreign_folder", lambda c: ["data", "synthetic", "--out", str(Path(c.file("mine/notes.txt")).parent)],
     ["mine", "notes.txt", "not a synthetic dataset"]),
    # --- queries
    ("table_before_any_run", lambda c: ["table", c.study(), "--out-root", str(c.out)], ["no MLflow store", "run the study"]),
    ("table_of_a_study_without_layout", lambda c: ["table", c.study(layout=None), "--out-root", str(c.out)],
     ["s.yaml", "no layout", "ablab results"]),
    ("report_before_any_run", lambda c: ["report", c.study(), "--out-root", str(c.out)], ["no MLflow store"]),
    ("results_profile_with_a_quote", lambda c: ["results", c.study(), "--profile", "a'b", "--out-root", str(c.out)],
     ["--profile", "\"a'b\""]),
    ("profile_unknown", lambda c: ["validate", c.study(), "--profile", "huge"], ["profile 'huge'", "smoke"]),
]


def _param(name, build, words, *extra):
    env = next((e for e in extra if isinstance(e, dict)), {})
    marks = [e for e in extra if not isinstance(e, dict)]
    return pytest.param(build, words, env, id=name, marks=marks)


@pytest.mark.parametrize("build,words,env", [_param(*c) for c in CASES])
def test_a_bad_input_is_one_line_naming_it(build, words, env, tmp_path, synthetic_root, no_ray, capsys, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    case = Case(tmp_path, synthetic_root)
    argv = build(case)
    t0 = time.monotonic()
    rc = main(argv + ([] if "--out-root" in argv or argv[0] not in ("run", "validate") else ["--out-root", str(case.out)]))
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("ablab: error: ") and not any(
        line.startswith("ablab: error") for line in lines[:-1]), err
    for word in words:
        assert word in lines[-1], f"{word!r} not in {lines[-1]!r}"
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert not any(p.name() in ("raylet", "gcs_server") for p in psutil.Process().children(recursive=True))
    assert not list(tmp_path.rglob("tune")), "a failed start left a Tune folder that would block `ablab run`"


def test_an_internal_error_shows_its_traceback_and_says_it_is_a_bug(tmp_path, synthetic_root, monkeypatch, capsys):
    from ablab import single

    def broken(*args):
        return {}["missing"]  # a bug: a KeyError from ablab's own code, not from the input

    monkeypatch.setattr(single, "train_command", broken)
    rc = main(["train", Case(tmp_path, synthetic_root).config()])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" in err and "KeyError: 'missing'" in err
    assert err.strip().splitlines()[-1].startswith("ablab: internal error: this is a bug")


def test_a_checkpoint_of_another_architecture_is_named(tmp_path, synthetic_root, capsys):
    import torch

    from detector.config import parse_config
    from detector.model import build_detector

    c = Case(tmp_path, synthetic_root)
    other = parse_config(tiny_config(synthetic_root, model={"backbone": {"name": "resnet18"}}))
    torch.save(build_detector(other.model, 6).state_dict(), tmp_path / "r18.pt")
    assert main(["evaluate", c.config(), "--checkpoint", str(tmp_path / "r18.pt")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("ablab: error: --checkpoint") and "model.backbone.name resnet10" in line


def test_a_full_disk_leaves_no_half_written_data_set_and_a_retry_completes(tmp_path):
    """The writer is given a 4 KiB file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write fails
    with EFBIG as on a full disk): one error line, no folder at --out, and the same command then succeeds."""
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "ablab.cli", "data", "synthetic", "--out", str(out), "--train", "3", "--val", "2",
           "--size", "128"]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("ablab: error: ") and "File too large" in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".ds.partial-*"))
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(json.loads((out / "annotations" / "instances_train.json").read_text())["images"]) == 3


def test_a_half_written_synthetic_set_is_detected_and_rewritten(tmp_path):
    """A folder an older writer left half-way (no completion marker) is rewritten on first use."""
    from detector.config import DataConfig
    from detector.data import build_split

    root = tmp_path / "ds"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text('{"images": [')  # cut off mid-write
    cfg = DataConfig(kind="synthetic", root=str(root), synthetic={"train": 3, "val": 2, "size": 64})
    assert len(build_split(cfg, "train")) == 3 and len(build_split(cfg, "val")) == 2


def test_a_grid_over_a_list_valued_field_runs_as_one_axis(tmp_path, synthetic_root):
    """``train.steps`` takes a list: a grid over it has lists as values, each its own trial."""
    from ablab.launch import open_launch, plan_study

    study = write_study(tmp_path / "g.yaml", synthetic_root, trials=[{"name": "a"}], layout=None,
                        grid={"train.steps": [[1], [1, 2]]})
    plan = plan_study(open_launch(str(study), "smoke"), out_root=str(tmp_path / "out"))
    assert sorted(plan.configs) == ["a_seed0_steps=1", "a_seed0_steps=1,2"]
    assert [c.train.steps for c in plan.configs.values()] == [[1], [1, 2]]
