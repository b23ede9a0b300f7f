"""DEIMv2's Copy-Blend (:class:`dfine.data.CopyBlend`) and its place in the batch collate, against
the official ``BatchImageCollateFunction`` of DEIMv2.

Golden values: ``tests/golden/copyblend_golden.{json,npz}``, written by
tools/golden/make_copyblend_golden.py (its docstring says how and what each field is) with the official
Intellindust-AI-Lab/DEIMv2 code (commit in the JSON's ``official``) on the inputs of
``golden.deimv2_synth.copyblend_inputs``. Dtype float32, as the official data pipeline runs (images
``uint8 / 255``, float32 boxes): the collate only adds, scales, resizes (nearest) and truncates, so the
golden does not depend on the CPU kernel ISA (the same on native AVX-512, ``ATEN_CPU_CAPABILITY=avx2``
+ ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=default``). Tolerances: ours blends on the
0-255 scale and the official on [0, 1], and boxes go through normalised cxcywh there, so the two
differ by float32 rounding, at most PIXEL_MEASURED on the [0, 1] scale and BOX_MEASURED pixels;
PIXEL_ATOL (1e-5, a 400th of one grey level) and BOX_ATOL (1e-4 px) lie above that and far below a
wrong pixel, blend weight or box (1 / 255 and 0.5 px or more). Draws, sizes and labels are exact."""
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.structures import Boxes, Instances

from dfine.data import BatchCollate, CopyBlend, MixUp, generate_scales
from golden.deimv2_synth import copyblend_inputs

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "copyblend_golden.json").read_text())
ARRAYS = np.load(GOLDEN_DIR / "copyblend_golden.npz")
RUNS = [(name, run) for name, case in GOLDEN["cases"].items() for run in case["runs"]]
PIXEL_MEASURED = 1.8e-7  # max abs, [0, 1] scale: the same on native AVX-512, avx2 and default
PIXEL_ATOL = 1e-5
BOX_MEASURED = 3.8e-6  # max abs, pixels: the same on the three ISAs
BOX_ATOL = 1e-4


def _sample(image, boxes, classes, epoch=0, index=0):
    instances = Instances(tuple(image.shape[-2:]))
    instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
    return {"image": torch.as_tensor(image), "instances": instances, "epoch": epoch, "dataset_index": index}


def _golden_batch(epoch):
    """The golden script's inputs as mapped dicts (uint8 images, absolute XYXY boxes)."""
    return [_sample(*inputs, epoch=epoch) for inputs in zip(*copyblend_inputs())]


def _collate_like_official(kwargs):
    """Our collate with the settings of the official ``BatchImageCollateFunction(**kwargs)``, built
    as ``build_train_loader`` builds it (no MixUp object when its probability is 0)."""
    repeat = kwargs.get("base_size_repeat")
    copy_blend = CopyBlend(
        prob=kwargs["copyblend_prob"], epochs=kwargs["copyblend_epochs"], area_threshold=kwargs["area_threshold"],
        num_objects=kwargs["num_objects"], with_expand=kwargs["with_expand"], expand_ratios=kwargs["expand_ratios"],
        random_num_objects=kwargs.get("random_num_objects", False),
        mode="blend" if kwargs.get("copyblend_type", "blend") == "blend" else "paste",
    )
    return BatchCollate(
        scales=generate_scales(kwargs["base_size"], repeat) if repeat else None,
        stop_epoch=kwargs.get("stop_epoch"),
        mixup=MixUp(kwargs["mixup_prob"], kwargs["mixup_epochs"]) if kwargs["mixup_prob"] > 0 else None,
        copy_blend=copy_blend,
    )


def test_golden_covers_every_branch():
    """The DEIMv2-S seeds of the golden take MixUp, Copy-Blend and neither; the other cases add
    Copy-Blend without MixUp, with an empty pool and with both windows closed."""
    kinds = {run["kind"] for name, run in RUNS}
    assert kinds == {"mixup", "copy_blend", "copy_blend_empty_pool", "none"}
    assert {run["kind"] for run in GOLDEN["cases"]["deimv2_s"]["runs"]} == {"mixup", "copy_blend", "none"}


