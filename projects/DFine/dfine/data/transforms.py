"""RT-DETR and DETR/DINO training augmentations as Detectron2 ``Augmentation``/``Transform`` classes.

Conventions: images are ``HWC`` uint8 RGB numpy arrays; boxes are ``(N, 4)`` float arrays in
absolute XYXY pixels of the current image. Parameters are drawn from numpy's global RNG
(which the training loader seeds per sample from its stream position), so runs are
reproducible. Parameter ranges and probabilities equal torchvision's v2 transforms used by the
official RT-DETRv2/D-FINE/DEIM pipelines (DEIM ``engine/data/transforms/_transforms.py``); the pixel kernels
are PIL's, as in the official pipeline, which runs these transforms on PIL images. The random
streams themselves differ from torchvision's.

Where torchvision marks a box as invalid (``RandomIoUCrop`` for a box whose centre leaves the
crop, ``SanitizeBoundingBoxes`` for a box thinner than ``min_size``), the transforms here collapse
it to the zero box ``[0, 0, 0, 0]``. A collapsed box stays degenerate under every later transform,
so the final filter of :class:`~dfine.data.mapper.DetrDatasetMapper` drops exactly the boxes the
official pipeline drops, while ``Transform.apply_box`` keeps its one-box-in, one-box-out contract.

The DETR/DINO augmentation (:func:`detr_train_augmentations`, :func:`detr_test_augmentations`) is
the exception to "NumPy's RNG": it draws from Python's ``random`` and torch's CPU RNG, the
generators the official code (DINO ``datasets/transforms.py``) draws from, in the same order and
with the same calls, so that a sample drawn after the same seeds equals the official one.
"""
import random
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from fvcore.transforms.transform import CropTransform, HFlipTransform, PadTransform
from PIL import Image, ImageEnhance

from detectron2.data.transforms import (
    Augmentation,
    AugmentationList,
    NoOpTransform,
    RandomFlip,
    ResizeTransform,
    Transform,
)

from ..modeling.layers.box_ops import box_iou

__all__ = [
    "PhotometricDistortTransform",
    "RandomPhotometricDistort",
    "RandomZoomOut",
    "IoUCropTransform",
    "RandomIoUCrop",
    "BoxSanitizeTransform",
    "SanitizeBoxes",
    "clip_boxes",
    "valid_boxes",
    "rtdetr_train_augmentations",
    "detr_resize_shape",
    "DetrRandomResize",
    "DetrCropTransform",
    "RandomSizeCrop",
    "DetrRandomFlip",
    "RandomSelect",
    "detr_train_augmentations",
    "detr_test_augmentations",
]


class PhotometricDistortTransform(Transform):
    """Brightness, contrast, saturation, hue and channel order changes of an RGB uint8 image.

    A factor of ``None`` skips that step. Contrast runs before or after saturation and hue,
    following ``contrast_before``. Boxes are unchanged.
    """

    def __init__(
        self,
        brightness_factor: Optional[float],
        contrast_factor: Optional[float],
        saturation_factor: Optional[float],
        hue_factor: Optional[float],
        contrast_before: bool,
        channel_permutation: Optional[Sequence[int]],
    ):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        image = Image.fromarray(img)
        if self.brightness_factor is not None:
            image = ImageEnhance.Brightness(image).enhance(self.brightness_factor)
        if self.contrast_factor is not None and self.contrast_before:
            image = ImageEnhance.Contrast(image).enhance(self.contrast_factor)
        if self.saturation_factor is not None:
            image = ImageEnhance.Color(image).enhance(self.saturation_factor)
        if self.hue_factor is not None:
            image = _shift_hue(image, self.hue_factor)
        if self.contrast_factor is not None and not self.contrast_before:
            image = ImageEnhance.Contrast(image).enhance(self.contrast_factor)
        out = np.asarray(image)
        if self.channel_permutation is not None:
            out = out[..., list(self.channel_permutation)]
        return np.ascontiguousarray(out)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


