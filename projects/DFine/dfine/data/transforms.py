"""RT-DETR training augmentations as Detectron2 ``Augmentation``/``Transform`` classes.

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
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from fvcore.transforms.transform import CropTransform, PadTransform
from PIL import Image, ImageEnhance

from detectron2.data.transforms import Augmentation, NoOpTransform, RandomFlip, Transform

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

    def __init__(self, height: int, width: int, min_size: float = 1.0):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        out = clip_boxes(np.asarray(box, dtype=np.float32).reshape(-1, 4), self.height, self.width)
        out[~valid_boxes(out, self.min_size)] = 0
        return out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """``(N, 4)`` XYXY boxes clipped to ``[0, width] x [0, height]`` (a new array)."""
    return boxes.clip(0, np.array([width, height, width, height], dtype=boxes.dtype))


def valid_boxes(boxes: np.ndarray, min_size: float) -> np.ndarray:
    """``(N,)`` bool: XYXY boxes with both sides >= ``min_size`` and an area >= 1 pixel
    (torchvision ``SanitizeBoundingBoxes`` with its default ``min_area=1``)."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return (widths >= min_size) & (heights >= min_size) & (widths * heights >= 1.0)


class SanitizeBoxes(Augmentation):
    """Deterministic :class:`BoxSanitizeTransform` for the current image size."""

    def __init__(self, min_size: float = 1.0):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        return BoxSanitizeTransform(image.shape[0], image.shape[1], self.min_size)


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
