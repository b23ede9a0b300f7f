"""Dataset mapper for the DETR family: RT-DETR augmentations, DEIM's Mosaic, fixed-size resize (or the
aspect-ratio-keeping sizes of the DETR/DINO augmentation), and the epoch-dependent augmentation policy."""
import logging
import numbers
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.file_io import PathManager

from .dense_o2o import Mosaic, Sample
from .transforms import SanitizeBoxes, clip_boxes, rtdetr_train_augmentations, valid_boxes

__all__ = ["DetrDatasetMapper", "missing_image_error", "policy_for_epoch", "read_rgb_image"]

logger = logging.getLogger(__name__)

RTDETR_POLICY_OPS = ("RandomPhotometricDistort", "RandomZoomOut", "RandomIoUCrop")
# Mosaic rules out these two in the same sample (official DEIM Compose).
MOSAIC_EXCLUDED_OPS = ("RandomZoomOut", "RandomIoUCrop")
# PIL modes of 16-bit grayscale images ("I" is how older Pillow versions open 16-bit PNGs).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def policy_for_epoch(
    epoch: int, policy_epoch: Union[None, int, Sequence[int]], policy_ops: Sequence[str], mosaic_prob: float = 0.0,
    draw: Optional[Callable[[], float]] = None,
) -> Tuple[bool, FrozenSet[str]]:
    """Which policy augmentations a sample of ``epoch`` gets: ``(use_mosaic, skipped op names)``.

    ``use_mosaic`` says whether a configured :class:`~dfine.data.dense_o2o.Mosaic` runs (it counts
    as the policy op ``"Mosaic"``).

    * ``policy_epoch=None``: every op runs.
    * An int ``e`` (RT-DETRv2 / D-FINE ``stop_epoch`` policy): every op runs before epoch ``e``;
      ``policy_ops`` and Mosaic are skipped from it on.
    * Three epochs ``[e0, e1, e2]`` (DEIM's four stages, official ``Compose.stop_epoch_forward``):
      before ``e0`` every policy op is skipped; in ``[e0, e1)`` a sample uses Mosaic when
      ``draw() < mosaic_prob`` (one U(0, 1) draw per sample, made only in this stage, as
      officially; default: NumPy's global RNG, which the training loader seeds per sample), and
      then skips zoom-out and IoU crop, else it gets the RT-DETR ops without Mosaic; in
      ``[e1, e2)`` the RT-DETR ops run without Mosaic; from ``e2`` on every policy op is skipped.
    """
    everything = frozenset(policy_ops) | {"Mosaic"}
    if policy_epoch is None:
        return True, frozenset()
    if isinstance(policy_epoch, numbers.Integral):
        return (False, everything) if epoch >= policy_epoch else (True, frozenset())
    e0, e1, e2 = policy_epoch
    if epoch < e0 or epoch >= e2:
        return False, everything
    if epoch < e1 and (draw or np.random.random)() < mosaic_prob:
        return True, frozenset(MOSAIC_EXCLUDED_OPS)
    return False, frozenset({"Mosaic"})


