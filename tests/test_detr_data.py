"""DETR/DINO data pipeline: aspect-ratio-keeping resizes, random size crop, flip, the mapper without a
fixed size, and the coco_detr data config.

Golden values: ``tests/golden/detr_transforms_golden.json``, written by
tools/golden/make_detr_transforms_golden.py (its docstring says how and what each field is) with the
official DINO code (IDEA-Research/DINO, commit in the file) on the inputs of
``golden.detr_inputs``: the official ``get_size_with_aspect_ratio`` on a grid of sizes, the official
``crop`` on fixed boxes and regions, and the official training and validation transforms
(``make_coco_transforms`` with ``config/DINO/coco_transformer.py``, without ``Normalize``) after
``random.seed(s)`` and ``torch.manual_seed(s)``. The pipeline draws from the same generators in the
same order, so the seeded samples are compared exactly: output size, kept labels, float32 boxes,
the SHA-256 of the pixels (PIL bilinear on both sides, Pillow of the same version) and the next draw
of both generators.
"""
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import LazyConfig, instantiate
from detectron2.data import transforms as T
from detectron2.structures import BoxMode, ImageList

from dfine.data import DetrDatasetMapper, detr_test_augmentations, detr_train_augmentations
from dfine.data.mapper import annotations_to_arrays
from dfine.data.transforms import (
    DetrCropTransform,
    DetrRandomFlip,
    DetrRandomResize,
    RandomSelect,
    RandomSizeCrop,
    detr_resize_shape,
    valid_boxes,
)
from dfine.modeling.meta_arch import RealTimeDETR
from golden import detr_inputs

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((Path(__file__).parent / "golden" / "detr_transforms_golden.json").read_text())
CONFIG = ROOT / "configs" / "common" / "data" / "coco_detr.py"


def _sha256(image_chw: torch.Tensor) -> str:
    return hashlib.sha256(image_chw.permute(1, 2, 0).contiguous().numpy().tobytes()).hexdigest()


def _record(tmp_path, height, width):
    """The golden pipeline image written as PNG, and its dataset dict (XYWH boxes, as COCO's)."""
    path = str(tmp_path / f"pipeline_{height}x{width}.png")
    Image.fromarray(detr_inputs.pipeline_image(height, width)).save(path)
    annotations = [dict(a, bbox_mode=BoxMode.XYWH_ABS) for a in detr_inputs.pipeline_annotations(height, width)]
    return {"file_name": path, "height": height, "width": width, "image_id": 0, "annotations": annotations}


# ---------------------------------------------------------------------------------------------
# Geometry against the official functions


def test_output_size_rule_matches_official():
    grid = detr_inputs.size_grid()
    assert len(GOLDEN["sizes"]) == len(grid) == 3888
    got = [list(detr_resize_shape(h, w, s, m)) for h, w, s, m in grid]
    mismatches = [(case, g, e) for case, g, e in zip(grid, got, GOLDEN["sizes"]) if g != e]
    assert not mismatches, mismatches[:10]
    # Why not Detectron2's ResizeShortestEdge: it rounds the longer side half up (and scales by
    # max_size / longer under the cap), the official truncates.
    assert T.ResizeShortestEdge.get_output_shape(480, 640, 800, 1333) == (800, 1067)
    assert detr_resize_shape(480, 640, 800, 1333) == (800, 1066)
    # The official cap can leave the longer side a pixel or two above max_size: kept as it is.
    assert detr_resize_shape(200, 1000, 800, 1333) == (267, 1335)


def test_crop_box_rule_matches_official():
    height, width = detr_inputs.CROP_IMAGE_SHAPE
    image = np.arange(height * width * 3, dtype=np.uint32).astype(np.uint8).reshape(height, width, 3)
    for case in GOLDEN["crops"]:
        top, left, crop_h, crop_w = case["region"]
        crop = DetrCropTransform(left, top, crop_w, crop_h, orig_w=width, orig_h=height)
        out = crop.apply_box(detr_inputs.CROP_BOXES)
        keep = valid_boxes(out, 0, 0)
        assert np.flatnonzero(keep).tolist() == case["labels"], case["region"]
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out[keep], np.array(case["boxes"], np.float32).reshape(-1, 4))
        assert (out[~keep] == 0).all()  # collapsed to the zero box, which every later step keeps empty
        np.testing.assert_array_equal(crop.apply_image(image), image[top:top + crop_h, left:left + crop_w])


@pytest.mark.parametrize("shape", detr_inputs.PIPELINE_SHAPES)
def test_seeded_train_pipeline_matches_official(tmp_path, shape):
    """The mapper with the DINO augmentation gives the official samples, seed for seed."""
    record = _record(tmp_path, *shape)
    mapper = DetrDatasetMapper(True, image_size=None, augmentations=detr_train_augmentations(),
                               min_box_size=0, min_box_area=0)
    runs = [r for r in GOLDEN["train"] if tuple(r["shape"]) == shape]
    assert len(runs) == len(detr_inputs.PIPELINE_SEEDS)
    for run in runs:
        random.seed(run["seed"])
        torch.manual_seed(run["seed"])
        out = mapper(record)
        seed = run["seed"]
        assert list(out["image"].shape) == [3, *run["size"]], seed
        assert out["instances"].image_size == tuple(run["size"])
        assert out["instances"].gt_classes.tolist() == run["labels"], seed
        expected = torch.tensor(run["boxes"], dtype=torch.float32).reshape(-1, 4)
        assert torch.equal(out["instances"].gt_boxes.tensor, expected), seed
        assert _sha256(out["image"]) == run["image_sha256"], seed
        assert random.random() == run["next_random"] and float(torch.rand(1)) == run["next_torch"], seed


