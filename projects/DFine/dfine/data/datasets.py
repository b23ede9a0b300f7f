"""Dataset registration and loading with the checks detectron2 0.6 lacks.

COCO 2017 (``coco_2017_train``, ``coco_2017_val``, ...) is registered by detectron2 itself, with
files under ``$DETECTRON2_DATASETS`` (default ``./datasets``). :func:`load_dataset_dicts` loads
registered data sets in Detectron2's dataset-dict format (boxes in ``bbox`` with ``bbox_mode``,
contiguous ``category_id`` in ``0..K-1``) and fails early, with a message naming the file or the
annotation, where a training run would otherwise fail late (a missing file) or silently (a
category id outside ``0..K-1``, which detectron2 0.6 does not check).
"""
import itertools
import logging
import numbers
import os
from typing import Callable, Dict, List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = ["load_dataset_dicts", "register_coco_dataset", "validate_category_ids"]

logger = logging.getLogger(__name__)


def register_coco_dataset(
    name: str,
    json_file: str,
    image_root: str,
    metadata: Optional[Dict] = None,
    prepare: Optional[Callable[[], object]] = None,
) -> None:
    """Register a COCO-format detection data set; calling it again with the same files is a no-op.

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
    if name in DatasetCatalog.list():
        registered = MetadataCatalog.get(name)
        same_files = _same_path(registered.get("json_file"), json_file) and _same_path(
            registered.get("image_root"), image_root
        )
        if not same_files:
            raise ValueError(
                f"Dataset '{name}' is already registered with json_file={registered.get('json_file')!r}, "
                f"image_root={registered.get('image_root')!r}; cannot re-register it with "
                f"json_file={json_file!r}, image_root={image_root!r}."
            )
        return

    def load() -> List[Dict]:
        if prepare is not None:
            prepare()
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **(metadata or {})
    )


def load_dataset_dicts(names: Union[str, Sequence[str]], filter_empty: bool = False) -> List[Dict]:
    """Load and concatenate registered data sets, with checks.

    Args:
        names: one registered data set name or several (their ``thing_classes`` must agree).
        filter_empty: drop images without non-crowd annotations. The default keeps them, as the
            official RT-DETR/D-FINE training does (they are background-only samples).

    Returns:
        list of Detectron2 dataset dicts.

    Raises:
        FileNotFoundError: naming the expected json file and image folder (and
            ``$DETECTRON2_DATASETS``) when the data set's files are missing.
        ValueError: naming the data set, file and annotation when a ``category_id`` lies outside
            ``0..K-1`` for the ``K`` classes of its metadata.
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
        dataset_dicts = [d for d in dataset_dicts if any(a.get("iscrowd", 0) == 0 for a in d.get("annotations", []))]
        logger.info(f"Removed {before - len(dataset_dicts)} images without non-crowd annotations.")
    if not dataset_dicts:
        raise ValueError(f"No images left in {list(names)}.")
    return dataset_dicts


def validate_category_ids(dataset_dicts: List[Dict], num_classes: int, dataset_name: str, source: str = "") -> None:
    """Raise a ValueError naming the annotation whose ``category_id`` is not an int in ``[0, num_classes)``."""
    for record in dataset_dicts:
        for k, ann in enumerate(record.get("annotations", [])):
            category_id = ann.get("category_id")
            if not isinstance(category_id, numbers.Integral) or not 0 <= category_id < num_classes:
                where = f" (file {source})" if source else ""
                ann_id = f", annotation id {ann['id']}" if "id" in ann else ""
                raise ValueError(
                    f"Dataset '{dataset_name}'{where}: annotation #{k}{ann_id} of image "
                    f"'{record.get('file_name')}' (image_id={record.get('image_id')}, bbox={ann.get('bbox')}) "
                    f"has category_id={category_id!r}, outside the contiguous range [0, {num_classes}) "
                    f"of its {num_classes} thing_classes."
                )


def _load_one(name: str) -> List[Dict]:
    if name not in DatasetCatalog.list():
        raise KeyError(f"Dataset '{name}' is not registered. Registered: {', '.join(sorted(DatasetCatalog.list()))}")
    metadata = MetadataCatalog.get(name)
    json_file, image_root = metadata.get("json_file"), metadata.get("image_root")
    try:
        dataset_dicts = DatasetCatalog.get(name)
    except FileNotFoundError as e:
        raise FileNotFoundError(_missing_files_message(name, json_file, image_root)) from e
    except KeyError as e:
        # load_coco_json's error for an annotation whose category is not in 'categories'.
        raise ValueError(f"Dataset '{name}' (file {json_file}): {e.args[0] if e.args else e}") from e
    thing_classes = metadata.get("thing_classes")
    if thing_classes is None:
        raise ValueError(f"Dataset '{name}' has no 'thing_classes' in its metadata; cannot check category ids.")
    validate_category_ids(dataset_dicts, len(thing_classes), name, json_file or "")

    # Checking one image catches a missing or misplaced image folder without touching them all.
    if (image_root is not None and not os.path.isdir(image_root)) or (
        dataset_dicts and not os.path.isfile(dataset_dicts[0]["file_name"])
    ):
        first = dataset_dicts[0]["file_name"] if dataset_dicts else None
        raise FileNotFoundError(
            f"Dataset '{name}': image {first!r} does not exist. " + _missing_files_message(name, json_file, image_root)
        )
    return dataset_dicts


def _missing_files_message(name: str, json_file: Optional[str], image_root: Optional[str]) -> str:
    return (
        f"Dataset '{name}' expects annotations json_file={json_file!r} and images under "
        f"image_root={image_root!r}. Detectron2's builtin data sets (e.g. coco_2017_train) are looked up "
        f"under $DETECTRON2_DATASETS={os.environ.get('DETECTRON2_DATASETS', '<unset, default ./datasets>')}; "
        f"set it to the folder that contains 'coco/annotations' and 'coco/train2017'."
    )


def _same_path(a: Optional[Union[str, os.PathLike]], b: Union[str, os.PathLike]) -> bool:
    return a is not None and os.path.abspath(os.fspath(a)) == os.path.abspath(os.fspath(b))
