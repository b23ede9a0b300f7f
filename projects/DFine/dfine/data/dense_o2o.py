"""DEIM's Dense O2O augmentations: :class:`Mosaic` (per sample) and :class:`MixUp` (per batch).

Dense O2O puts more objects into each training image, so that one-to-one matching sees about as
many positives as one-to-many matching would (DEIM, official ``Mosaic`` in
``engine/data/transforms/mosaic.py`` and ``BatchImageCollateFunction.apply_mixup`` in
``engine/data/dataloader.py``; official-implementations.md §5.3 and §5.5).

Conventions as in :mod:`dfine.data.transforms`: images are ``HWC`` uint8 RGB numpy arrays, boxes
``(N, 4)`` float32 absolute XYXY, classes ``(N,)`` int64. Random draws use NumPy's global RNG
(Mosaic) and Python's ``random`` (MixUp, as the official collate), which the training loader
seeds per sample and per batch from the stream position (:func:`dfine.data.loader.stream_rngs`), so
a seeded run draws the same batches again, also after a resume.
"""
import random
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode

from detectron2.structures import Boxes, Instances

__all__ = ["Sample", "AffineParams", "Mosaic", "MixUp"]


class Sample(NamedTuple):
    """One image and its boxes: ``image`` (H, W, 3) uint8, ``boxes`` (N, 4) float32 XYXY,
    ``classes`` (N,) int64."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray


class AffineParams(NamedTuple):
    """Parameters of torchvision's ``RandomAffine`` (no shear): degrees, integer pixels, factor."""

    angle: float
    translate: Tuple[int, int]
    scale: float


