"""DAB-Deformable-DETR and DN-DAB-Deformable-DETR (configs/dab_deformable_detr_r50_50ep.py,
configs/dn_dab_deformable_detr_r50_50ep.py) against the official IDEA-Research/DN-DETR
``dn_dab_deformable_detr`` without and with ``--use_dn``, in float64.

The goldens (``tests/golden/dab_deformable_detr_golden.json`` / ``.npz``) come from the official
``main.build_model_main`` (``-m dn_dab_deformable_detr --transformer_activation relu``, 91 classes),
run in float64 by ``tools/golden/make_dab_deformable_detr_golden.py`` (its docstring says what runs,
and how the official model runs with denoising off) on synthetic weights and a padded batch of two
images of different sizes, rebuilt here by ``tests/golden/dino_inputs.py``. The official weights go
through our converter (``official_to_ours`` with ``DAB_DEFORMABLE_DETR_LAYOUT``, then the strict check of
``convert_official_state_dict``) into the model built from our config.

Tolerances. Both sides compute in float64, except the query sine embedding's frequencies, which both
compute in float32 in the same way (bit-identical on one machine; across CPU kernel ISAs a float32
``pow`` may differ by an ulp, a relative 1e-7 of one sine argument; unlike DINO there are no float32
anchors). The tolerances (1e-9 for scores and losses, 1e-8 for the losses over 20 training steps, 1e-5
for the final parameter norms) leave room for that over the measured differences, which each test
gives, and stay below what a real difference of the model moved in the DINO parity (a GIoU without
DETR's 1e-6 epsilon: 1e-5 of the losses; the normalisation constants rounded to float32: 2e-9 of the
scores).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate
from detectron2.solver import LRMultiplier
from detectron2.utils.events import EventStorage

from dfine.checkpoint.official import DAB_DEFORMABLE_DETR_LAYOUT, official_to_ours
from dfine.config import load_config
from dfine.engine.trainer import Trainer
from dfine.solver import StepDecay
from golden.compare import assert_all_close
from golden.dino_inputs import official_weights
from test_parity_dino import _SeededBatches, inputs, load_in_float64

GOLDEN = Path(__file__).parent / "golden" / "dab_deformable_detr_golden"
CONFIGS = {False: "configs/dab_deformable_detr_r50_50ep.py", True: "configs/dn_dab_deformable_detr_r50_50ep.py"}
ROOT = Path(__file__).resolve().parents[1]
# The official label_enc (92 x 255), which every official build has and only its denoising uses.
LABEL_ENC = "label_enc.weight"


@pytest.fixture(scope="module")
def golden():
    meta = json.loads(GOLDEN.with_suffix(".json").read_text())
    return meta, np.load(GOLDEN.with_suffix(".npz"))


def build(meta, denoising=False):
    """Our model of the official one (without or with DN-DETR's denoising) with the golden's synthetic
    weights, in float64."""
    cfg = load_config(str(ROOT / CONFIGS[denoising]), [f"model.decoder.num_classes={meta['num_classes']}"])
    official = official_weights(meta["state_dict"], meta["aliases"], meta["weight_seed"])
    converted = official_to_ours(official, DAB_DEFORMABLE_DETR_LAYOUT, denoising=denoising)
    return load_in_float64(instantiate(cfg.model), cfg, converted), cfg


def official_names(losses: dict, num_layers: int = 6) -> dict:
    """Our loss keys in the official names: ``loss_focal`` is ``loss_ce``, ``_aux_{i}`` is ``_{i}``; the
    denoising losses ``loss_*_dn_{i}`` are ``tgt_loss_*_{i}``, the last layer's without suffix."""
    out = {}
    for key, value in losses.items():
        key = key.replace("loss_focal", "loss_ce").replace("_aux_", "_")
        if "_dn_" in key:
            key = "tgt_" + key.replace(f"_dn_{num_layers - 1}", "").replace("_dn_", "_")
        out[key] = value
    return out


@pytest.mark.parametrize("denoising", [False, True])
def test_parameter_count_and_conversion(golden, denoising):
    """With denoising, parameters equal the official build's (47,429,154); without, less its denoising
    label embedding (92 x 255 = 23,460), which the converter then leaves out; every other official key
    converts (the strict check inside :func:`build`)."""
    meta, _ = golden
    model, _ = build(meta, denoising)
    label_enc = 0 if denoising else int(np.prod(meta["state_dict"][LABEL_ENC]))
    assert meta["num_parameters"] == 47_429_154 and label_enc in (0, 23_460)
    assert sum(p.numel() for p in model.parameters()) == meta["num_parameters"] - label_enc
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == meta["num_trainable"] - label_enc


def top_k_detections(model, cfg, meta, top_k):
    """Our detections of the golden's batch in eval, the best ``top_k`` per image (the config keeps the
    official ``PostProcess``'s 100)."""
    assert cfg.model.num_top_queries == meta["eval"]["official_top_k"]
    model.num_top_queries = top_k
    model.eval()
    with torch.no_grad():
        return model(inputs(meta))


@pytest.mark.parametrize("top_k", [300, 100])
def test_eval_detections(golden, top_k):
    """The top-300 detections of the padded batch, and the config's top 100 (the official
    ``PostProcess``): the same classes in the same order, scores to 1e-9 relative (measured: 6.1e-16),
    boxes to 1e-3 pixels (Detectron2's ``Boxes`` hold float32, whose rounding at a few hundred pixels is
    3e-5; measured: 1.5e-5)."""
    meta, arrays = golden
    for i, result in enumerate(top_k_detections(*build(meta), meta, top_k)):
        instances = result["instances"]
        np.testing.assert_array_equal(instances.pred_classes.numpy(), arrays[f"labels_{i}"][:top_k])
        assert_all_close({"scores": instances.scores}, {"scores": arrays[f"scores_{i}"][:top_k]}, rtol=1e-9)
        np.testing.assert_allclose(instances.pred_boxes.tensor.numpy(), arrays[f"boxes_{i}"][:top_k], rtol=0,
                                   atol=1e-3)


@pytest.mark.parametrize("denoising", [False, True])
def test_training_losses(golden, denoising):
    """Every weighted loss term of one training forward, without denoising and with it (the same noise:
    the official draws after ``torch.manual_seed``, reproduced). Measured: 1.5e-15 relative without,
    7.8e-16 with; tolerance 1e-9."""
    meta, _ = golden
    model, _ = build(meta, denoising)
    model.train()
    torch.manual_seed(meta["train_noise_seed"])
    losses = official_names(model(inputs(meta, with_targets=True)))
    assert_all_close(losses, meta["train"]["dn" if denoising else "no_dn"]["losses"], rtol=1e-9)


def run_trajectory(model, cfg, meta, reference, rename=official_names):
    """Our Trainer for the golden's steps on its batch (the config's AdamW parameter groups, whose
    learning rates must be the golden's ``lr*`` values, clipping 0.1, StepDecay with the drop after
    ``lr_drop_after`` steps), the noise of step ``s`` drawn after ``manual_seed(train_noise_seed + s)``
    (if the golden has one); returns the loss terms of every step, renamed by ``rename``."""
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert sorted(g["lr"] for g in optimizer.param_groups) == sorted(v for k, v in reference.items()
                                                                      if k.startswith("lr"))
    assert all(g["weight_decay"] == reference["weight_decay"] for g in optimizer.param_groups)
    assert cfg.train.clip_grad.max_norm == reference["clip_max_norm"]
    steps = len(reference["steps"])
    schedule = StepDecay(max_iter=steps, iters_per_epoch=meta["lr_drop_after"], drop_epochs=[1])
    scheduler = LRMultiplier(optimizer, schedule, max_iter=steps)
    batches = _SeededBatches(inputs(meta, with_targets=True), meta.get("train_noise_seed", 0))
    trainer = Trainer(model=model, data_loader=batches, optimizer=optimizer,
                      clip_grad_max_norm=cfg.train.clip_grad.max_norm)
    recorded = []
    model.register_forward_hook(lambda module, args, output: recorded.append(rename(output)))
    with EventStorage(0) as storage:
        for step in range(steps):
            storage.iter = step
            trainer.run_step()
            scheduler.step()
    return recorded


def official_norms(reference, denoising: bool) -> dict:
    """The official parameter norms in our names. ``named_parameters()`` lists each box head once,
    under its alias ``transformer.decoder.bbox_embed.{l}``, which the converter wants as ``bbox_embed.{l}``."""
    norms = {k.replace("transformer.decoder.bbox_embed.", "bbox_embed.", 1): torch.tensor(v)
             for k, v in reference["parameter_norms"].items()}
    return official_to_ours(norms, DAB_DEFORMABLE_DETR_LAYOUT, denoising=denoising)


@pytest.mark.parametrize("denoising", [False, True])
def test_training_trajectory(golden, denoising):
    """20 steps of our Trainer, without and with denoising, follow the official loop: every loss term
    at every step (measured: 3.3e-15 relative without, 2.7e-15 with; tolerance 1e-8) and the norm of
    every parameter at the end (measured: 5.9e-8 both; tolerance 1e-5: Adam divides by the root of the
    squared gradients, so parameters whose gradients are nearly zero move by amounts that float64
    rounding of those gradients changes relatively more)."""
    meta, _ = golden
    reference = meta["trajectory"]["dn" if denoising else "no_dn"]
    model, cfg = build(meta, denoising)
    recorded = run_trajectory(model, cfg, meta, reference)
    assert_trajectory_close(model, recorded, reference, official_norms(reference, denoising=denoising))


def assert_trajectory_close(model, recorded, reference, norms, loss_rtol=1e-8):
    """Every loss term of every step within ``loss_rtol`` of the golden's, and the norm of every parameter
    at the end within 1e-5 of ``norms`` (the official ones in our names)."""
    actual, expected = {}, {}
    for step, (ours, theirs) in enumerate(zip(recorded, reference["steps"])):
        actual.update({f"{step}/{k}": v for k, v in ours.items()})
        expected.update({f"{step}/{k}": v for k, v in theirs["losses"].items()})
    assert len(recorded) == len(reference["steps"])
    assert_all_close(actual, expected, rtol=loss_rtol)
    ours = {k: v.detach().norm() for k, v in model.state_dict(keep_vars=True).items()
            if isinstance(v, torch.nn.Parameter)}
    assert set(norms) == set(ours)
    assert_all_close({k: ours[k] for k in norms}, norms, rtol=1e-5)
