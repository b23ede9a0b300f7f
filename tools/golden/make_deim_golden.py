"""Write the DEIM golden files ``tests/golden/deim_golden.{json,npz}`` by running the official DEIM
implementation.

The official code is imported from a clone outside this repository; nothing of it is copied here,
and the JSON records the clone's commit. Inputs are drawn with NumPy from fixed seeds by
``golden.dfine_inputs`` (``tests/golden``), or read from ``rtdetrv2_criterion.npz``, so the tests
rebuild them without the official code. How to rerun, from the repository root::

    PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deim_golden.py PATH/TO/DEIM

The criterion case is float64 (its inputs in ``rtdetrv2_criterion.npz`` are float64), so its
losses hold on every CPU; the other parts are exact or per-pixel values (``dtype`` in the JSON).
Outputs ``deim_golden.json`` (scalars and small lists), ``deim_golden.npz`` (images) and
``deim_rtdetrv2_r18_train.json`` (the whole DEIM-RT-DETRv2-R18 model, last item below):

* ``criterion``: the official ``DEIMCriterion`` (``losses ['mal', 'boxes']``, gamma 1.5, alpha
  0.75, ``use_uni_set False``, weights mal 1 / bbox 5 / giou 2, as ``configs/base/rt_deim.yml``)
  with the official ``HungarianMatcher`` (class 2 / bbox 5 / giou 2, focal 0.25 / 2) on the final,
  auxiliary and encoder outputs of ``rtdetrv2_criterion.npz`` without the denoising outputs
  (``golden.dfine_inputs.criterion_case``), float64.
* ``lr``: the learning rate of two parameter groups (base 2e-4 and 2e-5) at chosen iterations of
  the official training loop (``LinearWarmup(2000)`` built and never stepped again, then
  ``FlatCosineLRScheduler.step(iteration)`` after every iteration), with 100 iterations per
  epoch and the DEIM-RT-DETRv2-R50 epochs (60, flat 34, no-aug 2, warm-up 2000, gamma 0.5).
* ``ema``: ``ModelEMA(decay=0.9999, warmups=2000).decay_fn(updates)`` at chosen updates.
* ``policy``: for a 12-epoch schedule (policy ``[2, 6, 10]``, MixUp ``[2, 6)``, multi-scale stop
  10), the ops that the official ``Compose`` runs per epoch when its Mosaic draw succeeds
  (``random.random`` patched to 0.0) or fails (0.99), and whether the official
  ``BatchImageCollateFunction`` mixes (coin patched to 0.0) and resizes the batch.
* ``mixup``: ``apply_mixup`` on three images (``rng(5)``, 2x8x6 uint8 / 255) with the coin patched to
  0.1 and ``random.uniform`` to 0.4812345678: mixed images (npz ``mixup_images``) and targets.
* ``mosaic``: the official ``Mosaic(output_size=32, use_cache=False)`` on image 0 of a four-image
  data set (``mosaic_image_{i}`` in the npz, with ``mosaic_boxes_{i}`` / ``mosaic_labels_{i}``),
  ``random.choices`` patched to ``[2, 1, 3]`` and the affine parameters fixed; output image
  (npz ``mosaic_output``) and boxes / labels.
* ``deim_rtdetrv2_r18_train.json``: the official DEIM-RT-DETRv2-R18
  (``configs/deim_rtdetrv2/deim_r18vd_120e_coco.yml`` with ``PResNet.pretrained: False`` and
  ``RTDETRTransformerv2.num_denoising: 0``; loaded after the jobs above, the only config of the
  process) in float64: weights ``synth_state_dict(keys, seed=0)`` over the model's own keys (the
  constructor buffers of ``synth.CONSTRUCTOR_BUFFERS`` keep the model's values), ``model.double()
  .train()``, images ``synth_image(640, 640, seed)`` for seeds 1 and 2 (RGB float64 / 255) and targets
  ``golden.dfine_inputs.train_targets(float64)``, as the RT-DETRv2 and D-FINE training goldens; the
  config's ``DEIMCriterion`` (MAL + boxes) with the first step's ``epoch``/``step`` metas. The official
  hybrid encoder builds its 2-D sin-cos position embedding in float32 whatever the dtype (and float32
  sin / cos differ by an ulp between CPU kernel ISAs); for this job only it is computed in float64
  (``float64_patches.install("engine.deim", "sincos")``, tools/golden/float64_patches.py, installed
  after the other jobs and before the model is built), recorded in ``patches``. Fields:
  ``state_dict`` (key -> shape, in order), ``weights_crc32``, ``losses``, ``total`` (float64 sum in
  the dict's order) and ``matcher_indices_last_layer``.
"""
import json
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
sys.path.insert(0, str(GOLDEN_DIR.parent))  # tests/, for golden.dfine_inputs
from golden.dfine_inputs import (  # noqa: E402
    MOSAIC_AFFINE,
    MOSAIC_SIZES,
    criterion_case,
    mixup_inputs,
    mosaic_inputs,
    train_targets,
)
import float64_patches  # noqa: E402  (tools/golden, this script's directory)
from make_rtdetrv2_golden import _image_tensor, _load_synth_weights, official_commit  # noqa: E402

