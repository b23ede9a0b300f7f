"""Python prediction API: a LazyConfig and a checkpoint in, detections for images out."""
import copy
import logging
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.structures import Instances
from omegaconf import DictConfig, OmegaConf

from ..config import apply_overrides, load_config
from ..data.mapper import DetrDatasetMapper, pil_to_rgb, read_rgb_image
from ..checkpoint import load_ema_or_model_weights
from .trainer import resolve_device

__all__ = ["Predictor", "ImageInput"]

logger = logging.getLogger(__name__)

# A file path, an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 array, or a PIL image.
ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]


class Predictor:
    """A model built from a LazyConfig, with its weights, ready to predict on images.

    Images go through the preprocessing of evaluation: the config's test mapper
    (``cfg.dataloader.test.mapper``, a :class:`~dfine.data.DetrDatasetMapper` with
    ``is_train=False``) provides the resize (to its ``image_size``, aspect ratio not kept, PIL
    bilinear) and the channel order the model gets, so a prediction equals what evaluation sees.

    Inputs (one, or a list or tuple of them, run in batches of ``batch_size``):

    * a path (``str`` or ``os.PathLike``): read as evaluation reads it (EXIF orientation applied,
      grayscale/RGBA/palette converted to RGB); a missing or undecodable file raises an error
      naming it;
    * a ``numpy`` uint8 array ``(H, W, 3)`` in ``array_format`` channel order, BGR by default like
      ``cv2.imread`` and detectron2's ``DefaultPredictor``; ``(H, W)`` and ``(H, W, 1)`` are gray,
      and ``(H, W, 4)`` loses its alpha channel (BGRA or RGBA, after ``array_format``);
    * a PIL image (decoded as files are, :func:`~dfine.data.mapper.pil_to_rgb`).

    Outputs: for each image an :class:`Instances` on the CPU with the original image size and
    ``pred_boxes`` (absolute XYXY in original-image pixels), ``scores`` and ``pred_classes``
    (contiguous ids ``0..K-1``), best first; or, with ``as_dict=True``, the plain dict of
    :meth:`to_dict`.
    """

    def __init__(
        self,
        config: Union[str, os.PathLike, DictConfig],
        weights: Optional[str] = None,
        overrides: Sequence[str] = (),
        device: str = "auto",
        score_threshold: Optional[float] = None,
        batch_size: int = 1,
        class_names: Optional[Sequence[str]] = None,
        array_format: str = "BGR",
        deploy: bool = False,
    ):
        """
        Args:
            config: a LazyConfig file, or a loaded one (copied, never modified).
            weights: checkpoint to load, its EMA weights when it has them (see
                :func:`~dfine.engine.load_ema_or_model_weights`). ``None`` takes the config's
                ``train.init_checkpoint``; ``""`` loads nothing (random initialisation).
            overrides: ``key=value`` config overrides, as on the train_net.py command line.
            device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
            score_threshold: keep detections scoring above it (``model.score_threshold``);
                ``None`` keeps the config's value (0 in every config: all ``num_top_queries``
                detections, as evaluation uses them).
            batch_size: images per forward pass when a list is given.
            class_names: one name per class id. Default: the ``thing_classes`` of the config's
                test data set (``dataloader.test.dataset.names``) when it is registered with
                them, else the ids as strings.
            array_format: channel order of numpy inputs, "BGR" or "RGB".
            deploy: run ``model.deploy()`` (inference form: re-parameterised blocks fused, D-FINE's
                decoder cut after ``eval_idx``) instead of only ``model.eval()``.
        """
        if array_format not in ("RGB", "BGR"):
            raise ValueError(f"array_format must be 'RGB' or 'BGR', got {array_format!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        # Unknown keys and mistyped values are errors naming the override (dfine.config).
        if isinstance(config, (str, os.PathLike)):
            cfg = load_config(os.fspath(config), list(overrides))
        else:
            cfg = apply_overrides(copy.deepcopy(config), list(overrides))
        if score_threshold is not None:
            cfg.model.score_threshold = float(score_threshold)
        self.cfg = cfg
        self.array_format = array_format
        self.batch_size = batch_size
        self.device = torch.device(resolve_device(device))

        self.mapper = instantiate(cfg.dataloader.test.mapper)
        if not isinstance(self.mapper, DetrDatasetMapper) or self.mapper.is_train:
            raise ValueError(
                f"dataloader.test.mapper must be a DetrDatasetMapper with is_train=False, got {self.mapper!r}"
            )

        self.model = instantiate(cfg.model)
        if weights is None:
            weights = OmegaConf.select(cfg, "train.init_checkpoint", default="") or ""
        if weights:
            loaded = load_ema_or_model_weights(self.model, weights)
            logger.info("Loaded the %s weights of %s.", loaded, weights)
        else:
            logger.warning("No checkpoint given: the model keeps its random initialisation.")
        self.weights = weights
        self.model.to(self.device)
        if deploy:
            self.model.deploy()
        else:
            self.model.eval()

        self.class_names = _resolve_class_names(cfg, class_names, self.model.decoder.num_classes)
        # For detectron2's Visualizer.
        self.metadata = Metadata(name="dfine_predictor", thing_classes=self.class_names)

    def read_rgb(self, image: ImageInput) -> np.ndarray:
        """One input as an ``(H, W, 3)`` uint8 RGB array (see the class docstring)."""
        if isinstance(image, (str, os.PathLike)):
            return read_rgb_image(os.fspath(image))
        if isinstance(image, Image.Image):
            return pil_to_rgb(image)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise TypeError(f"Image arrays must be uint8, got {image.dtype}")
            if image.ndim == 2:
                image = image[:, :, None]
            if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
                raise ValueError(f"Image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got {image.shape}")
            if image.shape[2] == 1:
                return np.repeat(image, 3, axis=2)
            image = image[:, :, :3]
            return image[:, :, ::-1] if self.array_format == "BGR" else image
        raise TypeError(f"Cannot predict on a {type(image).__name__}: give a path, a numpy array or a PIL image")

    def preprocess(self, image: ImageInput) -> Dict:
        """The model's input dict for one image, as the test mapper makes it: ``"image"`` (CHW
        uint8 tensor of the mapper's ``image_size``, in its ``image_format``), ``"height"`` and
        ``"width"`` (the original size, where boxes are mapped back to)."""
        return self.mapper.inference_input(self.read_rgb(image))

    def __call__(
        self, inputs: Union[ImageInput, Sequence[ImageInput]], as_dict: bool = False
    ) -> Union[Instances, Dict, List[Instances], List[Dict]]:
        """Predict on one image (returns one result) or a list/tuple of images (returns a list)."""
        single = not isinstance(inputs, (list, tuple))
        images = [inputs] if single else list(inputs)
        results: List[Instances] = []
        for start in range(0, len(images), self.batch_size):
            batch = [self.preprocess(image) for image in images[start : start + self.batch_size]]
            with torch.no_grad():
                outputs = self.model(batch)
            results.extend(output["instances"].to("cpu") for output in outputs)
        if as_dict:
            results = [self.to_dict(instances) for instances in results]
        return results[0] if single else results

    def to_dict(self, instances: Instances) -> Dict[str, list]:
        """Plain lists: ``"boxes"`` (``[x1, y1, x2, y2]`` per detection, absolute pixels of the
        original image), ``"scores"``, ``"labels"`` (class ids) and ``"class_names"``."""
        labels = instances.pred_classes.tolist()
        return {
            "boxes": instances.pred_boxes.tensor.tolist(),
            "scores": instances.scores.tolist(),
            "labels": labels,
            "class_names": [self.class_names[label] for label in labels],
        }


def _resolve_class_names(cfg: DictConfig, class_names: Optional[Sequence[str]], num_classes: int) -> List[str]:
    """Explicit names, else the test data set's registered ``thing_classes``, else ids as strings;
    a list that does not have one name per class of the model is an error."""
    if class_names is not None:
        names, source = list(class_names), "class_names"
    else:
        names, source = [str(i) for i in range(num_classes)], None
        datasets = OmegaConf.select(cfg, "dataloader.test.dataset.names", default=None)
        for dataset in [datasets] if isinstance(datasets, str) else list(datasets or []):
            registered = MetadataCatalog.get(dataset).get("thing_classes") if dataset in DatasetCatalog.list() else None
            if registered:
                names, source = list(registered), f"the thing_classes of data set {dataset!r}"
                break
    if len(names) != num_classes:
        raise ValueError(
            f"The model has {num_classes} classes but {source} has {len(names)} names; pass class_names "
            "with one name per class."
        )
    return names