class DetrDatasetMapper:
    """Turn a Detectron2 dataset dict into the model's input dict.

    Training: read the image (RGB), clip the non-crowd annotation boxes to it, optionally build a
    :class:`~dfine.data.dense_o2o.Mosaic`, run the augmentations (default:
    :func:`~dfine.data.transforms.rtdetr_train_augmentations`), resize to ``image_size`` without
    keeping the aspect ratio (PIL bilinear, as the official ``Resize``) and drop boxes with a side
    below ``min_box_size`` or an area below ``min_box_area``. Inference: read and resize only.

    ``image_size=None`` (DETR/DINO, with e.g. :func:`~dfine.data.transforms.detr_train_augmentations`)
    leaves the size to the augmentations, in training and at inference (where ``augmentations``,
    e.g. :func:`~dfine.data.transforms.detr_test_augmentations`, are applied to the image): no final
    resize and no final clipping of the boxes, so the boxes are bit for bit the official ones; the
    images of a batch then differ in size and the model pads them. ``min_box_size=0,
    min_box_area=0`` keeps exactly the boxes the official DETR/DINO pipeline keeps (positive width
    and height after its crop).

    The augmentation policy is a pure function of the sample's ``epoch`` (see
    :func:`policy_for_epoch`): a scalar ``policy_epoch`` is the RT-DETRv2/D-FINE ``stop_epoch``
    policy, three epochs are DEIM's four stages with Mosaic at ``mosaic_prob`` in the second.
    The epoch arrives with every sample (see :class:`~dfine.data.loader.DetectionDataset`), so
    the policy holds in DataLoader workers and after resume.

    Output dict:

    * ``"image"``: ``(3, H, W)`` uint8 tensor of size ``image_size`` (or the augmentations' size),
      channels in ``image_format``;
    * ``"height"``, ``"width"``: size of the image on disk, where predictions are mapped back to;
    * ``"image_id"``, ``"file_name"``: copied from the input;
    * training only: ``"instances"``: :class:`Instances` of image size ``(H, W)`` with
      ``gt_boxes`` (:class:`Boxes`, absolute XYXY in the resized image) and ``gt_classes``
      (int64), possibly empty; ``"num_dropped_boxes"``: how many non-crowd annotations (of the
      four images, after a Mosaic) did not survive (degenerate, cropped out, or thinner than
      ``min_box_size`` or smaller than ``min_box_area`` after resizing).

    Never returns ``None`` (detectron2 0.6's retry path breaks on Python >= 3.11).
    """

    def __init__(
        self,
        is_train: bool,
        image_size: Union[None, int, Tuple[int, int]] = 640,
        augmentations: Optional[Sequence[T.Augmentation]] = None,
        policy_ops: Sequence[str] = RTDETR_POLICY_OPS,
        policy_epoch: Union[None, int, Sequence[int]] = None,
        mosaic: Optional[Mosaic] = None,
        mosaic_prob: float = 0.0,
        image_format: str = "RGB",
        min_box_size: float = 1,
        min_box_area: float = 1,
    ):
        """
        Args:
            is_train: training (augment, return instances) or inference mode.
            image_size: output size, ``int`` for a square or ``(height, width)``; ``None``: no final
                resize, the augmentations decide the size (in training and at inference).
            augmentations: applied in order before the resize, on RGB images. ``None`` means the
                RT-DETR training list in training and nothing in inference. At inference they are
                applied only with ``image_size=None``.
            policy_ops: class names of the augmentations that the policy switches off
                (``"Mosaic"`` for the mosaic).
            policy_epoch: ``None`` (no policy), the first epoch without ``policy_ops``, or
                ``[e0, e1, e2]`` for DEIM's four stages.
            mosaic: the Mosaic to use where the policy asks for one; ``None`` disables it.
            mosaic_prob: chance of Mosaic per sample in ``[e0, e1)`` of a three-epoch policy.
            image_format: "RGB" or "BGR", the channel order of the output image.
            min_box_size: boxes with a side below this many pixels are dropped.
            min_box_area: boxes with an area below this many square pixels are dropped (torchvision
                ``SanitizeBoundingBoxes``' ``min_area``). Boxes without a positive width and height
                are always dropped.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if policy_epoch is not None and not isinstance(policy_epoch, numbers.Integral):
            policy_epoch = tuple(int(e) for e in policy_epoch)
            if len(policy_epoch) != 3 or list(policy_epoch) != sorted(policy_epoch):
                raise ValueError(f"policy_epoch must be an int or three ascending epochs, got {policy_epoch}")
        if not 0.0 <= mosaic_prob <= 1.0:
            raise ValueError(f"mosaic_prob must be in [0, 1], got {mosaic_prob}")
        if isinstance(image_size, numbers.Integral):
            image_size = (int(image_size), int(image_size))
        if augmentations is None:
            augmentations = rtdetr_train_augmentations(min_box_size) if is_train else []
        self.is_train = is_train
        self.image_size = None if image_size is None else tuple(image_size)
        self.augmentations = list(augmentations)
        self.policy_ops = tuple(policy_ops)
        self.policy_epoch = policy_epoch
        self.mosaic = mosaic
        self.mosaic_prob = float(mosaic_prob)
        self.image_format = image_format
        self.min_box_size = min_box_size
        self.min_box_area = min_box_area
        self.resize = None if self.image_size is None else T.Resize(self.image_size, interp=Image.BILINEAR)
        logger.info(
            f"[DetrDatasetMapper] is_train={is_train}, image_size={self.image_size}, augmentations: "
            f"{self.augmentations}, policy_epoch={policy_epoch}, mosaic: {mosaic} at mosaic_prob={mosaic_prob}"
        )

    def plan(self, epoch: int) -> Tuple[bool, List[T.Augmentation]]:
        """Draw this sample's policy: whether it gets Mosaic, and the augmentations that run after
        it (policy applied), followed by the resize and a box sanitising step (which also clips
        the float rounding of the resize); without ``image_size``, by nothing."""
        use_mosaic, skipped = policy_for_epoch(epoch, self.policy_epoch, self.policy_ops, self.mosaic_prob)
        kept = [a for a in self.augmentations if type(a).__name__ not in skipped]
        if self.resize is not None:
            kept += [self.resize, SanitizeBoxes(self.min_box_size, self.min_box_area)]
        return use_mosaic and self.mosaic is not None, kept

    def __call__(self, dataset_dict: Dict, epoch: int = 0, dataset: Optional[Sequence[Dict]] = None) -> Dict:
        """
        Args:
            dataset_dict: Detectron2 dataset dict (not modified).
            epoch: training epoch of this sample, for the augmentation policy.
            dataset: all dataset dicts, where Mosaic draws its other images from.
        """
        file_name = dataset_dict["file_name"]
        if self.is_train:
            sample = read_sample(dataset_dict)
            height, width = sample.image.shape[:2]
            use_mosaic, augmentations = self.plan(epoch)
            if use_mosaic:
                sample = self.mosaic(sample, len(dataset or ()), lambda i: read_sample(dataset[i]))
            aug_input = T.AugInput(sample.image, boxes=sample.boxes)
            T.AugmentationList(augmentations)(aug_input)
            image = aug_input.image
            keep = valid_boxes(aug_input.boxes, self.min_box_size, self.min_box_area)
            boxes, classes = aug_input.boxes[keep], sample.classes[keep]
        else:
            return {**self.inference_input(read_checked_image(dataset_dict)),
                    "image_id": dataset_dict.get("image_id"), "file_name": file_name}

        result = {
            "image": self._model_image(image),
            "height": height,
            "width": width,
            "image_id": dataset_dict.get("image_id"),
            "file_name": file_name,
        }
        if self.is_train:
            instances = Instances(image.shape[:2])
            instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
            result["instances"] = instances
            result["num_dropped_boxes"] = int((~keep).sum())
            # What the augmentations did, per sample: the trainer logs it (data/mosaic, ...).
            result["augmentations"] = {"mosaic": int(use_mosaic)}
        return result


    def inference_input(self, image: np.ndarray) -> Dict:
        """The model input of an ``(H, W, 3)`` uint8 RGB image at inference: ``"image"`` (resized,
        CHW uint8 in ``image_format``), ``"height"`` and ``"width"`` (the original size, where the
        predicted boxes are mapped back to). Without ``image_size``, the augmentations resize it."""
        height, width = image.shape[:2]
        if self.resize is None:
            aug_input = T.AugInput(image)
            T.AugmentationList(self.augmentations)(aug_input)
            resized = aug_input.image
        else:
            resized = self.resize.get_transform(image).apply_image(image)
        return {"image": self._model_image(resized), "height": height, "width": width}

    def _model_image(self, image: np.ndarray) -> torch.Tensor:
        """RGB HWC -> CHW tensor in ``image_format``."""
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def read_checked_image(dataset_dict: Dict) -> np.ndarray:
    """The RGB image of ``dataset_dict``, checked against the size its dict declares."""
    file_name = dataset_dict["file_name"]
    image = read_rgb_image(file_name)
    height, width = image.shape[:2]
    expected = (dataset_dict.get("height", height), dataset_dict.get("width", width))
    if expected != (height, width):
        raise ValueError(f"Image {file_name!r} has size (h, w)={(height, width)} but its dataset dict says {expected}.")
    return image


def read_sample(dataset_dict: Dict) -> Sample:
    """The image of ``dataset_dict`` with its non-crowd boxes (clipped) and classes."""
    image = read_checked_image(dataset_dict)
    boxes, classes = annotations_to_arrays(dataset_dict.get("annotations", []), *image.shape[:2])
    return Sample(image, boxes, classes)


def read_rgb_image(file_name: str) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB, raising an error that names the file when it is
    missing, cannot be decoded (e.g. a truncated JPEG) or has no 8-bit meaning (32-bit float).

    As detectron2's ``read_image``: the EXIF orientation is applied, so boxes are expected in the
    frame the image is displayed in (Detectron2's and Ultralytics' convention; the official RT-DETR
    code ignores EXIF), and :func:`read_checked_image` reports an image whose dict gives the size
    of the stored, unrotated pixels. Grayscale, RGBA (alpha dropped) and palette images are
    converted by PIL. 16-bit images keep their high byte (``v >> 8``, as PIL and OpenCV reduce
    16-bit colour PNGs), where PIL's own conversion would clip every value above 255 to white.
    """
    try:
        with PathManager.open(file_name, "rb") as f:
            rgb = pil_to_rgb(Image.open(f))
    except FileNotFoundError as e:
        raise missing_image_error(file_name) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise OSError(f"Cannot decode image file {file_name!r}: {e}") from e
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise OSError(f"Image file {file_name!r} decoded to {rgb.dtype} {rgb.shape}, not 8-bit RGB.")
    return rgb


