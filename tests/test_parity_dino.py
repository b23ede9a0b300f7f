"""DINO (configs/dino_r50_{4,5}scale_*.py) against the official IDEA-Research/DINO, in float64.

The goldens (``tests/golden/dino_golden.json`` / ``.npz``) come from the official ``build_dino`` with
``config/DINO/DINO_4scale.py`` and ``DINO_5scale.py`` (91 classes), run in float64 by
``tools/golden/make_dino_golden.py`` (its docstring says what runs and how) on synthetic weights and a
padded batch of two images of different sizes, rebuilt here by ``tests/golden/dino_inputs.py``. The
official weights go through our converter (``official_to_ours`` with ``DINO_LAYOUT``, then the strict check of
``convert_official_state_dict``) into the model built from our config.

Tolerances. Both sides compute in float64, except a few steps that both compute in float32 whatever
the dtype, in the same way (the proposals' anchor grid and its logit, the query sine embedding's
frequencies): on one machine those are bit-identical, but across CPU kernel ISAs a float32 ``log``
or ``pow`` may differ by an ulp, a relative 1e-7 of an anchor that the network would carry to its
outputs. The tolerances leave room for that (1e-6 for detections and losses, 1e-5 over 20 training
steps, against the issue's 1e-4 and 1e-5), while a real difference of the model moves the values by
far more (a GIoU without DETR's 1e-6 epsilon: 1e-5; the normalisation constants rounded to float32:
3e-8 of the backbone maps, 2e-9 of the scores). Each test gives the differences measured on AVX-512
(AMD EPYC) and with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.solver import LRMultiplier
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from dfine.checkpoint.official import DINO_LAYOUT, convert_official_state_dict, official_to_ours
from dfine.config import load_config
from dfine.engine.trainer import Trainer
from dfine.solver import StepDecay
from golden.compare import assert_all_close
from golden.dino_inputs import official_weights, synth_batch

GOLDEN = Path(__file__).parent / "golden" / "dino_golden"
CONFIGS = {"4scale": "configs/dino_r50_4scale_12ep.py", "5scale": "configs/dino_r50_5scale_12ep.py"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def golden():
    meta = json.loads(GOLDEN.with_suffix(".json").read_text())
    return meta, np.load(GOLDEN.with_suffix(".npz"))


def load_in_float64(model, cfg, converted: dict):
    """``model`` with the official weights ``converted`` into our names (checked key for key and shape for
    shape by ``convert_official_state_dict``), in float64."""
    model.load_state_dict(convert_official_state_dict(converted, model), strict=True)
    model.double()
    # The normalisation buffers are made in float32, and .double() keeps that rounding of the ImageNet
    # statistics (2.5e-8 relative); the official float64 input is normalised with float64 values.
    for name in ("pixel_mean", "pixel_std"):
        getattr(model, name).copy_(torch.tensor(cfg.model[name], dtype=torch.float64).view(-1, 1, 1))
    return model


def build(meta, name):
    """Our model of the official ``name`` with the golden's synthetic weights, in float64."""
    cfg = load_config(str(ROOT / CONFIGS[name]), [f"model.decoder.num_classes={meta['num_classes']}"])
    entry = meta["models"][name]
    official = official_weights(entry["state_dict"], entry["aliases"], meta["weight_seed"])
    return load_in_float64(instantiate(cfg.model), cfg, official_to_ours(official, DINO_LAYOUT)), cfg


def inputs(meta, with_targets=False):
    images, targets = synth_batch(meta["image_sizes"], meta["image_seeds"], meta["num_targets"], meta["num_classes"],
                                  meta["target_seed"])
    batch = []
    for image, target in zip(images, targets):
        h, w = image.shape[:2]
        x = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(), "height": h, "width": w}
        if with_targets:
            instances = Instances((h, w))
            cx, cy, bw, bh = target["boxes"].unbind(-1)
            xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
            # Boxes() casts to float32; the golden's targets are float64.
            instances.gt_boxes = Boxes(xyxy)
            instances.gt_boxes.tensor = xyxy * torch.tensor([w, h, w, h], dtype=torch.float64)
            instances.gt_classes = target["labels"]
            x["instances"] = instances
        batch.append(x)
    return batch


def official_names(losses: dict, num_layers: int = 6) -> dict:
    """Our loss keys in the official names: ``loss_focal`` is ``loss_ce``; ``_aux_{i}`` is ``_{i}``, the
    last denoising layer ``_dn_{L-1}`` is ``_dn``, the proposals ``_enc_0`` are ``_interm``."""
    out = {}
    for key, value in losses.items():
        key = key.replace("loss_focal", "loss_ce").replace("_aux_", "_").replace("_enc_0", "_interm")
        out[key.replace(f"_dn_{num_layers - 1}", "_dn")] = value
    return out