@pytest.mark.parametrize("run", GOLDEN["val"], ids=lambda r: "x".join(map(str, r["shape"])))
def test_val_resize_matches_official(tmp_path, run):
    height, width = run["shape"]
    record = _record(tmp_path, height, width)
    mapper = DetrDatasetMapper(False, image_size=None, augmentations=detr_test_augmentations())
    state = random.getstate()
    out = mapper(record)
    assert random.getstate() == state  # one size: nothing drawn (evaluation leaves the trainer's RNG alone)
    assert list(out["image"].shape) == [3, *run["size"]] and (out["height"], out["width"]) == (height, width)
    assert out["image"].dtype == torch.uint8 and _sha256(out["image"]) == run["image_sha256"]
    # The boxes of the same resize, as the training mapper would carry them.
    boxes, classes = annotations_to_arrays(record["annotations"], height, width)
    aug_input = T.AugInput(np.asarray(Image.open(record["file_name"])), boxes=boxes)
    T.AugmentationList(detr_test_augmentations())(aug_input)
    keep = valid_boxes(aug_input.boxes, 0, 0)
    assert classes[keep].tolist() == run["labels"]
    np.testing.assert_array_equal(aug_input.boxes[keep], np.array(run["boxes"], np.float32))


def test_defaults_are_the_official_config():
    config = GOLDEN["config"]
    flip, select = detr_train_augmentations()
    assert isinstance(flip, DetrRandomFlip) and flip.prob == 0.5
    assert isinstance(select, RandomSelect) and select.p == 0.5
    (resize,) = select.first.augs
    crop_resize, crop, resize_again = select.second.augs
    assert resize.sizes == resize_again.sizes == config["data_aug_scales"]
    assert resize.max_size == resize_again.max_size == config["data_aug_max_size"]
    assert crop_resize.sizes == config["data_aug_scales2_resize"] and crop_resize.max_size is None
    assert isinstance(crop, RandomSizeCrop) and [crop.min_size, crop.max_size] == config["data_aug_scales2_crop"]
    (val,) = detr_test_augmentations()
    assert val.sizes == [max(config["data_aug_scales"])] and val.max_size == config["data_aug_max_size"]


# ---------------------------------------------------------------------------------------------
# Our own properties


def test_flip_and_resize_round_trip_boxes():
    random.seed(0)
    boxes = np.array([[10.25, 20.5, 130.75, 90.0], [0, 0, 160, 120], [150, 3.5, 159.75, 7.25]], np.float32)
    image = np.zeros((120, 160, 3), np.uint8)
    for _ in range(5):
        aug_input = T.AugInput(image, boxes=boxes.copy())
        tfms = T.AugmentationList([DetrRandomResize([48, 200, 333], max_size=500), DetrRandomFlip(prob=1.0)])(aug_input)
        h, w = aug_input.image.shape[:2]
        assert (h, w) == detr_resize_shape(120, 160, min(h, w), 500)
        scale = np.array([w / 160, h / 120] * 2, np.float32)
        scaled = boxes * scale
        # The flip is the official one: x -> W - x with the corners swapped, exactly.
        np.testing.assert_array_equal(aug_input.boxes, np.stack(
            [w - scaled[:, 2], scaled[:, 1], w - scaled[:, 0], scaled[:, 3]], axis=1))
        np.testing.assert_allclose(tfms.inverse().apply_box(aug_input.boxes), boxes, rtol=0, atol=1e-4)


def test_random_size_crop_needs_an_image_of_min_size():
    with pytest.raises(ValueError, match="smaller than min_size"):
        RandomSizeCrop(384, 600).get_transform(np.zeros((300, 900, 3), np.uint8))
    torch.manual_seed(0)
    random.seed(0)
    crop = RandomSizeCrop(20, 30).get_transform(np.zeros((25, 100, 3), np.uint8))
    assert 20 <= crop.h <= 25 and 20 <= crop.w <= 30 and crop.y0 + crop.h <= 25 and crop.x0 + crop.w <= 100


