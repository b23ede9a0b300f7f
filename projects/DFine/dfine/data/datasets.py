"""Dataset registration and loading with the checks detectron2 0.6 lacks.

COCO 2017 (``coco_2017_train``, ``coco_2017_val``, ...) is registered by detectron2 itself, with
files under ``$DETECTRON2_DATASETS`` (default ``./datasets``); :func:`register_coco_dataset`
registers any other COCO-format json (YOLO folders: :mod:`dfine.data.yolo`).
:func:`load_dataset_dicts` loads registered data sets in Detectron2's dataset-dict format (boxes
in ``bbox`` with ``bbox_mode``, contiguous ``category_id`` in ``0..K-1``) and fails early, with a
message naming the file, the image or annotation and the field, where a training run would
otherwise fail late (a missing file, a json cut short, a bbox of three numbers) or silently (two
images with one id, a category id outside ``0..K-1``): see :mod:`dfine.data.validation`. It logs,
per data set, the category mapping and one summary line: images, background images (kept by
default), boxes, and what was dropped and why.
"""
import itertools
import logging
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode

from .validation import DatasetError, Dropped, check_coco_json, check_dataset_dicts, find_orphan_label_files

__all__ = [
    "is_registered_with",
    "load_dataset_dicts",
    "register_coco_dataset",
    "remove_degenerate_boxes",
]

logger = logging.getLogger(__name__)

# Pixels by which a box may pass the image border without counting as "beyond the image": the
# rounding of normalised coordinates (YOLO labels have six decimals).
BORDER_TOLERANCE = 0.01


def register_coco_dataset(
    name: str,
    json_file: str,
    image_root: str,
    metadata: Optional[Dict] = None,
    prepare: Optional[Callable[[], object]] = None,
) -> None:
    """Register a COCO-format detection data set; calling it again with the same files is a no-op.

    The json's category ids may be any integers (e.g. ``{3, 7, 42}``): when the data set is loaded,
    detectron2's ``load_coco_json`` maps them, in increasing order, to the contiguous classes
    ``0..K-1`` and stores the map as the ``thing_dataset_id_to_contiguous_id`` metadata (with
    ``thing_classes`` in the same order), which :class:`~detectron2.evaluation.COCOEvaluator`
    uses to write predictions with the json's ids. :func:`load_dataset_dicts` checks the json
    (:func:`~dfine.data.validation.check_coco_json`) and logs the map; an annotation whose
    ``category_id`` is not among the json's ``categories`` is an error naming the file, the
    annotation id, the image and the category id. The annotations keep their json ``id``, so
    that messages can name them.

    detectron2 0.6's ``register_coco_instances`` raises on a second registration, which breaks
    re-imports and notebooks; re-registering a name with *different* files is still an error here.

    Args:
        name: data set name in :class:`DatasetCatalog`.
        json_file: COCO instances json.
        image_root: folder that the json's ``file_name`` entries are relative to.
        metadata: extra metadata (e.g. ``thing_classes``); ``json_file``, ``image_root`` and
            ``evaluator_type="coco"`` are always set.
        prepare: called before the json is read, on every load; used by generated data sets to
            create their files on first use, so that registration itself stays cheap.
    """
    if is_registered_with(name, json_file=json_file, image_root=image_root):
        return

    def load() -> List[Dict]:
        if prepare is not None:
            prepare()
        return load_coco_json(json_file, image_root, name, extra_annotation_keys=["id"])

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )


def is_registered_with(name: str, **paths: Union[str, os.PathLike]) -> bool:
    """Whether ``name`` is registered already, with metadata entries naming the same ``paths``
    (then registering it again is a no-op). Raises a ValueError when it is registered with other
    paths."""
    if name not in DatasetCatalog.list():
        return False
    registered = MetadataCatalog.get(name)
    if not all(_same_path(registered.get(key), path) for key, path in paths.items()):
        before = ", ".join(f"{key}={registered.get(key)!r}" for key in paths)
        after = ", ".join(f"{key}={os.fspath(path)!r}" for key, path in paths.items())
        raise ValueError(f"Dataset '{name}' is already registered with {before}; cannot re-register it with {after}.")
    return True


