"""The bad-input matrix: one test per row, each asserting a clear error that names the file, the
annotation or the key, or the documented handling (decoded correctly, sanitised and counted,
background). None of these inputs may crash deep inside the model or silently change results.

| row                                 | handling                                                      |
|-------------------------------------|---------------------------------------------------------------|
| missing image file                  | FileNotFoundError naming the file                             |
| truncated or corrupt JPEG           | OSError naming the file                                       |
| grayscale image                     | decoded to (H, W, 3) uint8, the gray value in every channel  |
| RGBA image                          | decoded to its RGB channels, alpha dropped                    |
| 16-bit PNG                          | decoded to the high byte (v >> 8), not clipped                |
| EXIF rotation                       | applied (detectron2's convention); a dict with the stored     |
|                                     | size is a ValueError naming the file                          |
| box with zero or negative size      | removed at loading and counted in the log; the mapper drops   |
|                                     | and counts what reaches it                                    |
| box outside the image               | removed and counted; partly outside: counted, clipped         |
| category id out of range            | ValueError naming the data set, annotation and image          |
| image with no annotations           | background image: empty instances, finite losses              |
| empty data set                      | ValueError naming the data set and its file                   |
| checkpoint of another architecture  | CheckpointMismatchError / exit listing the differences        |
| config with an unknown key          | ValueError naming the key (dfine.config.load_config) |
"""
import io
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from dfine.checkpoint import CheckpointMismatchError, load_ema_or_model_weights, load_finetune_weights
from dfine.config import load_config
from dfine.data import DetrDatasetMapper, build_train_loader, load_dataset_dicts, register_coco_dataset
from dfine.data.mapper import read_rgb_image
from test_train_net import ROOT, TINY_MODEL, train_net

TOY_CONFIG = str(ROOT / "configs/quickstart/rtdetrv2_r18_toy.py")
EXIF_ORIENTATION = 0x0112


def _tiny_model(*overrides):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(TOY_CONFIG), TINY_MODEL + list(overrides))
    torch.manual_seed(0)
    return instantiate(cfg.model)


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_model().train()


def _record(path, height, width, annotations=()):
    return {"file_name": str(path), "image_id": 1, "height": height, "width": width, "annotations": [
        {"bbox": list(bbox), "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0} for bbox in annotations
    ]}


def _train_losses(model, record):
    """The training losses of ``model`` on ``record`` mapped at 64x64 without augmentations."""
    sample = DetrDatasetMapper(True, image_size=64, augmentations=[])(record)
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
    losses = model([sample])
    assert losses and all(torch.isfinite(v) for v in losses.values())
    return sample, losses


def _register(name, records, thing_classes=("thing",)):
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(thing_classes=list(thing_classes))


def test_missing_image_file(tmp_path):
    missing = tmp_path / "missing.jpg"
    for is_train in (True, False):
        with pytest.raises(FileNotFoundError, match=re.escape(f"'{missing}' does not exist")):
            DetrDatasetMapper(is_train, image_size=8, augmentations=[])(_record(missing, 8, 8))
    # Loading checks the first image, which catches a wrong image folder before training starts.
    _register("bad_inputs_missing_image", [_record(missing, 8, 8)])
    with pytest.raises(FileNotFoundError, match=re.escape(f"Dataset 'bad_inputs_missing_image': image '{missing}'")):
        load_dataset_dicts("bad_inputs_missing_image")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_truncated_or_corrupt_jpeg(tmp_path, damage):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    path = tmp_path / f"{damage}.jpg"
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff\xd8 not a jpeg")
    with pytest.raises(OSError, match=re.escape(f"Cannot decode image file '{path}'")):
        DetrDatasetMapper(True, image_size=8, augmentations=[])(_record(path, 64, 64))


def test_grayscale_image(tmp_path, tiny_model):
    gray = np.arange(64 * 64).reshape(64, 64).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    image = read_rgb_image(str(tmp_path / "gray.png"))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image == gray[:, :, None]).all()
    sample, _ = _train_losses(tiny_model, _record(tmp_path / "gray.png", 64, 64, [(8, 8, 20, 20)]))
    assert torch.equal(sample["image"], torch.from_numpy(gray).expand(3, 64, 64))


