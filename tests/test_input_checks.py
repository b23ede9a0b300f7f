"""Every input a user can get wrong is checked where it enters (issue 24): each fault through the
entry point a user calls (train_net.py, the data set loader, the predictor and the tools), which
either stops before training with a message naming the culprit, or trains and logs what it dropped.

| fault                                        | entry point                | result                                   |
|----------------------------------------------|----------------------------|------------------------------------------|
| COCO json cut in the middle                  | train_net                  | stops: file, line, column, "cut short"   |
| two images with the same id                  | train_net                  | stops: the id and both positions         |
| annotation whose image_id is in no image     | train_net                  | trains; dropped, counted, with examples  |
| bbox of three numbers                        | train_net                  | stops: annotation id, image id, 'bbox'   |
| missing / mistyped image and annotation keys | loader                     | stops: the id and the field              |
| duplicate annotation or category ids         | loader                     | stops: the id                            |
| json that is not an object, not UTF-8        | loader                     | stops: the file                          |
| zero-size or non-finite box                  | loader                     | dropped, counted, with examples          |
| YOLO label file without an image             | loader                     | dropped, counted, with examples          |
| YOLO label file that is not text, bad yaml   | loader                     | stops: the file                          |
| loader dicts: bbox, bbox_mode, duplicate ids | loader                     | stops: the image, annotation and field   |
| total_batch_size=four (and other types)      | train_net (a subprocess)   | stops: key, value, expected type         |
| batch 0 / not divisible, lr < 0, epochs 0    | train_net                  | stops: the key and its domain            |
| text file as train.init_checkpoint           | train_net                  | stops: the path, "a text file"           |
| empty, folder, truncated, damaged, ONNX,     | train_net --eval-only      | stops: the path and what it looks like   |
| safetensors, LFS pointer, HTML, missing      |                            |                                          |
| --resume: last_checkpoint unreadable         | train_net --resume         | warns naming both, resumes from an older |
| --resume: nothing readable / nothing at all  | train_net --resume         | stops / warns that it starts over        |
| bad image path, checkpoint, config, override | Predictor, demo, export,   | the same error and message everywhere    |
|                                              | convert_official           |                                          |

The valid inputs next to these faults (configs with their defaults, interpolations, LazyCall nodes
replaced by an override, fractional epochs) are accepted.
"""
import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from omegaconf import OmegaConf

from dfine.checkpoint import CheckpointFileError
from dfine.config import ConfigError, check_training_values, load_config
from dfine.data import DatasetError, load_dataset_dicts, register_coco_dataset, register_yolo_dataset
from dfine.data.toy_shapes import toy_shapes_paths
from dfine.engine import Predictor
from test_configs import CONFIGS
from test_train_net import ROOT, TINY_MODEL, _args, _metrics, train_net

TOY_CONFIG = str(ROOT / "configs" / "quickstart" / "rtdetrv2_r18_toy.py")


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo, export_onnx, convert_official = _tool("demo"), _tool("export_onnx"), _tool("convert_official")


def _toy_json(tiny_coco):
    """The tiny train split's json content and image folder."""
    json_file, image_root = toy_shapes_paths(tiny_coco.root, "train")
    return json.loads(Path(json_file).read_text()), image_root


def _register_json(name, path, content, image_root):
    """Write ``content`` (a json-able object, or text as it is) to ``path`` and register it as ``name``."""
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    register_coco_dataset(name, str(path), image_root)
    return str(path)


def _assert_not_trained(output_dir):
    """Nothing was trained: no checkpoint and no metrics in ``output_dir`` (the metrics writer may
    have created its empty file)."""
    written = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    assert not [f for f in written if f.endswith(".pth")], written
    assert "metrics.json" not in written or _metrics(output_dir) == []


# ---------------------------------------------------------------------------------------------
# The table, through train_net


