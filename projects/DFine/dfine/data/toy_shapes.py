"""A generated toy detection data set in COCO format, for quick-start training and tests.

Six classes of filled shapes that differ in size and aspect ratio, drawn in random colours on
textured backgrounds (smooth noise, gradients, stripes) with clutter that is not an object
(thin lines, small specks). Classes are defined by shape only; colours carry no information.

Annotation conventions:

* ``bbox`` is the tight box (COCO ``[x, y, w, h]``, absolute pixels) of the **whole** shape, even
  where later shapes occlude part of it. Shapes lie entirely inside the image, and occlusion is
  kept moderate (every shape keeps at least ``MIN_VISIBLE_FRACTION`` of its pixels visible), so
  the full box stays a meaningful target.
* ``area`` is the pixel count of the whole shape (consistent with the box), ``iscrowd`` is 0.
* Category ids are 1..6 in the json (COCO style); Detectron2 maps them to contiguous 0..5.
* About 5% of the images contain no object (background-only samples).

Everything is a pure function of ``(seed, split, image index)``, so two generations with the
same arguments give identical json and identical JPEG bytes.
"""
import functools
import json
import os
import shutil
import tempfile
from typing import List, Optional, Tuple

import cv2
import numpy as np

from .datasets import register_coco_dataset

__all__ = [
    "TOY_SHAPES_CLASSES",
    "default_toy_shapes_dir",
    "prepare_toy_shapes",
    "register_toy_shapes",
    "write_toy_shapes",
    "render_toy_image",
    "toy_shapes_paths",
]

TOY_SHAPES_CLASSES = ("wide_rectangle", "tall_ellipse", "small_square", "triangle", "ring", "star")
# Each shape must keep this fraction of its pixels visible after later shapes are drawn.
MIN_VISIBLE_FRACTION = 0.65
MAX_OBJECTS = 6
BACKGROUND_ONLY_PROB = 0.05
_SPLIT_SEED = {"train": 0, "val": 1}


def default_toy_shapes_dir() -> str:
    """``$DFINE_DATASETS/toy_shapes_v1``, or ``~/.cache/dfine/datasets/toy_shapes_v1``."""
    root = os.environ.get("DFINE_DATASETS", os.path.join("~", ".cache", "dfine", "datasets"))
    return os.path.join(os.path.expanduser(root), "toy_shapes_v1")


def toy_shapes_paths(directory: str, split: str) -> Tuple[str, str]:
    """``(json_file, image_root)`` of one split ("train" or "val") inside ``directory``."""
    return (
        os.path.join(directory, "annotations", f"instances_{split}.json"),
        os.path.join(directory, split),
    )


