"""Data side: toy data set, dataset loading checks, RT-DETR augmentations, mapper, epoch-aware loader."""
import filecmp
import json
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from dfine.data import (
    DetrDatasetMapper,
    EpochAwareSampler,
    BatchCollate,
    RandomIoUCrop,
    RandomZoomOut,
    SanitizeBoxes,
    build_test_loader,
    build_train_loader,
    load_dataset_dicts,
    register_coco_dataset,
)
from dfine.data.mapper import annotations_to_arrays, read_rgb_image
from dfine.data.toy_shapes import TOY_SHAPES_CLASSES, prepare_toy_shapes, toy_shapes_paths
from dfine.data.transforms import IoUCropTransform, PhotometricDistortTransform

BACKGROUND, FOREGROUND = 100, 255


def _seed(seed):
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


def _rect_sample(tmp_path, size=(72, 96), box=(30, 20, 70, 50), name="rect.png"):
    """A grey image with a white rectangle covering exactly the XYXY box (pixel edges), and its dict."""
    h, w = size
    image = np.full((h, w, 3), BACKGROUND, np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = FOREGROUND
    path = str(tmp_path / name)
    Image.fromarray(image).save(path)
    record = {
        "file_name": path,
        "height": h,
        "width": w,
        "image_id": 7,
        "annotations": [
            {"bbox": [x1, y1, x2 - x1, y2 - y1], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3, "iscrowd": 0}
        ],
    }
    return image, record


def _bright_box(image_chw):
    """XYXY pixel-edge box of the pixels brighter than the midpoint of background and rectangle."""
    mask = image_chw.min(dim=0).values > (BACKGROUND + FOREGROUND) / 2
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Toy data set and registration


def test_toy_shapes_generation_is_deterministic_and_atomic(tmp_path):
    dirs = [str(tmp_path / name / "toy") for name in ("a", "b")]
    for d in dirs:
        assert prepare_toy_shapes(d, num_train=6, num_val=3, image_size=96, seed=5) == d
        assert os.listdir(os.path.dirname(d)) == ["toy"]  # the temporary folder was renamed
    for split in ("train", "val"):
        (json_a, images_a), (json_b, images_b) = (toy_shapes_paths(d, split) for d in dirs)
        assert filecmp.cmp(json_a, json_b, shallow=False)
        names = sorted(os.listdir(images_a))
        assert names == sorted(os.listdir(images_b)) and len(names) == (6 if split == "train" else 3)
        assert all(filecmp.cmp(os.path.join(images_a, n), os.path.join(images_b, n), shallow=False) for n in names)

    content = json.load(open(toy_shapes_paths(dirs[0], "train")[0]))
    assert [c["id"] for c in content["categories"]] == [1, 2, 3, 4, 5, 6]
    for ann in content["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96
        # object sizes: box sides between 12% and 60% of the image side (rounding allowed)
        assert 0.12 * 96 - 1 <= max(w, h) <= 0.6 * 96 + 1
    # an existing folder is trusted and not regenerated
    mtime = os.path.getmtime(toy_shapes_paths(dirs[0], "train")[0])
    prepare_toy_shapes(dirs[0], num_train=1, num_val=1, image_size=96, seed=5)
    assert os.path.getmtime(toy_shapes_paths(dirs[0], "train")[0]) == mtime


def test_toy_shapes_registered_lazily():
    for split in ("train", "val"):
        name = f"toy_shapes_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(TOY_SHAPES_CLASSES)
        assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(6)}
        assert meta.evaluator_type == "coco"
        assert meta.json_file.endswith(os.path.join("toy_shapes_v1", "annotations", f"instances_{split}.json"))
        assert meta.image_root.endswith(os.path.join("toy_shapes_v1", split))


def test_tiny_coco_loads_with_contiguous_ids(tiny_coco):
    dicts = load_dataset_dicts(tiny_coco.train)
    assert len(dicts) == 8
    assert MetadataCatalog.get(tiny_coco.train).thing_classes == tiny_coco.thing_classes
    ids = {a["category_id"] for d in dicts for a in d["annotations"]}
    assert ids and ids <= set(range(6))


def test_register_coco_dataset_is_idempotent(tmp_path):
    register_coco_dataset("test_data_idem", str(tmp_path / "a.json"), str(tmp_path / "images"))
    register_coco_dataset("test_data_idem", str(tmp_path / "a.json"), str(tmp_path / "images"))
    with pytest.raises(ValueError, match="already registered"):
        register_coco_dataset("test_data_idem", str(tmp_path / "b.json"), str(tmp_path / "images"))


def test_missing_files_error_names_paths_and_env(tmp_path):
    json_file = str(tmp_path / "nowhere" / "instances.json")
    register_coco_dataset("test_data_missing", json_file, str(tmp_path / "nowhere" / "images"))
    with pytest.raises(FileNotFoundError) as err:
        load_dataset_dicts("test_data_missing")
    message = str(err.value)
    assert "DETECTRON2_DATASETS" in message and json_file in message and "test_data_missing" in message


def test_category_id_out_of_range_names_the_annotation():
    # detectron2 0.6 silently skips this check (tried there: category_id=7 with 2 classes loads)
    record = {"file_name": "img_42.jpg", "image_id": 42, "height": 8, "width": 8, "annotations": [
        {"bbox": [0, 0, 4, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
        {"bbox": [1, 1, 4, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 7},
    ]}
    DatasetCatalog.register("test_data_bad_ids", lambda: [record])
    MetadataCatalog.get("test_data_bad_ids").set(thing_classes=["a", "b"])
    with pytest.raises(ValueError) as err:
        load_dataset_dicts("test_data_bad_ids")
    message = str(err.value)
    for part in ("test_data_bad_ids", "img_42.jpg", "annotation #1", "category_id=7", "[0, 2)"):
        assert part in message


def test_unknown_json_category_names_the_dataset(tmp_path, write_coco_json):
    (tmp_path / "images").mkdir()
    json_file = write_coco_json(
        tmp_path / "bad.json",
        images=[{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
        annotations=[{"image_id": 1, "category_id": 9, "bbox": [0, 0, 2, 2]}],
        categories=[{"id": 1, "name": "a"}],
    )
    register_coco_dataset("test_data_unknown_cat", json_file, str(tmp_path / "images"))
    with pytest.raises(ValueError, match="test_data_unknown_cat.*category_id=9"):
        load_dataset_dicts("test_data_unknown_cat")


def test_filter_empty_is_opt_in():
    records = [
        {"file_name": __file__, "image_id": 1, "annotations": []},
        {"file_name": __file__, "image_id": 2, "annotations": [
            {"bbox": [0, 0, 2, 2], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}]},
    ]
    DatasetCatalog.register("test_data_with_empty", lambda: records)
    MetadataCatalog.get("test_data_with_empty").set(thing_classes=["a"])
    assert [d["image_id"] for d in load_dataset_dicts("test_data_with_empty")] == [1, 2]
    assert [d["image_id"] for d in load_dataset_dicts("test_data_with_empty", filter_empty=True)] == [2]


# ---------------------------------------------------------------------------------------------
# Image decoding


def test_grayscale_and_rgba_decode_to_rgb(tmp_path):
    gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    rgba = np.random.default_rng(0).integers(0, 256, (12, 10, 4), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    decoded = read_rgb_image(str(tmp_path / "gray.png"))
    assert decoded.shape == (12, 10, 3) and decoded.dtype == np.uint8
    assert (decoded == gray[..., None]).all()
    assert (read_rgb_image(str(tmp_path / "rgba.png")) == rgba[..., :3]).all()
    out = DetrDatasetMapper(False, image_size=(12, 10))({"file_name": str(tmp_path / "gray.png"), "image_id": 1})
    assert out["image"].shape == (3, 12, 10)


def test_missing_or_corrupt_image_error_names_the_file(tmp_path):
    mapper = DetrDatasetMapper(False, image_size=8)
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        mapper({"file_name": missing, "image_id": 1})
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"definitely not a jpeg")
    with pytest.raises(OSError, match="corrupt.jpg"):
        mapper({"file_name": str(corrupt), "image_id": 1})


# ---------------------------------------------------------------------------------------------
# Mapper


def test_mapper_resize_box_convention(tmp_path):
    image, record = _rect_sample(tmp_path)
    out = DetrDatasetMapper(True, image_size=(48, 64), augmentations=[])(record)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 48, 64)
    assert (out["height"], out["width"], out["image_id"]) == (72, 96, 7)
    instances = out["instances"]
    assert instances.image_size == (48, 64)
    # XYXY absolute in the resized image: x scaled by 64/96, y by 48/72
    expected = torch.tensor([[30 * 64 / 96, 20 * 48 / 72, 70 * 64 / 96, 50 * 48 / 72]])
    torch.testing.assert_close(instances.gt_boxes.tensor, expected)
    assert instances.gt_classes.dtype == torch.int64 and instances.gt_classes.tolist() == [3]
    assert (_bright_box(out["image"]) - expected[0]).abs().max() <= 1.0

    bgr = DetrDatasetMapper(True, image_size=(48, 64), augmentations=[], image_format="BGR")(record)
    assert torch.equal(bgr["image"], out["image"].flip(0))
    inference = DetrDatasetMapper(False, image_size=(48, 64))(record)
    assert "instances" not in inference and torch.equal(inference["image"], out["image"])


def test_horizontal_flip_mirrors_boxes(tmp_path):
    image, record = _rect_sample(tmp_path)
    out = DetrDatasetMapper(True, image_size=(72, 96), augmentations=[T.RandomFlip(prob=1.0)])(record)
    expected = torch.tensor([96 - 70, 20, 96 - 30, 50], dtype=torch.float32)
    torch.testing.assert_close(out["instances"].gt_boxes.tensor[0], expected)
    torch.testing.assert_close(_bright_box(out["image"]), expected)


def test_zoom_out_and_iou_crop_keep_boxes_on_the_object(tmp_path):
    _seed(0)
    _, record = _rect_sample(tmp_path)
    mapper = DetrDatasetMapper(
        True,
        image_size=64,
        augmentations=[RandomZoomOut(p=1.0), RandomIoUCrop(p=1.0), SanitizeBoxes(), T.RandomFlip(prob=0.5)],
    )
    kept = 0
    for _ in range(40):
        out = mapper(record)
        boxes = out["instances"].gt_boxes.tensor
        assert len(boxes) + out["num_dropped_boxes"] == 1
        if len(boxes):
            kept += 1
            # the white pixels and the box agree to within the resize blur
            assert (_bright_box(out["image"]) - boxes[0]).abs().max() <= 1.0
    assert kept >= 20


def test_iou_crop_transform_drops_boxes_whose_centre_leaves():
    crop = IoUCropTransform(10, 20, 50, 40, orig_w=100, orig_h=100)
    boxes = np.array([[0, 30, 30, 50], [0, 30, 18, 50], [40, 30, 70, 70]], np.float32)
    out = crop.apply_box(boxes)
    # centre x 15 -> inside; centre x 9 -> outside (zero box); the last one is clipped to the crop
    np.testing.assert_allclose(out, [[0, 10, 20, 30], [0, 0, 0, 0], [30, 10, 50, 40]])
    _seed(0)
    empty = np.zeros((0, 4), np.float32)
    image = np.zeros((30, 30, 3), np.uint8)
    assert all(isinstance(RandomIoUCrop().get_transform(image, empty), T.NoOpTransform) for _ in range(10))


def test_boxes_stay_inside_after_every_augmentation(tiny_coco):
    _seed(1)
    mapper = DetrDatasetMapper(True, image_size=48)
    for record in load_dataset_dicts(tiny_coco.train):
        for _ in range(4):
            boxes, _ = annotations_to_arrays(record["annotations"], record["height"], record["width"])
            aug_input = T.AugInput(read_rgb_image(record["file_name"]), boxes=boxes)
            for aug in mapper.plan(epoch=0)[1]:
                aug(aug_input)
                h, w = aug_input.image.shape[:2]
                b = aug_input.boxes
                eps = 1e-3  # float32 rounding of the resize, clipped by the final sanitising step
                assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= w + eps).all(), type(aug).__name__
                assert (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= h + eps).all(), type(aug).__name__
            out = mapper(record)
            b = out["instances"].gt_boxes.tensor
            assert (b[:, 2:] - b[:, :2] >= 1).all() and (b >= 0).all() and (b <= 48).all()
            assert len(b) + out["num_dropped_boxes"] == len(record["annotations"])


def test_image_without_annotations_gives_empty_instances(tmp_path):
    _seed(2)
    _, record = _rect_sample(tmp_path)
    record["annotations"] = []
    for _ in range(5):
        out = DetrDatasetMapper(True, image_size=32)(record)
        instances = out["instances"]
        assert len(instances) == 0 and instances.gt_boxes.tensor.shape == (0, 4)
        assert instances.gt_classes.dtype == torch.int64 and out["image"].shape == (3, 32, 32)


def test_policy_skips_ops_from_policy_epoch(tmp_path):
    image, record = _rect_sample(tmp_path)
    zoom = RandomZoomOut(p=1.0, side_range=(2.0, 2.0))
    mapper = DetrDatasetMapper(True, image_size=(72, 96), augmentations=[zoom], policy_epoch=3)
    plain = DetrDatasetMapper(True, image_size=(72, 96), augmentations=[])(record)
    _seed(3)
    zoomed = mapper(record, epoch=2)
    assert (zoomed["image"] == 0).any()  # zoom-out canvas
    for epoch in (3, 10):
        out = mapper(record, epoch=epoch)
        assert torch.equal(out["image"], plain["image"])
        torch.testing.assert_close(out["instances"].gt_boxes.tensor, plain["instances"].gt_boxes.tensor)

    # the default RT-DETR list keeps sanitize and flip (and the resize) once the policy stops
    names = lambda epoch: [type(a).__name__ for a in default.plan(epoch)[1]]  # noqa: E731
    default = DetrDatasetMapper(True, image_size=32, policy_epoch=71)
    assert names(70) == [
        "RandomPhotometricDistort", "RandomZoomOut", "RandomIoUCrop", "SanitizeBoxes", "RandomFlip", "Resize",
        "SanitizeBoxes",
    ]
    assert names(71) == ["SanitizeBoxes", "RandomFlip", "Resize", "SanitizeBoxes"]


def test_photometric_kernels_match_torchvision():
    """Same parameters -> same pixels as torchvision's RandomPhotometricDistort on PIL images, which
    the official pipeline uses (RT2 src/data/transforms/_transforms.py)."""
    tv = pytest.importorskip("torchvision.transforms.v2")
    reference = tv.RandomPhotometricDistort(p=1.0)
    make_params = getattr(reference, "make_params", None) or reference._get_params
    apply = getattr(reference, "transform", None) or reference._transform
    image = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    torch.manual_seed(0)
    for _ in range(10):
        params = make_params([Image.fromarray(image)])
        permutation = params["channel_permutation"]
        ours = PhotometricDistortTransform(
            params["brightness_factor"],
            params["contrast_factor"],
            params["saturation_factor"],
            params["hue_factor"],
            params["contrast_before"],
            None if permutation is None else permutation.tolist(),
        ).apply_image(image)
        np.testing.assert_array_equal(ours, np.asarray(apply(Image.fromarray(image), params)))


# ---------------------------------------------------------------------------------------------
# Sampler, dataset, loaders


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_epochs_and_positions():
    stream = _take(EpochAwareSampler(5, 3, seed=0, rank=0, world_size=1), 15)
    for epoch in range(3):
        chunk = stream[5 * epoch : 5 * epoch + 5]
        assert [e for _, e in chunk] == [epoch] * 5
        assert sorted(i for i, _ in chunk) == list(range(5))
    assert len({tuple(i for i, _ in stream[5 * e : 5 * e + 5]) for e in range(3)}) > 1  # reshuffled
    assert stream == _take(EpochAwareSampler(5, 3, seed=0, rank=0, world_size=1), 15)
    assert stream != _take(EpochAwareSampler(5, 3, seed=1, rank=0, world_size=1), 15)
    assert [i for i, _ in _take(EpochAwareSampler(4, 2, shuffle=False, seed=0, rank=0, world_size=1), 6)] == [
        0, 1, 2, 3, 0, 1
    ]


def test_sampler_ranks_partition_the_global_batch():
    size, total = 7, 6
    single = _take(EpochAwareSampler(size, total, seed=4, rank=0, world_size=1), 10 * total)
    per_rank = [_take(EpochAwareSampler(size, total, seed=4, rank=r, world_size=3), 10 * 2) for r in range(3)]
    merged = [x for it in range(10) for r in range(3) for x in per_rank[r][2 * it : 2 * it + 2]]
    assert merged == single
    with pytest.raises(ValueError, match="multiple of world_size"):
        EpochAwareSampler(size, 5, seed=0, rank=0, world_size=2)


def test_sampler_resume_continues_the_stream():
    for rank, world_size in ((0, 1), (1, 2)):
        full = _take(EpochAwareSampler(9, 4, seed=2, rank=rank, world_size=world_size), 40)
        batch = 4 // world_size
        resumed = EpochAwareSampler(9, 4, seed=2, rank=rank, world_size=world_size)
        resumed.set_start_iter(5)
        assert _take(resumed, 40 - 5 * batch) == full[5 * batch :]


def _echo_mapper(dataset_dict, epoch):
    return {"idx": dataset_dict["idx"], "mapper_epoch": epoch, "worker": torch.utils.data.get_worker_info().id}


def test_epoch_reaches_the_mapper_in_workers():
    dicts = [{"idx": i} for i in range(10)]
    loader = build_train_loader(dicts, _echo_mapper, total_batch_size=4, num_workers=2, seed=3)
    assert len(loader.dataset) == 10
    expected = _take(EpochAwareSampler(10, 4, seed=3, rank=0, world_size=1), 32)
    it = iter(loader)
    got = [sample for _ in range(8) for sample in next(it)]
    assert [(s["idx"], s["mapper_epoch"]) for s in got] == expected
    assert all(s["epoch"] == s["mapper_epoch"] for s in got)
    assert {s["worker"] for s in got} == {0, 1}
    assert max(e for _, e in expected) == 3  # the stream crossed three epoch boundaries


def _collate_sample(epoch):
    image = torch.arange(16 * 16, dtype=torch.uint8).reshape(1, 16, 16).repeat(3, 1, 1)
    instances = Instances((16, 16))
    instances.gt_boxes = Boxes(torch.tensor([[2.0, 4.0, 10.0, 12.0]]))
    instances.gt_classes = torch.tensor([1])
    return {"image": image, "instances": instances, "epoch": epoch}


def test_multi_scale_collate_stops_at_stop_epoch():
    collate = BatchCollate(scales=[32, 48], stop_epoch=2)
    random.seed(0)
    seen = set()
    for _ in range(20):
        batch = collate([_collate_sample(0), _collate_sample(1)])
        size = batch[0]["image"].shape[-1]
        seen.add(size)
        for sample in batch:
            assert sample["image"].shape == (3, size, size)
            # nearest, as the official F.interpolate on the batch
            reference = F.interpolate(_collate_sample(0)["image"][None].float(), size=size)[0]
            assert torch.equal(sample["image"].float(), reference)
            assert sample["instances"].image_size == (size, size)
            torch.testing.assert_close(
                sample["instances"].gt_boxes.tensor, torch.tensor([[2.0, 4.0, 10.0, 12.0]]) * size / 16
            )
            assert sample["instances"].gt_classes.tolist() == [1]
    assert seen == {32, 48}
    # a batch that reaches the stop epoch keeps the mapper's size
    for batch in ([_collate_sample(1), _collate_sample(2)], [_collate_sample(5)]):
        assert all(s["image"].shape == (3, 16, 16) for s in collate(batch))
    assert BatchCollate()([_collate_sample(0)])[0]["image"].shape == (3, 16, 16)


def test_train_and_test_loaders_on_tiny_coco(tiny_coco):
    _seed(5)
    mapper = DetrDatasetMapper(True, image_size=32)
    loader = build_train_loader(tiny_coco.train, mapper, total_batch_size=2, num_workers=0, seed=0,
                                multi_scale=[24, 40], multi_scale_stop_epoch=1)
    assert len(loader.dataset) == 8
    it = iter(loader)
    for step in range(6):  # 4 iterations per epoch: epoch 0 is multi-scale, epoch 1 is not
        batch = next(it)
        assert len(batch) == 2 and len({s["image"].shape for s in batch}) == 1
        size = batch[0]["image"].shape[-1]
        assert size in (24, 40) if step < 4 else size == 32
        for s in batch:
            assert s["instances"].image_size == (size, size)

    test_loader = build_test_loader(tiny_coco.val, DetrDatasetMapper(False, image_size=32), num_workers=0)
    outputs = [batch for batch in test_loader]
    assert len(outputs) == 4 and all(len(b) == 1 for b in outputs)
    assert all(b[0]["image"].shape == (3, 32, 32) and b[0]["height"] == 64 for b in outputs)