def _shift_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """Rotate the hue channel of PIL's 8-bit HSV by ``int(hue_factor * 255)`` (modulo 256)."""
    h, s, v = image.convert("HSV").split()
    hue = (np.asarray(h).astype(np.int32) + int(hue_factor * 255)) % 256
    h = Image.fromarray(hue.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


class RandomPhotometricDistort(Augmentation):
    """SSD photometric distortion (torchvision ``RandomPhotometricDistort`` semantics).

    Each of brightness, contrast, saturation and hue is applied independently with probability
    ``p``, with its factor uniform in the given range; contrast goes first or last with
    probability 1/2; the channels are randomly permuted with probability ``p``.
    """

    def __init__(
        self,
        brightness: Tuple[float, float] = (0.875, 1.125),
        contrast: Tuple[float, float] = (0.5, 1.5),
        saturation: Tuple[float, float] = (0.5, 1.5),
        hue: Tuple[float, float] = (-0.05, 0.05),
        p: float = 0.5,
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        factors = [
            float(np.random.uniform(*value_range)) if np.random.rand() < self.p else None
            for value_range in (self.brightness, self.contrast, self.saturation, self.hue)
        ]
        contrast_before = bool(np.random.rand() < 0.5)
        permutation = np.random.permutation(image.shape[2]).tolist() if np.random.rand() < self.p else None
        return PhotometricDistortTransform(*factors, contrast_before, permutation)


class RandomZoomOut(Augmentation):
    """SSD zoom-out (torchvision ``RandomZoomOut`` semantics): with probability ``p``, place the
    image at a random position on a ``fill``-coloured canvas ``r`` times its size,
    ``r ~ U(side_range)``."""

    def __init__(self, fill: int = 0, side_range: Tuple[float, float] = (1.0, 4.0), p: float = 0.5):
        super().__init__()
        if side_range[0] < 1.0 or side_range[0] > side_range[1]:
            raise ValueError(f"Invalid side_range {side_range}: need 1 <= min <= max.")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        if np.random.rand() >= self.p:
            return NoOpTransform()
        h, w = image.shape[:2]
        r = self.side_range[0] + np.random.rand() * (self.side_range[1] - self.side_range[0])
        canvas_w, canvas_h = int(w * r), int(h * r)
        left = int((canvas_w - w) * np.random.rand())
        top = int((canvas_h - h) * np.random.rand())
        return PadTransform(
            left, top, canvas_w - w - left, canvas_h - h - top, orig_w=w, orig_h=h, pad_value=self.fill
        )


class IoUCropTransform(CropTransform):
    """Crop ``[x0, x0 + w) x [y0, y0 + h)``. Boxes are shifted and clipped to the crop; a box whose
    centre is not strictly inside the crop becomes the zero box (dropped later)."""

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        box = np.asarray(box, dtype=np.float32).reshape(-1, 4)
        cx = 0.5 * (box[:, 0] + box[:, 2]) - self.x0
        cy = 0.5 * (box[:, 1] + box[:, 3]) - self.y0
        inside = (cx > 0) & (cx < self.w) & (cy > 0) & (cy < self.h)
        out = clip_boxes(box - np.array([self.x0, self.y0, self.x0, self.y0], dtype=np.float32), self.h, self.w)
        out[~inside] = 0
        return out


class RandomIoUCrop(Augmentation):
    """SSD IoU crop (torchvision ``RandomIoUCrop`` semantics), applied with probability ``p``.

    Repeatedly draws a minimum IoU from ``sampler_options`` (1.0 means "leave as is"), then tries
    up to ``trials`` crops with sides ``U(min_scale, max_scale)`` times the image's, an aspect
    ratio in ``[min_aspect_ratio, max_aspect_ratio]``, at least one box centre strictly inside
    and some box with IoU >= the drawn minimum. An image without boxes is therefore never cropped.
    """

    def __init__(
        self,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        min_aspect_ratio: float = 0.5,
        max_aspect_ratio: float = 2.0,
        sampler_options: Optional[Sequence[float]] = None,
        trials: int = 40,
        p: float = 1.0,
    ):
        super().__init__()
        if sampler_options is None:
            sampler_options = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
        self._init(locals())

    def get_transform(self, image: np.ndarray, boxes: np.ndarray) -> Transform:
        if np.random.rand() >= self.p:
            return NoOpTransform()
        h, w = image.shape[:2]
        boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        centres = 0.5 * (boxes[:, :2] + boxes[:, 2:])
        while True:
            min_iou = self.sampler_options[np.random.randint(len(self.sampler_options))]
            if min_iou >= 1.0:
                return NoOpTransform()
            for _ in range(self.trials):
                scale = self.min_scale + (self.max_scale - self.min_scale) * np.random.rand(2)
                new_w, new_h = int(w * scale[0]), int(h * scale[1])
                if new_h == 0 or not self.min_aspect_ratio <= new_w / new_h <= self.max_aspect_ratio:
                    continue
                offset = np.random.rand(2)
                left, top = int((w - new_w) * offset[0]), int((h - new_h) * offset[1])
                right, bottom = left + new_w, top + new_h
                if left == right or top == bottom:
                    continue
                inside = (
                    (centres[:, 0] > left) & (centres[:, 0] < right) & (centres[:, 1] > top) & (centres[:, 1] < bottom)
                )
                if not inside.any():
                    continue
                crop = torch.tensor([[left, top, right, bottom]], dtype=boxes.dtype)
                if box_iou(boxes[inside], crop)[0].max() < min_iou:
                    continue
                return IoUCropTransform(left, top, new_w, new_h, orig_w=w, orig_h=h)


class BoxSanitizeTransform(Transform):
    """Clip boxes to the ``height x width`` image and collapse those with a side below
    ``min_size`` to the zero box (torchvision ``SanitizeBoundingBoxes``). The image is unchanged."""

    def __init__(self, height: int, width: int, min_size: float = 1.0, min_area: float = 1.0):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        out = clip_boxes(np.asarray(box, dtype=np.float32).reshape(-1, 4), self.height, self.width)
        out[~valid_boxes(out, self.min_size, self.min_area)] = 0
        return out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """``(N, 4)`` XYXY boxes clipped to ``[0, width] x [0, height]`` (a new array)."""
    return boxes.clip(0, np.array([width, height, width, height], dtype=boxes.dtype))


def valid_boxes(boxes: np.ndarray, min_size: float, min_area: float = 1.0) -> np.ndarray:
    """``(N,)`` bool: XYXY boxes with both sides positive and >= ``min_size``, and an area >=
    ``min_area`` (torchvision ``SanitizeBoundingBoxes``, whose default ``min_area`` is 1 pixel).

    With ``min_size=0, min_area=0`` this is the keep rule of the official DETR/DINO pipeline
    (``ConvertCocoPolysToMask`` and ``crop`` in ``datasets/``): width > 0 and height > 0. A positive
    ``min_area`` implies positive sides, so the positivity test changes nothing for it."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    positive = (widths > 0) & (heights > 0)
    return positive & (widths >= min_size) & (heights >= min_size) & (widths * heights >= min_area)


class SanitizeBoxes(Augmentation):
    """Deterministic :class:`BoxSanitizeTransform` for the current image size."""

    def __init__(self, min_size: float = 1.0, min_area: float = 1.0):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        return BoxSanitizeTransform(image.shape[0], image.shape[1], self.min_size, self.min_area)


def rtdetr_train_augmentations(min_size: float = 1.0) -> List[Augmentation]:
    """The RT-DETRv2 training augmentations before the final resize
    (``rtdetrv2_pytorch/configs/rtdetrv2/include/dataloader.yml``)."""
    return [
        RandomPhotometricDistort(p=0.5),
        RandomZoomOut(fill=0),
        RandomIoUCrop(p=0.8),
        SanitizeBoxes(min_size=min_size),
        RandomFlip(prob=0.5, horizontal=True, vertical=False),
    ]


# ---------------------------------------------------------------------------------------------
# DETR / DINO: resizes that keep the aspect ratio, random size crop, flip, two-branch choice


def detr_resize_shape(height: int, width: int, short_side: int, max_size: Optional[int] = None) -> Tuple[int, int]:
    """``(new_height, new_width)`` of the official DETR resize (``get_size_with_aspect_ratio`` in
    DINO ``datasets/transforms.py``): the shorter side becomes ``short_side``, lowered first to
    ``round(max_size * shorter / longer)`` (Python's round, half to even) where the longer side
    would exceed ``max_size``; the longer side is then truncated, not rounded.

    Detectron2's ``ResizeShortestEdge.get_output_shape`` rounds half up and scales both sides by
    ``max_size / longer`` instead, which differs by a pixel for many shapes (e.g. 480x640 at 800:
    it gives width 1067 where the official gives 1066), hence this function.

    The comparison and the truncation use exact integer arithmetic; for image sides below 2**20 they
    equal the official float expressions (``longer / shorter * short_side > max_size`` and
    ``int(short_side * longer / shorter)``), whose exact values lie either on an integer or at least
    ``1 / shorter`` away from one, much further than float64 rounding can move them.
    """
    shorter, longer = min(height, width), max(height, width)
    if max_size is not None and longer * short_side > max_size * shorter:
        short_side = int(round(max_size * shorter / longer))
    if width < height:
        return short_side * height // width, short_side
    return short_side, short_side * width // height


class DetrRandomResize(Augmentation):
    """The official DETR ``RandomResize``: shorter side ``random.choice(sizes)``, longer side capped
    by ``max_size`` (see :func:`detr_resize_shape`), PIL bilinear interpolation (what torchvision's
    ``resize`` runs on a PIL image). Boxes are scaled by ``new_w / w`` and ``new_h / h`` in float32,
    as the official scales its float32 box tensor.

    One size (the validation resize) draws nothing, unlike the official ``random.choice`` of a
    one-element list, so that evaluation leaves the trainer's Python RNG alone.
    """

    def __init__(self, sizes: Sequence[int], max_size: Optional[int] = None):
        super().__init__()
        if not sizes:
            raise ValueError("DetrRandomResize needs at least one size.")
        sizes = [int(s) for s in sizes]
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        height, width = image.shape[:2]
        short_side = self.sizes[0] if len(self.sizes) == 1 else random.choice(self.sizes)
        new_h, new_w = detr_resize_shape(height, width, short_side, self.max_size)
        if (new_h, new_w) == (height, width):
            return NoOpTransform()  # torchvision returns the image itself then; the boxes scale by 1
        return ResizeTransform(height, width, new_h, new_w, Image.BILINEAR)


class DetrCropTransform(CropTransform):
    """Crop ``[x0, x0 + w) x [y0, y0 + h)`` with the box rule of the official ``crop``: boxes are
    shifted, clipped to the crop, and those left without a positive width and height become the
    zero box (dropped at the end, see the module docstring)."""

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        box = np.asarray(box, dtype=np.float32).reshape(-1, 4)
        offset = np.array([self.x0, self.y0, self.x0, self.y0], dtype=np.float32)
        out = clip_boxes(box - offset, self.h, self.w)
        out[~((out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1]))] = 0
        return out


class RandomSizeCrop(Augmentation):
    """The official ``RandomSizeCrop(min_size, max_size)``: crop width
    ``random.randint(min_size, min(W, max_size))``, then height likewise, then the top and left
    offsets with ``torch.randint`` as torchvision's ``RandomCrop.get_params`` (no offset draw when
    the crop is the whole image)."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 0 < min_size <= max_size, got {min_size}, {max_size}.")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        height, width = image.shape[:2]
        if min(height, width) < self.min_size:
            # The official draw fails here too (random.randint of an empty range); in its pipeline a
            # resize to a shorter side of at least min_size always comes first.
            raise ValueError(
                f"RandomSizeCrop(min_size={self.min_size}) got an image of {height}x{width}, smaller than min_size."
            )
        crop_w = random.randint(self.min_size, min(width, self.max_size))
        crop_h = random.randint(self.min_size, min(height, self.max_size))
        top = left = 0
        if (crop_h, crop_w) != (height, width):
            top = int(torch.randint(0, height - crop_h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - crop_w + 1, size=(1,)).item())
        return DetrCropTransform(left, top, crop_w, crop_h, orig_w=width, orig_h=height)


class DetrRandomFlip(Augmentation):
    """Horizontal flip with probability ``prob``, drawn as the official ``RandomHorizontalFlip``
    (``random.random() < prob``). Detectron2's ``HFlipTransform`` does the flipping: its box rule,
    ``x -> W - x`` with the corners swapped, is the official one. (``T.RandomFlip`` draws from NumPy
    and would break the official order of draws.)"""

    def __init__(self, prob: float = 0.5):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        if random.random() < self.prob:
            return HFlipTransform(image.shape[1])
        return NoOpTransform()


AugmentationsOrOne = Union[Augmentation, Sequence[Augmentation]]


class RandomSelect(Augmentation):
    """The official ``RandomSelect``: ``first`` if ``random.random() < p``, else ``second``. Each
    branch is an augmentation or a list of them, run in order (``T.AugmentationList``).
    (``T.RandomApply`` chooses between one augmentation and nothing, with a NumPy draw.)"""

    def __init__(self, first: AugmentationsOrOne, second: AugmentationsOrOne, p: float = 0.5):
        super().__init__()
        first, second = (AugmentationList(list(b) if isinstance(b, (list, tuple)) else [b]) for b in (first, second))
        self._init(locals())

    def __call__(self, aug_input) -> Transform:
        branch = self.first if random.random() < self.p else self.second
        return branch(aug_input)


DETR_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)