def prepare_toy_shapes(
    directory: Optional[str] = None,
    num_train: int = 800,
    num_val: int = 200,
    image_size: int = 256,
    seed: int = 0,
) -> str:
    """Make sure the data set exists in ``directory`` (default :func:`default_toy_shapes_dir`).

    Generation writes into a temporary sibling folder that is renamed at the end, so an
    interrupted run never leaves a partial set, and concurrent processes (one per rank) agree on
    whichever copy was renamed first. An existing folder is trusted as is.

    Returns:
        the data set directory.
    """
    directory = os.path.abspath(directory or default_toy_shapes_dir())
    if os.path.isdir(directory):
        return directory
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would survive the rename
        write_toy_shapes(tmp, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
        try:
            os.rename(tmp, directory)
        except OSError:
            # Another process finished first; its copy is identical.
            if not os.path.isdir(directory):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def write_toy_shapes(
    directory: str, num_train: int = 800, num_val: int = 200, image_size: int = 256, seed: int = 0
) -> None:
    """Write both splits (JPEG images and COCO json files) into ``directory`` (not atomic)."""
    for split, num_images in (("train", num_train), ("val", num_val)):
        json_file, image_root = toy_shapes_paths(directory, split)
        os.makedirs(image_root, exist_ok=True)
        os.makedirs(os.path.dirname(json_file), exist_ok=True)
        images, annotations = [], []
        for index in range(num_images):
            rng = np.random.default_rng([seed, _SPLIT_SEED[split], index])
            image, objects = render_toy_image(rng, image_size)
            image_id = index + 1
            file_name = f"{image_id:06d}.jpg"
            # cv2 writes BGR; the stored JPEG is a regular RGB image.
            ok = cv2.imwrite(
                os.path.join(image_root, file_name), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92]
            )
            if not ok:
                raise OSError(f"Could not write {os.path.join(image_root, file_name)}")
            images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
            for class_index, box, area in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": class_index + 1,
                        "bbox": box,
                        "area": area,
                        "iscrowd": 0,
                    }
                )
        categories = [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(TOY_SHAPES_CLASSES)
        ]
        content = {
            "info": {"description": "dfine toy_shapes_v1", "seed": seed, "split": split},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        with open(json_file, "w") as f:
            json.dump(content, f)


def render_toy_image(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, List[Tuple[int, List[float], float]]]:
    """One RGB uint8 image and its objects as ``(class index, [x, y, w, h], area)``."""
    image = _background(rng, size)
    _draw_clutter(rng, image)
    num_objects = 0 if rng.random() < BACKGROUND_ONLY_PROB else int(rng.integers(1, MAX_OBJECTS + 1))

    owner = np.full((size, size), -1, dtype=np.int16)  # index of the topmost shape per pixel
    full_areas: List[int] = []
    objects = []
    for _ in range(num_objects):
        class_index = int(rng.integers(len(TOY_SHAPES_CLASSES)))
        for _attempt in range(20):
            mask = _shape_mask(rng, class_index, size)
            if _occlusion_ok(owner, mask, full_areas):
                break
        else:
            continue
        owner[mask] = len(full_areas)
        full_areas.append(int(mask.sum()))
        _paint(rng, image, mask)
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        box = [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
        objects.append((class_index, box, float(full_areas[-1])))

    noise = rng.normal(0.0, rng.uniform(2.0, 6.0), size=image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), objects


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 ``(size, size, 3)`` texture with values in [0, 255]."""
    base = _random_colour(rng, saturation=(0.0, 0.5), value=(0.25, 0.85))
    kind = int(rng.integers(3))
    if kind == 0:  # smooth noise: a coarse random grid upsampled
        cells = int(rng.integers(3, 9))
        coarse = rng.uniform(-1, 1, size=(cells, cells, 3)).astype(np.float32)
        texture = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * rng.uniform(20, 50)
    elif kind == 1:  # linear gradient between the base and a second colour
        other = _random_colour(rng, saturation=(0.0, 0.5), value=(0.25, 0.85))
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
        texture = t * (other - base)
    else:  # stripes of random orientation and period
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.04, 0.2) * size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period)
        texture = np.sin(phase)[..., None] * rng.uniform(10, 35) * rng.uniform(0.3, 1.0, size=3)
    return np.clip(base + texture, 0, 255).astype(np.float32)


def _draw_clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Thin lines and small specks: distractors far thinner or smaller than any object."""
    size = image.shape[0]
    for _ in range(int(rng.integers(0, 7))):
        p0, p1 = rng.integers(0, size, size=(2, 2))
        colour = tuple(float(c) for c in _random_colour(rng, saturation=(0.0, 1.0), value=(0.1, 1.0)))
        cv2.line(image, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), colour, int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 12))):
        centre = rng.integers(0, size, size=2)
        colour = tuple(float(c) for c in _random_colour(rng, saturation=(0.0, 1.0), value=(0.1, 1.0)))
        radius = max(1, int(rng.uniform(0.005, 0.02) * size))
        cv2.circle(image, (int(centre[0]), int(centre[1])), radius, colour, -1)


