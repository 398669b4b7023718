"""A deterministic synthetic detection dataset written as a real COCO dataset (JPEGs + instances JSON)
and a VOC tree (XML annotations, ImageSets) over the same JPEGs.

Layout under ``root``::

    VOCdevkit/VOC2007/JPEGImages/{split}_{i:06d}.jpg
    VOCdevkit/VOC2007/Annotations/{split}_{i:06d}.xml
    VOCdevkit/VOC2007/ImageSets/Main/{split}.txt
    annotations/instances_{split}.json          (file_name relative to root)

Images hold 1-10 shapes of six classes, each with its own colour and texture, sized from COCO-small
to COCO-large, partly occluding each other, on a noisy background with clutter (lines, blobs)
that belongs to no class. Image i of a split depends only on (seed, split, i).
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}
JPEG_DIR = Path("VOCdevkit/VOC2007/JPEGImages")


def _polygon(kind: str, x0: float, y0: float, w: float, h: float) -> list[tuple[float, float]]:
    cx, cy = x0 + w / 2, y0 + h / 2
    if kind == "triangle":
        return [(cx, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    if kind == "star":
        pts = []
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.2  # outer / inner radius as a fraction of the box
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * w * math.cos(a), cy + r * h * math.sin(a)))
        return pts
    raise ValueError(kind)


def _shape_mask(kind: str, w: int, h: int) -> np.ndarray:
    """(h, w) bool mask of a shape filling a w x h box."""
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    box = (0, 0, w - 1, h - 1)
    if kind == "circle":
        d.ellipse(box, fill=255)
    elif kind == "square":
        d.rectangle(box, fill=255)
    elif kind == "ring":
        d.ellipse(box, fill=255)
        t = max(2, int(min(w, h) * 0.22))
        d.ellipse((t, t, w - 1 - t, h - 1 - t), fill=0)
    elif kind == "cross":
        tw, th = max(2, int(w * 0.32)), max(2, int(h * 0.32))
        d.rectangle(((w - tw) // 2, 0, (w - tw) // 2 + tw, h - 1), fill=255)
        d.rectangle((0, (h - th) // 2, w - 1, (h - th) // 2 + th), fill=255)
    else:
        d.polygon(_polygon(kind, 0, 0, w - 1, h - 1), fill=255)
    return np.asarray(img) > 127


def _texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h, w, 3) float texture: solid, stripes, checker or noise around a saturated colour."""
    base = rng.uniform(0, 255, 3)
    base[rng.integers(3)] = rng.choice([rng.uniform(0, 50), rng.uniform(205, 255)])
    kind = rng.integers(4)
    if kind == 0:
        return np.broadcast_to(base, (h, w, 3)).astype(np.float32)
    other = np.clip(base + rng.uniform(-90, 90, 3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w]
    period = rng.integers(3, 8)
    if kind == 1:
        sel = ((xx + yy * rng.integers(0, 2)) // period) % 2 == 0
    elif kind == 2:
        sel = ((xx // period) + (yy // period)) % 2 == 0
    else:
        noise = rng.normal(0, 25, (h, w, 3))
        return np.clip(base + noise, 0, 255).astype(np.float32)
    return np.where(sel[..., None], base, other).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    low = rng.uniform(40, 200, (3, 3, 3)).astype(np.float32)
    bg = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BILINEAR), dtype=np.float32)
    bg = bg + rng.normal(0, 12, bg.shape)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 8)):  # clutter lines
        x = rng.uniform(0, size, 4)
        d.line(tuple(x), fill=tuple(int(c) for c in rng.uniform(0, 255, 3)), width=int(rng.integers(1, 3)))
    for _ in range(rng.integers(1, 5)):  # clutter blobs: irregular polygons of no class
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(3, size * 0.12)
        n = int(rng.integers(5, 9))
        ang = np.sort(rng.uniform(0, 2 * math.pi, n))
        rad = r * rng.uniform(0.4, 1.0, n)
        d.polygon([(cx + a * math.cos(t), cy + a * math.sin(t)) for a, t in zip(rad, ang)],
                  fill=tuple(int(c) for c in rng.uniform(30, 220, 3)))
    return np.asarray(img, dtype=np.float32).copy()