class Mosaic:
    """Four images on a 2x2 canvas, then a random affine warp (official DEIM ``Mosaic``).

    Each image is first resized so that its shorter side is ``output_size`` (aspect kept, PIL
    bilinear, torchvision's rounding). The canvas is twice the largest height and width; the
    current image goes top-left, the three others top-right, bottom-left and bottom-right, on a
    black background. torchvision's ``affine`` then rotates by U(-rotation_range,
    rotation_range) degrees about the canvas centre, translates by a whole number of pixels up to
    ``translation_range`` of the canvas, and scales by U(scaling_range), with nearest
    interpolation and ``fill_value``; boxes become the enclosing box of their warped corners,
    clipped to the canvas (the caller drops the ones that end up degenerate).

    The three other images come either from the data set (``use_cache=False``, DEIM: three
    indices drawn with replacement, read and resized now) or from a cache of resized samples that
    this worker has seen (``use_cache=True``, DEIMv2): the current sample is appended, the cache
    is trimmed to ``max_cached_images`` by dropping a random entry other than the newest
    (``random_pop``) or the oldest, and three entries are drawn with replacement. The cache holds
    at most ``max_cached_images`` resized images per DataLoader worker, so host RAM stays bounded.
    Unlike the official loader, whose workers are re-created every epoch, the workers here live
    for the whole run, so the cache is not emptied at epoch boundaries.
    """

    def __init__(
        self,
        output_size: int = 320,
        rotation_range: float = 10,
        translation_range: Tuple[float, float] = (0.1, 0.1),
        scaling_range: Tuple[float, float] = (0.5, 1.5),
        probability: float = 1.0,
        fill_value: int = 0,
        use_cache: bool = False,
        max_cached_images: int = 50,
        random_pop: bool = True,
    ):
        """
        Args:
            output_size: shorter side of each of the four images, in pixels.
            rotation_range: maximum rotation in degrees.
            translation_range: maximum translation as fractions of the canvas (x, y).
            scaling_range: range of the scale factor.
            probability: chance of applying Mosaic when it is called; the stage policy of
                :class:`~dfine.data.mapper.DetrDatasetMapper` (``mosaic_prob``) decides first.
            fill_value: colour of the area the warp uncovers.
            use_cache: take the three other images from the worker's cache (see above).
            max_cached_images: cache capacity (must be at least 1).
            random_pop: when the cache is full, drop a random entry (else the oldest).
        """
        if output_size <= 0 or max_cached_images < 1:
            raise ValueError(f"Need output_size > 0 and max_cached_images >= 1, got {output_size}, {max_cached_images}")
        self.output_size = int(output_size)
        self.rotation_range = float(rotation_range)
        self.translation_range = tuple(translation_range)
        self.scaling_range = tuple(scaling_range)
        self.probability = float(probability)
        self.fill_value = fill_value
        self.use_cache = bool(use_cache)
        self.max_cached_images = int(max_cached_images)
        self.random_pop = bool(random_pop)
        self.cache: List[Sample] = []

    def __repr__(self) -> str:
        return (
            f"Mosaic(output_size={self.output_size}, rotation_range={self.rotation_range}, "
            f"translation_range={self.translation_range}, scaling_range={self.scaling_range}, "
            f"probability={self.probability}, use_cache={self.use_cache}, max_cached_images={self.max_cached_images})"
        )

    def __getstate__(self) -> Dict:
        # A copy sent to a DataLoader worker starts with an empty cache.
        return {**self.__dict__, "cache": []}

    def __call__(self, sample: Sample, dataset_size: int, load_sample: Optional[Callable[[int], Sample]]) -> Sample:
        """Mosaic of ``sample`` and three other images.

        Args:
            sample: the current image and its boxes.
            dataset_size: number of images ``load_sample`` can load.
            load_sample: reads image ``i`` of the data set with its boxes (needed without cache).
        """
        if self.probability < 1.0 and np.random.random() > self.probability:
            return sample
        current = self.resize_shorter_side(sample)
        if self.use_cache:
            others = [self.cache[i] for i in self._draw_cache_indices(current)]
        else:
            if load_sample is None or dataset_size <= 0:
                raise ValueError("Mosaic with use_cache=False needs the data set to load the three other images from.")
            others = [self.resize_shorter_side(load_sample(int(i))) for i in np.random.randint(dataset_size, size=3)]
        canvas = self.combine([current] + others)
        return self.warp(canvas, self.draw_affine_params(canvas.image.shape[:2]))

    def _draw_cache_indices(self, current: Sample) -> np.ndarray:
        self.cache.append(current)
        if len(self.cache) > self.max_cached_images:
            self.cache.pop(np.random.randint(len(self.cache) - 1) if self.random_pop else 0)
        return np.random.randint(len(self.cache), size=3)

    def resize_shorter_side(self, sample: Sample) -> Sample:
        """``sample`` resized so its shorter side is ``output_size`` (torchvision ``Resize(int)``)."""
        height, width = sample.image.shape[:2]
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = self.output_size, int(self.output_size * long / short)
        new_h, new_w = (new_short, new_long) if height <= width else (new_long, new_short)
        if (new_h, new_w) == (height, width):
            return sample
        image = np.asarray(Image.fromarray(sample.image).resize((new_w, new_h), Image.BILINEAR))
        scale = np.array([new_w / width, new_h / height] * 2, dtype=np.float32)
        return Sample(image, (sample.boxes * scale).astype(np.float32), sample.classes)

    @staticmethod
    def combine(samples: Sequence[Sample]) -> Sample:
        """The 2x2 canvas of four samples (top-left, top-right, bottom-left, bottom-right)."""
        max_h = max(s.image.shape[0] for s in samples)
        max_w = max(s.image.shape[1] for s in samples)
        canvas = np.zeros((2 * max_h, 2 * max_w, 3), dtype=np.uint8)
        boxes, classes = [], []
        for sample, (x0, y0) in zip(samples, [(0, 0), (max_w, 0), (0, max_h), (max_w, max_h)]):
            h, w = sample.image.shape[:2]
            canvas[y0:y0 + h, x0:x0 + w] = sample.image
            boxes.append(sample.boxes.reshape(-1, 4) + np.array([x0, y0, x0, y0], dtype=np.float32))
            classes.append(sample.classes)
        return Sample(canvas, np.concatenate(boxes).astype(np.float32), np.concatenate(classes))

    def draw_affine_params(self, canvas_hw: Tuple[int, int]) -> AffineParams:
        """torchvision ``RandomAffine`` parameters for a canvas of ``(height, width)``."""
        height, width = canvas_hw
        angle = np.random.uniform(-self.rotation_range, self.rotation_range)
        max_dx, max_dy = self.translation_range[0] * width, self.translation_range[1] * height
        translate = (int(round(np.random.uniform(-max_dx, max_dx))), int(round(np.random.uniform(-max_dy, max_dy))))
        scale = np.random.uniform(*self.scaling_range)
        return AffineParams(float(angle), translate, float(scale))

    def warp(self, sample: Sample, params: AffineParams) -> Sample:
        """Apply the affine warp with torchvision's ``affine`` to the image and the boxes."""
        height, width = sample.image.shape[:2]
        kwargs = dict(angle=params.angle, translate=list(params.translate), scale=params.scale, shear=[0.0, 0.0])
        image = TF.affine(
            Image.fromarray(sample.image), **kwargs, interpolation=InterpolationMode.NEAREST, fill=self.fill_value
        )
        boxes = TF.affine(
            tv_tensors.BoundingBoxes(torch.from_numpy(sample.boxes), format="XYXY", canvas_size=(height, width)),
            **kwargs,
        )
        return Sample(np.asarray(image), boxes.numpy().astype(np.float32).reshape(-1, 4), sample.classes)