def load_dataset_dicts(names: Union[str, Sequence[str]], filter_empty: bool = False) -> List[Dict]:
    """Load and concatenate registered data sets, with checks (:mod:`dfine.data.validation`).

    Per data set, checks its files (a COCO json, a YOLO folder) and its dataset dicts, logs the map
    from dataset category ids to contiguous classes, removes the boxes that cannot be a training
    target (:func:`remove_degenerate_boxes`), and logs one summary line: images, background
    images, boxes, and what was dropped and why, with examples.

    Args:
        names: one registered data set name or several (their ``thing_classes`` must agree).
        filter_empty: drop images without non-crowd annotations (after the degenerate boxes are
            removed). The default keeps them, as the official RT-DETR/D-FINE training does: they
            are background training images, whose target is "no object" for every query.

    Returns:
        list of Detectron2 dataset dicts.

    Raises:
        FileNotFoundError: naming the expected json file and image folder (and
            ``$DETECTRON2_DATASETS``) when the data set's files are missing.
        DatasetError: (a ValueError) naming the data set, file, image or annotation and field of
            every problem that stops loading (see :mod:`dfine.data.validation`), e.g. a
            ``category_id`` outside ``0..K-1`` for the ``K`` classes of its metadata; naming the
            data set when it has no images (or none is left by ``filter_empty``).
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError("load_dataset_dicts() needs at least one data set name.")
    per_dataset = [_load_one(name) for name in names]
    classes = [MetadataCatalog.get(name).get("thing_classes") for name in names]
    for name, thing_classes in zip(names[1:], classes[1:]):
        if thing_classes != classes[0]:
            raise ValueError(
                f"Datasets '{names[0]}' and '{name}' have different thing_classes and cannot be concatenated."
            )
    dataset_dicts = list(itertools.chain.from_iterable(per_dataset))
    if filter_empty:
        before = len(dataset_dicts)
        dataset_dicts = [d for d in dataset_dicts if not _is_background(d)]
        logger.info(f"filter_empty=True: removed {before - len(dataset_dicts)} images without non-crowd annotations.")
    if not dataset_dicts:
        raise ValueError(
            f"No images left in {list(names)}: filter_empty=True removed every image, none has a non-crowd annotation."
        )
    return dataset_dicts


def remove_degenerate_boxes(dataset_dicts: List[Dict]) -> Tuple[List[Dict], Dropped, int]:
    """Remove the non-crowd annotations whose box cannot be a training target: a coordinate that
    is not finite, or no area inside the image (zero or negative width or height once clipped to
    the image; without ``height``/``width`` in the dict, before clipping).

    Boxes that only extend beyond the image are kept (the mapper clips them) and counted.
    Records that lose an annotation are copied; ``dataset_dicts`` is not modified.

    Returns:
        ``(dataset dicts, the removed boxes (count and examples), number of boxes extending beyond
        the image)``.
    """
    out, beyond, tol = [], 0, BORDER_TOLERANCE
    removed = Dropped("degenerate boxes")
    for record in dataset_dicts:
        annotations = record.get("annotations") or []
        height, width = record.get("height", math.inf), record.get("width", math.inf)
        kept = []
        for k, ann in enumerate(annotations):
            if ann.get("iscrowd", 0):
                kept.append(ann)
                continue
            x1, y1, x2, y2 = _xyxy(ann["bbox"], ann["bbox_mode"])
            finite = all(math.isfinite(v) for v in (x1, y1, x2, y2))
            if not finite or min(x2, width) <= max(x1, 0) or min(y2, height) <= max(y1, 0):
                name = f"annotation id {ann['id']}" if "id" in ann else f"annotation #{k}"
                removed.add(f"{name} of image_id {record.get('image_id')}: bbox {list(ann['bbox'])}")
                continue
            beyond += int(x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol)
            kept.append(ann)
        out.append(record if len(kept) == len(annotations) else dict(record, annotations=kept))
    return out, removed, beyond


def _xyxy(bbox: Sequence[float], mode: BoxMode) -> Tuple[float, float, float, float]:
    """One box as absolute XYXY floats; the two common modes without ``BoxMode.convert``'s
    array round trip, which would dominate loading a data set of a million boxes."""
    if mode == BoxMode.XYWH_ABS:
        x, y, w, h = (float(v) for v in bbox)
        return x, y, x + w, y + h
    if mode == BoxMode.XYXY_ABS:
        return tuple(float(v) for v in bbox)
    return tuple(float(v) for v in BoxMode.convert(list(bbox), mode, BoxMode.XYXY_ABS))


def _is_background(record: Dict) -> bool:
    return not any(a.get("iscrowd", 0) == 0 for a in record.get("annotations", []))


def _log_classes(name: str, metadata) -> None:
    """Log the map from the data set's category ids to contiguous classes (and class names)."""
    thing_classes = metadata.thing_classes
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if id_map:
        by_class = sorted(id_map.items(), key=lambda pair: pair[1])
        pairs = ", ".join(f"id {i} -> class {c} ({thing_classes[c]})" for i, c in by_class)
        logger.info(f"Dataset '{name}': {len(thing_classes)} categories, {pairs}.")
    else:
        pairs = ", ".join(f"{c} ({n})" for c, n in enumerate(thing_classes))
        logger.info(f"Dataset '{name}': {len(thing_classes)} classes, {pairs}.")


