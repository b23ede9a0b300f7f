"""Custom data sets: a COCO json with arbitrary category ids, YOLO folders, background images and
degenerate boxes, through dataset loading and train_net end to end."""
import json
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from dfine.data import export_yolo_dataset, load_dataset_dicts, register_coco_dataset, register_yolo_dataset
from dfine.data.mapper import read_rgb_image
from dfine.data.toy_shapes import toy_shapes_paths
from dfine.data.yolo import image_size, read_class_names
from test_train_net import ROOT, TINY_MODEL, _args, _metrics, train_net

# Toy-shape categories 1, 2, 3 renumbered to the ids of a custom data set; the other three are dropped.
TOY_TO_CUSTOM_ID = {1: 42, 2: 3, 3: 7}


def _custom_ids_json(tiny_coco, split, path, write_coco_json):
    """The tiny toy split as a json whose categories have the ids {3, 7, 42}, listed unsorted."""
    json_file, _ = toy_shapes_paths(tiny_coco.root, split)
    data = json.loads(open(json_file).read())
    names = {c["id"]: c["name"] for c in data["categories"]}
    annotations = [
        {"image_id": a["image_id"], "category_id": TOY_TO_CUSTOM_ID[a["category_id"]], "bbox": a["bbox"]}
        for a in data["annotations"]
        if a["category_id"] in TOY_TO_CUSTOM_ID
    ]
    categories = [{"id": new, "name": names[old]} for old, new in TOY_TO_CUSTOM_ID.items()]
    return write_coco_json(path, data["images"], annotations, categories)


