"""Dataset mapper for the real-time DETR family: RT-DETR augmentations, fixed-size resize,
epoch-dependent augmentation policy."""
import logging
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from detectron2.data import detection_utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from .transforms import SanitizeBoxes, clip_boxes, rtdetr_train_augmentations, valid_boxes

__all__ = ["DetrDatasetMapper"]

logger = logging.getLogger(__name__)

RTDETR_POLICY_OPS = ("RandomPhotometricDistort", "RandomZoomOut", "RandomIoUCrop")


class DetrDatasetMapper:
    """Turn a Detectron2 dataset dict into the model's input dict.

    Training: read the image (RGB), clip the non-crowd annotation boxes to it, run the
    augmentations (default: :func:`~dfine.data.transforms.rtdetr_train_augmentations`), resize
    to ``image_size`` without keeping the aspect ratio (PIL bilinear, as the official ``Resize``)
    and drop boxes with a side below ``min_box_size``. Inference: read and resize only.

    The augmentation policy is a pure function of the ``epoch`` argument: augmentations whose
    class name is in ``policy_ops`` are skipped when ``epoch >= policy_epoch`` (the official
    RT-DETRv2/D-FINE ``stop_epoch`` policy, official-implementations.md §5.4). The epoch arrives
    with every sample (see :class:`~dfine.data.loader.DetectionDataset`), so the policy holds in
    DataLoader workers and after resume.

    Output dict:

    * ``"image"``: ``(3, H, W)`` uint8 tensor of size ``image_size``, channels in ``image_format``;
    * ``"height"``, ``"width"``: size of the image on disk, where predictions are mapped back to;
    * ``"image_id"``, ``"file_name"``: copied from the input;
    * training only: ``"instances"``: :class:`Instances` of image size ``(H, W)`` with
      ``gt_boxes`` (:class:`Boxes`, absolute XYXY in the resized image) and ``gt_classes``
      (int64), possibly empty; ``"num_dropped_boxes"``: how many non-crowd annotations did not
      survive (degenerate, cropped out, or thinner than ``min_box_size`` after resizing).

    Never returns ``None`` (detectron2 0.6's retry path breaks on Python >= 3.11).
    """

    def __init__(
        self,
        is_train: bool,
        image_size: Union[int, Tuple[int, int]] = 640,
        augmentations: Optional[Sequence[T.Augmentation]] = None,
        policy_ops: Sequence[str] = RTDETR_POLICY_OPS,
        policy_epoch: Optional[int] = None,
        image_format: str = "RGB",
        min_box_size: float = 1,
    ):
        """
        Args:
            is_train: training (augment, return instances) or inference mode.
            image_size: output size, ``int`` for a square or ``(height, width)``.
            augmentations: applied in order before the resize, on RGB images. ``None`` means the
                RT-DETR training list in training and nothing in inference.
            policy_ops: class names of the augmentations that the policy switches off.
            policy_epoch: first epoch without ``policy_ops``; ``None`` keeps them on forever.
            image_format: "RGB" or "BGR", the channel order of the output image.
            min_box_size: boxes with a side below this many pixels are dropped.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if augmentations is None:
            augmentations = rtdetr_train_augmentations(min_box_size) if is_train else []
        self.is_train = is_train
        self.image_size = tuple(image_size)
        self.augmentations = list(augmentations)
        self.policy_ops = tuple(policy_ops)
        self.policy_epoch = policy_epoch
        self.image_format = image_format
        self.min_box_size = min_box_size
        self.resize = T.Resize(self.image_size, interp=Image.BILINEAR)
        logger.info(f"[DetrDatasetMapper] is_train={is_train}, augmentations: {self.augmentations}")

    def active_augmentations(self, epoch: int) -> List[T.Augmentation]:
        """The augmentations that run at ``epoch`` (policy applied), then the resize and a box
        sanitising step (which also clips the float rounding of the resize)."""
        policy_off = self.policy_epoch is not None and epoch >= self.policy_epoch
        kept = [a for a in self.augmentations if not (policy_off and type(a).__name__ in self.policy_ops)]
        return kept + [self.resize, SanitizeBoxes(self.min_box_size)]

    def __call__(self, dataset_dict: Dict, epoch: int = 0) -> Dict:
        """
        Args:
            dataset_dict: Detectron2 dataset dict (not modified).
            epoch: training epoch of this sample, for the augmentation policy.
        """
        file_name = dataset_dict["file_name"]
        image = read_rgb_image(file_name)
        height, width = image.shape[:2]
        expected = (dataset_dict.get("height", height), dataset_dict.get("width", width))
        if expected != (height, width):
            raise ValueError(
                f"Image {file_name!r} has size (h, w)={(height, width)} but its dataset dict says {expected}."
            )

        if self.is_train:
            boxes, classes = annotations_to_arrays(dataset_dict.get("annotations", []), height, width)
            aug_input = T.AugInput(image, boxes=boxes)
            T.AugmentationList(self.active_augmentations(epoch))(aug_input)
            image = aug_input.image
            keep = valid_boxes(aug_input.boxes, self.min_box_size)
            boxes, classes = aug_input.boxes[keep], classes[keep]
        else:
            image = self.resize.get_transform(image).apply_image(image)

        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        result = {
            "image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))),
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
        return result


def read_rgb_image(file_name: str) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB (EXIF orientation applied, grayscale/RGBA/palette
    converted), raising an error that names the file when it is missing or cannot be decoded."""
    try:
        image = detection_utils.read_image(file_name, format="RGB")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Image file {file_name!r} does not exist.") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise OSError(f"Cannot decode image file {file_name!r}: {e}") from e
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise OSError(f"Image file {file_name!r} decoded to {image.dtype} {image.shape}, not 8-bit RGB.")
    return image


def annotations_to_arrays(annotations: List[Dict], height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Non-crowd annotations as ``(N, 4)`` float32 absolute XYXY boxes clipped to the image, and
    ``(N,)`` int64 classes. Crowd regions are dropped, as in the official ``ConvertCocoPolysToMask``."""
    annotations = [a for a in annotations if a.get("iscrowd", 0) == 0]
    boxes = np.array(
        [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations], dtype=np.float32
    ).reshape(-1, 4)
    boxes = clip_boxes(boxes, height, width)
    classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    return boxes, classes
