"""Checks of a data set where it is loaded, so that a faulty file stops the run before training
with a message naming the file, the image or annotation and the field, or loses a few items
with a count and examples in the log, and never trains on silently wrong labels.

Two levels, each checked once per data set by :func:`~dfine.data.datasets.load_dataset_dicts`:

* the files: a COCO json (:func:`check_coco_json`: it parses, and its images, annotations and
  categories have the keys and types the format requires, unique ids, and categories that
  exist) and a YOLO folder (:func:`find_orphan_label_files`);
* the Detectron2 dataset dicts that a registered loader returns, whatever the format
  (:func:`check_dataset_dicts`).

What stops the run and what is dropped (a ``DatasetError`` lists up to ``MAX_LISTED`` problems):

* stops: a json that does not parse; a missing or mistyped required field; a bbox that is not
  four numbers; duplicate image, annotation or category ids (a duplicate image id would give one
  image the other's annotations); a category id that is not among the categories;
* dropped: annotations whose ``image_id`` is in no image (a json cut down to a subset of its
  images keeps them), label files without an image, and boxes that cannot be a training target
  (not finite, no area inside the image: :func:`~dfine.data.datasets.remove_degenerate_boxes`).
"""
import json
import numbers
import os
from typing import Any, Dict, List, Sequence

import numpy as np
from detectron2.structures import BoxMode

__all__ = [
    "DatasetError",
    "Dropped",
    "IMAGE_EXTENSIONS",
    "check_coco_json",
    "check_dataset_dicts",
    "find_orphan_label_files",
    "read_json",
]

# Problems listed in one error, and examples of dropped items in the log.
MAX_LISTED = 10
MAX_EXAMPLES = 3
# Files that count as images in a folder (YOLO data sets, the demo's inputs).
IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# Box modes a dataset dict may use: absolute boxes, as the mapper converts them.
SUPPORTED_BOX_MODES = (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)


class DatasetError(ValueError):
    """A data set that cannot be trained on as it is; the message names the data set, the file,
    the image or annotation and the field."""


class Dropped:
    """Items removed while loading a data set for one reason: how many, and the first few."""

    def __init__(self, what: str):
        self.what = what
        self.count = 0
        self.examples: List[str] = []

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)

    def __str__(self) -> str:
        examples = f" (e.g. {'; '.join(self.examples)})" if self.examples else ""
        return f"{self.count} {self.what}{examples}"


