"""COCO, VOC and synthetic detection datasets behind one record format.

A :class:`Record` is one image's annotations in pixels: ``boxes`` (G, 4) xyxy, ``labels`` (G,) 0-based,
``ignore`` (G,) for crowd (COCO) or difficult (VOC) boxes, which never train as positives and are
ignored by evaluation. Degenerate boxes (zero or negative size) are dropped, counted and reported
once per dataset. A missing annotation file or image is an error naming the path.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from xml.etree import ElementTree as ET

import numpy as np

from ..config import DataConfig, shown_value
from .synthetic import is_complete, same_generator, settings_key, write_synthetic, written_with

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


def _read_coco_json(ann_file: Path) -> dict:
    """The instances JSON, checked for what loading and evaluation rely on; the error names the file, the
    entry (``annotations.12``) and its value."""
    try:
        dataset = json.loads(ann_file.read_bytes())
    except UnicodeDecodeError as err:
        raise DatasetError(f"{ann_file}: not UTF-8 JSON (offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{ann_file}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if not isinstance(dataset, dict):
        raise DatasetError(f"{ann_file}: top level must be an object with images/annotations/categories, "
                           f"got a {type(dataset).__name__}")
    for key in ("images", "annotations", "categories"):
        if key == "annotations" and key not in dataset:
            continue  # image info only (COCO test-dev)
        if not isinstance(dataset.get(key), list):
            raise DatasetError(f"{ann_file}: {key}: must be a list, got {shown_value(dataset.get(key))}")

    def check(key: str, i: int, entry: Any, fields: dict[str, tuple[type, ...]]) -> None:
        if not isinstance(entry, dict):
            raise DatasetError(f"{ann_file}: {key}.{i}: must be an object, got {shown_value(entry)}")
        for name, types in fields.items():
            if not isinstance(entry.get(name), types) or isinstance(entry.get(name), bool):
                raise DatasetError(f"{ann_file}: {key}.{i}.{name}: expected {'/'.join(t.__name__ for t in types)}, "
                                   f"got {shown_value(entry.get(name))}")

    for i, c in enumerate(dataset["categories"]):
        check("categories", i, c, {"id": (int,), "name": (str,)})
    for i, img in enumerate(dataset["images"]):
        check("images", i, img, {"id": (int,), "file_name": (str,), "width": (int,), "height": (int,)})
    cat_ids = {c["id"] for c in dataset["categories"]}
    img_ids = {img["id"] for img in dataset["images"]}
    for key in ("categories", "images"):
        _check_unique_ids(ann_file, key, dataset[key])
    for i, a in enumerate(dataset.get("annotations", [])):
        # COCOeval reads the area ranges off ``area`` and records a match as the GT's id, 0 meaning none.
        check("annotations", i, a, {"id": (int,), "image_id": (int,), "category_id": (int,), "area": (int, float)})
        if not (math.isfinite(a["area"]) and a["area"] >= 0):
            raise DatasetError(f"{ann_file}: annotations.{i}.area: expected a finite number >= 0, got "
                               f"{shown_value(a['area'])}")
        if a["id"] < 1:
            raise DatasetError(f"{ann_file}: annotations.{i}.id: {a['id']}: annotation ids start at 1 (COCO's "
                               f"evaluation reads id 0 as 'no match')")
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
            raise DatasetError(f"{ann_file}: annotations.{i}.bbox: expected 4 finite numbers [x, y, w, h], "
                               f"got {shown_value(box)}")
        if a["category_id"] not in cat_ids:
            raise DatasetError(f"{ann_file}: annotations.{i}.category_id: {a['category_id']} is not a category id "
                               f"(ids: {sorted(cat_ids)[:10]}{' ...' if len(cat_ids) > 10 else ''})")
        if a["image_id"] not in img_ids:
            raise DatasetError(f"{ann_file}: annotations.{i}.image_id: {a['image_id']} is not an image id")
    _check_unique_ids(ann_file, "annotations", dataset.get("annotations", []))
    return dataset


def _check_unique_ids(ann_file: Path, key: str, entries: list[dict]) -> None:
    """A DatasetError naming the first entry whose id an earlier one has (pycocotools' index keeps the last)."""
    seen: dict[int, int] = {}
    for i, entry in enumerate(entries):
        if entry["id"] in seen:
            raise DatasetError(f"{ann_file}: {key}.{i}.id: {entry['id']} is also {key}.{seen[entry['id']]}'s id")
        seen[entry["id"]] = i


def load_coco(ann_file: Path, image_dir: Path, name: str, max_images: Optional[int] = None) -> DetectionSet:
    """A COCO instances JSON and its image folder (``file_name`` is relative to image_dir)."""
    from pycocotools.coco import COCO

    _require(ann_file, "COCO annotation file", "COCO: <root>/annotations/instances_<split>.json")
    coco = COCO()
    coco.dataset = _read_coco_json(ann_file)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
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


def _xml_text(node: ET.Element, path: str, xml_path: Path) -> str:
    """The text of ``path`` below ``node``; a DatasetError naming the missing element and the file."""
    found = node.find(path)
    if found is None or found.text is None:
        raise DatasetError(f"{xml_path}: <{node.tag}> has no <{'>/<'.join(path.split('/'))}>")
    return found.text


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
                width, height = int(_xml_text(root, "size/width", xml_path)), int(_xml_text(root, "size/height", xml_path))
                boxes, labels, ignore = [], [], []
                for obj in root.iter("object"):
                    name = _xml_text(obj, "name", xml_path).strip()
                    if name not in index:
                        raise DatasetError(f"{xml_path}: unknown class {name!r}")
                    x0, y0, x1, y1 = (float(_xml_text(obj, f"bndbox/{t}", xml_path)) for t in ("xmin", "ymin", "xmax", "ymax"))
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
    """The folder of the synthetic set ``cfg`` asks for, written on first use. It is ``data.root``, unless that
    holds a set another generator (version or settings) wrote: that set is never reused, nor replaced (another
    study may be reading it), and this config's set lives beside it in a folder keyed by its settings
    (``synthetic@g2-1a2b3c4d``). A set of the same generator with other counts, size or seed is used as it is."""
    root = Path(cfg.root)
    params = cfg.synthetic.model_dump()
    say = lambda m: print(f"[data] {m}", file=sys.stderr, flush=True)
    if is_complete(root):
        written = written_with(root)
        if same_generator(written, params):
            if written != params:  # e.g. a set the tests wrote, or one from before the profile grew
                say(f"{root} holds a synthetic set written with {written}, not {params} as configured: it is used "
                    f"as it is (delete it, or point data.root elsewhere, for the configured one)")
            return root
        keyed = root.with_name(f"{root.name}@{settings_key(params)}")
        say(f"{root} holds a set of synthetic generator {written['generator']} with other settings ({written}): "
            f"not used; generator {params['generator']}'s ({params}) is {keyed}"
            + ("" if is_complete(keyed) else ", written now"))
        root = keyed
    else:
        say(f"writing synthetic dataset to {root} ({params})")
    try:
        return write_synthetic(root, **params, progress=say)
    except FileExistsError as err:
        raise DatasetError(f"data.root: {err}") from None


def build_split(cfg: DataConfig, split: str) -> DetectionSet:
    """The configured dataset's ``split`` (the synthetic set is written on first use). A split without
    images, or a labelled one without a single box, is an error: nothing could train or be measured on it."""
    ds = _load_split(cfg, split)
    if not len(ds):
        raise DatasetError(f"data split {split!r} of {cfg.root} has no images")
    if ds.labelled and not any(len(r.boxes) for r in ds.records):
        raise DatasetError(f"data split {split!r} of {cfg.root} has {len(ds)} images and no annotated box")
    return ds


def _load_split(cfg: DataConfig, split: str) -> DetectionSet:
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
