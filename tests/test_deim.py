"""DEIM: Dense O2O (Mosaic, MixUp), the four-stage augmentation policy, MAL in the criterion, the
flat-cosine LR and the EMA, against golden values of the official DEIM code
(tools/golden/make_deim_golden.py wrote ``deim_golden.json`` / ``.npz``; its docstring says how; the
inputs come from ``golden.dfine_inputs``). The criterion case is float64 on both sides (see
``test_deim_criterion_matches_official`` for its tolerance); the other goldens are exact decisions,
Python-number schedules or per-pixel image values."""
import itertools
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from detectron2.structures import Boxes, Instances

from dfine.data import BatchCollate, DetrDatasetMapper, MixUp, Mosaic, policy_for_epoch
from dfine.data.dense_o2o import AffineParams, Sample
from dfine.modeling.layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from golden.compare import assert_all_close
from golden.dfine_inputs import criterion_case, mixup_inputs, mosaic_inputs

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "deim_golden.json").read_text())
ARRAYS = np.load(GOLDEN_DIR / "deim_golden.npz")
POLICY_OPS = ("RandomPhotometricDistort", "RandomZoomOut", "RandomIoUCrop")
IMAGE_WH = torch.tensor([6.0, 8.0, 6.0, 8.0])  # of the MixUp inputs


def _mosaic_samples():
    return [Sample(*inputs) for inputs in zip(*mosaic_inputs())]


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
    """The MixUp inputs of the golden script as a mapped batch: absolute XYXY boxes in 8x6 images."""
    images, boxes, labels = mixup_inputs()
    batch = []
    for image, cxcywh, classes in zip(images, boxes, labels):
        instances = Instances((8, 6))
        instances.gt_boxes = Boxes(box_cxcywh_to_xyxy(torch.from_numpy(cxcywh)) * IMAGE_WH)
        instances.gt_classes = torch.from_numpy(classes)
        batch.append({"image": torch.from_numpy(image), "instances": instances, "epoch": 1})
    return batch


def _normalised_cxcywh(instances):
    return box_xyxy_to_cxcywh(instances.gt_boxes.tensor / IMAGE_WH)


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


def _sized_sample(height, width, value, boxes):
    instances = Instances((height, width))
    instances.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.arange(len(boxes), dtype=torch.int64)
    return {"image": torch.full((3, height, width), value, dtype=torch.uint8), "instances": instances}


def test_mixup_of_images_of_different_sizes_keeps_each_frame():
    """The DETR pipeline's batches: each image keeps its size; the previous image is laid at its
    top-left corner, cut to it, and mixed where it has pixels; its boxes are clipped to the frame
    and those without area there dropped."""
    small = _sized_sample(4, 6, 100, [[1, 1, 3, 3]])
    tall = _sized_sample(8, 4, 200, [[0, 0, 4, 2], [1, 5, 3, 7], [1, 3, 3, 7]])
    into_small, into_tall = MixUp.mix([small, tall], 0.5)  # small mixes in tall, tall mixes in small
    assert into_small["image"].shape == (3, 4, 6) and into_tall["image"].shape == (3, 8, 4)
    assert into_small["image"].dtype == torch.float32
    assert (into_small["image"][:, :, :4] == 150).all() and (into_small["image"][:, :, 4:] == 100).all()
    assert (into_tall["image"][:, :4] == 150).all() and (into_tall["image"][:, 4:] == 200).all()
    # tall's box below row 4 leaves the small frame; the one across row 4 is cut there.
    assert into_small["instances"].gt_boxes.tensor.tolist() == [[1, 1, 3, 3], [0, 0, 4, 2], [1, 3, 3, 4]]
    assert into_small["instances"].gt_classes.tolist() == [0, 0, 2]
    assert into_tall["instances"].gt_boxes.tensor.tolist() == [[0, 0, 4, 2], [1, 5, 3, 7], [1, 3, 3, 7],
                                                                [1, 1, 3, 3]]
    assert small["image"].dtype == torch.uint8 and (small["image"] == 100).all()  # inputs untouched


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
    assert policy_for_epoch(3, (2, 6, 10), POLICY_OPS, mosaic_prob=0.0, draw=lambda: 0.0)[0] is False
    with pytest.raises(ValueError, match="three ascending"):
        DetrDatasetMapper(True, policy_epoch=[4, 2, 6])


