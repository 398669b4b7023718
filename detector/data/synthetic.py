"""A deterministic synthetic detection dataset written as a real COCO dataset (JPEGs + instances JSON)
and a VOC tree (XML annotations, ImageSets) over the same JPEGs.

Layout under ``root``::

    VOCdevkit/VOC2007/JPEGImages/{split}_{i:06d}.jpg
    VOCdevkit/VOC2007/Annotations/{split}_{i:06d}.xml
    VOCdevkit/VOC2007/ImageSets/Main/{split}.txt
    annotations/instances_{split}.json          (file_name relative to root)

Generator 2 aims at the operating point of the papers' baselines (PASCAL VOC: AP50 ~80, AP90 ~15-20), so that
a better ranking by localisation quality has true positives spread over IoU 0.5-0.95 to act on:

- *recognition is easy*: six shapes, each class its own hue (jittered), objects from 1/5 to 0.6 of the image
  side (none tiny at the trained size), on a desaturated background; clutter is thin lines and specks, unlike
  any object at its scale;
- *localisation is not*: each object's edge is blurred by its own amount (up to ``edge_blur`` px), so its
  extent is uncertain by about that much, and later objects may hide up to ``occlusion`` of an earlier one's
  box (boxes are the whole shape's, as VOC's and COCO's are);
- ``truncation``: that share of the objects may reach past the border, by up to half their side; their box is
  the part inside, as VOC's are: a partial shape is harder to recognise, not to localise.

Image i of a split depends only on (seed, split, i) and the generator's settings.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "star", "cross", "ring")
HUES = (0.0, 0.33, 0.63, 0.14, 0.82, 0.48)
"""Each class's hue (red, green, blue, yellow, magenta, cyan), in CLASSES' order."""
_SPLIT_IDS = {"train": 1, "val": 2, "test": 3}
JPEG_DIR = Path("VOCdevkit/VOC2007/JPEGImages")
MIN_SIDE, MAX_SIDE = 0.2, 0.6
"""Object sides as fractions of the image side (log-uniform between them)."""
MAX_OBJECTS = 5
"""Objects tried per image (1 to this many; one that does not fit beside the others is left out)."""


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


def _shape_mask(kind: str, w: int, h: int) -> Image.Image:
    """An 'L' image (w, h) of a shape filling the w x h box (255 inside)."""
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
    return img


def _class_colour(rng: np.random.Generator, k: int) -> np.ndarray:
    """(3,) RGB of class k: its hue, jittered, saturated and bright enough to stand out of the background."""
    import colorsys

    hue = (HUES[k] + rng.uniform(-0.03, 0.03)) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)), np.float32) * 255


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float: a smooth, desaturated colour field with noise, thin lines and small specks."""
    grey = rng.uniform(70, 180, (3, 3, 1))
    low = np.clip(grey + rng.normal(0, 12, (3, 3, 3)), 0, 255).astype(np.uint8)
    bg = np.asarray(Image.fromarray(low).resize((size, size), Image.BILINEAR), dtype=np.float32)
    img = Image.fromarray(np.clip(bg + rng.normal(0, 8, bg.shape), 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 3)):  # thin lines: no object is a line
        shade = int(rng.uniform(30, 220))
        d.line(tuple(rng.uniform(0, size, 4)), fill=(shade,) * 3, width=1 + int(size >= 384))
    for _ in range(rng.integers(0, 4)):  # specks: a tenth of the smallest object's side, or less
        cx, cy, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(1, size * MIN_SIDE / 10)]
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(c) for c in rng.uniform(40, 200, 3)))
    return np.asarray(img, dtype=np.float32).copy()


def _hidden_ok(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]], occlusion: float) -> bool:
    """A new object on top may hide at most ``occlusion`` of each earlier object's box."""
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in placed:
        iw, ih = min(x1, a1) - max(x0, a0), min(y1, b1) - max(y0, b0)
        if iw > 0 and ih > 0 and iw * ih > occlusion * (a1 - a0) * (b1 - b0):
            return False
    return True