@pytest.mark.parametrize("name,run", RUNS, ids=[f"{name}-seed{run['seed']}" for name, run in RUNS])
def test_collate_matches_official(name, run):
    """Same ``random.seed`` as the official collate: the same number of draws (the next
    ``random.random()``), output size, boxes (normalized cxcywh in the golden, compared in
    absolute XYXY pixels), labels and pixels (official [0, 1] scale)."""
    case = GOLDEN["cases"][name]
    batch = _golden_batch(case["epoch"])
    random.seed(run["seed"])
    out = _collate_like_official(case["collate"])(batch)
    assert random.random() == run["next_random"]

    h, w = run["size"]
    scale = torch.tensor([w, h, w, h], dtype=torch.float64)
    for i, sample in enumerate(out):
        assert tuple(sample["image"].shape) == (3, h, w)
        golden = torch.tensor(run["boxes"][i], dtype=torch.float64).reshape(-1, 4) * scale
        golden_xyxy = torch.cat([golden[:, :2] - golden[:, 2:] / 2, golden[:, :2] + golden[:, 2:] / 2], 1)
        np.testing.assert_allclose(sample["instances"].gt_boxes.tensor.double().numpy(), golden_xyxy.numpy(),
                                   rtol=0, atol=BOX_ATOL)
        assert sample["instances"].gt_classes.tolist() == run["labels"][i]
        assert sample["instances"].image_size == (h, w)
        assert (sample["image"].dtype == torch.float32) == (run["kind"] in ("mixup", "copy_blend"))

    inputs = torch.stack([s["image"] for s in _golden_batch(0)]).float()
    reference = F.interpolate(inputs, size=(h, w)) / 255 + torch.from_numpy(ARRAYS[f"{name}_{run['seed']}"])
    ours = torch.stack([s["image"].float() for s in out]) / 255
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=0, atol=PIXEL_ATOL)


def _random_batch(rng, size=4):
    """A batch of one random size: some images without objects, tiny objects (some narrower than
    a pixel, some between two pixel edges), objects as wide or high as the image, ordinary ones."""
    h, w = int(rng.integers(8, 70)), int(rng.integers(8, 70))
    batch = []
    for index in range(size):
        boxes = []
        for _ in range(int(rng.integers(0, 6))):
            kind = rng.integers(0, 4)
            if kind == 0:  # tiny, possibly inside one pixel column or row
                x, y = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
                boxes.append([x, y, x + rng.uniform(0.05, 1.5), y + rng.uniform(0.05, 1.5)])
            elif kind == 1:  # the whole image, or its whole width
                boxes.append([0, rng.uniform(0, h / 2) * rng.integers(0, 2), w, h])
            else:
                x1, y1 = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
                boxes.append([x1, y1, rng.uniform(x1 + 0.5, w), rng.uniform(y1 + 0.5, h)])
        boxes = np.clip(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), 0, [w, h, w, h])
        image = rng.integers(0, 256, size=(3, h, w), dtype=np.uint8)
        batch.append(_sample(image, boxes, rng.integers(0, 7, size=len(boxes)), index=index))
    return batch


@pytest.mark.parametrize("with_expand,mode", [(True, "blend"), (False, "blend"), (True, "paste")])
def test_every_box_stays_valid(with_expand, mode):
    """300 random batches (seeded, see ``_random_batch``): existing boxes and their classes are
    kept as they were; every appended box lies inside the image with whole-pixel corners and a
    width and height of at least one pixel, has a class of the batch, and came from an object at
    least ``area_threshold`` large; without expansion, pixels outside the new boxes are unchanged."""
    rng = np.random.default_rng(0)
    random.seed(0)
    appended_total = 0
    for trial in range(300):
        threshold = [0.0, 4.0, 100.0][trial % 3]
        copy_blend = CopyBlend(prob=1.0, epochs=(0, 1), area_threshold=threshold, with_expand=with_expand, mode=mode,
                               random_num_objects=trial % 2 == 1)
        batch = _random_batch(rng)
        h, w = batch[0]["image"].shape[-2:]
        pool_classes = set()
        for s in batch:
            boxes = s["instances"].gt_boxes.tensor
            big = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) >= threshold
            pool_classes |= set(s["instances"].gt_classes[big].tolist())
        out = copy_blend(batch, epoch=0, beta=0.5)
        if not pool_classes:
            assert out is batch
            continue
        for before, after in zip(batch, out):
            n = len(before["instances"])
            boxes, classes = after["instances"].gt_boxes.tensor, after["instances"].gt_classes
            assert torch.equal(boxes[:n], before["instances"].gt_boxes.tensor)
            assert torch.equal(classes[:n], before["instances"].gt_classes)
            new = boxes[n:]
            assert len(new) == len(classes) - n <= 3
            assert set(classes[n:].tolist()) <= pool_classes
            assert torch.equal(new, new.round())
            assert (new >= 0).all() and (new[:, 0::2] <= w).all() and (new[:, 1::2] <= h).all()
            assert (new[:, 2:] - new[:, :2] >= 1).all()
            assert after["image"].dtype == torch.float32 and after["image"].shape == before["image"].shape
            appended_total += len(new)
            if not with_expand:
                untouched = torch.ones(h, w, dtype=torch.bool)
                for x1, y1, x2, y2 in new.int().tolist():
                    untouched[y1:y2, x1:x2] = False
                assert torch.equal(after["image"][:, untouched], before["image"][:, untouched].float())
    assert appended_total > 300


