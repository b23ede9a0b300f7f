"""DN-DETR (configs/dn_dab_detr_*.py) against the official IDEA-Research/DN-DETR DN-DAB-DETR, in float64.

The goldens (``tests/golden/dn_dab_detr_golden.json`` / ``.npz``) come from the official
``main.build_model_main`` with ``-m dn_dab_detr --use_dn`` (R50; and R50 with ``--dilation --num_patterns
3``), 91 classes, run in float64 by ``tools/golden/make_dn_dab_detr_golden.py`` (its docstring says what
runs and how) on synthetic weights and a padded batch of two images of different sizes, rebuilt here by
``tests/golden/dino_inputs.py`` and ``dn_dab_detr_inputs.py``. The official weights go through our
converter (``official_to_ours`` with ``DN_DAB_DETR_LAYOUT``, then the strict check of
``convert_official_state_dict``) into the model built from our config.

Tolerances. Both sides compute in float64, except the query sine embedding's frequencies, which both
compute in float32 in the same way (exact on one machine; across CPU kernel ISAs a float32 ``pow`` may
differ by an ulp). The measured differences are float64 rounding (given per test, on AMD EPYC with
AVX-512); the tolerances (1e-9 for detections and losses, 1e-8 for the losses of 20 training steps,
1e-5 for the parameter norms after them) leave orders of magnitude of room for that, while a real
difference of the model moves the values by far more (a GIoU without DETR's 1e-6 epsilon: about 1e-5
of the GIoU terms).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.solver import LRMultiplier
from detectron2.utils.events import EventStorage

from dfine.checkpoint.official import DN_DAB_DETR_LAYOUT, official_to_ours
from dfine.config import load_config
from dfine.engine.trainer import Trainer
from dfine.solver import StepDecay
from golden.compare import assert_all_close
from golden.dn_dab_detr_inputs import dn_dab_detr_weights
from test_parity_dino import _SeededBatches, inputs, load_in_float64

GOLDEN = Path(__file__).parent / "golden" / "dn_dab_detr_golden"
CONFIGS = {"r50": "configs/dn_dab_detr_r50_50ep.py", "r50_dc5_3pat": "configs/dn_dab_detr_r50_dc5_3pat_12ep.py"}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def golden():
    meta = json.loads(GOLDEN.with_suffix(".json").read_text())
    return meta, np.load(GOLDEN.with_suffix(".npz"))


def build(meta, name):
    """Our model of the official ``name`` with the golden's synthetic weights, in float64."""
    cfg = load_config(str(ROOT / CONFIGS[name]), [f"model.decoder.num_classes={meta['num_classes']}"])
    entry = meta["models"][name]
    official = dn_dab_detr_weights(entry["state_dict"], entry["aliases"], meta["weight_seed"])
    return load_in_float64(instantiate(cfg.model), cfg, official_to_ours(official, DN_DAB_DETR_LAYOUT)), cfg


def official_names(losses: dict, num_layers: int = 6) -> dict:
    """Our loss keys in the official names: ``loss_focal`` is ``loss_ce``; ``_aux_{i}`` is ``_{i}``; the
    denoising ``loss_X_dn_{i}`` is ``tgt_loss_X_{i}``, the last layer's ``tgt_loss_X``."""
    out = {}
    for key, value in losses.items():
        key = key.replace("loss_focal", "loss_ce").replace("_aux_", "_")
        if "_dn_" in key:
            key, layer = key.split("_dn_")
            key = "tgt_" + key + ("" if int(layer) == num_layers - 1 else f"_{layer}")
        out[key] = value
    return out


@pytest.mark.parametrize("name", ["r50", "r50_dc5_3pat"])
def test_parameter_count_and_conversion(golden, name):
    """Parameters equal the official build's (43,694,977 for R50; 43,695,745 with 3 patterns), and every
    official key converts (the strict check inside :func:`build`)."""
    meta, _ = golden
    model, _ = build(meta, name)
    assert sum(p.numel() for p in model.parameters()) == meta["models"][name]["num_parameters"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == meta["models"][name]["num_trainable"]


@pytest.mark.parametrize("name", ["r50", "r50_dc5_3pat"])
def test_eval_detections(golden, name):
    """The top-300 detections of the padded batch: the same classes in the same order, scores to 1e-9
    relative (measured: 6.7e-16), boxes to 1e-3 pixels (Detectron2's ``Boxes`` hold float32, whose
    rounding at a few hundred pixels is 3e-5; measured: 1.5e-5)."""
    meta, arrays = golden
    model, _ = build(meta, name)
    model.eval()
    with torch.no_grad():
        results = model(inputs(meta))
    for i, result in enumerate(results):
        instances = result["instances"]
        np.testing.assert_array_equal(instances.pred_classes.numpy(), arrays[f"{name}/labels_{i}"])
        assert_all_close({"scores": instances.scores}, {"scores": arrays[f"{name}/scores_{i}"]}, rtol=1e-9)
        np.testing.assert_allclose(instances.pred_boxes.tensor.numpy(), arrays[f"{name}/boxes_{i}"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("name,denoising", [("r50", True), ("r50", False), ("r50_dc5_3pat", True)])
def test_training_losses(golden, name, denoising):
    """Every weighted loss term of one training forward, with denoising (the same noise: the official
    draws after ``torch.manual_seed``, reproduced) and without (the official run builds its queries as
    in evaluation; its denoising terms are then zeros). Measured: 6.5e-16 relative; tolerance 1e-9."""
    meta, _ = golden
    model, _ = build(meta, name)
    if not denoising:
        model.decoder.denoising = None
    model.train()
    torch.manual_seed(meta["train_noise_seed"])
    losses = official_names(model(inputs(meta, with_targets=True)))
    expected = meta["models"][name]["train"]["dn" if denoising else "no_dn"]["losses"]
    if not denoising:
        assert all(value == 0 for key, value in expected.items() if key.startswith("tgt_"))
        expected = {k: v for k, v in expected.items() if not k.startswith("tgt_")}
    assert_all_close(losses, expected, rtol=1e-9)


def test_training_trajectory(golden):
    """20 steps of our Trainer (the config's AdamW parameter groups, clipping 0.1, StepDecay with the
    drop after step 10) follow the official loop: every loss term at every step (measured 4.0e-15
    relative, tolerance 1e-8) and the norm of every parameter at the end (measured 5.9e-8, tolerance
    1e-5: Adam divides by the root of the squared gradients, so parameters whose gradients are nearly
    zero move by amounts that float64 rounding of those gradients changes relatively more)."""
    meta, _ = golden
    reference = meta["models"]["r50"]["trajectory"]
    model, cfg = build(meta, "r50")
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert sorted(g["lr"] for g in optimizer.param_groups) == sorted([reference["lr_backbone"], reference["lr"]])
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
    assert_all_close(actual, expected, rtol=1e-8)
    # named_parameters() lists the shared box head once, under its alias transformer.decoder.bbox_embed,
    # which the converter wants next to its owner bbox_embed.
    norms = {k: torch.tensor(v) for k, v in reference["parameter_norms"].items()}
    norms.update({k.replace("transformer.decoder.", "", 1): v for k, v in norms.items()
                  if k.startswith("transformer.decoder.bbox_embed.")})
    converted = official_to_ours(norms, DN_DAB_DETR_LAYOUT)
    ours = {k: v.detach().norm() for k, v in model.state_dict(keep_vars=True).items()
            if isinstance(v, torch.nn.Parameter)}
    assert_all_close({k: ours[k] for k in converted}, converted, rtol=1e-5)