def test_json_cut_in_the_middle_names_the_file_and_position(tiny_coco, tmp_path):
    data, image_root = _toy_json(tiny_coco)
    text = json.dumps(data)
    json_file = _register_json("inputs_cut_json", tmp_path / "cut.json", text[: len(text) // 2], image_root)
    out = tmp_path / "run"
    with pytest.raises(DatasetError) as err:
        train_net.main(_args(tiny_coco, out, "dataloader.train.dataset.names=inputs_cut_json"))
    message = str(err.value)
    assert f"{json_file} is not valid json" in message
    assert re.search(r": line 1, column \d+ \(character \d+\), near '", message)
    assert "it was probably cut short" in message
    _assert_not_trained(out)


def test_two_images_with_the_same_id_stop_the_run(tiny_coco, tmp_path):
    data, image_root = _toy_json(tiny_coco)
    data["images"][1]["id"] = data["images"][0]["id"]
    json_file = _register_json("inputs_duplicate_image_id", tmp_path / "dup.json", data, image_root)
    out = tmp_path / "run"
    with pytest.raises(DatasetError) as err:
        train_net.main(_args(tiny_coco, out, "dataloader.train.dataset.names=inputs_duplicate_image_id"))
    image_id = data["images"][0]["id"]
    assert f"Dataset 'inputs_duplicate_image_id' (file {json_file})" in str(err.value)
    assert f"image id {image_id} is used twice (images[0] and images[1])" in str(err.value)
    _assert_not_trained(out)


@pytest.mark.slow
@pytest.mark.e2e
def test_annotation_of_no_image_is_dropped_and_logged(tiny_coco, tmp_path, dfine_log):
    data, image_root = _toy_json(tiny_coco)
    orphan = dict(data["annotations"][0], id=9999, image_id=777)
    data["annotations"].append(orphan)
    _register_json("inputs_orphan_annotation", tmp_path / "orphan.json", data, image_root)
    out = tmp_path / "run"
    train_net.main(_args(tiny_coco, out, "dataloader.train.dataset.names=inputs_orphan_annotation",
                         "train.max_iter=2", "train.eval_period=0"))
    assert ("Dropped 1 annotations whose image_id is in no image (e.g. annotation id 9999 with image_id 777)."
            in dfine_log.text)
    assert f"'inputs_orphan_annotation': {len(data['images'])} images" in dfine_log.text
    losses = [m["total_loss"] for m in _metrics(out) if "total_loss" in m]
    assert losses and all(math.isfinite(v) for v in losses)


def test_bbox_of_three_numbers_names_the_annotation(tiny_coco, tmp_path):
    data, image_root = _toy_json(tiny_coco)
    ann = data["annotations"][2]
    ann["bbox"] = ann["bbox"][:3]
    _register_json("inputs_three_number_bbox", tmp_path / "bbox3.json", data, image_root)
    out = tmp_path / "run"
    with pytest.raises(DatasetError) as err:
        train_net.main(_args(tiny_coco, out, "dataloader.train.dataset.names=inputs_three_number_bbox"))
    assert (f"annotation id {ann['id']} (image id {ann['image_id']}), field 'bbox': expected [x, y, width, height], "
            f"four numbers, got {ann['bbox']!r}") in str(err.value)
    _assert_not_trained(out)


@pytest.mark.slow
@pytest.mark.e2e
def test_total_batch_size_four_stops_train_net_with_the_key(tiny_coco, tmp_path):
    """The issue's command line, as a user runs it: a process that exits with the key, the value and
    the expected type, before it builds anything."""
    out = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "train_net.py"), "--config-file", TOY_CONFIG, f"train.output_dir={out}",
            "train.device=cpu", "dataloader.train.total_batch_size=four"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "dfine.config.ConfigError" in result.stderr
    assert ("'dataloader.train.total_batch_size=four': expected int (the type of build_train_loader's argument "
            "total_batch_size), got str 'four'") in result.stderr
    assert not out.exists()


def test_text_file_as_init_checkpoint_names_the_file(tiny_coco, tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("weights are in the cloud\n")
    out = tmp_path / "run"
    with pytest.raises(CheckpointFileError) as err:
        train_net.main(_args(tiny_coco, out, f"train.init_checkpoint={text}"))
    assert str(err.value) == (f"Checkpoint {text} is not a checkpoint but a text file that starts with "
                              "'weights are in the cloud'.")
    _assert_not_trained(out)


# ---------------------------------------------------------------------------------------------
# Data sets: COCO json files, through the loader


def _image_without_file_name(d):
    del d["images"][0]["file_name"]
    return [f"image id {d['images'][0]['id']}, field 'file_name': expected a file name (text), got nothing"]


def _height_as_text(d):
    d["images"][0]["height"] = "64"
    return [f"image id {d['images'][0]['id']}, field 'height': expected a positive integer, got '64'"]


def _zero_width(d):
    d["images"][3]["width"] = 0
    return [f"image id {d['images'][3]['id']}, field 'width': expected a positive integer, got 0"]


def _image_id_as_text(d):
    d["images"][2]["id"] = "3"
    return ["images[2], field 'id': expected an integer, got '3'"]


def _annotation_id_twice(d):
    d["annotations"][1]["id"] = d["annotations"][0]["id"]
    return [f"annotation id {d['annotations'][0]['id']} is used twice (annotations[0] and annotations[1])"]


def _annotation_without_id(d):
    del d["annotations"][4]["id"]
    return ["annotations[4], field 'id': expected an integer, got nothing"]


def _annotation_without_category(d):
    del d["annotations"][0]["category_id"]
    return [f"annotation id {d['annotations'][0]['id']}, field 'category_id': expected an integer, got nothing"]


def _bbox_with_text(d):
    ann = d["annotations"][0]
    ann["bbox"] = [1, 2, "3", 4]
    return [f"annotation id {ann['id']} (image id {ann['image_id']}), field 'bbox'", "got [1, 2, '3', 4]"]


def _iscrowd_2(d):
    ann = d["annotations"][0]
    ann["iscrowd"] = 2
    return [f"annotation id {ann['id']} (image id {ann['image_id']}), field 'iscrowd': expected 0 or 1, got 2"]


def _category_id_twice(d):
    d["categories"][1]["id"] = d["categories"][0]["id"]
    return [f"category id {d['categories'][0]['id']} is used twice (categories[0] and categories[1])"]


def _no_images_list(d):
    del d["images"]
    return ["the top level, field 'images': expected a list, got nothing"]


# Each changes the json content and returns the parts of the message that names the change.
JSON_FAULTS = {f.__name__.strip("_"): f for f in (
    _image_without_file_name, _height_as_text, _zero_width, _image_id_as_text, _annotation_id_twice,
    _annotation_without_id, _annotation_without_category, _bbox_with_text, _iscrowd_2, _category_id_twice,
    _no_images_list,
)}


@pytest.mark.parametrize("fault", sorted(JSON_FAULTS))
def test_coco_json_schema_faults_name_the_entry_and_field(tiny_coco, tmp_path, fault):
    data, image_root = _toy_json(tiny_coco)
    parts = JSON_FAULTS[fault](data)
    name = f"inputs_json_{fault}"
    json_file = _register_json(name, tmp_path / "bad.json", data, image_root)
    with pytest.raises(DatasetError) as err:
        load_dataset_dicts(name)
    assert f"Dataset '{name}' (file {json_file}): " in str(err.value)
    for part in parts:
        assert part in str(err.value)


def test_several_json_faults_are_listed_together(tiny_coco, tmp_path):
    data, image_root = _toy_json(tiny_coco)
    data["images"][0]["height"] = -1
    data["annotations"][3]["bbox"] = [1, 2]
    json_file = _register_json("inputs_json_two_faults", tmp_path / "two.json", data, image_root)
    with pytest.raises(DatasetError) as err:
        load_dataset_dicts("inputs_json_two_faults")
    assert f"(file {json_file}): 2 problems to fix:\n  image id 1, field 'height'" in str(err.value)
    assert f"\n  annotation id {data['annotations'][3]['id']} (image id" in str(err.value)


def test_json_registered_by_detectron2_is_checked_too(tiny_coco, tmp_path):
    """A data set registered with Detectron2's own register_coco_instances (as coco_2017_train is)."""
    from detectron2.data.datasets import register_coco_instances

    data, image_root = _toy_json(tiny_coco)
    data["images"][5]["id"] = data["images"][2]["id"]
    (tmp_path / "d2.json").write_text(json.dumps(data))
    register_coco_instances("inputs_registered_by_d2", {}, str(tmp_path / "d2.json"), image_root)
    with pytest.raises(DatasetError, match=re.escape(f"image id {data['images'][2]['id']} is used twice (images[2] "
                                                     "and images[5])")):
        load_dataset_dicts("inputs_registered_by_d2")


@pytest.mark.parametrize("content, message", [
    ("[]", "expected a json object with 'images', 'annotations' and 'categories', got a list"),
    (b"{\"images\": \"\xff\"}", "is not a UTF-8 text file (byte 12 is b'\\xff')"),
])
def test_json_that_is_not_a_coco_object_names_the_file(tmp_path, content, message):
    path = tmp_path / "odd.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    name = f"inputs_json_odd_{len(content)}"
    register_coco_dataset(name, str(path), str(tmp_path))
    with pytest.raises(DatasetError, match=re.escape(message)) as err:
        load_dataset_dicts(name)
    assert str(path) in str(err.value)


def test_degenerate_and_non_finite_boxes_are_dropped_with_examples(tiny_coco, tmp_path, dfine_log):
    data, image_root = _toy_json(tiny_coco)
    data["annotations"][0]["bbox"] = [5, 5, 0, 10]
    data["annotations"][1]["bbox"] = [float("nan"), 5, 10, 10]  # json.dumps writes NaN, which json reads
    _register_json("inputs_degenerate_json", tmp_path / "degenerate.json", data, image_root)
    dicts = load_dataset_dicts("inputs_degenerate_json")
    assert sum(len(d["annotations"]) for d in dicts) == len(data["annotations"]) - 2
    first, second = data["annotations"][:2]
    assert (f"after removing 2 degenerate boxes (not finite, or no area inside the image; e.g. annotation id "
            f"{first['id']} of image_id {first['image_id']}: bbox [5, 5, 0, 10]; annotation id {second['id']} of "
            f"image_id {second['image_id']}: bbox [nan, 5, 10, 10])") in dfine_log.text
    assert any(r.levelno == logging.WARNING and "inputs_degenerate_json" in r.getMessage() for r in dfine_log.records)


def test_valid_json_with_any_ids_loads_without_drops(tiny_coco, tmp_path, dfine_log):
    """Ids need not start at 1, be contiguous or sorted; nothing valid is dropped or refused."""
    data, image_root = _toy_json(tiny_coco)
    image_ids = {image["id"]: 1000 - 7 * i for i, image in enumerate(data["images"])}
    for image in data["images"]:
        image["id"] = image_ids[image["id"]]
    for i, ann in enumerate(data["annotations"]):
        ann.update(id=50_000 + 3 * i, image_id=image_ids[ann["image_id"]])
    _register_json("inputs_any_ids", tmp_path / "ids.json", data, image_root)
    dicts = load_dataset_dicts("inputs_any_ids")
    assert sorted(d["image_id"] for d in dicts) == sorted(image_ids.values())
    assert sum(len(d["annotations"]) for d in dicts) == len(data["annotations"])
    assert "Dropped" not in dfine_log.text and "after removing 0 degenerate boxes" in dfine_log.text


# ---------------------------------------------------------------------------------------------
# Data sets: YOLO folders and the dicts of any registered loader, through the loader


def _yolo_folder(root, labels):
    """A YOLO folder with one 40x30 image per entry of ``labels`` (file stem -> label text)."""
    for stem, text in labels.items():
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (90, 120, 150)).save(root / "images" / f"{stem}.png")
        (root / "labels" / f"{stem}.txt").write_bytes(text if isinstance(text, bytes) else text.encode())
    (root / "classes.txt").write_text("cat\ndog\n")


def test_yolo_label_file_without_an_image_is_dropped_and_logged(tmp_path, dfine_log):
    _yolo_folder(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "labels" / "gone.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    register_yolo_dataset("inputs_yolo_orphan_label", str(tmp_path))
    dicts = load_dataset_dicts("inputs_yolo_orphan_label")
    assert len(dicts) == 1 and len(dicts[0]["annotations"]) == 1
    assert (f"Dropped 1 label files without an image (their boxes are not loaded) (e.g. "
            f"{tmp_path / 'labels' / 'gone.txt'}).") in dfine_log.text


def test_yolo_label_file_that_is_not_text_names_the_file(tmp_path):
    _yolo_folder(tmp_path, {"a": b"\x89PNG\r\n\x1a\n\x00\x00"})
    register_yolo_dataset("inputs_yolo_binary_label", str(tmp_path))
    with pytest.raises(DatasetError, match=re.escape(f"Label file '{tmp_path / 'labels' / 'a.txt'}' is not text")):
        load_dataset_dicts("inputs_yolo_binary_label")


def test_yolo_yaml_that_does_not_parse_names_the_file(tmp_path):
    _yolo_folder(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    (tmp_path / "classes.txt").unlink()
    (tmp_path / "data.yaml").write_text("names: [cat, dog\n")
    register_yolo_dataset("inputs_yolo_bad_yaml", str(tmp_path))
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'data.yaml'} is not valid YAML")):
        load_dataset_dicts("inputs_yolo_bad_yaml")


def _custom_records(tmp_path):
    image = str(tmp_path / "a.png")
    Image.new("RGB", (40, 30)).save(image)
    return [{"file_name": image, "image_id": i, "height": 30, "width": 40, "annotations": [
        {"bbox": [1, 2, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}]} for i in (1, 2)]


def _set_bbox3(records):
    records[1]["annotations"][0]["bbox"] = [1, 2, 10]


def _set_relative(records):
    records[0]["annotations"][0]["bbox_mode"] = BoxMode.XYXY_REL


def _set_same_ids(records):
    records[1]["image_id"] = 1


def _set_height(records):
    records[1]["height"] = -30


DICT_FAULTS = {
    "bbox of three numbers": (_set_bbox3, "annotation #0 of image '{image}' (image_id=2), field 'bbox': expected four "
                                          "numbers, got [1, 2, 10]"),
    "relative bbox_mode": (_set_relative, "annotation #0 of image '{image}' (image_id=1), field 'bbox_mode': expected "
                                          "BoxMode.XYXY_ABS or BoxMode.XYWH_ABS"),
    "two dicts with one image_id": (_set_same_ids, "image_id 1 is both '{image}' and '{image}': image ids must be "
                                                   "unique"),
    "negative height": (_set_height, "image '{image}' (image_id=2), field 'height': expected a positive integer, "
                                     "got -30"),
}


@pytest.mark.parametrize("fault", sorted(DICT_FAULTS))
def test_dicts_of_a_registered_loader_are_checked(tmp_path, fault):
    change, message = DICT_FAULTS[fault]
    records = _custom_records(tmp_path)
    change(records)
    name = "inputs_dicts_" + re.sub(r"\W", "_", fault)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=["thing"])
    with pytest.raises(DatasetError) as err:
        load_dataset_dicts(name)
    assert f"Dataset '{name}': " + message.format(image=records[0]["file_name"]) in str(err.value)


# ---------------------------------------------------------------------------------------------
# Override types and value domains, through train_net


# Each override with the parts of its message. The model's keys are checked against the value in the
# config or the decoder's annotation, whichever the model code offers: their messages say the type.
OVERRIDE_FAULTS = {
    "dataloader.train.total_batch_size=null": ["expected int (the type of build_train_loader's argument "
                                               "total_batch_size), got None"],
    "train.output_dir=2024": ["expected str, like the config's value '{out}', got int 2024 (quote it to pass it as "
                              "text: train.output_dir='\"2024\"')"],
    "train.amp.enabled=1": ["expected bool, like the config's value True, got int 1"],
    "model.decoder.num_layers=2.5": ["expected int", "got float 2.5"],
    "model.decoder.query_selection.eval_spatial_size=64": ["expected a list", "got int 64"],
    "dataloader.train.multi_scale=[a,b]": ["expected a list of int or None (the type of build_train_loader's "
                                           "argument multi_scale), got list ['a', 'b']"],
    # None in the config: the type comes from the signature of the code that takes it.
    "dataloader.train.multi_scale_stop_epoch=soon": ["expected int or None (the type of build_train_loader's "
                                                     "argument multi_scale_stop_epoch), got str 'soon'"],
    # The expected type depends on torch's annotation of AdamW(lr), which changes between versions.
    "optimizer.lr=fast": ["got str 'fast'"],
}


@pytest.mark.parametrize("override", sorted(OVERRIDE_FAULTS))
def test_override_of_the_wrong_type_names_key_value_and_type(tiny_coco, tmp_path, override):
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        train_net.main(_args(tiny_coco, out, override))
    line = next(line for line in str(err.value).splitlines() if line.strip().startswith(f"'{override}': expected"))
    for part in OVERRIDE_FAULTS[override]:
        assert part.format(out=out) in line
    assert not out.exists(), "nothing is set up before the overrides are checked"


DOMAIN_FAULTS = {
    "dataloader.train.total_batch_size=0": "must be a positive integer divisible by the number of processes (1)",
    "optimizer.lr=-0.001": "must be a finite number, not negative",
    "optimizer.weight_decay=-0.0001": "must be a finite number, not negative",
    "optimizer.params.rules.no_decay.weight_decay=-1.0": "must be a finite number, not negative",
    "train.max_iter=0": "must be a positive integer (or set train.epochs)",
    "train.epochs=0": "must be a positive number, or null",
    "train.checkpointer.period=0": "must be a positive integer",
}


@pytest.mark.parametrize("override", sorted(DOMAIN_FAULTS))
def test_value_outside_its_domain_names_the_key(tiny_coco, tmp_path, override):
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        train_net.main(_args(tiny_coco, out, override))
    key, value = override.split("=")
    assert f"{key}={float(value) if '.' in value else int(value)!r}: {DOMAIN_FAULTS[override]}" in str(err.value)
    _assert_not_trained(out)


def test_batch_size_not_divisible_by_the_processes(tiny_coco, tmp_path, monkeypatch):
    monkeypatch.setattr(train_net.comm, "get_world_size", lambda: 2)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=re.escape("dataloader.train.total_batch_size=3: must be a positive integer "
                                                    "divisible by the number of processes (2)")):
        train_net.main(_args(tiny_coco, out, "dataloader.train.total_batch_size=3"))
    _assert_not_trained(out)


def test_config_file_that_does_not_load_names_the_file_and_line(tiny_coco, tmp_path):
    config = tmp_path / "my_config.py"
    config.write_text(f"from detectron2.config import LazyConfig\n_base = LazyConfig.load({TOY_CONFIG!r})\nx = (\n")
    with pytest.raises(ConfigError, match=re.escape(f"Config file {config} cannot be loaded: SyntaxError (line 3): ")):
        train_net.main(train_net.default_argument_parser().parse_args(["--config-file", str(config)]))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_passes_the_checks_with_its_defaults(name):
    cfg = load_config(str(ROOT / "configs" / name))
    check_training_values(cfg, world_size=1)


@pytest.mark.parametrize(
    "config, override, key, value",
    [
        (
            "quickstart/rtdetrv2_r18_toy.py",
            "model.decoder.num_classes=${model.num_top_queries}",
            "model.decoder.num_classes",
            100,
        ),  # an interpolation as the value
        (
            "quickstart/rtdetrv2_r18_toy.py",
            "model.criterion.num_classes=3",
            "model.criterion.num_classes",
            3,
        ),  # replaces one
        (
            "quickstart/rtdetrv2_r18_toy.py",
            "dataloader.train.dataset=toy_shapes_val",
            "dataloader.train.dataset",
            "toy_shapes_val",
        ),  # a LazyCall node replaced by a value its function takes
        ("quickstart/rtdetrv2_r18_toy.py", "optimizer.lr=1", "optimizer.lr", 1),  # an int for a float
        ("quickstart/rtdetrv2_r18_toy.py", "train.epochs=null", "train.epochs", None),
        (
            "quickstart/rtdetrv2_r18_toy.py",
            "dataloader.train.multi_scale_stop_epoch=3",
            "dataloader.train.multi_scale_stop_epoch",
            3,
        ),  # None in the config, int in the signature
        ("deim_rtdetrv2_r50.py", "train.epochs=0.5", "train.epochs", 0.5),  # a fraction of the config's 60 epochs
        ("deim_rtdetrv2_r50.py", "dataloader.train.mapper.policy_epoch=6", "dataloader.train.mapper.policy_epoch", 6),
        ("deim_rtdetrv2_r50.py", "model.criterion.losses=[vfl,boxes]", "model.criterion.losses", ["vfl", "boxes"]),
        ("deim_rtdetrv2_r50.py", "dataloader.train.mixup_prob=0.25", "dataloader.train.mixup_prob", 0.25),
        ("deimv2_dinov3_s.py", "dataloader.train.copy_blend=null", "dataloader.train.copy_blend", None),
        (
            "quickstart/rtdetrv2_r18_toy.py",
            "dataloader.train.dataset.names=[a,b]",
            "dataloader.train.dataset.names",
            ["a", "b"],
        ),
    ],
)
def test_valid_overrides_are_accepted(config, override, key, value):
    cfg = load_config(str(ROOT / "configs" / config), [override])
    got = OmegaConf.select(cfg, key)
    assert (OmegaConf.to_container(got) if OmegaConf.is_config(got) else got) == value


# ---------------------------------------------------------------------------------------------
# Checkpoint files, through train_net


def _saved_checkpoint(path):
    """A real (small) checkpoint file at ``path``."""
    torch.save({"model": {"w": torch.arange(1000.0)}, "iteration": 3}, path)
    return path


def _damage_entry(path, entry):
    """Overwrite the local header of one entry of a zip checkpoint (a bit flip in a copy)."""
    with zipfile.ZipFile(path) as archive:
        offset = next(i.header_offset for i in archive.infolist() if i.filename.endswith(entry))
    data = bytearray(path.read_bytes())
    data[offset: offset + 4] = b"\0\0\0\0"
    path.write_bytes(bytes(data))


def _onnx_model(path):
    onnx = pytest.importorskip("onnx")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(path))


