"""COCO, VOC and synthetic detection datasets behind one record format.

A :class:`Record` is one image's annotations in pixels: ``boxes`` (G, 4) xyxy, ``labels`` (G,) 0-based,
``ignore`` (G,) for crowd (COCO) or difficult (VOC) boxes, which never train as positives and are
ignored by evaluation. Degenerate boxes (zero or negative size) are dropped, counted and reported
once per dataset. A missing annotation file or image is an error naming the path.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from xml.etree import ElementTree as ET

import numpy as np

from ..config import DataConfig
from .synthetic import write_synthetic

log = logging.getLogger(__name__)

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


class DatasetError(ValueError):
    """Missing or corrupt data; the message names the path."""


@dataclass
class Record:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray


class DetectionSet:
    """Records + class names + (for COCO-style sets) the pycocotools ground truth used by evaluation."""

    def __init__(self, name: str, records: list[Record], classes: list[str], coco_gt=None, dropped: int = 0,
                 labelled: bool = True):
        self.name = name
        self.labelled = labelled
        """False for a split published without annotations (COCO test-dev): detections only, no metrics."""
        self.records = records
        self.classes = classes
        self.coco_gt = coco_gt
        self.dropped = dropped
        if dropped:
            log.warning("%s: dropped %d degenerate boxes (zero or negative width/height)", name, dropped)

    def __len__(self) -> int:
        return len(self.records)


def _require(path: Path, what: str, hint: str = "") -> Path:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}" + (f" ({hint})" if hint else ""))
    return path


def _check_images(records: list[Record]) -> None:
    for r in records:
        if not r.path.is_file():
            raise DatasetError(f"image file not found: {r.path} (image_id {r.image_id})")


def load_coco(ann_file: Path, image_dir: Path, name: str, max_images: Optional[int] = None) -> DetectionSet:
    """A COCO instances JSON and its image folder (``file_name`` is relative to image_dir)."""
    from pycocotools.coco import COCO

    _require(ann_file, "COCO annotation file", "COCO: <root>/annotations/instances_<split>.json")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"corrupt COCO annotation file {ann_file}: {err!r}") from None
    cat_ids = sorted(coco.getCatIds())
    if not cat_ids:
        raise DatasetError(f"COCO annotation file {ann_file} defines no categories")
    cat_to_label = {c: i for i, c in enumerate(cat_ids)}
    classes = [coco.cats[c]["name"] for c in cat_ids]
    image_ids = sorted(coco.getImgIds())
    if max_images:
        image_ids = image_ids[:max_images]
    records, dropped = [], 0
    for img_id in image_ids:
        info = coco.imgs[img_id]
        boxes, labels, ignore = [], [], []
        for a in coco.imgToAnns.get(img_id, []):
            if "bbox" not in a or a.get("category_id") not in cat_to_label:
                raise DatasetError(f"{ann_file}: annotation {a.get('id')} lacks a bbox or has an unknown category_id")
            x, y, w, h = a["bbox"]
            if not (w > 0 and h > 0):
                dropped += 1
                continue
            boxes.append((x, y, x + w, y + h))
            labels.append(cat_to_label[a["category_id"]])
            ignore.append(bool(a.get("iscrowd", 0)))
        records.append(Record(img_id, image_dir / info["file_name"], int(info["width"]), int(info["height"]),
                              np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                              np.asarray(ignore, bool)))
    _check_images(records)
    return DetectionSet(name, records, classes, coco_gt=coco, dropped=dropped, labelled="annotations" in coco.dataset)


def _voc_splits(spec: str) -> list[tuple[str, str]]:
    """'07+12' -> [(2007, trainval), (2012, trainval)]; '2007_test' -> [(2007, test)]."""
    if spec == "07+12":
        return [("2007", "trainval"), ("2012", "trainval")]
    out = []
    for part in spec.split("+"):
        year, _, image_set = part.partition("_")
        if not image_set:
            raise DatasetError(f"VOC split {part!r}: expected YEAR_SET such as 2007_test or 07+12")
        out.append((year, image_set))
    return out


def load_voc(devkit: Path, split: str, classes: Optional[list[str]] = None, max_images: Optional[int] = None) -> DetectionSet:
    """VOCdevkit/VOC<year>/{ImageSets/Main/<set>.txt, Annotations, JPEGImages}; several splits joined by '+'."""
    _require(devkit, "VOCdevkit folder", "set data.root to the folder holding VOC2007/ and VOC2012/")
    if classes is None:
        names_file = devkit / "classes.txt"
        classes = names_file.read_text().split() if names_file.is_file() else list(VOC_CLASSES)
    index = {c: i for i, c in enumerate(classes)}
    records, dropped = [], 0
    for year, image_set in _voc_splits(split):
        base = devkit / f"VOC{year}"
        ids = _require(base / "ImageSets" / "Main" / f"{image_set}.txt", "VOC image set").read_text().split()
        for n, stem in enumerate(ids):
            xml_path = _require(base / "Annotations" / f"{stem}.xml", "VOC annotation")
            try:
                root = ET.parse(xml_path).getroot()
                size = root.find("size")
                width, height = int(size.find("width").text), int(size.find("height").text)
                boxes, labels, ignore = [], [], []
                for obj in root.iter("object"):
                    name = obj.find("name").text.strip()
                    if name not in index:
                        raise DatasetError(f"{xml_path}: unknown class {name!r}")
                    bb = obj.find("bndbox")
                    x0, y0, x1, y1 = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
                    if not (x1 > x0 and y1 > y0):
                        dropped += 1
                        continue
                    difficult = obj.find("difficult")
                    boxes.append((x0, y0, x1, y1))
                    labels.append(index[name])
                    ignore.append(difficult is not None and difficult.text.strip() == "1")
            except (ET.ParseError, AttributeError, TypeError, ValueError) as err:
                if isinstance(err, DatasetError):
                    raise
                raise DatasetError(f"corrupt VOC annotation {xml_path}: {err!r}") from None
            image_id = int(year) * 10_000_000 + n
            records.append(Record(image_id, base / "JPEGImages" / f"{stem}.jpg", width, height,
                                  np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                                  np.asarray(ignore, bool)))
    if max_images:
        records = records[:max_images]
    _check_images(records)
    return DetectionSet(f"voc:{split}", records, list(classes), dropped=dropped)


def records_to_coco(ds: DetectionSet):
    """A pycocotools COCO ground truth built from records (VOC sets): ignore boxes become iscrowd."""
    from pycocotools.coco import COCO

    images, anns = [], []
    for r in ds.records:
        images.append({"id": r.image_id, "width": r.width, "height": r.height, "file_name": str(r.path)})
        for box, label, ign in zip(r.boxes, r.labels, r.ignore):
            x0, y0, x1, y1 = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": r.image_id, "category_id": int(label) + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": int(ign)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": i + 1, "name": n} for i, n in enumerate(ds.classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def category_ids(ds: DetectionSet) -> list[int]:
    """The COCO category id of each 0-based label."""
    if ds.coco_gt is not None:
        return sorted(ds.coco_gt.getCatIds())
    return list(range(1, len(ds.classes) + 1))


def ensure_synthetic(cfg: DataConfig) -> Path:
    """The synthetic root, generated on first use. Written to a temp dir and renamed, so concurrent
    workers never see a half-written dataset."""
    root = Path(cfg.root)
    if root.exists():
        return root
    params = {"train": 400, "val": 100, "size": 256, "seed": 0, **cfg.synthetic}
    tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    print(f"[data] writing synthetic dataset to {root} ({params})", file=sys.stderr, flush=True)
    write_synthetic(tmp, **params)
    try:
        tmp.rename(root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return root


def build_split(cfg: DataConfig, split: str) -> DetectionSet:
    """The configured dataset's ``split`` (the synthetic set is written on first use)."""
    root = Path(cfg.root)
    if cfg.kind == "synthetic":
        root = ensure_synthetic(cfg)
        return load_coco(root / "annotations" / f"instances_{split}.json", root, f"synthetic:{split}", cfg.max_images)
    if cfg.kind == "coco":
        if not root.exists():
            raise DatasetError(f"data.root: COCO folder not found: {root} (it should hold annotations/ and {split}/)")
        if split.startswith("test-dev"):  # published without annotations: image info only, images in test2017/
            return load_coco(root / "annotations" / f"image_info_{split}.json", root / "test2017", f"coco:{split}",
                             cfg.max_images)
        return load_coco(root / "annotations" / f"instances_{split}.json", root / split, f"coco:{split}", cfg.max_images)
    return load_voc(root, split, max_images=cfg.max_images)