def test_deim_criterion_matches_official():
    """Official ``DEIMCriterion`` (MAL gamma 1.5 + boxes, ``use_uni_set False``) on the final,
    auxiliary and encoder outputs of ``rtdetrv2_criterion.npz``, denoising off, all float64 (golden:
    official DEIM in float64, commit in ``deim_golden.json``). Tolerance 1e-12 relative: the two
    differ only by the order of float64 operations (largest relative difference measured natively,
    with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 and with ATEN_CPU_CAPABILITY=default:
    1.6e-16)."""
    from dfine.modeling.criterion import BoxLoss, HungarianMatcher, MatchabilityAwareLoss, SetCriterion
    from dfine.modeling.decoder import Branch, DecoderOutput, Predictions, Proposals

    heads, targets = criterion_case()

    def predictions(head, kind=Predictions):
        return kind(head["pred_logits"], head["pred_boxes"])

    outputs = DecoderOutput(Branch([*map(predictions, heads["aux_outputs"]), predictions(heads)]),
                            predictions(heads["enc_aux_outputs"][0], Proposals))
    criterion = SetCriterion(
        HungarianMatcher(weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, alpha=0.25, gamma=2.0),
        terms=[MatchabilityAwareLoss(gamma=1.5), BoxLoss()], losses=["mal", "boxes"],
        weight_dict={"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2}, num_classes=5,
    )
    losses = criterion(outputs, targets)
    assert GOLDEN["criterion"]["dtype"] == "float64" and heads["pred_logits"].dtype == torch.float64
    assert all(v.dtype == torch.float64 for v in losses.values())
    assert_all_close(losses, GOLDEN["criterion"]["losses"], rtol=1e-12)


def test_flat_cosine_lr_of_the_training_loop_matches_official():
    """The LR each iteration trains with, through detectron2's ``LRMultiplier`` (what the
    ``LRScheduler`` hook steps), against the official loop: ``LinearWarmup(2000)`` leaves the
    first iteration at base / 2000, then ``FlatCosineLRScheduler.step(i)`` after iteration ``i``."""
    from detectron2.solver import LRMultiplier

    from dfine.solver import FlatCosine

    golden = GOLDEN["lr"]
    max_iter = golden["iters_per_epoch"] * golden["epochs"]
    schedule = FlatCosine(
        max_iter=max_iter,
        iters_per_epoch=golden["iters_per_epoch"],
        flat_epochs=golden["flat_epochs"],
        no_aug_epochs=golden["no_aug_epochs"],
        warmup_iters=golden["warmup_iters"],
        lr_gamma=golden["lr_gamma"],
        initial_factor=1 / 2000,
    )
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.AdamW([{"params": [params[0]]}, {"params": [params[1]], "lr": 2e-5}], lr=2e-4)
    scheduler = LRMultiplier(optimizer, schedule, max_iter)
    used = {}
    for iteration in range(max_iter):
        used[iteration] = [group["lr"] for group in optimizer.param_groups]
        optimizer.step()  # no gradients: changes nothing, keeps torch's step-order check quiet
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


# ----------------------------------------------------------------------------- stage switch
class _LinearModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, batch):
        return {"loss": (self.linear(torch.stack([b["x"] for b in batch])) ** 2).mean()}


class _Stream:
    """Batches that depend on the iteration only, resumable like dfine's EpochAwareSampler."""

    def __init__(self):
        self.sampler, self.start = self, 0

    def set_start_iter(self, iteration):
        self.start = iteration

    def __iter__(self):
        for iteration in itertools.count(self.start):
            generator = torch.Generator().manual_seed(iteration)
            yield [{"x": torch.randn(2, generator=generator)} for _ in range(2)]


