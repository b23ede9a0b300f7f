"""DEIM: Dense O2O (Mosaic, MixUp), the four-stage augmentation policy, MAL in the criterion, the
flat-cosine LR and the EMA, against golden values of the official DEIM code
(tests/golden/make_deim_golden.py wrote ``deim_golden.json`` / ``.npz``; its docstring says how)."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2.structures import Boxes, Instances

from dfine.data import BatchCollate, DetrDatasetMapper, MixUp, Mosaic, policy_for_epoch
from dfine.data.dense_o2o import AffineParams, Sample

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "deim_golden.json").read_text())
ARRAYS = np.load(GOLDEN_DIR / "deim_golden.npz")
POLICY_OPS = ("RandomPhotometricDistort", "RandomZoomOut", "RandomIoUCrop")


def _mosaic_samples():
    samples = []
    for i in range(4):
        rng = np.random.default_rng(100 + i)  # as make_deim_golden.mosaic_inputs
        image = rng.integers(0, 256, size=ARRAYS[f"mosaic_image_{i}"].shape, dtype=np.uint8)
        h, w = image.shape[:2]
        x0, y0 = rng.uniform(0, w / 2, 2), rng.uniform(0, h / 2, 2)
        boxes = np.stack([x0, y0, x0 + rng.uniform(2, w / 2, 2), y0 + rng.uniform(2, h / 2, 2)], 1)
        samples.append(Sample(image, boxes.astype(np.float32), rng.integers(0, 5, size=2).astype(np.int64)))
    return samples


def test_mosaic_matches_official(monkeypatch):
    """Official ``Mosaic(output_size=32, use_cache=False)`` with ``random.choices`` -> [2, 1, 3] and
    fixed affine parameters: same canvas, same pixels, same boxes and labels."""
    samples = _mosaic_samples()
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(sample.image, ARRAYS[f"mosaic_image_{i}"])  # rebuilt the inputs
    golden = GOLDEN["mosaic"]
    mosaic = Mosaic(output_size=32, use_cache=False)
    affine = golden["affine"]
    monkeypatch.setattr(mosaic, "draw_affine_params",
                        lambda hw: AffineParams(affine["angle"], tuple(affine["translate"]), affine["scale"]))
    monkeypatch.setattr(np.random, "randint", lambda high, size: np.array(golden["indices"]))
    out = mosaic(samples[0], 4, lambda i: samples[i])
    np.testing.assert_array_equal(out.image, ARRAYS["mosaic_output"])
    np.testing.assert_allclose(out.boxes, np.array(golden["boxes"]), atol=1e-4)
    assert out.classes.tolist() == golden["labels"]


def test_mosaic_cache_stays_bounded_and_keeps_the_newest(monkeypatch):
    samples = _mosaic_samples()
    mosaic = Mosaic(output_size=16, use_cache=True, max_cached_images=3, random_pop=True)
    np.random.seed(0)
    for step in range(20):
        current = samples[step % 4]
        out = mosaic(current, 0, None)
        assert len(mosaic.cache) == min(step + 1, 3)
        # The newest entry is the current image, resized; it is never the one popped.
        np.testing.assert_array_equal(mosaic.cache[-1].image, mosaic.resize_shorter_side(current).image)
        assert out.image.shape[2] == 3 and len(out.boxes) == len(out.classes)
    # A copy for a DataLoader worker starts empty (the cache is per worker).
    import pickle

    assert pickle.loads(pickle.dumps(mosaic)).cache == []
    oldest_first = Mosaic(output_size=16, use_cache=True, max_cached_images=2, random_pop=False)
    for sample in samples[:3]:
        oldest_first(sample, 0, None)
    np.testing.assert_array_equal(oldest_first.cache[0].image, oldest_first.resize_shorter_side(samples[1]).image)


def test_mosaic_without_cache_needs_the_data_set():
    with pytest.raises(ValueError, match="needs the data set"):
        Mosaic(output_size=16)(_mosaic_samples()[0], 0, None)


def _mixup_batch():
    rng = np.random.default_rng(5)  # as make_deim_golden.mixup_inputs
    images = rng.integers(0, 256, size=(3, 2, 8, 6), dtype=np.uint8)
    batch = []
    for n in [2, 1, 3]:
        boxes = rng.uniform(0.2, 0.6, size=(n, 4)).astype(np.float32)
        instances = Instances((8, 6))
        cx, cy, w, h = (torch.from_numpy(boxes) * torch.tensor([6, 8, 6, 8])).unbind(1)
        instances.gt_boxes = Boxes(torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1))
        batch.append({"instances": instances})
    for n, sample in zip([2, 1, 3], batch):
        sample["instances"].gt_classes = torch.from_numpy(rng.integers(0, 5, size=n).astype(np.int64))
    for image, sample in zip(images, batch):
        sample["image"] = torch.from_numpy(image)
        sample["epoch"] = 1
    return batch


def _normalised_cxcywh(instances):
    b = instances.gt_boxes.tensor
    w, h = instances.image_size[1], instances.image_size[0]
    return torch.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h, (b[:, 2] - b[:, 0]) / w,
                        (b[:, 3] - b[:, 1]) / h], 1)


def test_mixup_matches_official(monkeypatch):
    """Official ``apply_mixup`` with the coin at 0.1 and ``random.uniform`` at 0.4812345678."""
    golden = GOLDEN["mixup"]
    monkeypatch.setattr(random, "random", lambda: 0.1)
    monkeypatch.setattr(random, "uniform", lambda a, b: 0.4812345678)
    mixed = MixUp(prob=0.5, epochs=(0, 5))(_mixup_batch(), epoch=1)
    images = torch.stack([s["image"] for s in mixed]) / 255
    np.testing.assert_allclose(images.numpy(), ARRAYS["mixup_images"], rtol=0, atol=1e-6)
    for sample, boxes, labels in zip(mixed, golden["boxes"], golden["labels"]):
        np.testing.assert_allclose(_normalised_cxcywh(sample["instances"]).numpy(), boxes, atol=1e-6)
        assert sample["instances"].gt_classes.tolist() == labels
        assert sample["image"].dtype == torch.float32


def test_mixup_window_and_coin(monkeypatch):
    batch = _mixup_batch()
    monkeypatch.setattr(random, "random", lambda: 0.1)
    assert MixUp(prob=0.5, epochs=(2, 5))(batch, epoch=1) is batch  # before the window
    assert MixUp(prob=0.5, epochs=(0, 1))(batch, epoch=1) is batch  # the window is half-open
    assert MixUp(prob=0.05, epochs=(0, 5))(batch, epoch=1) is batch  # the coin says no
    with pytest.raises(ValueError, match="one size"):
        MixUp.mix(batch[:1] + [{**batch[1], "image": torch.zeros(2, 4, 4, dtype=torch.uint8)}], 0.5)


_OFFICIAL_TO_OURS = {"SanitizeBoundingBoxes": "SanitizeBoxes", "RandomHorizontalFlip": "RandomFlip", "Resize": "Resize"}


@pytest.mark.parametrize("row", GOLDEN["policy"]["epochs"], ids=lambda r: f"epoch{r['epoch']}")
def test_policy_of_every_epoch_matches_official(row, monkeypatch):
    """For each epoch of the 12-epoch schedule (policy [2, 6, 10], MixUp [2, 6), multi-scale until
    10): the ops of the official ``Compose`` with the Mosaic draw succeeding and failing, and
    whether the official collate mixes and resizes."""
    mapper = DetrDatasetMapper(True, image_size=64, policy_epoch=GOLDEN["policy"]["policy_epoch"],
                               mosaic=Mosaic(output_size=32), mosaic_prob=0.5)
    for key, draw in (("mosaic_drawn", 0.0), ("mosaic_not_drawn", 0.99)):
        monkeypatch.setattr(np.random, "random", lambda: draw)
        use_mosaic, augmentations = mapper.plan(row["epoch"])
        ours = ["Mosaic"] * use_mosaic + [type(a).__name__ for a in augmentations[:-1]]  # last: our clip step
        assert ours == [_OFFICIAL_TO_OURS.get(name, name) for name in row[key]], key

    collate = BatchCollate(scales=[32, 64, 64], stop_epoch=GOLDEN["policy"]["multi_scale_stop_epoch"],
                           mixup=MixUp(0.5, GOLDEN["policy"]["mixup_epochs"]))
    monkeypatch.setattr(random, "random", lambda: 0.0)
    monkeypatch.setattr(random, "choice", lambda scales: 32)
    batch = [{"image": torch.full((3, 64, 64), 7, dtype=torch.uint8), "epoch": row["epoch"]} for _ in range(2)]
    out = collate(batch)
    assert (out[0]["image"].dtype == torch.float32) == row["mixup"]
    assert (out[0]["image"].shape[-1] != 64) == row["multi_scale"]


def test_policy_for_epoch_forms():
    assert policy_for_epoch(5, None, POLICY_OPS) == (True, frozenset())
    assert policy_for_epoch(4, 5, POLICY_OPS) == (True, frozenset())
    assert policy_for_epoch(5, 5, POLICY_OPS) == (False, frozenset(POLICY_OPS) | {"Mosaic"})
    # mosaic_prob=0 (the Dense O2O ablation) never draws Mosaic, whatever the draw.
    assert policy_for_epoch(3, (2, 6, 10), POLICY_OPS, mosaic_draw=0.0, mosaic_prob=0.0)[0] is False
    with pytest.raises(ValueError, match="three ascending"):
        DetrDatasetMapper(True, policy_epoch=[4, 2, 6])


def test_deim_criterion_matches_official():
    """Official ``DEIMCriterion`` (MAL gamma 1.5 + boxes, ``use_uni_set False``) on the final,
    auxiliary and encoder outputs of ``rtdetrv2_criterion.npz``, denoising off."""
    from dfine.modeling.criterion import HungarianMatcher, RTDETRCriterion

    arrays = np.load(GOLDEN_DIR / "rtdetrv2_criterion.npz")

    def head(prefix):
        return {k: torch.from_numpy(arrays[prefix + k]) for k in ("pred_logits", "pred_boxes")}

    outputs = head("")
    outputs["aux_outputs"] = [head("aux_0_"), head("aux_1_")]
    outputs["enc_aux_outputs"] = [head("enc_0_")]
    targets = [{"labels": torch.from_numpy(arrays[f"target_{b}_labels"]),
                "boxes": torch.from_numpy(arrays[f"target_{b}_boxes"])} for b in range(2)]
    criterion = RTDETRCriterion(
        HungarianMatcher(weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, alpha=0.25, gamma=2.0),
        weight_dict={"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2}, losses=["mal", "boxes"], alpha=0.75,
        gamma=1.5, num_classes=5,
    )
    losses = criterion(outputs, targets)
    golden = GOLDEN["criterion"]["losses"]
    assert set(losses) == set(golden)
    for key, value in golden.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-5), key


def test_flat_cosine_lr_of_the_training_loop_matches_official():
    """The LR each iteration trains with, through detectron2's ``LRMultiplier`` (what the
    ``LRScheduler`` hook steps), against the official loop: ``LinearWarmup(2000)`` leaves the
    first iteration at base / 2000, then ``FlatCosineLRScheduler.step(i)`` after iteration ``i``."""
    from detectron2.solver import LRMultiplier

    from dfine.solver import FlatCosine

    golden = GOLDEN["lr"]
    max_iter = golden["iters_per_epoch"] * golden["epochs"]
    schedule = FlatCosine(max_iter=max_iter, epochs=golden["epochs"], flat_epochs=golden["flat_epochs"],
                          no_aug_epochs=golden["no_aug_epochs"], warmup_iters=golden["warmup_iters"],
                          lr_gamma=golden["lr_gamma"], initial_factor=1 / 2000)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.AdamW([{"params": [params[0]]}, {"params": [params[1]], "lr": 2e-5}], lr=2e-4)
    scheduler = LRMultiplier(optimizer, schedule, max_iter)
    used = {}
    for iteration in range(max_iter):
        used[iteration] = [group["lr"] for group in optimizer.param_groups]
        scheduler.step()  # the last step asks for where == 1.0, as detectron2's hook does
    assert len(golden["lr"]) >= 12
    for iteration, lrs in golden["lr"].items():
        assert used[int(iteration)] == pytest.approx(lrs, rel=1e-9, abs=1e-15), iteration


def test_ema_decay_matches_official():
    from dfine.engine import ModelEMA

    golden = GOLDEN["ema"]
    ema = ModelEMA(torch.nn.Linear(1, 1), decay=golden["decay"], warmups=golden["warmups"])
    for updates, decay in golden["d"].items():
        assert ema.decay_at(int(updates)) == pytest.approx(decay, rel=1e-12), updates