LR_ITERATIONS = [0, 1, 2, 1000, 1999, 2000, 2001, 3000, 3400, 3401, 4600, 5799, 5800, 5801, 5999]
EMA_UPDATES = [1, 10, 100, 1000, 2000, 5000, 20000]


def job_criterion():
    from engine.deim.deim_criterion import DEIMCriterion
    from engine.deim.matcher import HungarianMatcher

    out, targets = criterion_case()
    out["enc_meta"] = {"class_agnostic": False}
    matcher = HungarianMatcher({"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True, alpha=0.25,
                               gamma=2.0)
    criterion = DEIMCriterion(
        matcher, weight_dict={"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2}, losses=["mal", "boxes"],
        alpha=0.75, gamma=1.5, num_classes=5, use_uni_set=False,
    )
    losses = criterion(out, targets)
    assert all(v.dtype == torch.float64 for v in losses.values())
    return {"dtype": "float64", "losses": {k: v.item() for k, v in losses.items()},
            "total": sum(v.item() for v in losses.values())}


def job_lr():
    from engine.optim.lr_scheduler import FlatCosineLRScheduler
    from engine.optim.warmup import LinearWarmup

    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": [params[0]]}, {"params": [params[1]], "lr": 2e-5}], lr=2e-4)
    steps = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1000], gamma=0.1)
    LinearWarmup(steps, warmup_duration=2000)  # its constructor sets the LR of the first iteration
    scheduler = FlatCosineLRScheduler(optimizer, 0.5, 100, total_epochs=60, warmup_iter=2000, flat_epochs=34,
                                      no_aug_epochs=2)
    used = {}
    for iteration in range(6000):
        used[iteration] = [g["lr"] for g in optimizer.param_groups]
        scheduler.step(iteration, optimizer)
    return {
        "iters_per_epoch": 100, "epochs": 60, "flat_epochs": 34, "no_aug_epochs": 2, "warmup_iters": 2000,
        "lr_gamma": 0.5, "base_lrs": [2e-4, 2e-5], "lr": {str(i): used[i] for i in LR_ITERATIONS},
    }


def job_ema():
    from engine.optim.ema import ModelEMA

    ema = ModelEMA(torch.nn.Linear(1, 1), decay=0.9999, warmups=2000)
    return {"decay": 0.9999, "warmups": 2000, "d": {str(u): ema.decay_fn(u) for u in EMA_UPDATES}}


def job_policy():
    from engine.data.dataloader import BatchImageCollateFunction
    from engine.data.transforms.container import Compose

    names = ["Mosaic", "RandomPhotometricDistort", "RandomZoomOut", "RandomIoUCrop", "SanitizeBoundingBoxes",
             "RandomHorizontalFlip", "Resize"]
    ran = []

    def recorder(name):
        def forward(self, *inputs):
            ran.append(name)
            return inputs if len(inputs) > 1 else inputs[0]
        return type(name, (torch.nn.Module,), {"forward": forward})()

    policy = {"name": "stop_epoch", "epoch": [2, 6, 10], "ops": names[:4]}
    compose = Compose([recorder(n) for n in names], policy=policy, mosaic_prob=0.5)
    collate = BatchImageCollateFunction(stop_epoch=10, base_size=64, base_size_repeat=1, mixup_prob=0.5,
                                        mixup_epochs=[2, 6])
    table = []
    for epoch in range(12):
        row = {"epoch": epoch}
        for key, draw in (("mosaic_drawn", 0.0), ("mosaic_not_drawn", 0.99)):
            ran.clear()
            with mock.patch("random.random", return_value=draw):
                compose(None, {}, types.SimpleNamespace(epoch=epoch))
            row[key] = list(ran)
        collate.set_epoch(epoch)
        empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "area": torch.zeros(0)}
        items = [(torch.zeros(3, 64, 64), empty)] * 2
        with mock.patch("random.random", return_value=0.0), mock.patch("random.choice", return_value=32):
            images, targets = collate(items)
        row["mixup"] = "mixup" in targets[0]
        row["multi_scale"] = images.shape[-1] != 64
        table.append(row)
    return {"policy_epoch": [2, 6, 10], "mixup_epochs": [2, 6], "multi_scale_stop_epoch": 10, "epochs": table}


def job_mixup():
    from engine.data.dataloader import BatchImageCollateFunction

    images, boxes, labels = mixup_inputs()
    collate = BatchImageCollateFunction(mixup_prob=0.5, mixup_epochs=[0, 5])
    collate.set_epoch(1)
    targets = [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(c), "area": torch.ones(len(c))}
               for b, c in zip(boxes, labels)]
    with mock.patch("random.random", return_value=0.1), mock.patch("random.uniform", return_value=0.4812345678):
        mixed, new_targets = collate.apply_mixup(torch.from_numpy(images).float() / 255, targets)
    return (
        {"beta": 0.481235, "boxes": [t["boxes"].tolist() for t in new_targets],
         "labels": [t["labels"].tolist() for t in new_targets], "weights": [t["mixup"].tolist() for t in new_targets]},
        {"mixup_images": mixed.numpy()},
    )