def _run_stage_switch(tmp_path, aps, max_iter=14, switch_iter=6, resume=False):
    """Train a linear model with an EvalHook that reports ``aps`` (in order) every 2 iterations and
    a StageSwitchHook switching at ``switch_iter``; returns the weights seen at chosen points."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import HookBase, hooks
    from fvcore.common.param_scheduler import LinearParamScheduler

    from dfine.engine import EMAHook, ModelEMA, StageSwitchHook, Trainer

    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = _LinearModel()
    stream = _Stream()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(model=model, data_loader=stream, optimizer=optimizer)
    ema = ModelEMA(model, decay=0.9, warmups=0)
    checkpointer = DetectionCheckpointer(model, str(tmp_path), trainer=trainer, ema=ema)
    reported = itertools.chain(aps, itertools.repeat(0.0))  # then the evaluation after training
    seen = {}

    class Spy(HookBase):
        def before_step(self):
            seen[("before", self.trainer.iter)] = (
                model.linear.weight.detach().clone(),
                optimizer.param_groups[0]["lr"],
            )

        def after_step(self):
            seen[("after", self.trainer.iter)] = model.linear.weight.detach().clone()

    switch = StageSwitchHook(checkpointer, switch_iter, eval_period=2, ema=ema, restart_decay=0.5)
    trainer.register_hooks([
        EMAHook(ema),
        hooks.LRScheduler(scheduler=LinearParamScheduler(1.0, 0.1)),
        hooks.EvalHook(2, lambda: {"bbox": {"AP": next(reported)}}),
        switch,
        hooks.PeriodicCheckpointer(checkpointer, period=2),
        Spy(),
    ])
    start = 0
    if resume:
        checkpointer.resume_or_load("", resume=True)
        start = trainer.iter + 1
    trainer.train(start, max_iter)
    return switch, ema, seen


def test_stage_switch_reloads_the_best_stage1_state(tmp_path):
    # Evaluations after iterations 1, 3, 5 (stage 1), 7, 9, 11 (stage 2).
    switch, ema, seen = _run_stage_switch(tmp_path, aps=[10.0, 20.0, 15.0, 18.0, 12.0, 25.0])
    best = seen[("after", 3)]  # the state of the best stage-1 evaluation (AP 20)
    assert (tmp_path / "model_best_stage1.pth").is_file() and (tmp_path / "model_best_stage2.pth").is_file()
    # At the switch the weights go back to that state, the LR stays the scheduled one.
    weights, lr = seen[("before", 6)]
    torch.testing.assert_close(weights, best)
    assert lr == pytest.approx((1.0 - 0.9 * 6 / 14) * 0.1)
    assert ema.decay == 0.5
    # Stage 2: AP 18 does not beat 20 -> reload again; AP 12 (after the reload, the reference is
    # reset) counts as an improvement, AP 25 beats everything and is saved as the stage-2 best.
    torch.testing.assert_close(seen[("before", 8)][0], best)
    assert not torch.equal(seen[("before", 10)][0], best)
    assert switch.state_dict() == {"best_stage1": 20.0, "best_overall": 25.0, "reference": 25.0, "switched": True}


def test_stage_switch_state_survives_resume(tmp_path):
    aps = [10.0, 20.0, 15.0, 18.0, 12.0, 25.0]
    straight, _, seen_straight = _run_stage_switch(tmp_path / "straight", aps)
    # Resume from the checkpoint after iteration 7 (stage 2, just after its first reload).
    (tmp_path / "resumed").mkdir()
    for name in ("model_0000007.pth", "model_best_stage1.pth"):
        shutil.copy(tmp_path / "straight" / name, tmp_path / "resumed" / name)
    (tmp_path / "resumed" / "last_checkpoint").write_text("model_0000007.pth")
    resumed, _, seen_resumed = _run_stage_switch(tmp_path / "resumed", aps[4:], resume=True)
    assert resumed.state_dict() == straight.state_dict()
    for iteration in (8, 10, 12):
        torch.testing.assert_close(seen_resumed[("before", iteration)][0], seen_straight[("before", iteration)][0])


# ------------------------------------------------------------------ the policy in DataLoader workers
from detectron2.data import transforms as T  # noqa: E402
from PIL import Image  # noqa: E402


class _MarkPixel(T.Transform):
    """Sets pixel (0, column) of channel 0 to ``value``: a visible trace that an op ran."""

    def __init__(self, column, value):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        img = img.copy()
        img[0, self.column, 0] = self.value
        return img

    def apply_coords(self, coords):
        return coords


def _marker(name, column, value):
    # Named like the RT-DETR op it stands for, which is what the policy switches on and off.
    return type(name, (T.Augmentation,), {"get_transform": lambda self, image: _MarkPixel(column, value)})()


MARKERS = {"RandomPhotometricDistort": 50, "RandomZoomOut": 60, "RandomIoUCrop": 70}


def _black_dataset(tmp_path, count=8, size=32):
    path = tmp_path / "black.png"
    Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8)).save(path)
    annotation = {"bbox": [4.0, 4.0, 12.0, 12.0], "bbox_mode": 0, "category_id": 1, "iscrowd": 0}  # XYXY_ABS
    return [{"file_name": str(path), "height": size, "width": size, "image_id": i, "annotations": [annotation]}
            for i in range(count)]


def _marker_loader(dicts):
    from dfine.data import build_train_loader

    mapper = DetrDatasetMapper(
        True, image_size=32, augmentations=[_marker(name, col, v) for col, (name, v) in enumerate(MARKERS.items())],
        policy_epoch=[1, 2, 3], mosaic=Mosaic(output_size=16, rotation_range=0, translation_range=(0, 0),
                                              scaling_range=(1, 1)), mosaic_prob=1.0,
    )
    # 8 images, 4 per batch: epoch e is iterations 2e and 2e + 1.
    return build_train_loader(dicts, mapper, total_batch_size=4, num_workers=2, seed=0, mixup_prob=1.0,
                              mixup_epochs=[1, 2])


def _stage_of(batch):
    """Which of the four stages a batch shows."""
    marks = [float(s["image"][0, 0, col]) for s in batch for col in range(3)]
    counts = {len(s["instances"]) for s in batch}
    mixed = {s["image"].dtype for s in batch} == {torch.float32}
    if mixed and counts == {8} and marks == [50.0, 0.0, 0.0] * 4:
        return 2  # Mosaic (4 images) + photometric only, then MixUp (x2)
    if not mixed and counts == {1} and marks == [50.0, 60.0, 70.0] * 4:
        return 3  # RT-DETR augmentations without Mosaic
    if not mixed and counts == {1} and marks == [0.0] * 12:
        return "1 or 4"
    return f"unexpected: mixed={mixed}, counts={counts}, marks={marks}"


def test_policy_boundaries_in_workers_straight_and_resumed(tmp_path):
    """num_workers=2: the first batch after each boundary already has the new stage, and a resume
    landing in the Dense O2O stage continues there."""
    dicts = _black_dataset(tmp_path)
    expected = ["1 or 4", "1 or 4", 2, 2, 3, 3, "1 or 4", "1 or 4"]
    batches = list(itertools.islice(iter(_marker_loader(dicts)), 8))
    assert [_stage_of(b) for b in batches] == expected
    assert [b[0]["epoch"] for b in batches] == [0, 0, 1, 1, 2, 2, 3, 3]

    resumed = _marker_loader(dicts)
    resumed.sampler.set_start_iter(3)  # what the trainer does on resume after iteration 2
    batches = list(itertools.islice(iter(resumed), 3))
    assert [_stage_of(b) for b in batches] == [2, 3, 3]


def test_seeded_loader_gives_the_same_batches_twice():
    """Mosaic (cache off and on), MixUp, multi-scale and the RT-DETR ops, with 2 workers."""
    from dfine.data import build_train_loader, generate_scales, load_dataset_dicts

    dicts = load_dataset_dicts("toy_shapes_train")[:32]

    def batches(use_cache):
        mapper = DetrDatasetMapper(True, image_size=64, policy_epoch=[0, 4, 5], mosaic_prob=0.5,
                                   mosaic=Mosaic(output_size=32, use_cache=use_cache))
        loader = build_train_loader(dicts, mapper, total_batch_size=4, num_workers=2, seed=0, mixup_prob=0.5,
                                    mixup_epochs=[0, 4], multi_scale=generate_scales(64, 2), multi_scale_stop_epoch=4)
        torch.manual_seed(0)  # the worker seeds derive from it, as with train.seed
        return list(itertools.islice(iter(loader), 6))

    for use_cache in (False, True):
        first, second = batches(use_cache), batches(use_cache)
        for a, b in zip(first, second):
            for x, y in zip(a, b):
                assert torch.equal(x["image"], y["image"])
                assert torch.equal(x["instances"].gt_boxes.tensor, y["instances"].gt_boxes.tensor)
                assert torch.equal(x["instances"].gt_classes, y["instances"].gt_classes)


def test_mosaic_and_mixup_keep_every_box_valid():
    from dfine.data import BatchCollate, load_dataset_dicts

    dicts = load_dataset_dicts("toy_shapes_train")[:40]
    collate = BatchCollate(mixup=MixUp(prob=1.0, epochs=(0, 1)))
    np.random.seed(0)
    random.seed(0)
    for use_cache in (False, True):
        mapper = DetrDatasetMapper(True, image_size=96, policy_epoch=[0, 1, 2], mosaic_prob=1.0,
                                   mosaic=Mosaic(output_size=48, use_cache=use_cache), min_box_size=1)
        samples = [mapper(d, 0, dataset=dicts) for d in dicts]
        for batch in (samples[i:i + 4] for i in range(0, len(samples), 4)):
            for sample in collate(batch):
                boxes, classes = sample["instances"].gt_boxes.tensor, sample["instances"].gt_classes
                assert len(boxes) == len(classes) > 0
                assert (boxes >= 0).all() and (boxes[:, 0::2] <= 96).all() and (boxes[:, 1::2] <= 96).all()
                assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
                assert ((classes >= 0) & (classes < 6)).all()


def test_mosaic_boxes_keep_their_class(tmp_path):
    """Each object is painted in its class colour; after Mosaic (random affine, nearest) the centre of
    every unclipped output box still has the colour of the class it is labelled with."""
    colours = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}
    dicts = []
    rng = np.random.default_rng(0)
    for i in range(6):
        image = np.full((48, 48, 3), 128, dtype=np.uint8)
        annotations = []
        for j, (x0, y0) in enumerate([(4, 4), (26, 26)]):
            cls = int(rng.integers(0, 3))
            image[y0:y0 + 16, x0:x0 + 16] = colours[cls]
            annotations.append({"bbox": [x0, y0, x0 + 16, y0 + 16], "bbox_mode": 0, "category_id": cls, "iscrowd": 0})
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        dicts.append({"file_name": str(tmp_path / f"{i}.png"), "height": 48, "width": 48, "annotations": annotations})
    mapper = DetrDatasetMapper(True, image_size=48, augmentations=[], policy_epoch=[0, 1, 2], mosaic_prob=1.0,
                               mosaic=Mosaic(output_size=24))
    np.random.seed(1)
    checked = 0
    for _ in range(10):
        for d in dicts:
            out = mapper(d, 0, dataset=dicts)
            image = out["image"].permute(1, 2, 0).numpy()
            for box, cls in zip(out["instances"].gt_boxes.tensor.tolist(), out["instances"].gt_classes.tolist()):
                if min(box) <= 1 or max(box) >= 47 or box[2] - box[0] < 6:
                    continue  # clipped by the canvas, or too small to have a clean centre
                cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
                np.testing.assert_allclose(image[cy, cx], colours[cls], atol=12)
                checked += 1
    assert checked > 50


def test_generate_scales_matches_official():
    """The official ``generate_scales`` (DEIM ``engine/data/dataloader.py``), values computed with it."""
    from dfine.data import generate_scales

    assert generate_scales(640, 3) == [480, 512, 544, 576, 608, 640, 640, 640, 800, 768, 736, 704, 672]
    assert generate_scales(640, 20) == [480, 512, 544, 576, 608] + [640] * 20 + [800, 768, 736, 704, 672]


def test_dense_o2o_with_background_only_images(tmp_path):
    """Images without annotations are valid training data in Mosaic and MixUp too."""
    path = tmp_path / "empty.png"
    Image.fromarray(np.full((40, 56, 3), 90, dtype=np.uint8)).save(path)
    dicts = [{"file_name": str(path), "height": 40, "width": 56, "image_id": i, "annotations": []} for i in range(3)]
    for use_cache in (False, True):
        mapper = DetrDatasetMapper(True, image_size=32, policy_epoch=[0, 1, 2], mosaic_prob=1.0,
                                   mosaic=Mosaic(output_size=16, use_cache=use_cache))
        batch = [dict(mapper(d, 0, dataset=dicts), epoch=0) for d in dicts]
        for sample in MixUp(prob=1.0, epochs=(0, 1))(batch, epoch=0):
            assert sample["instances"].gt_boxes.tensor.shape == (0, 4) and sample["image"].shape == (3, 32, 32)
            assert sample["instances"].gt_classes.dtype == torch.int64