@pytest.mark.parametrize("name", ["4scale", "5scale"])
def test_parameter_count_and_conversion(golden, name):
    """Parameters equal the official build's (46,893,182 for 4-scale, 47,255,806 for 5-scale), and
    every official key converts (the strict check inside :func:`build`)."""
    meta, _ = golden
    model, _ = build(meta, name)
    assert sum(p.numel() for p in model.parameters()) == meta["models"][name]["num_parameters"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == meta["models"][name]["num_trainable"]


@pytest.mark.parametrize("name", ["4scale", "5scale"])
def test_eval_detections(golden, name):
    """The top-300 detections of the padded batch: the same classes in the same order, scores to 1e-6
    relative (measured: 1.1e-15), boxes to 1e-3 pixels (Detectron2's ``Boxes`` hold float32, whose
    rounding at a few hundred pixels is 3e-5; measured: 1.5e-5)."""
    meta, arrays = golden
    model, _ = build(meta, name)
    model.eval()
    with torch.no_grad():
        results = model(inputs(meta))
    for i, result in enumerate(results):
        instances = result["instances"]
        np.testing.assert_array_equal(instances.pred_classes.numpy(), arrays[f"{name}/labels_{i}"])
        assert_all_close({"scores": instances.scores}, {"scores": arrays[f"{name}/scores_{i}"]}, rtol=1e-6)
        np.testing.assert_allclose(instances.pred_boxes.tensor.numpy(), arrays[f"{name}/boxes_{i}"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("denoising", [True, False])
def test_training_losses(golden, denoising):
    """Every weighted loss term of one training forward, with denoising (the same noise: the official
    draws after ``torch.manual_seed``, reproduced) and without (the official dn terms are then zeros).
    Measured: 3.2e-15 relative; tolerance 1e-6."""
    meta, _ = golden
    model, _ = build(meta, "4scale")
    if not denoising:
        model.decoder.denoising = None
    model.train()
    torch.manual_seed(meta["train_noise_seed"])
    losses = official_names(model(inputs(meta, with_targets=True)))
    expected = meta["models"]["4scale"]["train"]["dn" if denoising else "no_dn"]["losses"]
    if not denoising:
        assert all(value == 0 for key, value in expected.items() if "_dn" in key)
        expected = {k: v for k, v in expected.items() if "_dn" not in k}
    assert_all_close(losses, expected, rtol=1e-6)


class _SeededBatches:
    """The same batch every step, the denoising noise of step ``s`` drawn after ``manual_seed(seed + s)``
    (as the golden's official loop)."""

    def __init__(self, batch, seed):
        self.batch, self.seed = batch, seed

    def __iter__(self):
        step = 0
        while True:
            torch.manual_seed(self.seed + step)
            yield self.batch
            step += 1


def test_training_trajectory(golden):
    """20 steps of our Trainer (the config's AdamW parameter groups, clipping 0.1, StepDecay with the
    drop after step 10) follow the official loop: every loss term at every step and the norm of
    every parameter at the end. Measured: losses 1.1e-14 relative, tolerance 1e-5 (the issue asks
    1e-4); parameter norms 5.8e-8, tolerance 1e-5 (Adam divides by the root of the squared gradients,
    so parameters whose gradients are nearly zero move by amounts that float64 rounding of those
    gradients changes relatively more)."""
    meta, _ = golden
    reference = meta["models"]["4scale"]["trajectory"]
    model, cfg = build(meta, "4scale")
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == [reference["lr_backbone"], reference["lr"]]
    steps = len(reference["steps"])
    schedule = StepDecay(max_iter=steps, iters_per_epoch=meta["lr_drop_after"], drop_epochs=[1])
    scheduler = LRMultiplier(optimizer, schedule, max_iter=steps)
    batches = _SeededBatches(inputs(meta, with_targets=True), meta["train_noise_seed"])
    trainer = Trainer(model=model, data_loader=batches, optimizer=optimizer,
                      clip_grad_max_norm=cfg.train.clip_grad.max_norm)
    recorded = []
    model.register_forward_hook(lambda module, args, output: recorded.append(official_names(output)))
    with EventStorage(0) as storage:
        for step in range(steps):
            storage.iter = step
            trainer.run_step()
            scheduler.step()
    actual, expected = {}, {}
    for step, (ours, theirs) in enumerate(zip(recorded, reference["steps"])):
        actual.update({f"{step}/{k}": v for k, v in ours.items()})
        expected.update({f"{step}/{k}": v for k, v in theirs["losses"].items()})
    assert_all_close(actual, expected, rtol=1e-5)
    # The official names are those of named_parameters(): the shared heads appear once, under their
    # alias transformer.decoder.{bbox,class}_embed.0, which the converter wants next to its owner.
    norms = {k: torch.tensor(v) for k, v in reference["parameter_norms"].items()}
    shared = ("transformer.decoder.bbox_embed.", "transformer.decoder.class_embed.")
    norms.update({k.replace("transformer.decoder.", "", 1): v for k, v in norms.items() if k.startswith(shared)})
    converted = official_to_ours(norms, DINO_LAYOUT)
    ours = {k: v.detach().norm() for k, v in model.state_dict(keep_vars=True).items()
            if isinstance(v, torch.nn.Parameter)}
    assert_all_close({k: ours[k] for k in converted}, converted, rtol=1e-5)