def _place(rng: np.random.Generator, size: int, truncation: float) -> tuple[int, int, int, int]:
    """An object's (x0, y0, w, h) in the image's pixels; with probability ``truncation`` it may reach past the
    border by up to half its side."""
    side = size * math.exp(rng.uniform(math.log(MIN_SIDE), math.log(MAX_SIDE)))
    aspect = math.exp(rng.uniform(-0.3, 0.3))
    w, h = min(size - 1, int(side * aspect)), min(size - 1, int(side / aspect))
    past = rng.random() < truncation
    x0 = int(rng.integers(-(w // 2), size - w // 2)) if past else int(rng.integers(0, size - w))
    y0 = int(rng.integers(-(h // 2), size - h // 2)) if past else int(rng.integers(0, size - h))
    return x0, y0, w, h


def render_image(seed: int, split: str, index: int, size: int, occlusion: float, edge_blur: float,
                 truncation: float) -> tuple[np.ndarray, list[dict]]:
    """One image (size, size, 3) uint8 and its objects [{bbox: [x, y, w, h], category: k, area: a}]. The box
    is the visible part (inside the image) of the shape before its edge is blurred; ``edge_blur`` is the largest
    blur (Gaussian sigma, px); ``truncation``: the share of objects that may reach past the border."""
    rng = np.random.default_rng([seed, _SPLIT_IDS.get(split, 9), index])
    img = _background(rng, size)
    placed: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(20):
            x0, y0, w, h = _place(rng, size, truncation)
            box = (max(0, x0), max(0, y0), min(size, x0 + w), min(size, y0 + h))
            if _hidden_ok(box, placed, occlusion):
                break
        else:
            continue
        k = int(rng.integers(len(CLASSES)))
        shape = _shape_mask(CLASSES[k], w, h)
        # The blur spreads the edge outwards too: drawn in a margin around the box, clipped to the image.
        sigma = rng.uniform(0, edge_blur)
        m = int(math.ceil(3 * sigma))
        alpha = Image.new("L", (w + 2 * m, h + 2 * m), 0)
        alpha.paste(shape, (m, m))
        if sigma > 0:
            alpha = alpha.filter(ImageFilter.GaussianBlur(sigma))
        ax0, ay0 = max(0, x0 - m), max(0, y0 - m)
        ax1, ay1 = min(size, x0 + w + m), min(size, y0 + h + m)
        a = np.asarray(alpha, np.float32)[ay0 - (y0 - m):ay1 - (y0 - m), ax0 - (x0 - m):ax1 - (x0 - m), None] / 255
        colour = _class_colour(rng, k) + rng.normal(0, 6, (ay1 - ay0, ax1 - ax0, 3))
        region = img[ay0:ay1, ax0:ax1]
        region[:] = a * colour + (1 - a) * region
        ys, xs = np.nonzero(np.asarray(shape) > 127)
        ys, xs = ys + y0, xs + x0
        inside = (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
        ys, xs = ys[inside], xs[inside]
        placed.append(box)
        objects.append({"bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
                                 float(ys.max() + 1 - ys.min())], "category": k, "area": float(inside.sum())})
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


def write_synthetic(root: str | Path, progress: Callable[[str], None] | None = None, **settings) -> Path:
    """Write the dataset at ``root`` and return it; ``settings``: detector.config.SyntheticConfig's fields (its
    defaults for the rest). Same settings, same annotations. It is written into a hidden sibling folder and
    renamed into place, so ``root`` is either absent or complete (MARKER), however the writer ends; a folder left
    half-written, or written with other settings, is rewritten."""
    from detector.config import SyntheticConfig

    root = Path(root)
    params = SyntheticConfig(**settings).model_dump()
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
    # One writer at a time decides and moves: a check, then a delete, would race another writer's rename and
    # delete the set it had just put in place.
    with open(root.with_name(f".{root.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _holds(root, params):
            shutil.rmtree(tmp, ignore_errors=True)  # another writer finished the same set first: readers may use it
            return root
        if root.exists():
            shutil.rmtree(root)  # half-written, or asked for with other settings (`ablab data synthetic --out`)
        tmp.rename(root)
    return root


def is_complete(root: Path) -> bool:
    return (root / MARKER).is_file()


def written_with(root: Path) -> dict:
    """The arguments a complete set was written with (generator 1 recorded no version: it says 1)."""
    return {"generator": 1, **json.loads((root / MARKER).read_text())}


def same_generator(written: dict, params: dict) -> bool:
    """Whether a set written with ``written`` looks as ``params`` asks (version and settings; counts, size and
    seed aside)."""
    return all(written.get(k) == params.get(k) for k in ("generator", "occlusion", "edge_blur", "truncation"))


def settings_key(params: dict) -> str:
    """A folder-name key of a set's settings, e.g. ``g2-1a2b3c4d`` (the generator, then a digest of them all)."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return f"g{params['generator']}-{digest}"


def _holds(root: Path, params: dict) -> bool:
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


def _write_tree(root: Path, params: dict, progress: Callable[[str], None] | None) -> None:
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
            pixels, objects = render_image(seed, split, i, size, params["occlusion"], params["edge_blur"],
                                           params["truncation"])
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