def _shape_mask(rng: np.random.Generator, class_index: int, size: int) -> np.ndarray:
    """Boolean mask of one shape of the given class at a random position fully inside the image.

    Sizes are fractions of the image side; the box side ranges from 12% to 60% of it.
    """
    name = TOY_SHAPES_CLASSES[class_index]
    if name == "wide_rectangle":
        w = rng.uniform(0.32, 0.60) * size
        h = w / rng.uniform(2.0, 3.0)
    elif name == "tall_ellipse":
        h = rng.uniform(0.32, 0.60) * size
        w = h / rng.uniform(2.0, 3.0)
    elif name == "small_square":
        w = h = rng.uniform(0.12, 0.20) * size
    elif name == "triangle":
        w = rng.uniform(0.24, 0.42) * size
        h = w * rng.uniform(0.8, 1.0)
    else:  # ring and star fill a square box
        w = h = rng.uniform(0.24, 0.44) * size
    w, h = int(round(w)), int(round(h))
    x0 = int(rng.integers(0, size - w + 1))
    y0 = int(rng.integers(0, size - h + 1))

    canvas = np.zeros((size, size), dtype=np.uint8)
    if name in ("wide_rectangle", "small_square"):
        canvas[y0 : y0 + h, x0 : x0 + w] = 1
    elif name == "tall_ellipse":
        centre = ((2 * x0 + w - 1) / 2, (2 * y0 + h - 1) / 2)
        cv2.ellipse(canvas, (centre, ((w - 1), (h - 1)), 0.0), 1, -1)
    elif name == "triangle":
        apex_x = x0 + rng.uniform(0.3, 0.7) * (w - 1)
        points = [(apex_x, y0), (x0, y0 + h - 1), (x0 + w - 1, y0 + h - 1)]
        if rng.random() < 0.5:  # pointing down
            points = [(x, 2 * y0 + h - 1 - y) for x, y in points]
        cv2.fillPoly(canvas, [np.round(np.array(points)).astype(np.int32)], 1)
    elif name == "ring":
        radius = (w - 1) / 2
        centre = (int(round(x0 + radius)), int(round(y0 + radius)))
        thickness = max(2, int(round(radius * rng.uniform(0.3, 0.5))))
        cv2.circle(canvas, centre, int(round(radius)), 1, -1)
        cv2.circle(canvas, centre, int(round(radius)) - thickness, 0, -1)
    else:  # five-pointed star, randomly rotated, inscribed in the box
        radius = (w - 1) / 2
        angles = rng.uniform(0, 2 * np.pi) + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.4, 0.5))
        points = np.stack([x0 + radius + radii * np.cos(angles), y0 + radius + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas.astype(bool)


def _occlusion_ok(owner: np.ndarray, mask: np.ndarray, full_areas: List[int]) -> bool:
    """Whether drawing ``mask`` on top keeps every earlier shape visible enough."""
    if not full_areas:
        return True
    visible = np.bincount(owner.ravel() + 1, minlength=len(full_areas) + 1)[1:]
    covered = np.bincount(owner[mask] + 1, minlength=len(full_areas) + 1)[1:]
    return bool(np.all(visible - covered >= MIN_VISIBLE_FRACTION * np.asarray(full_areas)))


def _paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> None:
    """Fill ``mask`` with a colour that differs from the background under it, with mild shading."""
    below = image[mask].mean(axis=0)
    for _attempt in range(8):
        colour = _random_colour(rng, saturation=(0.3, 1.0), value=(0.2, 1.0))
        if np.abs(colour - below).max() > 70:
            break
    ys, xs = np.nonzero(mask)
    gradient = (xs - xs.mean()) * rng.uniform(-0.3, 0.3) + (ys - ys.mean()) * rng.uniform(-0.3, 0.3)
    image[ys, xs] = np.clip(colour[None, :] + gradient[:, None], 0, 255)


def _random_colour(
    rng: np.random.Generator, saturation: Tuple[float, float], value: Tuple[float, float]
) -> np.ndarray:
    """An RGB float32 colour in [0, 255] with uniform hue and the given saturation/value ranges."""
    hsv = np.array(
        [[[rng.uniform(0, 180), rng.uniform(*saturation) * 255, rng.uniform(*value) * 255]]], dtype=np.float32
    )
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def register_toy_shapes(directory: Optional[str] = None) -> None:
    """Register ``toy_shapes_train`` and ``toy_shapes_val``; files are generated on first load.

    Both splits are generated together, so after loading either one the other's json exists too
    (COCOEvaluator reads ``json_file`` directly: load a split before building an evaluator on it).
    """
    directory = directory or default_toy_shapes_dir()
    for split in ("train", "val"):
        json_file, image_root = toy_shapes_paths(directory, split)
        register_coco_dataset(
            f"toy_shapes_{split}",
            json_file,
            image_root,
            metadata={
                "thing_classes": list(TOY_SHAPES_CLASSES),
                "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(TOY_SHAPES_CLASSES))},
            },
            prepare=functools.partial(prepare_toy_shapes, directory),
        )