def test_coco_ids_3_7_42_train_evaluate_and_map_back(tiny_coco, tmp_path, write_coco_json, dfine_log):
    for split in ("train", "val"):
        json_file = _custom_ids_json(tiny_coco, split, tmp_path / f"{split}.json", write_coco_json)
        register_coco_dataset(f"ids_3_7_42_{split}", json_file, toy_shapes_paths(tiny_coco.root, split)[1])
    out = tmp_path / "run"
    train_net.main(_args(
        tiny_coco, str(out), "model.decoder.num_classes=3", "dataloader.train.dataset.names=ids_3_7_42_train",
        "dataloader.test.dataset.names=ids_3_7_42_val", "train.max_iter=2", "train.eval_period=2",
        f"dataloader.evaluator.output_dir={out / 'eval'}",
    ))
    train_meta = MetadataCatalog.get("ids_3_7_42_train")
    assert train_meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 42: 2}
    assert train_meta.thing_classes == ["tall_ellipse", "small_square", "wide_rectangle"]
    assert "id 3 -> class 0 (tall_ellipse), id 7 -> class 1 (small_square), id 42 -> class 2 (wide_rectangle)" in (
        dfine_log.text
    )
    metrics = _metrics(out)
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses and all(math.isfinite(v) for v in losses)
    assert any("bbox/AP" in m for m in metrics)
    detections = json.loads((out / "eval" / "coco_instances_results.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= {3, 7, 42}


def test_unknown_category_id_names_file_annotation_and_image(tmp_path, write_coco_json):
    images = [{"id": i, "file_name": f"{name}.jpg", "width": 8, "height": 8} for i, name in ((5, "a"), (6, "b"))]
    annotations = [{"image_id": 5, "category_id": 3, "bbox": [0, 0, 2, 2]},
                   {"image_id": 6, "category_id": 8, "bbox": [0, 0, 2, 2]}]
    categories = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    json_file = write_coco_json(tmp_path / "bad.json", images, annotations, categories)
    register_coco_dataset("custom_unknown_id", json_file, str(tmp_path))
    with pytest.raises(ValueError) as err:
        load_dataset_dicts("custom_unknown_id")
    message = str(err.value)
    for part in ("custom_unknown_id", json_file, "annotation id 2", "image id 6", "'b.jpg'", "category_id=8", "[3, 7]"):
        assert part in message


def _write_image(path, size=(40, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


def test_degenerate_boxes_are_removed_and_counted(tmp_path, dfine_log):
    image = str(tmp_path / "a.png")
    _write_image(image)  # 40 x 30

    def ann(bbox, mode=BoxMode.XYWH_ABS, **extra):
        return {"bbox": bbox, "bbox_mode": mode, "category_id": 0, **extra}

    records = [
        {"file_name": image, "image_id": 1, "height": 30, "width": 40, "annotations": [
            ann([5, 5, 10, 10]),  # kept
            ann([30, 20, 20, 20]),  # kept, extends beyond the image
            ann([5, 5, 0, 10]),  # zero width
            ann([20, 20, 10, 5], BoxMode.XYXY_ABS),  # negative width and height
            ann([50, 5, 10, 10]),  # outside the image
            ann([float("nan"), 5, 10, 10]),  # not finite
            ann([5, 5, 0, 0], iscrowd=1),  # crowd regions are the mapper's to drop
        ]},
        {"file_name": image, "image_id": 2, "height": 30, "width": 40, "annotations": [ann([0, 30, 10, 10])]},
        {"file_name": image, "image_id": 3, "height": 30, "width": 40, "annotations": []},
    ]
    DatasetCatalog.register("custom_degenerate", lambda: records)
    MetadataCatalog.get("custom_degenerate").set(thing_classes=["thing"])
    dicts = load_dataset_dicts("custom_degenerate")
    assert [len(d["annotations"]) for d in dicts] == [3, 0, 0]
    assert len(records[0]["annotations"]) == 7, "the registered dicts are not modified"
    assert ("'custom_degenerate': 3 images, 2 of them without annotations (kept as background images unless "
            "filter_empty=True); 2 boxes, after removing 5 degenerate boxes") in dfine_log.text
    assert "1 boxes extend beyond the image" in dfine_log.text
    assert [d["image_id"] for d in load_dataset_dicts("custom_degenerate", filter_empty=True)] == [1]


def test_background_only_batch_gives_finite_losses_and_gradients():
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(ROOT / "configs/quickstart/rtdetrv2_r18_toy.py")), TINY_MODEL)
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    batch = []
    for _ in range(2):
        instances = Instances((64, 64))
        instances.gt_boxes = Boxes(torch.zeros(0, 4))
        instances.gt_classes = torch.zeros(0, dtype=torch.int64)
        batch.append({"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), "instances": instances})
    losses = model(batch)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_yolo_folder_round_trip_trains_and_evaluates(tiny_coco, tmp_path, dfine_log):
    root = tmp_path / "yolo"
    for split in ("train", "val"):
        export_yolo_dataset(f"tiny_coco_{split}", str(root), split)
    # A missing and an empty label file both mean a background image.
    label_files = sorted((root / "labels" / "train").iterdir())
    label_files[0].unlink()
    label_files[1].write_text("")
    for split in ("train", "val"):
        register_yolo_dataset(f"yolo_{split}", str(root), split)
    register_yolo_dataset("yolo_train", str(root), "train")  # again with the same folders: a no-op

    coco = load_dataset_dicts("tiny_coco_train")
    yolo = load_dataset_dicts("yolo_train")
    assert MetadataCatalog.get("yolo_train").thing_classes == tiny_coco.thing_classes
    assert [os.path.basename(d["file_name"]) for d in yolo] == [os.path.basename(d["file_name"]) for d in coco]
    assert [len(d["annotations"]) for d in yolo[:2]] == [0, 0]
    for y, c in zip(yolo[2:], coco[2:]):
        assert (y["height"], y["width"]) == (c["height"], c["width"])
        assert [a["category_id"] for a in y["annotations"]] == [a["category_id"] for a in c["annotations"]]
        for a, b in zip(y["annotations"], c["annotations"]):
            assert a["bbox_mode"] == BoxMode.XYXY_ABS
            expected = BoxMode.convert(b["bbox"], b["bbox_mode"], BoxMode.XYXY_ABS)
            np.testing.assert_allclose(a["bbox"], expected, atol=1e-3)
    assert "1 of them have no label file" in dfine_log.text

    out = tmp_path / "run"
    train_net.main(_args(
        tiny_coco, str(out), "dataloader.train.dataset.names=yolo_train", "dataloader.test.dataset.names=yolo_val",
        "train.max_iter=2", "train.eval_period=2", f"dataloader.evaluator.output_dir={out / 'eval'}",
    ))
    metrics = _metrics(out)
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses and all(math.isfinite(v) for v in losses)
    assert any("bbox/AP" in m for m in metrics)


@pytest.mark.parametrize("line, error", [
    ("6 0.5 0.5 0.2 0.2", "line 2: class id '6' is not one of the 6 class ids 0..5"),
    ("1.5 0.5 0.5 0.2 0.2", "line 2: class id '1.5'"),
    ("1 0.5 0.5 0.2", "line 2: expected 'class cx cy w h'"),
    ("1 0.5 0.5 0.2 x", "line 2: expected 'class cx cy w h'"),
])
def test_yolo_label_errors_name_file_and_line(tmp_path, line, error):
    _write_image(str(tmp_path / "images" / "sub" / "a.jpg"))
    label_file = tmp_path / "labels" / "sub" / "a.txt"
    label_file.parent.mkdir(parents=True)
    label_file.write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    name = f"yolo_bad_{tmp_path.name}"
    register_yolo_dataset(name, str(tmp_path), class_names=[str(i) for i in range(6)])
    with pytest.raises(ValueError, match=re.escape(f"{label_file}', {error}")):
        load_dataset_dicts(name)


def test_yolo_polygon_labels_class_names_and_missing_folders(tmp_path):
    _write_image(str(tmp_path / "images" / "a.png"), size=(40, 20))
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.25 0.5 0.75 0.25 0.5 1.0\n")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images\nnames:\n  0: cat\n  1: dog\n")
    register_yolo_dataset("yolo_polygon", str(tmp_path))
    (record,) = load_dataset_dicts("yolo_polygon")
    assert record["annotations"][0]["bbox"] == [10.0, 5.0, 30.0, 20.0]
    assert MetadataCatalog.get("yolo_polygon").thing_classes == ["cat", "dog"]

    (tmp_path / "names.txt").write_text("cat\n\ndog\n")
    assert read_class_names(str(tmp_path / "names.txt")) == ["cat", "dog"]
    register_yolo_dataset("yolo_no_labels", str(tmp_path), split="val", class_names=["cat"])
    with pytest.raises(FileNotFoundError, match="YOLO image folder .*val' does not exist"):
        load_dataset_dicts("yolo_no_labels")
    with pytest.raises(ValueError, match="already registered"):
        register_yolo_dataset("yolo_polygon", str(tmp_path), split="train")


def test_yolo_image_size_follows_exif_orientation(tmp_path):
    path = str(tmp_path / "rotated.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    Image.new("RGB", (40, 20), (10, 20, 30)).save(path, exif=exif)
    assert image_size(path) == (20, 40)
    assert read_rgb_image(path).shape[:2] == (40, 20)