def missing_image_error(file_name: str) -> FileNotFoundError:
    """The error for an image path that does not exist, the same wherever an image is read (data
    sets, the predictor, the tools)."""
    return FileNotFoundError(f"Image file {file_name!r} does not exist.")


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image as ``(H, W, 3)`` uint8 RGB, as :func:`read_rgb_image` decodes files: EXIF
    orientation applied, 16-bit images reduced to their high byte, other modes converted by PIL.

    Raises:
        ValueError: for a 32-bit float image, which has no defined 8-bit conversion.
    """
    image = detection_utils._apply_exif_orientation(image)
    if image.mode in SIXTEEN_BIT_MODES:
        gray = (np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise ValueError("a 32-bit float image has no defined 8-bit RGB conversion; convert it first")
    return detection_utils.convert_PIL_to_numpy(image, "RGB")


def annotations_to_arrays(annotations: List[Dict], height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Non-crowd annotations as ``(N, 4)`` float32 absolute XYXY boxes clipped to the image, and
    ``(N,)`` int64 classes. Crowd regions are dropped, as in the official ``ConvertCocoPolysToMask``.

    A box with a negative width or height or a coordinate that is not finite becomes the empty box
    ``(0, 0, 0, 0)``, which stays empty through every augmentation and is dropped and counted at the
    end like a zero-size box; detectron2's box transforms take the min and max of the corners and
    would otherwise turn it into a valid box. (:func:`~dfine.data.datasets.load_dataset_dicts`
    removes such boxes already; this covers dataset dicts that do not pass through it.)"""
    annotations = [a for a in annotations if a.get("iscrowd", 0) == 0]
    boxes = np.array(
        [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations], dtype=np.float32
    ).reshape(-1, 4)
    inverted = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    boxes[inverted] = 0
    boxes = clip_boxes(boxes, height, width)
    classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    return boxes, classes
