"""Two-stage Deformable-DETR with iterative box refinement (configs/deformable_detr_r50_50ep.py) against
the official fundamentalvision/Deformable-DETR (``main.py --with_box_refine --two_stage``), in float64.

The golden (``tests/golden/deformable_detr_golden.json`` / ``.npz``) comes from the official
``models.build_model`` (91 classes), run in float64 by ``tools/golden/make_deformable_detr_golden.py``
(its docstring says what runs and which run-time stand-ins it needs) on synthetic weights and a padded
batch of two images of different sizes, rebuilt here by ``tests/golden/dino_inputs.py``. The official
weights go through our converter (``official_to_ours`` with ``DEFORMABLE_DETR_LAYOUT``, then the strict
check of ``convert_official_state_dict``) into the model built from our config. The training runs of
both sides use dropout 0 (random masks cannot be matched draw for draw); eval has none anyway.

Tolerances. Both sides compute in float64, except the proposals' anchors (a float32 grid and its float32
logits) and the proposal sine embedding's frequencies, which both compute in float32 in the same way, as
DINO's: bit-identical on one machine, while across CPU kernel ISAs a float32 ``log`` or ``pow`` may
differ by an ulp (a relative 6e-8 of one anchor, which every later step carries). Measured here, natively
(AVX-512) and with ``ATEN_CPU_CAPABILITY=default``, every difference is at float64 rounding (each test
gives it). The tolerances are DINO's parity tolerances, which leave room for those ulps: 1e-6 for the
scores and the loss terms, 1e-5 over 20 training steps. They stay below what a real difference of the
model moves: the GIoU with DETR's 1e-6 epsilon instead of none moves the loss terms by 1.0e-5, the box
head's ``inverse_sigmoid`` epsilon 1e-3 (DINO's) instead of 1e-5 by 1.7e-3; the focal loss over the
top-300 proposals instead of every token's, or the top-k by the max logit instead of the first, change
the results entirely.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import instantiate

from dfine.checkpoint.official import (
    CheckpointMismatchError,
    DEFORMABLE_DETR_LAYOUT,
    coco_category_ids,
    convert_official_state_dict,
    convert_renamed_state_dict,
    official_layout,
    official_to_ours,
)
from dfine.config import load_config
from golden.compare import assert_all_close
from golden.dino_inputs import official_weights
from golden.synth import fingerprint
from test_parity_dab_deformable_detr import assert_trajectory_close, run_trajectory, top_k_detections
from test_parity_dino import inputs, load_in_float64

GOLDEN = Path(__file__).parent / "golden" / "deformable_detr_golden"
CONFIG = "configs/deformable_detr_r50_50ep.py"
ROOT = Path(__file__).resolve().parents[1]
NO_DROPOUT = ["model.encoder.dropout=0.0", "model.decoder.layer.dropout=0.0"]


@pytest.fixture(scope="module")
def golden():
    meta = json.loads(GOLDEN.with_suffix(".json").read_text())
    return meta, np.load(GOLDEN.with_suffix(".npz"))


def build(meta, overrides=()):
    """Our model of the official one with the golden's synthetic weights, in float64."""
    cfg = load_config(str(ROOT / CONFIG), [f"model.decoder.num_classes={meta['num_classes']}", *overrides])
    official = official_weights(meta["state_dict"], meta["aliases"], meta["weight_seed"])
    return load_in_float64(instantiate(cfg.model), cfg, official_to_ours(official, DEFORMABLE_DETR_LAYOUT)), cfg


def official_names(losses: dict) -> dict:
    """Our loss keys in the official names: ``loss_focal`` is ``loss_ce``, ``_aux_{i}`` is ``_{i}`` and
    the proposals' ``_enc_0`` is ``_enc``."""
    return {k.replace("loss_focal", "loss_ce").replace("_aux_", "_").replace("_enc_0", "_enc"): v
            for k, v in losses.items()}