def test_paste_copies_the_object_from_the_original_batch():
    """One object (from image 1), pasted without margin into both images: each new box holds the
    object's pixels of the input batch, the source region being its box with truncated corners
    (official ``int`` of the corner coordinates), here rows 3..10 and columns 5..14."""
    images = torch.arange(2 * 3 * 20 * 30, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(2, 3, 20, 30)
    batch = [_sample(images[0], np.zeros((0, 4)), []), _sample(images[1], [[5.9, 3.2, 14.99, 10.5]], [4])]
    random.seed(1)
    out = CopyBlend(prob=1.0, epochs=(0, 1), area_threshold=10, with_expand=False, mode="paste")(batch, 0, beta=0.5)
    for sample in out:
        x1, y1, x2, y2 = sample["instances"].gt_boxes.tensor[-1].int().tolist()
        assert (x2 - x1, y2 - y1) == (9, 7)
        assert torch.equal(sample["image"][:, y1:y2, x1:x2], images[1, :, 3:10, 5:14].float())
        assert sample["instances"].gt_classes.tolist()[-1] == 4


def test_pool_threshold_is_inclusive():
    """Official pool: ``area >= area_threshold`` (100): a 10x10 object is copied, a 9.9x10 one is
    not; a batch with only the latter comes back as it is."""
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    small = _sample(image, [[1.0, 1.0, 10.9, 11.0]], [0])
    copy_blend = CopyBlend(prob=1.0, epochs=(0, 1), area_threshold=100, with_expand=False)
    only_small = [small, small]
    assert copy_blend(only_small, 0, beta=0.5) is only_small
    batch = [small, _sample(image, [[20.0, 20.0, 30.0, 30.0]], [1])]
    for sample in copy_blend(batch, 0, beta=0.5):
        new = sample["instances"].gt_boxes.tensor[1:]
        assert len(new) == 1 and (new[:, 2:] - new[:, :2]).tolist() == [[10.0, 10.0]]
        assert sample["instances"].gt_classes[1:].tolist() == [1]


def test_blend_weight_and_margin():
    """Blending a constant 200 object over a constant 100 image with beta = 0.6 gives 0.6 * 100 +
    0.4 * 200 = 140 over the new box grown by ``int(size * alpha)`` pixels per side (alpha fixed by
    ``expand_ratios=(0.2, 0.2)``: 2 columns and 1 row for a 10x8 object in the middle of the image)."""
    source = torch.full((3, 40, 40), 200, dtype=torch.uint8)
    target = torch.full((3, 40, 40), 100, dtype=torch.uint8)
    batch = [_sample(source, [[15.0, 16.0, 25.0, 24.0]], [1]), _sample(target, np.zeros((0, 4)), [])]
    copy_blend = CopyBlend(prob=1.0, epochs=(0, 1), area_threshold=10, expand_ratios=(0.2, 0.2), num_objects=1)
    for seed in range(20):
        random.seed(seed)
        out = copy_blend(batch, 0, beta=0.6)[1]
        x1, y1, x2, y2 = out["instances"].gt_boxes.tensor[0].int().tolist()
        assert (x2 - x1, y2 - y1) == (10, 8)
        blended = torch.zeros(40, 40, dtype=torch.bool)
        blended[max(y1 - 1, 0):y2 + 1, max(x1 - 2, 0):x2 + 2] = True  # the margin stops at the image edge
        assert torch.allclose(out["image"][:, blended], torch.tensor(140.0))
        assert torch.equal(out["image"][:, ~blended], torch.full_like(out["image"][:, ~blended], 100.0))


def test_window_is_half_open_and_prob_zero_is_a_no_op():
    """The official condition ``start <= epoch < stop and random.random() < prob``: outside the
    window nothing is drawn and the batch comes back as it is; ``prob=0`` draws the coin only."""
    batch = _golden_batch(0)
    copy_blend = CopyBlend(prob=1.0, epochs=(2, 5))
    for epoch, applies in [(1, False), (2, True), (4, True), (5, False)]:
        random.seed(0)
        out = copy_blend(batch, epoch, beta=0.5)
        assert (out is not batch) == applies, epoch
        if not applies:
            assert random.getstate() == random.Random(0).getstate()  # no coin outside the window
    random.seed(0)
    assert CopyBlend(prob=0.0, epochs=(0, 10))(batch, 3, beta=0.5) is batch
    assert random.random() == (lambda r: (r.random(), r.random())[1])(random.Random(0))  # one coin drawn
    assert all(s["image"].dtype == torch.uint8 and len(s["instances"]) == n
               for s, n in zip(batch, [3, 0, 3]))


def test_mixup_and_copy_blend_never_in_one_batch():
    """Official ``elif``: with MixUp at 0.5 and Copy-Blend at 1.0 in the same window, every batch is
    either mixed (each image gets exactly the previous image's boxes, which lie between pixels
    here) or copy-blended (whole-pixel boxes appended), never both; about half of each."""
    batch = _golden_batch(3)
    collate = BatchCollate(mixup=MixUp(0.5, (0, 10)), copy_blend=CopyBlend(prob=1.0, epochs=(0, 10)))
    counts = {"mixup": 0, "copy_blend": 0}
    for seed in range(200):
        random.seed(seed)
        out = collate(batch)
        appended = [s["instances"].gt_boxes.tensor[len(b["instances"]):] for s, b in zip(out, batch)]
        previous = [batch[i - 1]["instances"].gt_boxes.tensor for i in range(len(batch))]
        if all(torch.equal(a, p) for a, p in zip(appended, previous)):
            counts["mixup"] += 1
        else:
            assert all(torch.equal(a, a.round()) and len(a) == 3 for a in appended)
            counts["copy_blend"] += 1
    assert 70 < counts["mixup"] < 130 and counts["mixup"] + counts["copy_blend"] == 200


def test_seeded_collate_gives_the_same_batch_twice():
    """``BatchCollate(seed=...)`` draws inside ``stream_rngs`` keyed on the batch's first sample:
    the same batch twice, the global RNG untouched, another stream position another batch."""
    collate = BatchCollate(scales=generate_scales(64, 1), stop_epoch=10, mixup=MixUp(0.5, (0, 10)),
                           copy_blend=CopyBlend(prob=1.0, epochs=(0, 10)), seed=7)

    def run(index):
        batch = _golden_batch(3)
        for s in batch:
            s["dataset_index"] = index
        return collate(batch)

    random.seed(123)
    state = random.getstate()
    first, second = run(0), run(0)
    assert random.getstate() == state
    for a, b in zip(first, second):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
        assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)
    others = [run(index) for index in range(1, 6)]
    assert any(not torch.equal(o[0]["instances"].gt_boxes.tensor, first[0]["instances"].gt_boxes.tensor)
               or o[0]["image"].shape != first[0]["image"].shape for o in others)