def test_rgba_image(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (12, 10, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the colours are kept, not blended with anything
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = read_rgb_image(str(tmp_path / "rgba.png"))
    assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    assert (image == rgba[..., :3]).all()


def test_16bit_png(tmp_path, tiny_model):
    # Every 16-bit level 0..65535 step 16; PIL's own conversion would make all but the first 16 white.
    levels = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    path = tmp_path / "depth16.png"
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode.startswith("I"), "the file must really be a 16-bit PNG"
    image = read_rgb_image(str(path))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image == (levels >> 8).astype(np.uint8)[:, :, None]).all()
    assert image.min() == 0 and image.max() == 255 and len(np.unique(image)) == 256
    _train_losses(tiny_model, _record(path, 64, 64, [(8, 8, 20, 20)]))


def test_exif_rotation(tmp_path):
    # Stored 40 wide x 20 high with a white block at the left end; orientation 6 means "rotate 90
    # degrees clockwise to display", so the displayed image is 20 wide x 40 high, block at the top.
    stored = np.full((20, 40, 3), 60, np.uint8)
    stored[4:16, 2:12] = 255
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    image = read_rgb_image(str(path))
    assert image.shape == (40, 20, 3)
    bright = np.argwhere(image.min(axis=2) > 160)
    (y1, x1), (y2, x2) = bright.min(axis=0), bright.max(axis=0) + 1
    assert abs(x1 - 4) <= 1 and abs(x2 - 16) <= 1 and abs(y1 - 2) <= 1 and abs(y2 - 12) <= 1

    # Annotations in the displayed frame, as detectron2 expects them: the box lands on the block.
    out = DetrDatasetMapper(True, image_size=(40, 20), augmentations=[])(_record(path, 40, 20, [(4, 2, 12, 10)]))
    torch.testing.assert_close(out["instances"].gt_boxes.tensor, torch.tensor([[4.0, 2.0, 16.0, 12.0]]))
    # A dict with the stored (unrotated) size does not silently get boxes in the wrong frame.
    mismatch = f"Image '{path}' has size (h, w)=(40, 20) but its dataset dict says (20, 40)"
    with pytest.raises(ValueError, match=re.escape(mismatch)):
        DetrDatasetMapper(True, image_size=8, augmentations=[])(_record(path, 20, 40, [(2, 4, 10, 12)]))


def _box_record(image, annotations):
    return {"file_name": image, "image_id": 1, "height": 30, "width": 40, "annotations": [
        {"id": i + 1, "bbox": list(bbox), "bbox_mode": mode, "category_id": 0, "iscrowd": 0}
        for i, (bbox, mode) in enumerate(annotations)
    ]}


def test_box_with_zero_or_negative_size(tmp_path, dfine_log):
    image = str(tmp_path / "a.png")
    Image.new("RGB", (40, 30), (90, 120, 150)).save(image)
    annotations = [
        ([5, 5, 10, 10], BoxMode.XYWH_ABS),  # kept
        ([5, 5, 0, 10], BoxMode.XYWH_ABS),  # zero width
        ([5, 5, 10, -3], BoxMode.XYWH_ABS),  # negative height
        ([20, 20, 10, 5], BoxMode.XYXY_ABS),  # x2 < x1 and y2 < y1
    ]
    record = _box_record(image, annotations)
    _register("bad_inputs_degenerate", [record])
    dicts = load_dataset_dicts("bad_inputs_degenerate")
    assert [a["id"] for a in dicts[0]["annotations"]] == [1]
    assert "1 boxes, after removing 3 degenerate boxes" in dfine_log.text
    # Dicts that bypass load_dataset_dicts: the mapper drops the boxes and counts them.
    out = DetrDatasetMapper(True, image_size=32, augmentations=[])(record)
    assert len(out["instances"]) == 1 and out["num_dropped_boxes"] == 3


def test_box_outside_image(tmp_path, dfine_log):
    image = str(tmp_path / "a.png")
    Image.new("RGB", (40, 30), (90, 120, 150)).save(image)
    annotations = [
        ([50, 5, 10, 10], BoxMode.XYWH_ABS),  # right of the image
        ([-20, -20, 10, 10], BoxMode.XYWH_ABS),  # above and left of it
        ([30, 20, 20, 20], BoxMode.XYWH_ABS),  # partly outside: kept, clipped to (30, 20, 40, 30)
    ]
    record = _box_record(image, annotations)
    _register("bad_inputs_outside", [record])
    dicts = load_dataset_dicts("bad_inputs_outside")
    assert [a["id"] for a in dicts[0]["annotations"]] == [3]
    assert "1 boxes, after removing 2 degenerate boxes" in dfine_log.text
    assert "1 boxes extend beyond the image and are clipped" in dfine_log.text
    out = DetrDatasetMapper(True, image_size=(30, 40), augmentations=[])(record)
    torch.testing.assert_close(out["instances"].gt_boxes.tensor, torch.tensor([[30.0, 20.0, 40.0, 30.0]]))
    assert out["num_dropped_boxes"] == 2


def test_category_id_out_of_range(tmp_path, write_coco_json):
    # A json annotation whose category is not among the json's categories.
    images = [{"id": 5, "file_name": "a.jpg", "width": 8, "height": 8}]
    annotations = [{"image_id": 5, "category_id": 3, "bbox": [0, 0, 2, 2]},
                   {"image_id": 5, "category_id": 80, "bbox": [1, 1, 2, 2]}]
    json_file = write_coco_json(tmp_path / "bad.json", images, annotations, [{"id": 3, "name": "a"}])
    register_coco_dataset("bad_inputs_unknown_category", json_file, str(tmp_path))
    with pytest.raises(ValueError) as err:
        load_dataset_dicts("bad_inputs_unknown_category")
    for part in ("bad_inputs_unknown_category", json_file, "annotation id 2", "'a.jpg'", "category_id=80"):
        assert part in str(err.value)

    # A registered loader with contiguous ids beyond its thing_classes.
    record = _box_record(str(tmp_path / "b.jpg"), [([0, 0, 2, 2], BoxMode.XYWH_ABS)] * 2)
    record["annotations"][1]["category_id"] = 2
    _register("bad_inputs_contiguous_out_of_range", [record], thing_classes=["a", "b"])
    with pytest.raises(ValueError) as err:
        load_dataset_dicts("bad_inputs_contiguous_out_of_range")
    for part in ("bad_inputs_contiguous_out_of_range", "annotation #1, annotation id 2", "b.jpg", "category_id=2",
                 "[0, 2)"):
        assert part in str(err.value)


def test_image_with_no_annotations(tmp_path, dfine_log, tiny_model):
    path = tmp_path / "background.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    _register("bad_inputs_background", [_record(path, 48, 64)])
    dicts = load_dataset_dicts("bad_inputs_background")
    assert len(dicts) == 1
    assert "1 images, 1 of them without annotations (kept as background images" in dfine_log.text
    sample, losses = _train_losses(tiny_model, dicts[0])
    assert len(sample["instances"]) == 0 and sample["instances"].gt_boxes.tensor.shape == (0, 4)
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in tiny_model.parameters() if p.grad is not None)
    tiny_model.zero_grad(set_to_none=True)