class _Problems:
    """Collects the problems that stop loading one data set, and raises them together."""

    def __init__(self, header: str):
        self.header = header
        self.lines: List[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def field(self, where: str, name: str, expected: str, record: Dict) -> None:
        got = repr(record[name]) if name in record else "nothing (the field is missing)"
        self.add(f"{where}, field '{name}': expected {expected}, got {got}")

    def raise_if_any(self) -> None:
        if len(self.lines) == 1:
            raise DatasetError(f"{self.header}: {self.lines[0]}.")
        if self.lines:
            more = len(self.lines) - MAX_LISTED
            listed = self.lines[:MAX_LISTED] + ([f"... and {more} more"] if more > 0 else [])
            raise DatasetError(f"{self.header}: {len(self.lines)} problems to fix:\n  " + "\n  ".join(listed))


def read_json(path: str) -> Any:
    """The content of a json file; a file that does not parse is an error naming it, the line,
    column and character of the fault and the text there, and whether the file seems cut short."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not a UTF-8 text file (byte {e.start} is {raw[e.start:e.start + 1]!r}).") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        excerpt = text[max(0, e.pos - 40): e.pos + 40]
        # A complete json document ends with its closing bracket; a copy cut short does not.
        cut = "" if text.rstrip().endswith(("}", "]")) else (
            f" The file ends without closing its json (after {len(text)} characters): it was probably cut short "
            "(a full disk, an interrupted copy or download)."
        )
        raise DatasetError(
            f"{path} is not valid json: {e.msg}: line {e.lineno}, column {e.colno} (character {e.pos}), "
            f"near {excerpt!r}.{cut}"
        ) from None


def check_coco_json(json_file: str, dataset_name: str) -> Dropped:
    """Check a COCO instances json before Detectron2's ``load_coco_json`` reads it.

    Required: ``images`` and ``categories`` lists (``annotations`` may be absent: no objects);
    images with a unique integer ``id``, a ``file_name`` and a positive integer ``height`` and
    ``width``; categories with a unique integer ``id`` and a ``name``; annotations with a unique
    integer ``id``, an integer ``image_id`` and ``category_id``, a ``bbox`` of four numbers
    ``[x, y, width, height]`` and, when present, ``iscrowd`` 0 or 1. An annotation's category must
    be one of the categories.

    Returns:
        the annotations that loading drops because their ``image_id`` is in no image.

    Raises:
        DatasetError: listing the problems, each with the image or annotation id and the field.
    """
    data = read_json(json_file)
    problems = _Problems(f"Dataset '{dataset_name}' (file {json_file})")
    if not isinstance(data, dict):
        problems.add(
            f"expected a json object with 'images', 'annotations' and 'categories', got a {type(data).__name__}"
        )
        problems.raise_if_any()
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list) or (key != "annotations" and key not in data):
            problems.field("the top level", key, "a list", data)
    problems.raise_if_any()

    category_ids = _check_entries(data, "categories", "category", problems, {"name": (_is_text, "a name (text)")})
    images = _check_entries(data, "images", "image", problems, {
        "file_name": (_is_text, "a file name (text)"),
        "height": (_is_size, "a positive integer"),
        "width": (_is_size, "a positive integer"),
    })
    orphans = Dropped("annotations whose image_id is in no image")
    ann_fields = {"image_id": (_is_int, "an integer"), "category_id": (_is_int, "an integer")}
    for index in _check_entries(data, "annotations", "annotation", problems, ann_fields).values():
        ann = data["annotations"][index]
        image_id, category_id = ann["image_id"], ann["category_id"]
        if image_id not in images:
            orphans.add(f"annotation id {ann['id']} with image_id {image_id}")
            continue
        where = f"annotation id {ann['id']} (image id {image_id})"
        if category_id not in category_ids:
            file_name = data["images"][images[image_id]]["file_name"]
            problems.add(
                f"annotation id {ann['id']} of image id {image_id} ({file_name!r}) has category_id={category_id!r}, "
                f"which is not among the category ids {sorted(category_ids)} of the json's 'categories'"
            )
        if not _is_box(ann.get("bbox")):
            problems.field(where, "bbox", "[x, y, width, height], four numbers", ann)
        if ann.get("iscrowd", 0) not in (0, 1):
            problems.field(where, "iscrowd", "0 or 1", ann)
    problems.raise_if_any()
    return orphans


def check_dataset_dicts(dataset_dicts: Sequence[Dict], num_classes: int, dataset_name: str, source: str = "") -> None:
    """Check the Detectron2 dataset dicts of one data set, as any registered loader returns them:
    every dict has a ``file_name``, a unique ``image_id`` (when it has one), a positive ``height``
    and ``width`` (when given) and a list of ``annotations``, each with a ``bbox`` of four numbers in
    an absolute ``bbox_mode`` and an integer ``category_id`` in ``[0, num_classes)``.

    Args:
        source: the data set's file, for the message.

    Raises:
        DatasetError: listing the problems, each naming the image, the annotation and the field.
    """
    problems = _Problems(f"Dataset '{dataset_name}'" + (f" (file {source})" if source else ""))
    first_with_id: Dict[Any, str] = {}
    for index, record in enumerate(dataset_dicts):
        file_name = record.get("file_name")
        image = f"image {file_name!r} (image_id={record.get('image_id')})"
        if not _is_text(file_name):
            problems.field(f"dataset dict #{index}", "file_name", "a file name (text)", record)
        image_id = record.get("image_id")
        if image_id is not None:
            if image_id in first_with_id:
                problems.add(f"image_id {image_id!r} is both {first_with_id[image_id]!r} and {file_name!r}: image ids "
                             "must be unique")
            first_with_id.setdefault(image_id, file_name)
        for size in ("height", "width"):
            if size in record and not _is_size(record[size]):
                problems.field(image, size, "a positive integer", record)
        annotations = record.get("annotations", [])
        if not isinstance(annotations, list):
            problems.field(image, "annotations", "a list", record)
            continue
        for k, ann in enumerate(annotations):
            where = f"annotation #{k}" + (f", annotation id {ann['id']}" if "id" in ann else "") + f" of {image}"
            if not _is_box(ann.get("bbox")):
                problems.field(where, "bbox", "four numbers", ann)
            if ann.get("bbox_mode") not in SUPPORTED_BOX_MODES:
                problems.field(where, "bbox_mode", "BoxMode.XYXY_ABS or BoxMode.XYWH_ABS", ann)
            category_id = ann.get("category_id")
            if not _is_int(category_id) or not 0 <= category_id < num_classes:
                problems.add(
                    f"annotation #{k}" + (f", annotation id {ann['id']}" if "id" in ann else "")
                    + f" of image '{file_name}' (image_id={image_id}, bbox={ann.get('bbox')}) has "
                    f"category_id={category_id!r}, outside the contiguous range [0, {num_classes}) of its "
                    f"{num_classes} thing_classes"
                )
    problems.raise_if_any()


def find_orphan_label_files(image_root: str, label_root: str) -> Dropped:
    """The ``.txt`` files of a YOLO label folder that belong to no image of ``image_root`` (same
    relative path and stem): their boxes are not loaded. Class-name files are not counted."""
    stems = {
        os.path.splitext(os.path.relpath(os.path.join(directory, f), image_root))[0]
        for directory, _, files in os.walk(image_root)
        for f in files
        if f.lower().endswith(IMAGE_EXTENSIONS)
    }
    orphans = Dropped("label files without an image (their boxes are not loaded)")
    for directory, _, files in sorted(os.walk(label_root)):
        for f in sorted(files):
            relative = os.path.relpath(os.path.join(directory, f), label_root)
            if f.endswith(".txt") and f != "classes.txt" and os.path.splitext(relative)[0] not in stems:
                orphans.add(os.path.join(label_root, relative))
    return orphans


def _check_entries(data: Dict, key: str, kind: str, problems: _Problems, fields: Dict[str, tuple]) -> Dict[Any, int]:
    """Check the entries of the list ``data[key]`` of a COCO json (``kind`` names one entry): each
    is an object with a unique integer ``id`` and the ``fields`` (``name: (test, expected)``).

    Returns:
        ``{id: position}`` of the well-formed entries.
    """
    positions: Dict[Any, int] = {}
    for index, entry in enumerate(data.get(key, [])):
        if not isinstance(entry, dict):
            problems.add(f"{key}[{index}]: expected a json object, got {entry!r}")
            continue
        entry_id = entry.get("id")
        where = f"{kind} id {entry_id}" if _is_int(entry_id) else f"{key}[{index}]"
        well_formed = _is_int(entry_id)
        if not well_formed:
            problems.field(where, "id", "an integer", entry)
        elif entry_id in positions:
            well_formed = False
            # Two images with one id would give one of them the other's annotations.
            problems.add(f"{kind} id {entry_id} is used twice ({key}[{positions[entry_id]}] and {key}[{index}]): "
                         f"{kind} ids must be unique")
        for name, (test, expected) in fields.items():
            if not test(entry.get(name)):
                well_formed = False
                problems.field(where, name, expected, entry)
        if well_formed:
            positions[entry_id] = index
    return positions


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_size(value: Any) -> bool:
    """A positive integer (a float with an integer value too, as some converters write them)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0 and float(value).is_integer()


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _is_box(value: Any) -> bool:
    """Four numbers; whether they are finite and make a box with an area is for
    :func:`~dfine.data.datasets.remove_degenerate_boxes` to decide (it drops and counts them)."""
    return (
        isinstance(value, (list, tuple, np.ndarray))
        and len(value) == 4
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    )
