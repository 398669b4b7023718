import json
import shutil

import numpy as np
import pytest
import torch

from detector.config import DataConfig
from detector.data import DatasetError, build_split, load_coco, load_voc, write_synthetic
from detector.data.loader import SIZE_DIVISOR, TrainingImages, collate, make_loader, resize_scale
from detector.data.synthetic import CLASSES


def test_synthetic_same_seed_same_annotations(tmp_path):
    a = write_synthetic(tmp_path / "a", train=6, val=2, size=96, seed=7)
    b = write_synthetic(tmp_path / "b", train=6, val=2, size=96, seed=7)
    c = write_synthetic(tmp_path / "c", train=6, val=2, size=96, seed=8)
    read = lambda root: json.loads((root / "annotations" / "instances_train.json").read_text())["annotations"]
    assert read(a) == read(b)
    assert read(a) != read(c)


def test_synthetic_is_varied_enough_and_none_is_tiny(tmp_path):
    """Generator 2: every class, 1 to MAX_OBJECTS objects an image, sides from 1/5 to 0.6 of the image."""
    from detector.data.synthetic import HUES, MAX_OBJECTS, MAX_SIDE, MIN_SIDE

    root = write_synthetic(tmp_path / "s", train=60, val=1, size=256, seed=0)
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    per_image = np.bincount([a["image_id"] for a in data["annotations"]])
    per_image = per_image[per_image > 0]
    areas = np.array([a["area"] for a in data["annotations"]])
    sides = np.array([max(a["bbox"][2:]) for a in data["annotations"]])
    assert len(data["categories"]) == len(CLASSES) == len(HUES) >= 6
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 7))
    assert per_image.min() >= 1 and per_image.max() <= MAX_OBJECTS and len(per_image) == 60
    boxes = np.array([a["bbox"] for a in data["annotations"]])
    cut = (boxes[:, 0] == 0) | (boxes[:, 1] == 0) | (boxes[:, :2] + boxes[:, 2:] >= 256).any(axis=1)
    assert cut.any() and (~cut).sum() > len(cut) / 2  # truncation: half of the objects may reach past the border
    assert sides[~cut].min() >= 0.9 * MIN_SIDE * 256 and sides.max() <= 1.4 * MAX_SIDE * 256  # aspect up to e^0.3
    assert sides[cut].min() >= 0.4 * MIN_SIDE * 256  # at most half outside
    assert (areas < 96 ** 2).any() and (areas >= 96 ** 2).any()  # a shape's area: a star's is a third of its box