def job_mosaic():
    from PIL import Image
    from torchvision import tv_tensors

    from engine.data.transforms.mosaic import Mosaic

    images, boxes, labels = mosaic_inputs()

    def item(i):
        h, w = MOSAIC_SIZES[i]
        target = {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes[i]), format="XYXY", canvas_size=(h, w)),
                  "labels": torch.from_numpy(labels[i])}
        return Image.fromarray(images[i]), target

    mosaic = Mosaic(output_size=32, rotation_range=10, translation_range=[0.1, 0.1], scaling_range=[0.5, 1.5],
                    probability=1.0, fill_value=0, use_cache=False)
    mosaic.affine_transform.make_params = lambda flat_inputs: dict(MOSAIC_AFFINE)

    class Dataset:
        load_item = staticmethod(item)

        def __len__(self):
            return 4

    with mock.patch("random.choices", return_value=[2, 1, 3]):
        image, target, _ = mosaic(*item(0), Dataset())
    arrays = {f"mosaic_image_{i}": images[i] for i in range(4)}
    arrays["mosaic_output"] = np.asarray(image)
    return (
        {"indices": [2, 1, 3], "affine": {**MOSAIC_AFFINE, "translate": list(MOSAIC_AFFINE["translate"])},
         "output_size": 32, "boxes": target["boxes"].tolist(), "labels": target["labels"].tolist()},
        arrays,
    )


def job_rtdetrv2_r18(official):
    import engine  # noqa: F401  (registers every official module)
    from engine.core import YAMLConfig

    patches = float64_patches.install("engine.deim", "sincos")
    config = "configs/deim_rtdetrv2/deim_r18vd_120e_coco.yml"
    cfg = YAMLConfig(str(official / config), PResNet={"pretrained": False}, RTDETRTransformerv2={"num_denoising": 0})
    model, criterion = cfg.model, cfg.criterion
    assert model.decoder.num_denoising == 0 and type(criterion).__name__ == "DEIMCriterion"
    state_dict = {k: list(v.shape) for k, v in model.state_dict().items()}
    weights_crc32 = _load_synth_weights(model)
    model.double().train()
    criterion.train()
    images = torch.stack([_image_tensor(seed, torch.float64) for seed in (1, 2)])
    targets = train_targets(torch.float64)
    outputs = model(images, targets=targets)
    metas = {"epoch": 0, "step": 0, "global_step": 0, "epoch_step": 1}
    losses = criterion(outputs, targets, **metas)
    assert all(v.dtype == torch.float64 for v in losses.values())
    matched = criterion.matcher({k: outputs[k] for k in ("pred_logits", "pred_boxes")}, targets)["indices"]
    return {
        "config": config,
        "overrides": {"PResNet.pretrained": False, "RTDETRTransformerv2.num_denoising": 0},
        "dtype": "float64",
        "patches": patches,
        "mode": "model.double().train() (BatchNorm with batch statistics), criterion from the config",
        "weight_seed": 0,
        "weights_crc32": weights_crc32,
        "image_seeds": [1, 2],
        "targets": "golden.dfine_inputs.train_targets(float64)",
        "metas": metas,
        "weight_dict": dict(criterion.weight_dict),
        "losses": {k: v.item() for k, v in losses.items()},
        "total": sum(v.item() for v in losses.values()),
        "matcher_indices_last_layer": [[src.tolist(), tgt.tolist()] for src, tgt in matched],
        "state_dict": state_dict,
    }


def main(argv):
    import torchvision

    if len(argv) != 1:
        sys.exit(__doc__)
    official = Path(argv[0]).resolve()
    sys.path.insert(0, str(official))
    sys.modules.setdefault("calflops", types.SimpleNamespace(calculate_flops=None))  # imported, not used

    golden = {
        "official_repo": "Intellindust-AI-Lab/DEIM",
        "official_commit": official_commit(official),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "command": "PYTHONDONTWRITEBYTECODE=1 python tools/golden/make_deim_golden.py <DEIM clone>",
        "dtype": "float64 (criterion); lr, ema and policy are Python numbers, mixup float32, mosaic uint8",
        "criterion": job_criterion(),
        "lr": job_lr(),
        "ema": job_ema(),
        "policy": job_policy(),
    }
    arrays = {}
    golden["mixup"], more = job_mixup()
    arrays.update(more)
    golden["mosaic"], more = job_mosaic()
    arrays.update(more)
    (GOLDEN_DIR / "deim_golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN_DIR / "deim_golden.npz", **arrays)
    print("wrote deim_golden.json and deim_golden.npz")
    provenance = {k: golden[k] for k in ("official_repo", "official_commit", "torch", "torchvision", "command")}
    model = {**provenance, **job_rtdetrv2_r18(official)}
    (GOLDEN_DIR / "deim_rtdetrv2_r18_train.json").write_text(json.dumps(model, indent=1) + "\n")
    print("wrote deim_rtdetrv2_r18_train.json")


if __name__ == "__main__":
    main(sys.argv[1:])