def test_empty_data_set(tmp_path, write_coco_json):
    json_file = write_coco_json(tmp_path / "empty.json", [], [], [{"id": 1, "name": "a"}])
    register_coco_dataset("bad_inputs_empty", json_file, str(tmp_path))
    mapper = DetrDatasetMapper(True, image_size=32)
    named = re.escape(f"Dataset 'bad_inputs_empty' (json_file='{json_file}'")
    with pytest.raises(ValueError, match=named + ".* has no images"):
        build_train_loader("bad_inputs_empty", mapper, total_batch_size=2, num_workers=0)
    # A data set whose every image filter_empty removes.
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    _register("bad_inputs_all_background", [_record(tmp_path / "a.png", 8, 8)])
    with pytest.raises(ValueError, match=r"No images left in \['bad_inputs_all_background'\]: filter_empty=True"):
        load_dataset_dicts("bad_inputs_all_background", filter_empty=True)


@pytest.mark.parametrize("entry", [
    "convert_official",
    "train.init_checkpoint",
    "eval_only",
])
def test_checkpoint_of_another_architecture(tmp_path, entry):
    # A 2-layer decoder of hidden size 32 saved; the model to load it into has 3 layers.
    source = _tiny_model()
    DetectionCheckpointer(source, str(tmp_path)).save("other")
    path = str(tmp_path / "other.pth")
    overrides = ["model.decoder.num_layers=3"]
    if entry == "convert_official":
        sys.path.insert(0, str(ROOT / "tools"))
        import convert_official

        with pytest.raises(SystemExit, match=r"(?s)does not fit .*rtdetrv2_r18_toy.py.*key\(s\) missing in the "
                                             r"checkpoint:\n    decoder\.decoder\.layers\.2\."):
            convert_official.main(["--config-file", TOY_CONFIG, path, str(tmp_path / "out.pth"), *TINY_MODEL,
                                   *overrides])
        return
    model = _tiny_model(*overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if entry == "train.init_checkpoint":
        listed = f"(?s){re.escape(path)}.*missing in the checkpoint:\n    decoder.decoder.layers.2."
        with pytest.raises(CheckpointMismatchError, match=listed):
            load_finetune_weights(model, path)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "nothing is loaded"
        return
    try:
        load_ema_or_model_weights(model, path)
    except CheckpointMismatchError as e:
        assert path in str(e) and "decoder.decoder.layers.2." in str(e)
    else:
        raise AssertionError("a checkpoint of another architecture was loaded for evaluation")


def test_config_with_unknown_key(tmp_path):
    # Overrides: an argument the decoder does not take, a misspelt node, a misspelt plain key.
    with pytest.raises(ValueError) as err:
        load_config(TOY_CONFIG, ["model.decoder.not_a_key=1", "model.decodr.hidden_dim=8",
                                           "train.max_iters=5", "model.decoder.hidden_dim=32"])
    message = str(err.value)
    assert "model.decoder.not_a_key: dfine.modeling.decoder.decoder.DetrDecoder takes no argument " \
           "'not_a_key'" in message
    assert "model.decodr: dfine.modeling.meta_arch.RealTimeDETR takes no argument 'decodr'" in message
    assert "'train.max_iters=5': 'train' has no key 'max_iters'" in message
    assert "hidden_dim=32" not in message
    # A default argument the config does not list may be set.
    cfg = load_config(
        TOY_CONFIG, ["dataloader.evaluator.output_dir=eval_out", "model.decoder.query_selection.eps=0.01"]
    )
    assert cfg.dataloader.evaluator.output_dir == "eval_out" and cfg.model.decoder.query_selection.eps == 0.01

    # An unknown key in a config file, and train_net stops before it builds anything.
    config = tmp_path / "typo.py"
    config.write_text(
        "from detectron2.config import LazyConfig\n"
        f"_base = LazyConfig.load({TOY_CONFIG!r})\n"
        "model, dataloader, optimizer, lr_multiplier, train = (\n"
        "    _base.model, _base.dataloader, _base.optimizer, _base.lr_multiplier, _base.train)\n"
        "model.encoder.hiden_dim = 32\n"
    )
    args = train_net.default_argument_parser().parse_args(["--config-file", str(config), "train.device=cpu"])
    named = f"(?s){re.escape(str(config))}.*model.encoder.hiden_dim: .* takes no argument 'hiden_dim'"
    with pytest.raises(ValueError, match=named):
        train_net.main(args)