class MixUp:
    """Batch MixUp of the official DEIM collate: with probability ``prob``, and only while
    ``epochs[0] <= epoch < epochs[1]``, every image ``i`` of the batch becomes ``beta * image_i +
    (1 - beta) * image_{i-1}`` (cyclically, ``beta = round(U(0.45, 0.55), 6)``) and gets the boxes
    of both images. One decision per batch. The mixed images are float32 in the uint8 value
    range, which the model normalises like uint8 images.
    """

    def __init__(self, prob: float = 0.5, epochs: Tuple[int, int] = (0, 0)):
        if not 0.0 <= prob <= 1.0 or len(epochs) != 2:
            raise ValueError(f"Need 0 <= prob <= 1 and epochs = (start, stop), got {prob}, {epochs}")
        self.prob = float(prob)
        self.epochs = (int(epochs[0]), int(epochs[1]))

    def __repr__(self) -> str:
        return f"MixUp(prob={self.prob}, epochs={self.epochs})"

    def __call__(self, batch: List[Dict], epoch: int) -> List[Dict]:
        # The official order of draws: the coin first, whatever the epoch.
        if not (random.random() < self.prob and self.epochs[0] <= epoch < self.epochs[1]):
            return batch
        beta = round(random.uniform(0.45, 0.55), 6)
        return self.mix(batch, beta)

    @staticmethod
    def mix(batch: List[Dict], beta: float) -> List[Dict]:
        """Mix every image with the previous one (cyclically) with weight ``beta`` on its own."""
        sizes = {tuple(sample["image"].shape) for sample in batch}
        if len(sizes) != 1:
            raise ValueError(f"MixUp needs images of one size in a batch, got {sorted(sizes)}.")
        mixed = []
        for i, sample in enumerate(batch):
            other = batch[i - 1]
            out = dict(sample)
            out["image"] = sample["image"].float() * beta + other["image"].float() * (1.0 - beta)
            if "instances" in sample:
                own, theirs = sample["instances"], other["instances"]
                instances = Instances(own.image_size)
                instances.gt_boxes = Boxes.cat([own.gt_boxes, theirs.gt_boxes])
                instances.gt_classes = torch.cat([own.gt_classes, theirs.gt_classes])
                out["instances"] = instances
            mixed.append(out)
        return mixed