def test_train_loader_applies_copy_blend():
    """``build_train_loader(copy_blend=...)`` reaches the collate: with prob 1 in epoch 0 every
    image of a toy-shapes batch gains min(3, pool) whole-pixel boxes; the images become float32."""
    from dfine.data import DetrDatasetMapper, build_train_loader, load_dataset_dicts

    dicts = load_dataset_dicts("toy_shapes_train")[:8]
    mapper = DetrDatasetMapper(True, image_size=64, augmentations=[])
    copy_blend = CopyBlend(prob=1.0, epochs=(0, 1), area_threshold=0)
    loader = build_train_loader(dicts, mapper, total_batch_size=4, num_workers=0, seed=0, copy_blend=copy_blend)
    assert loader.collate_fn.copy_blend is copy_blend
    plain = build_train_loader(dicts, mapper, total_batch_size=4, num_workers=0, seed=0)
    for with_cb, without in itertools.islice(zip(iter(loader), iter(plain)), 2):
        pool = sum(len(s["instances"]) for s in without)
        for a, b in zip(with_cb, without):
            assert len(a["instances"]) == len(b["instances"]) + min(3, pool)
            assert a["image"].dtype == torch.float32


def test_copy_blend_needs_one_image_size():
    batch = _golden_batch(0)
    batch[1] = _sample(torch.zeros(3, 10, 10, dtype=torch.uint8), np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="one size"):
        CopyBlend(prob=1.0, epochs=(0, 1)).apply(batch, 0.5)
    with pytest.raises(ValueError, match="mode"):
        CopyBlend(mode="mix")