def _load_one(name: str) -> List[Dict]:
    if name not in DatasetCatalog.list():
        raise KeyError(f"Dataset '{name}' is not registered. Registered: {', '.join(sorted(DatasetCatalog.list()))}")
    metadata = MetadataCatalog.get(name)
    json_file, image_root = metadata.get("json_file"), metadata.get("image_root")
    # The files are checked before Detectron2 reads them, unless they do not exist yet (a data
    # set generated on first load): then right after.
    dropped = _check_files(name, metadata)
    try:
        dataset_dicts = DatasetCatalog.get(name)
    except FileNotFoundError as e:
        if json_file is None:  # not a COCO json data set (e.g. a YOLO folder): its own message
            raise
        raise FileNotFoundError(_missing_files_message(name, json_file, image_root)) from e
    if dropped is None:
        dropped = _check_files(name, metadata) or []
    if not dataset_dicts:
        where = f" (json_file={json_file!r}, image_root={image_root!r})" if json_file else ""
        raise DatasetError(f"Dataset '{name}'{where} has no images; training and evaluation need at least one.")
    thing_classes = metadata.get("thing_classes")
    if thing_classes is None:
        raise DatasetError(f"Dataset '{name}' has no 'thing_classes' in its metadata; cannot check category ids.")
    check_dataset_dicts(dataset_dicts, len(thing_classes), name, json_file or "")
    _log_classes(name, metadata)

    # Checking one image catches a missing or misplaced image folder without touching them all.
    first = dataset_dicts[0]["file_name"]
    if (image_root is not None and not os.path.isdir(image_root)) or not os.path.isfile(first):
        raise FileNotFoundError(
            f"Dataset '{name}': image {first!r} does not exist. " + _missing_files_message(name, json_file, image_root)
        )

    dataset_dicts, degenerate, beyond = remove_degenerate_boxes(dataset_dicts)
    num_boxes = sum(1 for d in dataset_dicts for a in d.get("annotations", []) if not a.get("iscrowd", 0))
    num_background = sum(1 for d in dataset_dicts if _is_background(d))
    examples = f"; e.g. {'; '.join(degenerate.examples)}" if degenerate.examples else ""
    dropped_files = "".join(f" Dropped {d}." for d in dropped if d.count)
    logger.log(
        logging.WARNING if degenerate.count or dropped_files else logging.INFO,
        f"Dataset '{name}': {len(dataset_dicts)} images, {num_background} of them without annotations (kept as "
        f"background images unless filter_empty=True); {num_boxes} boxes, after removing "
        f"{degenerate.count} degenerate boxes (not finite, or no area inside the image{examples}); {beyond} boxes "
        f"extend beyond the image and are clipped.{dropped_files}",
    )
    return dataset_dicts


def _check_files(name: str, metadata) -> Optional[List[Dropped]]:
    """Check the files of a COCO json or YOLO folder data set (:mod:`dfine.data.validation`):
    what loading them drops, ``[]`` for other data sets, ``None`` when they do not exist (yet)."""
    json_file, label_root = metadata.get("json_file"), metadata.get("label_root")
    if metadata.get("evaluator_type") == "coco" and json_file:
        return [check_coco_json(json_file, name)] if os.path.isfile(json_file) else None
    if label_root:
        image_root = metadata.get("image_root")
        exists = os.path.isdir(image_root) and os.path.isdir(label_root)
        return [find_orphan_label_files(image_root, label_root)] if exists else None
    return []


def _missing_files_message(name: str, json_file: Optional[str], image_root: Optional[str]) -> str:
    return (
        f"Dataset '{name}' expects annotations json_file={json_file!r} and images under "
        f"image_root={image_root!r}. Detectron2's builtin data sets (e.g. coco_2017_train) are looked up "
        f"under $DETECTRON2_DATASETS={os.environ.get('DETECTRON2_DATASETS', '<unset, default ./datasets>')}; "
        f"set it to the folder that contains 'coco/annotations' and 'coco/train2017'."
    )


def _same_path(a: Optional[Union[str, os.PathLike]], b: Union[str, os.PathLike]) -> bool:
    return a is not None and os.path.abspath(os.fspath(a)) == os.path.abspath(os.fspath(b))
