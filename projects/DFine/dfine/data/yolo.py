"""YOLO-format folders (Ultralytics / Darknet layout) as Detectron2 data sets.

Layout, with ``split`` (e.g. ``"train"``) or without it::

    root/
      data.yaml or classes.txt       class names: ``names:`` (a list, or ``{0: name, ...}``), or one per line
      images/[split/]a.jpg, ...      any sub-folders; .bmp .jpeg .jpg .png .tif .tiff .webp
      labels/[split/]a.txt, ...      same relative path and stem as the image

Each label line is ``class cx cy w h`` with the box centre and size normalised to ``[0, 1]`` by
the image width and height (a polygon ``class x1 y1 x2 y2 x3 y3 ...``, as in YOLO segmentation
labels, stands for its bounding box). An image without a label file, or with an empty one, is a
background image. Image sizes are read from the file headers, with the EXIF orientation applied
as the mapper applies it when it decodes the image.
"""
import logging
import os
import shutil
from typing import Dict, List, Optional, Sequence, Tuple, Union

import yaml
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .datasets import is_registered_with, load_dataset_dicts
from .validation import IMAGE_EXTENSIONS, DatasetError

__all__ = ["IMAGE_EXTENSIONS", "export_yolo_dataset", "load_yolo_dataset", "read_class_names", "register_yolo_dataset"]

logger = logging.getLogger(__name__)

CLASS_NAME_FILES = ("data.yaml", "dataset.yaml", "classes.txt")
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def register_yolo_dataset(
    name: str,
    root: str,
    split: Optional[str] = None,
    class_names: Union[None, str, Sequence[str]] = None,
) -> None:
    """Register the YOLO folder ``root`` (images in ``root/images[/split]``, labels in
    ``root/labels[/split]``) as a data set; calling it again with the same folders is a no-op.

    Nothing is read until the data set is loaded. Then its metadata gets ``thing_classes`` (no
    ``thing_dataset_id_to_contiguous_id``: YOLO class ids are already ``0..K-1``), and its dicts
    have absolute ``BoxMode.XYXY_ABS`` boxes. The metadata has no ``json_file``:
    :class:`~detectron2.evaluation.COCOEvaluator` converts the data set to a COCO json in its
    ``output_dir``, which must therefore be set (``dataloader.evaluator.output_dir``).

    Args:
        name: data set name in :class:`DatasetCatalog`.
        root: the folder that holds ``images/`` and ``labels/``.
        split: sub-folder of ``images/`` and ``labels/`` (e.g. ``"train"``), or ``None``.
        class_names: the class names in class-id order, or the path of a ``.yaml`` file with
            ``names`` or of a text file with one name per line; ``None`` looks for
            ``data.yaml``, ``dataset.yaml`` or ``classes.txt`` in ``root``.
    """
    image_root = os.path.join(root, "images", *([split] if split else []))
    label_root = os.path.join(root, "labels", *([split] if split else []))
    if is_registered_with(name, image_root=image_root, label_root=label_root):
        return
    if class_names is not None and not isinstance(class_names, (str, os.PathLike)):
        class_names = list(class_names)

    def load() -> List[Dict]:
        names = class_names if isinstance(class_names, list) else read_class_names(class_names or root)
        MetadataCatalog.get(name).thing_classes = names
        return load_yolo_dataset(image_root, label_root, names)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(image_root=image_root, label_root=label_root, evaluator_type="coco")


