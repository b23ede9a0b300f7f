"""DEIM's Dense O2O augmentations: :class:`Mosaic` (per sample), :class:`MixUp` (per batch), and
DEIMv2's object-level :class:`CopyBlend` (per batch).

Dense O2O puts more objects into each training image, so that one-to-one matching sees about as
many positives as one-to-many matching would (DEIM, official ``Mosaic`` in
``engine/data/transforms/mosaic.py`` and ``BatchImageCollateFunction.apply_mixup`` in
``engine/data/dataloader.py``, which in DEIMv2 also holds Copy-Blend).

Conventions as in :mod:`dfine.data.transforms`: images are ``HWC`` uint8 RGB numpy arrays, boxes
``(N, 4)`` float32 absolute XYXY, classes ``(N,)`` int64. Random draws use NumPy's global RNG
(Mosaic) and Python's ``random`` (MixUp and CopyBlend, as the official collate), which the training
loader seeds per sample and per batch from the stream position
(:func:`dfine.data.loader.stream_rngs`), so a seeded run draws the same batches again, also after a
resume.
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

__all__ = ["Sample", "AffineParams", "Mosaic", "MixUp", "CopyBlend", "draw_mix_weight"]


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


def draw_mix_weight() -> float:
    """The weight of the destination image in MixUp and CopyBlend: ``round(U(0.45, 0.55), 6)``."""
    return round(random.uniform(0.45, 0.55), 6)


class MixUp:
    """Batch MixUp of the official DEIM collate: with probability ``prob``, and only while
    ``epochs[0] <= epoch < epochs[1]``, every image ``i`` of the batch becomes ``beta * image_i +
    (1 - beta) * image_{i-1}`` (cyclically, ``beta = round(U(0.45, 0.55), 6)``) and gets the boxes
    of both images. One decision per batch. The mixed images are float32 in the uint8 value
    range, which the model normalises like uint8 images.

    Images of different sizes (the DETR pipeline, whose batches the model pads): each image keeps
    its own size, so that the model's padding mask stays right, and the previous image is laid at
    its top-left corner (as the batch pads), cut to its frame; where the previous image has no
    pixel, the image stays as it is. The previous image's boxes are clipped to the frame, and
    those left without area dropped. On images of one size this is the official MixUp.
    """

    def __init__(self, prob: float = 0.5, epochs: Tuple[int, int] = (0, 0)):
        if not 0.0 <= prob <= 1.0 or len(epochs) != 2:
            raise ValueError(f"Need 0 <= prob <= 1 and epochs = (start, stop), got {prob}, {epochs}")
        self.prob = float(prob)
        self.epochs = (int(epochs[0]), int(epochs[1]))

    def __repr__(self) -> str:
        return f"MixUp(prob={self.prob}, epochs={self.epochs})"

    def __call__(self, batch: List[Dict], epoch: int) -> List[Dict]:
        if not self.decide(epoch):
            return batch
        return self.mix(batch, draw_mix_weight())

    def decide(self, epoch: int) -> bool:
        """Toss the coin of one batch: whether MixUp runs at ``epoch``."""
        # The official order of draws: the coin first, whatever the epoch.
        return random.random() < self.prob and self.epochs[0] <= epoch < self.epochs[1]

    @staticmethod
    def mix(batch: List[Dict], beta: float) -> List[Dict]:
        """Mix every image with the previous one (cyclically) with weight ``beta`` on its own (in
        its frame, see the class docstring)."""
        mixed = []
        for i, sample in enumerate(batch):
            other = batch[i - 1]
            out = dict(sample)
            image, other_image = sample["image"], other["image"]
            h, w = (min(a, b) for a, b in zip(image.shape[-2:], other_image.shape[-2:]))
            mix = image.to(torch.float32, copy=True)
            mix[:, :h, :w] = mix[:, :h, :w] * beta + other_image[:, :h, :w].float() * (1.0 - beta)
            out["image"] = mix
            out["augmentations"] = {**sample.get("augmentations", {}), "mixup": 1}
            if "instances" in sample:
                own, theirs = sample["instances"], other["instances"]
                if theirs.image_size != own.image_size:
                    boxes = theirs.gt_boxes.clone()
                    boxes.clip(own.image_size)
                    keep = boxes.nonempty()
                    theirs = Instances(own.image_size, gt_boxes=boxes[keep], gt_classes=theirs.gt_classes[keep])
                instances = Instances(own.image_size)
                instances.gt_boxes = Boxes.cat([own.gt_boxes, theirs.gt_boxes])
                instances.gt_classes = torch.cat([own.gt_classes, theirs.gt_classes])
                out["instances"] = instances
            mixed.append(out)
        return mixed


class CopyBlend:
    """DEIMv2's object-level Copy-Blend (the ``elif`` branch of the official
    ``BatchImageCollateFunction.apply_mixup``): objects of the batch are copied to random places
    of every image of the batch and blended with what is there, each with a new ground-truth box.

    It runs only while ``epochs[0] <= epoch < epochs[1]`` and then with probability ``prob`` (the
    window is checked first: outside it no coin is drawn), one decision per batch:

    1. The pool holds every object of the batch whose box covers at least ``area_threshold``
       square pixels. An empty pool leaves the batch as it is.
    2. For each image: ``k = min(num_objects, len(pool))`` objects (with ``random_num_objects``,
       ``random.randint(1, k)`` of them) drawn by ``random.sample`` without replacement from the
       pool of the whole batch, the image's own objects included.
    3. For each drawn object, the source region is its box with every corner truncated to a whole
       pixel (``int``) and clipped to the image; an empty region is skipped, without further
       draws. The destination's left edge is ``random.randint(0, W - w)`` (0 if the region is as
       wide as the image), then its top edge likewise. The new box is the destination region
       ``[x, y, x + w, y + h]``: whole pixels, inside the image, at least one pixel wide and high.
    4. ``with_expand``: ``alpha = round(U(*expand_ratios), 6)``, and both regions grow by
       ``int(w * alpha)`` columns and ``int(h * alpha)`` rows on every side, each side only as far
       as both regions stay inside the image, so they keep one size. The new box stays the
       unexpanded region: the margin brings the object's surroundings along.
    5. ``mode="blend"``: the destination becomes ``beta * destination + (1 - beta) * source``
       (``beta`` from :func:`draw_mix_weight`, which the official collate draws once per batch
       before its MixUp coin); ``mode="paste"`` copies the source over it. Sources are read from
       the batch as it came in; destinations accumulate, so a later object of the same image is
       blended over the earlier ones.

    Existing boxes are all kept (an object blended over still shows through), the new boxes and
    classes are appended. A blended batch has float32 images in the uint8 value range, as after
    :class:`MixUp`. All images of the batch must have one size, as in the official batch tensor.
    The official per-box ``mixup`` weights and ``area`` entries of the targets are not produced: no
    loss reads them.

    Differences from the official code: (a) its pool thresholds the COCO ``area`` field (the
    segment area in original-image pixels), which the transforms never update and which no
    longer lines up with the boxes once a box is dropped (torchvision's ``SanitizeBoundingBoxes``
    filters only ``boxes`` and ``labels``); we
    have no such field and threshold the box area ``(x2 - x1) * (y2 - y1)`` in pixels of the image
    as it is in the batch. (b) It truncates corners computed from normalized cxcywh boxes
    (``int((cx - w / 2) * W)``); we truncate the absolute corners, which is the same up to the
    float round-off of the normalized form.

    The defaults are the values of every official DEIMv2 config that uses Copy-Blend, except the
    window, which each config sets.
    """

    def __init__(
        self,
        prob: float = 0.5,
        epochs: Tuple[int, int] = (0, 0),
        area_threshold: float = 100,
        num_objects: int = 3,
        with_expand: bool = True,
        expand_ratios: Tuple[float, float] = (0.1, 0.25),
        random_num_objects: bool = False,
        mode: str = "blend",
    ):
        """
        Args:
            prob: chance that a batch inside the window is copy-blended.
            epochs: the window ``[start, stop)`` in epochs (empty if ``start >= stop``).
            area_threshold: smallest box area, in square pixels, of an object that can be copied.
            num_objects: objects copied into each image (fewer if the pool is smaller).
            with_expand: copy a margin around each object too (step 4 above).
            expand_ratios: range of the margin, as a fraction of the object's width and height.
            random_num_objects: copy between 1 and ``num_objects`` objects, drawn per image.
            mode: ``"blend"`` or ``"paste"``.
        """
        if not 0.0 <= prob <= 1.0 or len(epochs) != 2:
            raise ValueError(f"Need 0 <= prob <= 1 and epochs = (start, stop), got {prob}, {epochs}")
        if num_objects < 1 or not 0.0 <= expand_ratios[0] <= expand_ratios[1] or mode not in ("blend", "paste"):
            raise ValueError(
                f"Need num_objects >= 1, 0 <= expand_ratios[0] <= expand_ratios[1] and mode 'blend' or 'paste', "
                f"got {num_objects}, {expand_ratios}, {mode!r}"
            )
        self.prob = float(prob)
        self.epochs = (int(epochs[0]), int(epochs[1]))
        self.area_threshold = float(area_threshold)
        self.num_objects = int(num_objects)
        self.with_expand = bool(with_expand)
        self.expand_ratios = (float(expand_ratios[0]), float(expand_ratios[1]))
        self.random_num_objects = bool(random_num_objects)
        self.mode = mode

    def __repr__(self) -> str:
        return (
            f"CopyBlend(prob={self.prob}, epochs={self.epochs}, area_threshold={self.area_threshold}, "
            f"num_objects={self.num_objects}, with_expand={self.with_expand}, expand_ratios={self.expand_ratios}, "
            f"random_num_objects={self.random_num_objects}, mode={self.mode!r})"
        )

    def __call__(self, batch: List[Dict], epoch: int, beta: Optional[float] = None) -> List[Dict]:
        """Copy-blend ``batch`` if the window and the coin say so.

        Args:
            batch: mapped training dicts with ``"image"`` (C, H, W) and ``"instances"``
                (``gt_boxes`` absolute XYXY, ``gt_classes``).
            epoch: the batch's epoch.
            beta: weight of the destination image; ``None`` draws it (:func:`draw_mix_weight`)
                before anything else, as the official collate does.
        """
        if beta is None:
            beta = draw_mix_weight()
        if not (self.epochs[0] <= epoch < self.epochs[1] and random.random() < self.prob):
            return batch
        return self.apply(batch, beta)

    def apply(self, batch: List[Dict], beta: float) -> List[Dict]:
        """Copy-blend ``batch`` (steps 1 to 5 above) with destination weight ``beta``."""
        sizes = {tuple(sample["image"].shape) for sample in batch}
        if len(sizes) != 1:
            raise ValueError(f"CopyBlend needs images of one size in a batch, got {sorted(sizes)}.")
        height, width = batch[0]["image"].shape[-2:]
        pool = []  # (image index, XYXY box, class) of every object big enough to copy
        for index, sample in enumerate(batch):
            boxes, classes = sample["instances"].gt_boxes.tensor, sample["instances"].gt_classes
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            for box, label, area in zip(boxes.tolist(), classes, areas.tolist()):
                if area >= self.area_threshold:
                    pool.append((index, box, label))
        if not pool:
            return batch

        blended = []
        for sample in batch:
            image = sample["image"].to(torch.float32, copy=True)
            count = min(self.num_objects, len(pool))
            if self.random_num_objects:
                count = random.randint(1, count)
            new_boxes, new_classes = [], []
            for pick in random.sample(range(len(pool)), count):
                source_index, box, label = pool[pick]
                regions = self._draw_regions(box, height, width)
                if regions is None:
                    continue
                new_box, (sx1, sy1, sx2, sy2), (dx1, dy1, dx2, dy2) = regions
                patch = batch[source_index]["image"][:, sy1:sy2, sx1:sx2].to(torch.float32)
                if self.mode == "blend":
                    patch = image[:, dy1:dy2, dx1:dx2] * beta + patch * (1.0 - beta)
                image[:, dy1:dy2, dx1:dx2] = patch
                new_boxes.append(new_box)
                new_classes.append(label)
            out = dict(sample)
            out["image"] = image
            out["augmentations"] = {**sample.get("augmentations", {}), "copy_blend_objects": len(new_boxes)}
            if new_boxes:
                own = sample["instances"]
                instances = Instances(own.image_size)
                added = torch.tensor(new_boxes, dtype=own.gt_boxes.tensor.dtype)
                instances.gt_boxes = Boxes(torch.cat([own.gt_boxes.tensor, added]))
                instances.gt_classes = torch.cat([own.gt_classes, torch.stack(new_classes)])
                out["instances"] = instances
            blended.append(out)
        return blended

    def _draw_regions(self, box: Sequence[float], height: int, width: int):
        """For one object with absolute XYXY ``box``: its new box, and the source and destination
        regions ``(x1, y1, x2, y2)`` in whole pixels, drawing the destination (and the margin);
        ``None``, without drawing, when the box covers no whole pixel of the image."""
        sx1, sy1 = max(int(box[0]), 0), max(int(box[1]), 0)
        sx2, sy2 = min(int(box[2]), width), min(int(box[3]), height)
        w, h = sx2 - sx1, sy2 - sy1
        if w <= 0 or h <= 0:
            return None
        dx1 = random.randint(0, width - w) if w < width else 0
        dy1 = random.randint(0, height - h) if h < height else 0
        dx2, dy2 = dx1 + w, dy1 + h
        new_box = (float(dx1), float(dy1), float(dx2), float(dy2))
        if self.with_expand:
            alpha = round(random.uniform(*self.expand_ratios), 6)
            grow_x, grow_y = int(w * alpha), int(h * alpha)
            left, top = min(grow_x, sx1, dx1), min(grow_y, sy1, dy1)
            right, bottom = min(grow_x, width - sx2, width - dx2), min(grow_y, height - sy2, height - dy2)
            sx1, sy1, sx2, sy2 = sx1 - left, sy1 - top, sx2 + right, sy2 + bottom
            dx1, dy1, dx2, dy2 = dx1 - left, dy1 - top, dx2 + right, dy2 + bottom
        return new_box, (sx1, sy1, sx2, sy2), (dx1, dy1, dx2, dy2)