def _safetensors(path):
    """A safetensors file as the format defines it: an 8-byte little-endian header size, the JSON
    header, then the raw tensor bytes."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + np.zeros(2, np.float32).tobytes())


def _make(kind, folder):
    """A file (or folder) of the given kind at ``folder/<kind>.pth``."""
    path = folder / f"{kind}.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "truncated":
        data = _saved_checkpoint(path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "damaged":
        _damage_entry(_saved_checkpoint(path), "byteorder")
    elif kind == "onnx":
        _onnx_model(path)
    elif kind == "safetensors":
        _safetensors(path)
    elif kind == "lfs_pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 12345\n")
    elif kind == "html":
        path.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    elif kind == "last_checkpoint_tag":
        path.write_text("model_0000004.pth")
    elif kind == "numpy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    return path


CHECKPOINT_FAULTS = {
    "missing": "does not exist.",
    "empty": "is an empty file (0 bytes)",
    "folder": "is a folder, not a checkpoint file.",
    "truncated": "is cut short or damaged: a zip archive (torch.save's format)",
    "damaged": "cannot be read: it looks like a PyTorch checkpoint (zip archive), but loading it failed",
    "onnx": "is not a checkpoint but an ONNX model (protobuf)",
    "safetensors": "is not a checkpoint but a safetensors file",
    "lfs_pointer": "is not a checkpoint but a Git LFS pointer",
    "html": "is not a checkpoint but an HTML page (a failed download?)",
    "last_checkpoint_tag": "is not a checkpoint but a text file naming 'model_0000004.pth', like a last_checkpoint "
                           "file",
    "numpy": "is not a checkpoint but a NumPy array file (.npy)",
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_FAULTS))
def test_unreadable_checkpoint_is_refused_with_its_path_and_kind(tiny_coco, tmp_path, kind):
    path = _make(kind, tmp_path)
    with pytest.raises(CheckpointFileError) as err:
        train_net.main(_args(tiny_coco, tmp_path / "eval", f"train.init_checkpoint={path}", eval_only=True))
    assert str(err.value).startswith(f"Checkpoint {path} {CHECKPOINT_FAULTS[kind]}")


@pytest.mark.slow
@pytest.mark.e2e
def test_resume_falls_back_to_the_newest_readable_checkpoint(tiny_coco, tmp_path, dfine_log):
    out = tmp_path / "run"
    train_net.main(_args(tiny_coco, out, "train.eval_period=0"))  # checkpoints after iterations 4 and 9
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    final = out / "model_final.pth"
    for broken in (final, out / "model_0000009.pth"):  # the newest files, cut short by a failed copy
        broken.write_bytes(broken.read_bytes()[:1000])
    # Resumed at iteration 5 from model_0000004.pth, it writes a complete model_final.pth again.
    train_net.main(_args(tiny_coco, out, "train.eval_period=0", resume=True))
    assert (f"--resume: {out / 'last_checkpoint'} names {final}, which cannot be read (is cut short or damaged"
            in dfine_log.text)
    assert f"resuming from the newest readable checkpoint {out / 'model_0000004.pth'} instead." in dfine_log.text
    resumed = torch.load(final, map_location="cpu", weights_only=True)
    assert resumed["iteration"] == 9 and resumed["ema"]["updates"] == 10

    # last_checkpoint naming a file that is gone, and every other checkpoint unreadable: a stop.
    (out / "last_checkpoint").write_text("model_0000099.pth")
    for checkpoint in out.glob("*.pth"):
        checkpoint.write_bytes(b"")
    with pytest.raises(CheckpointFileError) as err:
        train_net.main(_args(tiny_coco, out, "train.eval_period=0", resume=True))
    message = str(err.value)
    assert message.startswith(f"Checkpoint {out / 'model_0000099.pth'} named by {out / 'last_checkpoint'} cannot "
                              f"be resumed from (does not exist), and no other checkpoint in {out} is readable")
    assert f"{out / 'model_0000004.pth'} is an empty file" in message and "Drop --resume" in message


@pytest.mark.slow
@pytest.mark.e2e
def test_resume_without_a_checkpoint_says_it_starts_over(tiny_coco, tmp_path, dfine_log):
    out = tmp_path / "fresh"
    train_net.main(_args(tiny_coco, out, "train.max_iter=1", "train.eval_period=0", resume=True))
    assert (f"--resume: {out} has no last_checkpoint file, so there is nothing to resume; the training starts "
            "from the beginning") in dfine_log.text
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == 0


def test_resume_reads_a_damaged_checkpoint_as_unreadable(tmp_path, dfine_log):
    """A flipped byte inside a tensor passes torch.load unnoticed; --resume verifies the data
    (CRC of every entry) before it trusts a checkpoint."""
    from dfine.checkpoint import find_resume_checkpoint

    older = _saved_checkpoint(tmp_path / "model_0000004.pth")
    newer = _saved_checkpoint(tmp_path / "model_final.pth")
    os.utime(older, (1, 1))
    with zipfile.ZipFile(newer) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data/0"))
    data = bytearray(newer.read_bytes())
    data[info.header_offset + 200] ^= 0xFF  # inside the tensor bytes
    newer.write_bytes(bytes(data))
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    assert find_resume_checkpoint(str(tmp_path)) == str(older)
    assert f"which cannot be read (is damaged: its entry {info.filename} fails the CRC check)" in dfine_log.text


# ---------------------------------------------------------------------------------------------
# The predictor and the tools: one error per fault, the same everywhere


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    """A checkpoint of the tiny model and an image."""
    root = tmp_path_factory.mktemp("inputs_tools")
    cfg = LazyConfig.apply_overrides(LazyConfig.load(TOY_CONFIG), TINY_MODEL)
    torch.save({"model": instantiate(cfg.model).state_dict()}, root / "model.pth")
    Image.new("RGB", (64, 48), (10, 200, 30)).save(root / "image.png")
    return root


def _errors_of_every_tool(tiny_assets, tmp_path, config=TOY_CONFIG, weights=None, image=None, overrides=(),
                          convert=True):
    """The exception each of the predictor, demo.py, export_onnx.py and (unless not ``convert``)
    convert_official.py raises for the same inputs; convert_official exits with the message."""
    weights = str(weights or tiny_assets / "model.pth")
    image = str(image or tiny_assets / "image.png")
    tiny = [*TINY_MODEL, "dataloader.test.mapper.image_size=64", *overrides]
    runs = {
        "Predictor": lambda: Predictor(config, weights, overrides=tiny, device="cpu")(image),
        "demo": lambda: demo.main(["--config-file", config, "--weights", weights, "--input", image,
                                   "--output", str(tmp_path / "demo"), "--device", "cpu", *tiny]),
        "export_onnx": lambda: export_onnx.main(["--config-file", config, "--weights", weights, "--check-image",
                                                 image, "--output", str(tmp_path / "m.onnx"), *tiny]),
        "convert_official": lambda: convert_official.main(["--config-file", config, weights,
                                                           str(tmp_path / "converted.pth"), *tiny]),
    }
    if not convert:
        del runs["convert_official"]
    errors = {}
    for name, run in runs.items():
        with pytest.raises(BaseException) as err:
            run()
        errors[name] = err.value
    return errors


def test_bad_image_path_gives_one_error(tiny_assets, tmp_path):
    missing = tmp_path / "no_such_image.jpg"
    errors = _errors_of_every_tool(tiny_assets, tmp_path, image=missing, convert=False)  # convert takes no image
    for name, error in errors.items():
        assert isinstance(error, FileNotFoundError), name
        assert str(error) == f"Image file '{missing}' does not exist.", name


def test_unreadable_checkpoint_gives_one_error(tiny_assets, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("todo: train the model\n")
    expected = f"Checkpoint {text} is not a checkpoint but a text file that starts with 'todo: train the model'."
    errors = _errors_of_every_tool(tiny_assets, tmp_path, weights=text)
    converted = errors.pop("convert_official")
    assert isinstance(converted, SystemExit) and converted.code == expected  # the tool's way to stop
    for name, error in errors.items():
        assert isinstance(error, CheckpointFileError), name
        assert str(error) == expected, name


@pytest.mark.parametrize("config, override, message", [
    ("configs/no_such_config.py", None, "Config file configs/no_such_config.py does not exist."),
    (TOY_CONFIG, "model.decoder.num_layers=many", "'model.decoder.num_layers=many': expected int"),
    (TOY_CONFIG, "model.decoder.num_layer=3", "model.decoder.num_layer: "),
])
def test_bad_config_or_override_gives_one_error(tiny_assets, tmp_path, config, override, message):
    errors = _errors_of_every_tool(tiny_assets, tmp_path, config=config, overrides=[override] if override else [])
    messages = {name: str(error) for name, error in errors.items()}
    assert all(isinstance(error, ConfigError) for error in errors.values()), errors
    assert len(set(messages.values())) == 1, messages
    assert message in messages["Predictor"]
