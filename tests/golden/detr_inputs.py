"""Inputs of the DETR/DINO data-pipeline golden values (``detr_transforms_golden.json``), shared by
``tools/golden/make_detr_transforms_golden.py`` (which runs the official DINO transforms on them) and
``tests/test_detr_data.py``. Nothing here depends on the official code or on ``dfine``.

Every box coordinate is a multiple of 1/4, so that XYWH -> XYXY in float32 is exact on both sides.
"""
import numpy as np

# --- the output-size rule -------------------------------------------------------------------------
# Image sides: COCO's common ones, squares, extreme aspect ratios and tiny images.
SIDES = (1, 17, 200, 333, 375, 427, 480, 500, 612, 640, 801, 2000)
# Shorter-side targets: the DINO scales of both branches, and odd ones.
SHORT_SIDES = (1, 31, 384, 400, 480, 512, 600, 608, 800)
MAX_SIZES = (None, 1333, 801)


def size_grid():
    """``(height, width, short_side, max_size)`` for every combination of the above."""
    return [(h, w, s, m) for h in SIDES for w in SIDES for s in SHORT_SIDES for m in MAX_SIZES]


# --- the crop's box rule --------------------------------------------------------------------------
CROP_IMAGE_SHAPE = (120, 160)  # (height, width)
# XYXY: inside; straddling each side; outside each side; touching the crop's edges from outside
# (zero width or height once clipped); the whole image; a sliver of a quarter pixel inside.
CROP_BOXES = np.array(
    [
        [40, 30, 60, 50],
        [5, 30, 25, 50],
        [100, 30, 150.5, 50],
        [40, 2.25, 60, 22],
        [40, 70.75, 60, 110],
        [0, 0, 10, 10],
        [130, 30, 160, 50],
        [40, 0, 60, 20],
        [40, 100, 60, 120],
        [0, 0, 20, 40],
        [120, 30, 140, 50],
        [0, 0, 160, 120],
        [19.75, 30, 20.25, 50],
    ],
    dtype=np.float32,
)
# (top, left, height, width) as the official ``crop`` takes them.
CROP_REGIONS = ((20, 20, 80, 100), (0, 0, 120, 160), (0, 40, 60, 120), (37, 3, 1, 1), (60, 0, 60, 160))


# --- the whole training pipeline and the validation resize ---------------------------------------
# (height, width) of the generated images: landscape, portrait, COCO-like, a max-size-bound panorama
# and a square.
PIPELINE_SHAPES = ((480, 640), (640, 427), (333, 500), (200, 1000), (612, 612))
PIPELINE_SEEDS = tuple(range(12))


def pipeline_image(height: int, width: int) -> np.ndarray:
    """``(height, width, 3)`` uint8 RGB: smooth gradients plus noise, seeded by the shape."""
    rng = np.random.default_rng([height, width])
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) % 256], axis=-1)
    noise = rng.integers(-20, 21, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def pipeline_annotations(height: int, width: int):
    """COCO annotations (``bbox`` XYWH, ``category_id`` = the index) of a ``height x width`` image: a
    large box, small ones near each corner, one across the right border (clamped when loaded) and a
    degenerate one of zero width (dropped when loaded)."""
    boxes = [
        [width * 0.25, height * 0.25, width * 0.5, height * 0.5],
        [1.25, 2.5, 10.75, 8.5],
        [width - 15.5, 3.25, 12.0, 9.75],
        [2.0, height - 12.25, 7.5, 10.0],
        [width - 9.75, height - 8.5, 6.25, 5.0],
        [width - 30.0, height * 0.5, 40.0, 20.25],
        [width * 0.5, height * 0.5, 0.0, 10.0],
    ]
    boxes = [[float(np.floor(v * 4) / 4) for v in box] for box in boxes]
    return [{"bbox": box, "category_id": k, "iscrowd": 0, "area": box[2] * box[3]} for k, box in enumerate(boxes)]