def test_parameter_count_and_strict_conversion(golden):
    """Parameters equal the official build's (41,181,529, 40,959,129 trainable: the README's "41M"), and
    every official key converts onto ours with its shape (the strict check inside :func:`build`); a
    checkpoint with a key too many or too few is refused."""
    meta, _ = golden
    assert (meta["num_parameters"], meta["num_trainable"]) == (41_181_529, 40_959_129)
    model, _ = build(meta)
    assert sum(p.numel() for p in model.parameters()) == meta["num_parameters"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == meta["num_trainable"]
    official = official_weights(meta["state_dict"], meta["aliases"], meta["weight_seed"])
    # The synthetic weights are those the golden ran with.
    assert fingerprint({k: v for k, v in official.items() if k not in meta["aliases"]}) == meta["eval"]["weights_crc32"]
    assert official_layout(official) is DEFORMABLE_DETR_LAYOUT
    converted = official_to_ours(official, DEFORMABLE_DETR_LAYOUT)
    for key in ("decoder.pos_trans.weight", "decoder.enc_score_head.weight"):
        with pytest.raises(CheckpointMismatchError, match=key.replace(".", r"\.")):
            convert_official_state_dict({k: v for k, v in converted.items() if k != key}, model)
    with pytest.raises(CheckpointMismatchError, match="not in the model"):
        convert_official_state_dict({**converted, "decoder.query_embed.weight": torch.zeros(300, 512)}, model)


def test_conversion_to_80_classes(golden):
    """tools/convert_official.py's path: the 91 official class rows of every layer's head and of the
    encoder's (``class_embed.6``) map onto Detectron2's 80 COCO classes; the encoder's heads are the
    official 7th clones, the decoder's the first six."""
    meta, _ = golden
    cfg = load_config(str(ROOT / CONFIG))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    official = official_weights(meta["state_dict"], meta["aliases"], meta["weight_seed"])
    state = convert_renamed_state_dict(official, model, DEFORMABLE_DETR_LAYOUT)
    ids = coco_category_ids()
    assert torch.equal(state["decoder.enc_score_head.weight"], official["class_embed.6.weight"][ids])
    assert torch.equal(state["decoder.dec_score_head.5.bias"], official["class_embed.5.bias"][ids])
    assert torch.equal(state["decoder.enc_bbox_head.layers.2.weight"], official["bbox_embed.6.layers.2.weight"])
    assert torch.equal(state["decoder.dec_bbox_head.0.layers.0.weight"], official["bbox_embed.0.layers.0.weight"])
    assert state["decoder.dec_score_head.0.weight"].shape == (80, 256)


def assert_same_detections(instances, scores, labels, boxes, rtol):
    """Scores in sorted order within ``rtol``; labels and boxes (to 1e-3 pixels: Detectron2's ``Boxes``
    hold float32) position by position, except that within a run of exactly tied golden scores they
    are compared as sets (tied detections are the same class of identical queries: the padded and
    out-of-band proposals, whose memory is zeroed, all become the same query)."""
    ours_scores = instances.scores.double().numpy()
    ours = np.concatenate([instances.pred_classes.numpy()[:, None].astype(np.float64),
                           instances.pred_boxes.tensor.double().numpy()], 1)
    theirs = np.concatenate([labels[:, None].astype(np.float64), boxes], 1)
    assert_all_close({"scores": ours_scores}, {"scores": scores}, rtol=rtol)
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1], True])
    for begin, end in zip(starts[:-1], starts[1:]):
        a = ours[begin:end][np.lexsort(ours[begin:end].T[::-1])]
        b = theirs[begin:end][np.lexsort(theirs[begin:end].T[::-1])]
        np.testing.assert_array_equal(a[:, 0], b[:, 0])
        np.testing.assert_allclose(a[:, 1:], b[:, 1:], rtol=0, atol=1e-3)


@pytest.mark.parametrize("top_k", [300, 100])
def test_eval_detections(golden, top_k):
    """The top-300 detections of the padded batch, and the config's top 100 (the official
    ``PostProcess``): the same classes in the same order (up to exact ties), scores to 1e-6 relative
    (measured: 1.7e-15; 1.9e-15 with default kernels), boxes to 1e-3 pixels (float32 ``Boxes``)."""
    meta, arrays = golden
    for i, result in enumerate(top_k_detections(*build(meta), meta, top_k)):
        assert_same_detections(result["instances"], arrays[f"scores_{i}"][:top_k], arrays[f"labels_{i}"][:top_k],
                               arrays[f"boxes_{i}"][:top_k], rtol=1e-6)


def test_training_losses(golden):
    """Every weighted loss term of one training forward (dropout 0): the six layers' focal (weight 2),
    L1 and GIoU terms and the encoder's class-agnostic terms over every token's proposal. Measured:
    1.8e-15 relative; tolerance 1e-6."""
    meta, _ = golden
    model, _ = build(meta, NO_DROPOUT)
    model.train()
    losses = official_names(model(inputs(meta, with_targets=True)))
    assert_all_close(losses, meta["train"]["losses"], rtol=1e-6)


def official_norms(reference) -> dict:
    """The official parameter norms in our names. ``named_parameters()`` lists each head once, under its
    decoder alias ``transformer.decoder.{class,bbox}_embed.{l}``, which the converter wants as
    ``{class,bbox}_embed.{l}``."""
    norms = {k.replace("transformer.decoder.", "", 1) if k.startswith(("transformer.decoder.bbox_embed.",
             "transformer.decoder.class_embed.")) else k: torch.tensor(v)
             for k, v in reference["parameter_norms"].items()}
    return official_to_ours(norms, DEFORMABLE_DETR_LAYOUT)


@pytest.mark.slow
def test_training_trajectory(golden):
    """20 steps of our Trainer (dropout 0) follow the official loop: every loss term at every step
    (measured: 1.2e-14; tolerance 1e-5) and the norm of every parameter at the end (measured:
    5.9e-8; tolerance 1e-5: Adam divides by the root of the squared gradients, so parameters
    whose gradients are nearly zero move by amounts that float64 rounding of those gradients changes
    relatively more)."""
    meta, _ = golden
    reference = meta["trajectory"]
    model, cfg = build(meta, NO_DROPOUT)
    # main.py's groups (default, "backbone.0", linear projections) are ours (default, backbone, linear_proj).
    cfg.optimizer.params.model = model
    groups = {g["name"]: len(g["params"]) for g in instantiate(cfg.optimizer).param_groups}
    assert [groups["default"], groups["backbone"], groups["linear_proj"]] == reference["group_sizes"]
    recorded = run_trajectory(model, cfg, meta, reference, official_names)
    assert_trajectory_close(model, recorded, reference, official_norms(reference), loss_rtol=1e-5)