def test_each_class_is_drawn_in_its_own_hue(tmp_path):
    import colorsys

    from PIL import Image

    from detector.data.synthetic import HUES

    root = write_synthetic(tmp_path / "s", train=20, val=1, size=256, seed=1, occlusion=0.0, edge_blur=0.0)
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    files = {i["id"]: root / i["file_name"] for i in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = (int(v) for v in a["bbox"])
        pixels = np.asarray(Image.open(files[a["image_id"]]).convert("RGB"))[y + h // 2, x + w // 2] / 255
        if a["category_id"] in (4, 6):  # a star's centre may fall between its points, a ring's is its hole
            continue
        hue = colorsys.rgb_to_hsv(*pixels)[0]
        assert min(abs(hue - HUES[a["category_id"] - 1]), 1 - abs(hue - HUES[a["category_id"] - 1])) < 0.08, a


def test_a_set_another_generator_wrote_is_never_reused_nor_replaced(tmp_path, capsys):
    """A data.root that holds generator 1's set (or generator 2's with other settings) is left as it is, for a study
    that may be reading it; the configured set is written beside it, in a folder keyed by its settings, with one
    line saying so, and found there the next time."""
    from detector.data.synthetic import MARKER, settings_key

    root = write_synthetic(tmp_path / "s", train=3, val=2, size=64, seed=0)
    marker = json.loads((root / MARKER).read_text())
    old = {k: marker[k] for k in ("train", "val", "size", "seed")}  # what generator 1 recorded
    (root / MARKER).write_text(json.dumps(old))
    cfg = DataConfig(kind="synthetic", root=str(root), synthetic=old)
    assert len(build_split(cfg, "train")) == 3
    keyed = tmp_path / f"s@{settings_key(cfg.synthetic.model_dump())}"
    lines = [line for line in capsys.readouterr().err.splitlines() if "generator" in line]
    assert len(lines) == 1 and "holds a set of synthetic generator 1" in lines[0], lines
    assert f"is {keyed}, written now" in lines[0]
    assert json.loads((root / MARKER).read_text()) == old  # left as it was
    assert json.loads((keyed / MARKER).read_text())["generator"] == 2
    build_split(cfg, "val")  # found there the next time
    assert "written now" not in capsys.readouterr().err
    other = DataConfig(kind="synthetic", root=str(root), synthetic={**old, "edge_blur": 0.5})  # other settings too
    build_split(other, "train")
    assert json.loads((tmp_path / f"s@{settings_key(other.synthetic.model_dump())}" / MARKER).read_text())[
        "edge_blur"] == 0.5


def test_writers_of_one_set_at_once_leave_it_whole(tmp_path):
    """Four processes write the same set at the same moment: each returns it complete, none deletes what
    another put in place."""
    import multiprocessing as mp

    from detector.data.synthetic import is_complete

    with mp.get_context("spawn").Pool(4) as pool:
        roots = pool.map(_write_small, [tmp_path / "s"] * 4)
    assert all(is_complete(r) for r in roots) and len(list(tmp_path.glob(".s.partial-*"))) == 0
    assert len(json.loads((tmp_path / "s" / "annotations" / "instances_train.json").read_text())["images"]) == 30


def _write_small(root):
    return write_synthetic(root, train=30, val=2, size=96, seed=5)


def test_voc_tree_agrees_with_coco_json(synthetic_root):
    coco = load_coco(synthetic_root / "annotations" / "instances_val.json", synthetic_root, "coco")
    voc = load_voc(synthetic_root / "VOCdevkit", "2007_val")
    assert voc.classes == coco.classes == list(CLASSES)
    assert len(voc) == len(coco)
    for rc, rv in zip(coco.records, voc.records):
        assert rc.path == rv.path
        np.testing.assert_array_equal(rc.labels, rv.labels)
        np.testing.assert_allclose(rc.boxes, rv.boxes, atol=1.0)  # VOC stores integer pixels


def test_voc_07_plus_12_concatenates_and_marks_difficult_ignore(synthetic_root, tmp_path):
    devkit = tmp_path / "VOCdevkit"
    shutil.copytree(synthetic_root / "VOCdevkit", devkit)
    shutil.copytree(devkit / "VOC2007", devkit / "VOC2012")
    for year in ("2007", "2012"):
        main = devkit / f"VOC{year}" / "ImageSets" / "Main"
        (main / "trainval.txt").write_text((main / "train.txt").read_text())
    xml = devkit / "VOC2012" / "Annotations" / "train_000000.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    ds = load_voc(devkit, "07+12")
    n = len((devkit / "VOC2007" / "ImageSets" / "Main" / "train.txt").read_text().split())
    assert len(ds) == 2 * n
    assert len({r.image_id for r in ds.records}) == 2 * n
    assert not ds.records[0].ignore.any()
    assert ds.records[n].ignore[0] and not ds.records[n].ignore[1:].any()


def test_crowd_boxes_become_ignore_and_degenerate_boxes_are_dropped_and_counted(synthetic_root, tmp_path, caplog):
    data = json.loads((synthetic_root / "annotations" / "instances_val.json").read_text())
    data["annotations"][0]["iscrowd"] = 1
    data["annotations"][1]["bbox"][2] = 0.0
    data["annotations"][2]["bbox"][3] = -3.0
    img_id = data["annotations"][0]["image_id"]
    data["images"].append({"id": 99, "file_name": data["images"][0]["file_name"], "width": 128, "height": 128})  # no objects
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with caplog.at_level("WARNING"):
        ds = load_coco(ann, synthetic_root, "edited")
    assert ds.dropped == 2
    assert "dropped 2 degenerate boxes" in caplog.text
    rec = next(r for r in ds.records if r.image_id == img_id)
    assert rec.ignore[0]
    empty = next(r for r in ds.records if r.image_id == 99)
    assert empty.boxes.shape == (0, 4)
    batch = collate([TrainingImages(ds, 128, 128)[ds.records.index(empty)]])  # an image without objects batches fine
    assert (batch.targets.labels == -1).all()


def test_missing_files_are_errors_naming_the_path(synthetic_root, tmp_path):
    with pytest.raises(DatasetError, match="instances_nope.json"):
        load_coco(synthetic_root / "annotations" / "instances_nope.json", synthetic_root, "x")
    data = json.loads((synthetic_root / "annotations" / "instances_val.json").read_text())
    data["images"][3]["file_name"] = "VOCdevkit/VOC2007/JPEGImages/gone.jpg"
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="gone.jpg"):
        load_coco(ann, synthetic_root, "x")
    with pytest.raises(DatasetError, match="no_such_dir"):
        build_split(DataConfig(kind="coco", root=str(tmp_path / "no_such_dir")), "val2017")
    with pytest.raises(DatasetError, match="VOCdevkit folder not found"):
        load_voc(tmp_path / "nothing", "2007_test")


def test_corrupt_annotations_are_clear_errors(synthetic_root, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": [{"id": 1}]')
    with pytest.raises(DatasetError, match="bad.json"):
        load_coco(bad, synthetic_root, "x")
    devkit = tmp_path / "VOCdevkit"
    shutil.copytree(synthetic_root / "VOCdevkit", devkit)
    (devkit / "VOC2007" / "Annotations" / "val_000001.xml").write_text("<annotation><size>")
    with pytest.raises(DatasetError, match="val_000001.xml"):
        load_voc(devkit, "2007_val")


def test_resize_keeps_aspect_within_short_and_long():
    assert resize_scale(640, 480, 600, 1000) == pytest.approx(1.25)
    assert resize_scale(2000, 500, 600, 1000) == pytest.approx(0.5)  # long side caps


def test_batches_are_padded_to_the_size_divisor_and_flip_mirrors_boxes(synthetic_root):
    ds = load_coco(synthetic_root / "annotations" / "instances_val.json", synthetic_root, "v")
    plain = TrainingImages(ds, 100, 100, flip=0.0)[0]
    flipped = TrainingImages(ds, 100, 100, flip=1.0)[0]
    w = plain[0].shape[2]
    assert torch.equal(flipped[0], plain[0].flip(-1))
    assert torch.allclose(flipped[1][:, 0], w - plain[1][:, 2])
    batch = next(iter(make_loader(ds, DataConfig(short=100, long=100, flip=0.0), 3, train=False)))
    assert batch.images.shape[-1] % SIZE_DIVISOR == 0 and batch.images.shape[-2] % SIZE_DIVISOR == 0
    assert batch.images.shape[0] == 3 and batch.targets.boxes.shape[0] == 3
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