def read_class_names(path: str) -> List[str]:
    """Class names from a ``.yaml``/``.yml`` file's ``names`` (a list, or a dict ``{0: name, ...}``
    with the keys ``0..K-1``), from a text file (one name per line, blank lines ignored), or from
    the first of ``data.yaml``, ``dataset.yaml``, ``classes.txt`` in the folder ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in CLASS_NAME_FILES if os.path.isfile(os.path.join(path, f))]
        if not found:
            raise FileNotFoundError(
                f"No class names in YOLO folder {path!r}: expected one of {', '.join(CLASS_NAME_FILES)}, "
                "or pass class_names to register_yolo_dataset()."
            )
        path = found[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Class names file {path!r} does not exist.")
    with open(path) as f:
        if not path.endswith((".yaml", ".yml")):
            names = [line.strip() for line in f if line.strip()]
        else:
            try:
                content = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise DatasetError(f"{path} is not valid YAML: {e}") from None
            names = content.get("names") if isinstance(content, dict) else None
            if isinstance(names, dict):
                if sorted(names) != list(range(len(names))):
                    raise DatasetError(
                        f"{path}: the keys of 'names' must be the class ids 0..K-1, got {sorted(names)}."
                    )
                names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path} holds no class names (a yaml file needs a non-empty 'names' list or dict).")
    return [str(n) for n in names]


def load_yolo_dataset(image_root: str, label_root: str, class_names: Sequence[str]) -> List[Dict]:
    """Detectron2 dataset dicts of the images under ``image_root`` (sorted by relative path,
    ``image_id`` = position) with the labels under ``label_root``.

    Raises:
        FileNotFoundError: when either folder is missing or ``image_root`` holds no image.
        DatasetError: (a ValueError) naming the label file and line of a malformed line or of a
            class id outside ``0..len(class_names)-1``, or a label file that is not text.
    """
    for kind, folder in (("image", image_root), ("label", label_root)):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"YOLO {kind} folder {folder!r} does not exist.")
    relative_paths = sorted(
        os.path.relpath(os.path.join(directory, f), image_root)
        for directory, _, files in os.walk(image_root)
        for f in files
        if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not relative_paths:
        raise FileNotFoundError(f"YOLO image folder {image_root!r} holds no image ({' '.join(IMAGE_EXTENSIONS)}).")
    dataset_dicts, without_label_file = [], 0
    for image_id, relative_path in enumerate(relative_paths):
        file_name = os.path.join(image_root, relative_path)
        width, height = image_size(file_name)
        label_file = os.path.join(label_root, os.path.splitext(relative_path)[0] + ".txt")
        if os.path.isfile(label_file):
            annotations = read_label_file(label_file, width, height, class_names)
        else:
            annotations, without_label_file = [], without_label_file + 1
        dataset_dicts.append(
            {"file_name": file_name, "height": height, "width": width, "image_id": image_id, "annotations": annotations}
        )
    logger.info(
        f"Loaded {len(dataset_dicts)} images from YOLO folder {image_root!r}; {without_label_file} of them have no "
        f"label file in {label_root!r} (background images)."
    )
    return dataset_dicts


def image_size(file_name: str) -> Tuple[int, int]:
    """``(width, height)`` of an image as decoded with its EXIF orientation applied, from the
    file header only."""
    try:
        with Image.open(file_name) as image:
            width, height = image.size
            if image.getexif().get(0x0112) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    except OSError as e:
        raise OSError(f"Cannot read the size of image file {file_name!r}: {e}") from e
    return width, height


def read_label_file(label_file: str, width: int, height: int, class_names: Sequence[str]) -> List[Dict]:
    """The annotations of one label file, with absolute XYXY boxes in a ``width x height`` image."""
    try:
        with open(label_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"Label file {label_file!r} is not text (byte {e.start} is not UTF-8): expected lines 'class cx cy w h'."
        ) from None
    annotations = []
    for line_number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        where = f"Label file {label_file!r}, line {line_number}"
        is_polygon = len(fields) >= 7 and len(fields) % 2 == 1
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = None
        if values is None or not (len(fields) == 5 or is_polygon):
            raise DatasetError(
                f"{where}: expected 'class cx cy w h' (or a polygon 'class x1 y1 x2 y2 x3 y3 ...'), "
                f"got {line.strip()!r}."
            )
        class_id = values[0]
        if not class_id.is_integer() or not 0 <= class_id < len(class_names):
            raise DatasetError(
                f"{where}: class id {fields[0]!r} is not one of the {len(class_names)} class ids "
                f"0..{len(class_names) - 1} ({', '.join(class_names)})."
            )
        if is_polygon:
            xs, ys = values[1::2], values[2::2]
            box = [min(xs) * width, min(ys) * height, max(xs) * width, max(ys) * height]
        else:
            cx, cy, w, h = values[1:]
            box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
        annotations.append({"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(class_id), "iscrowd": 0})
    return annotations


def export_yolo_dataset(dataset_name: str, root: str, split: Optional[str] = None) -> None:
    """Write the registered data set ``dataset_name`` as a YOLO folder that
    :func:`register_yolo_dataset` reads back: images copied to ``root/images[/split]`` (at their
    path relative to the data set's ``image_root``), one label file per image (empty for a
    background image; crowd regions are left out) and the class names in ``root/classes.txt``."""
    dataset_dicts = load_dataset_dicts(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    sub_folders = [split] if split else []
    for record in dataset_dicts:
        image_root = metadata.get("image_root") or os.path.dirname(record["file_name"])
        relative_path = os.path.relpath(record["file_name"], image_root)
        image_file = os.path.join(root, "images", *sub_folders, relative_path)
        label_file = os.path.join(root, "labels", *sub_folders, os.path.splitext(relative_path)[0] + ".txt")
        for folder in (os.path.dirname(image_file), os.path.dirname(label_file)):
            os.makedirs(folder, exist_ok=True)
        shutil.copyfile(record["file_name"], image_file)
        width, height = record["width"], record["height"]
        lines = []
        for ann in record.get("annotations", []):
            if ann.get("iscrowd", 0):
                continue
            x1, y1, x2, y2 = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            centre_and_size = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
            lines.append(f"{ann['category_id']} " + " ".join(f"{v:.6f}" for v in centre_and_size) + "\n")
        with open(label_file, "w") as f:
            f.writelines(lines)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.writelines(f"{n}\n" for n in metadata.thing_classes)
    logger.info(f"Wrote {len(dataset_dicts)} images of '{dataset_name}' as a YOLO folder in {root!r}.")