def _overlap_ok(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    """Allow partial occlusion but never hide more than half of an earlier object's box."""
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in placed:
        iw, ih = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
        if iw > 0 and ih > 0 and iw * ih > 0.5 * (a1 - a0) * (b1 - b0):
            return False
    return True


def render_image(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, list[dict]]:
    """One image (size, size, 3) uint8 and its objects [{bbox: [x, y, w, h], category: k, area: a}]."""
    rng = np.random.default_rng([seed, _SPLIT_IDS.get(split, 9), index])
    img = _background(rng, size)
    placed: list[tuple[int, int, int, int]] = []
    objects = []
    min_side, max_side = size / 12, 0.8 * size
    for _ in range(int(rng.integers(1, 11))):
        for _attempt in range(20):
            side = math.exp(rng.uniform(math.log(min_side), math.log(max_side)))
            aspect = math.exp(rng.uniform(-0.35, 0.35))
            w, h = max(6, int(side * aspect)), max(6, int(side / aspect))
            if w >= size or h >= size:
                continue
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if _overlap_ok((x0, y0, x0 + w, y0 + h), placed):
                break
        else:
            continue
        k = int(rng.integers(len(CLASSES)))
        mask = _shape_mask(CLASSES[k], w, h)
        tex = _texture(rng, w, h)
        region = img[y0:y0 + h, x0:x0 + w]
        region[mask] = tex[mask]
        ys, xs = np.nonzero(mask)
        bx0, by0, bx1, by1 = x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1
        placed.append((x0, y0, x0 + w, y0 + h))
        objects.append({"bbox": [float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)],
                        "category": k, "area": float(mask.sum())})
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _voc_xml(stem: str, size: int, objects: list[dict]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = f"{stem}.jpg"
    sz = ET.SubElement(root, "size")
    for tag, val in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(val)
    for o in objects:
        ob = ET.SubElement(root, "object")
        ET.SubElement(ob, "name").text = CLASSES[o["category"]]
        ET.SubElement(ob, "difficult").text = "0"
        bb = ET.SubElement(ob, "bndbox")
        x, y, w, h = o["bbox"]
        for tag, val in (("xmin", x), ("ymin", y), ("xmax", x + w), ("ymax", y + h)):
            ET.SubElement(bb, tag).text = str(int(val))
    return ET.tostring(root)


MARKER = "ablab-synthetic.json"
"""Written last, holding the arguments: a folder without it is not a complete synthetic set."""


def write_synthetic(root: str | Path, train: int = 400, val: int = 100, size: int = 256, seed: int = 0,
                    progress: Callable[[str], None] | None = None) -> Path:
    """Write the dataset at ``root`` and return it. Same arguments, same annotations. It is written into a
    hidden sibling folder and renamed into place, so ``root`` is either absent or complete (MARKER), however
    the writer ends; a folder left half-written by an older version is rewritten."""
    root = Path(root)
    params = {"train": train, "val": val, "size": size, "seed": seed}
    if _holds(root, params):
        return root
    _check_replaceable(root)
    _remove_stale_partials(root)
    tmp = root.with_name(f".{root.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_tree(tmp, params, progress)
    except BaseException:  # a full disk, Ctrl-C: leave nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if _holds(root, params):
        shutil.rmtree(tmp, ignore_errors=True)  # another writer finished the same set first: readers may use it
        return root
    if root.exists():
        shutil.rmtree(root)  # half-written, or other parameters
    try:
        tmp.rename(root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process renamed its copy into place in between
        if not is_complete(root):
            raise
    return root


def is_complete(root: Path) -> bool:
    return (root / MARKER).is_file()


def written_with(root: Path) -> dict[str, int]:
    """The arguments a complete set was written with."""
    return json.loads((root / MARKER).read_text())


def _holds(root: Path, params: dict[str, int]) -> bool:
    """``root`` is a complete set written with exactly these arguments."""
    return is_complete(root) and written_with(root) == params


def _check_replaceable(root: Path) -> None:
    """Only an absent or empty folder, or one holding nothing but this writer's layout, may be (re)written."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} is a file, not a folder for the synthetic dataset")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in ("annotations", "VOCdevkit", MARKER)) \
        if root.is_dir() else []
    if foreign:
        raise FileExistsError(f"{root} holds {foreign[:3]}, so it is not a synthetic dataset ablab wrote; "
                              f"choose another folder")


def _remove_stale_partials(root: Path) -> None:
    for partial in root.parent.glob(f".{root.name}.partial-*"):
        pid = partial.name.rpartition("-")[2]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(partial, ignore_errors=True)  # its writer is gone
        except PermissionError:
            pass  # alive, another user's


def _write_tree(root: Path, params: dict[str, int], progress: Callable[[str], None] | None) -> None:
    seed, size = params["seed"], params["size"]
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(CLASSES)]
    ann_id = 1
    for split in ("train", "val"):
        count = params[split]
        images, annotations, stems = [], [], []
        for i in range(count):
            stem = f"{split}_{i:06d}"
            pixels, objects = render_image(seed, split, i, size)
            # Encoded in memory, then written: PIL writing to a file ignores a failed write (a full disk) and
            # leaves a truncated JPEG; Python's write raises.
            jpeg = io.BytesIO()
            Image.fromarray(pixels).save(jpeg, format="JPEG", quality=92)
            (voc / "JPEGImages" / f"{stem}.jpg").write_bytes(jpeg.getvalue())
            (voc / "Annotations" / f"{stem}.xml").write_bytes(_voc_xml(stem, size, objects))
            image_id = _SPLIT_IDS[split] * 1_000_000 + i
            images.append({"id": image_id, "file_name": str(JPEG_DIR / f"{stem}.jpg"), "width": size, "height": size})
            for o in objects:
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": o["category"] + 1,
                                    "bbox": o["bbox"], "area": o["area"], "iscrowd": 0})
                ann_id += 1
            stems.append(stem)
            if progress and ((i + 1) % 200 == 0 or i + 1 == count):
                progress(f"{split}: {i + 1}/{count} images")
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
        info = {"description": "ablab synthetic shapes", "seed": seed, "size": size, "split": split}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"info": info, "images": images, "annotations": annotations, "categories": categories}))
    (root / "VOCdevkit" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / MARKER).write_text(json.dumps(params))