def detr_train_augmentations(
    scales: Sequence[int] = DETR_SCALES,
    max_size: int = 1333,
    crop_resize_scales: Sequence[int] = (400, 500, 600),
    crop_size: Tuple[int, int] = (384, 600),
) -> List[Augmentation]:
    """The DETR/DINO training augmentation (DINO ``datasets/coco.py::make_coco_transforms('train')``
    with the ``data_aug_*`` values of ``config/DINO/coco_transformer.py`` as defaults): flip with
    p=0.5, then with p=0.5 either a resize to a shorter side in ``scales`` (longer side <=
    ``max_size``), or a resize to a shorter side in ``crop_resize_scales``, a random crop of sides
    in ``crop_size`` and the resize of the first branch. The images keep their aspect ratio and
    differ in size: use them with ``DetrDatasetMapper(image_size=None)``."""
    return [
        DetrRandomFlip(prob=0.5),
        RandomSelect(
            [DetrRandomResize(scales, max_size=max_size)],
            [
                DetrRandomResize(crop_resize_scales),
                RandomSizeCrop(*crop_size),
                DetrRandomResize(scales, max_size=max_size),
            ],
            p=0.5,
        ),
    ]


def detr_test_augmentations(size: int = 800, max_size: int = 1333) -> List[Augmentation]:
    """The DETR/DINO evaluation resize (``make_coco_transforms('val')``: ``RandomResize([max(scales)],
    max_size)``): shorter side ``size``, longer side at most ``max_size``."""
    return [DetrRandomResize([size], max_size=max_size)]