def test_mapper_without_image_size(tmp_path):
    """uint8 CHW images of the augmentations' size, boxes inside them and on the object."""
    height, width = 72, 96
    image = np.full((height, width, 3), 100, np.uint8)
    image[20:50, 30:70] = 255
    path = str(tmp_path / "rect.png")
    Image.fromarray(image).save(path)
    annotation = {"bbox": [30, 20, 40, 30], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3, "iscrowd": 0}
    record = {"file_name": path, "height": height, "width": width, "image_id": 1, "annotations": [annotation]}
    augmentations = detr_train_augmentations(scales=(48, 64), max_size=100, crop_resize_scales=(40,),
                                             crop_size=(24, 36))
    mapper = DetrDatasetMapper(True, image_size=None, augmentations=augmentations, min_box_size=0, min_box_area=0)
    random.seed(0)
    torch.manual_seed(0)
    # Every size the final resize can give: from the image itself or from a crop of it.
    possible = {detr_resize_shape(ih, iw, s, 100) for ih in range(24, 73) for iw in range(24, 97) for s in (48, 64)}
    sizes, kept = set(), 0
    for _ in range(30):
        out = mapper(record)
        img = out["image"]
        h, w = img.shape[-2:]
        sizes.add((h, w))
        assert img.dtype == torch.uint8 and img.shape[0] == 3 and out["instances"].image_size == (h, w)
        assert (h, w) in possible
        boxes = out["instances"].gt_boxes.tensor
        assert len(boxes) + out["num_dropped_boxes"] == 1
        if len(boxes):
            kept += 1
            assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes >= 0).all()
            assert (boxes[:, 0::2] <= w + 1e-3).all() and (boxes[:, 1::2] <= h + 1e-3).all()
            bright = torch.nonzero(img.min(dim=0).values > 177, as_tuple=True)
            found = torch.tensor([bright[1].min(), bright[0].min(), bright[1].max() + 1, bright[0].max() + 1])
            assert (found - boxes[0]).abs().max() <= 1.0
    assert len(sizes) > 3 and kept >= 20

    inference = DetrDatasetMapper(False, image_size=None, augmentations=[DetrRandomResize([48], max_size=100)])
    out = inference(record)
    assert out["image"].shape == (3, 48, 64) and (out["height"], out["width"]) == (72, 96)


def test_official_keep_rule_needs_min_box_size_zero(tmp_path):
    """A 0.5-pixel sliver: the official keeps it; the RT-DETR default of 1 pixel drops it."""
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "black.png")
    annotation = {"bbox": [10, 10, 0.5, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}
    record = {"file_name": str(tmp_path / "black.png"), "height": 40, "width": 40, "annotations": [annotation]}
    official = DetrDatasetMapper(True, image_size=None, augmentations=[], min_box_size=0, min_box_area=0)
    assert len(official(record)["instances"]) == 1
    assert len(DetrDatasetMapper(True, image_size=None, augmentations=[])(record)["instances"]) == 0


# ---------------------------------------------------------------------------------------------
# The coco_detr data config


def test_coco_detr_config_values():
    cfg = LazyConfig.load(str(CONFIG))
    train, test = cfg.dataloader.train, cfg.dataloader.test
    official = GOLDEN["config"]
    augs = train.mapper.augmentations
    assert list(augs.scales) == official["data_aug_scales"] and augs.max_size == official["data_aug_max_size"]
    assert list(augs.crop_resize_scales) == official["data_aug_scales2_resize"]
    assert list(augs.crop_size) == official["data_aug_scales2_crop"]
    assert train.total_batch_size == 8 * official["batch_size"] and train.multi_scale is None
    assert train.mapper.image_size is None and test.mapper.image_size is None
    assert (train.mapper.min_box_size, train.mapper.min_box_area) == (0, 0)
    assert (test.mapper.augmentations.size, test.mapper.augmentations.max_size) == (800, 1333)
    assert train.dataset.names == "coco_2017_train" and test.dataset.names == "coco_2017_val"


def test_coco_detr_train_loader_gives_batches_of_different_sizes(tiny_coco):
    cfg = LazyConfig.load(str(CONFIG))
    cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names = tiny_coco.train, tiny_coco.val
    cfg.dataloader.train.update(total_batch_size=2, num_workers=0, seed=0)
    cfg.dataloader.test.num_workers = 0
    loader = instantiate(cfg.dataloader.train)
    it = iter(loader)
    mixed = 0
    for _ in range(4):
        batch = next(it)
        shapes = [tuple(s["image"].shape[-2:]) for s in batch]
        mixed += len(set(shapes)) > 1
        for sample, (h, w) in zip(batch, shapes):
            assert sample["image"].dtype == torch.uint8 and sample["instances"].image_size == (h, w)
            boxes = sample["instances"].gt_boxes.tensor
            assert (boxes[:, 0::2] <= w + 1e-3).all() and (boxes[:, 1::2] <= h + 1e-3).all()
        # What the model does with them: pad bottom/right to a common size, and mask the padding.
        images = ImageList.from_tensors([s["image"].float() for s in batch], 32)
        mask = RealTimeDETR.padding_mask(images)
        assert images.tensor.shape[-2] == -(-max(h for h, _ in shapes) // 32) * 32
        if mask is not None:
            for i, (h, w) in enumerate(shapes):
                assert not mask[i, :h, :w].any() and mask[i].sum() == mask.shape[-2] * mask.shape[-1] - h * w
    assert mixed >= 1

    test_batch = next(iter(instantiate(cfg.dataloader.test)))
    assert test_batch[0]["image"].shape == (3, 800, 800) and test_batch[0]["height"] == tiny_coco.image_size
