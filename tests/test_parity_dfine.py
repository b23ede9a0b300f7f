"""Our D-FINE and DEIM-D-FINE are the official models: same sizes, same outputs, same losses.

Golden values: tests/golden/dfine_model_golden.{json,npz}, computed by the official Peterande/D-FINE
(commit 4a1f73a) and Intellindust-AI-Lab/DEIM (commit a9aa4ad) code with
tools/golden/make_dfine_model_golden.py, on the synthetic weights, images and targets of
tests/golden/synth.py (the JSON records the commits). Parameter counts come from the models as
built; eval outputs and training losses were computed IN FLOAT64 (official ``model.double()``, float64
images and targets; the official ``translate_gt`` and the criterion's FGL weight cast to float32, so
the script swaps in versions that follow their input's dtype, checked equal to the official ones in
float32). The training targets are ``golden.dfine_inputs.train_targets``: boxes on a 1/256 grid, which
Detectron2's float32 ``Boxes`` hold exactly, so both models see the same float64 targets. Our side
loads the same synthetic official state dict through the official-checkpoint converter, so these
tests also pin the key mapping of every size, and runs in float64 too.

Tolerances. In float64 ours and the official model differ only by the order of operations: the
largest relative difference measured (natively on AVX-512, with ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 and with ATEN_CPU_CAPABILITY=default) is 2.4e-13 for the losses and 8.4e-15
for the logits and boxes (relative to max(1, |value|)), so ``RTOL64 = 1e-9`` leaves a margin of 10^3
and more and still catches any real change. Float32 losses move by up to 7e-5 between
AVX2 and AVX-512 kernels, so only one float32 comparison is kept: the D-FINE-N eval outputs against
the float64 golden, within a tolerance taken from the measured spread (``FLOAT32_ATOL``).
"""
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from dfine.checkpoint import convert_official_state_dict
from dfine.modeling.layers.box_ops import box_cxcywh_to_xyxy
from golden.compare import assert_all_close
from golden.dfine_inputs import train_targets
from golden.synth import synth_image, synth_state_dict

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
SIZES = ["n", "s", "m", "l", "x"]
REPOS = {"dfine": "dfine_hgnetv2_{}.py", "deim": "deim_dfine_hgnetv2_{}.py"}
RTOL64 = 1e-9
# Float32 D-FINE-N decoder outputs vs the float64 golden (logits and normalised boxes, absolute).
# Measured: at most 3.7e-6 (logits) and 3.3e-7 (boxes) natively, with avx2 and with default kernels;
# 1e-4 leaves a margin of 27 and more for other CPUs and libraries.
FLOAT32_ATOL = 1e-4

# The counts the issue lists as official. The official YAML loader keeps one dict for every config
# loaded in a process (a mutable default argument), so a script that builds the five sizes one after
# the other builds S-X with the N config's decoder dim_feedforward (512) and L/X with the M config's
# use_lab (True). The golden script reproduces these numbers that way (chained_counts); the models
# the official training commands build, and the released checkpoints fit, are the fresh ones.
ISSUE_COUNTS = {
    "dfine": {"n": 3_782_693, "s": 9_533_909, "m": 18_539_440, "l": 29_668_322, "x": 61_045_794},
    "deim": {"n": 3_782_693, "s": 9_533_909, "m": 18_539_440, "l": 29_714_018, "x": 61_139_714},
}


@lru_cache(maxsize=None)
def _golden():
    return json.loads((GOLDEN / "dfine_model_golden.json").read_text())


def _config(repo, size, *overrides):
    cfg = LazyConfig.load(str(ROOT / "configs" / REPOS[repo].format(size)))
    return LazyConfig.apply_overrides(cfg, list(overrides))


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("repo", sorted(REPOS))
@pytest.mark.parametrize("size", SIZES)
def test_parameter_counts_equal_official(repo, size):
    counts = _golden()["counts"][repo][size]
    model = instantiate(_config(repo, size).model)
    assert _count(model) == counts["num_parameters"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == counts["num_trainable"]
    # The official deploy form drops the decoder's unused heads and fuses the encoder's convs.
    assert _count(model.deploy()) == counts["num_parameters_deploy"]


@pytest.mark.parametrize("repo", sorted(REPOS))
@pytest.mark.parametrize("size", SIZES)
def test_issue_counts_are_the_official_loader_leak(repo, size):
    chained = _golden()["chained_counts"][repo][size]
    assert chained["num_parameters"] == ISSUE_COUNTS[repo][size]
    overrides = []
    if chained["dim_feedforward"]["chained"] != chained["dim_feedforward"]["fresh"]:
        overrides.append(f"model.decoder.layer.dim_feedforward={chained['dim_feedforward']['chained']}")
    if chained["use_lab"]["chained"] != chained["use_lab"]["fresh"]:
        overrides.append(f"model.backbone.use_lab={chained['use_lab']['chained']}")
    assert _count(instantiate(_config(repo, size, *overrides).model)) == ISSUE_COUNTS[repo][size]


def _build(repo, size, *overrides, dtype=torch.float64):
    """Our model with the synthetic official weights of the golden files (strict key/shape check)."""
    cfg = _config(repo, size, *overrides)
    model = instantiate(cfg.model)
    keys = _golden()["counts"]["dfine"][size]["state_dict"]
    kept = ("up", "reg_scale")  # W(n)'s hyper-parameters: the model's own values, as in the script
    weights = synth_state_dict({k: v for k, v in keys.items() if k.rsplit(".", 1)[-1] not in kept}, seed=0)
    weights.update({k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in kept})
    if cfg.model.decoder.denoising.num_denoising == 0:
        del weights["decoder.denoising_class_embed.weight"]  # the official model has none either
    model.load_state_dict(convert_official_state_dict(weights, model))
    return model.to(dtype)


def _image(seed):
    return torch.from_numpy(synth_image(640, 640, seed)).permute(2, 0, 1).contiguous()


def _decoder_outputs(model, image):
    with torch.no_grad():
        x = model.normalize(image[None].to(model.pixel_mean.dtype))
        return model.decoder(model.encoder(model.backbone(x))).final


def _assert_same_queries(out, logits, boxes, rtol, atol):
    """Compare query by query after pairing each official query with ours of the same box: selected
    anchors whose encoder scores differ by ~5e-7 may come in either order in float32."""
    ours_boxes = out.boxes[0].double().numpy()
    pairing = np.abs(ours_boxes[None, :, :] - boxes[0][:, None, :]).max(-1).argmin(1)
    assert len(set(pairing.tolist())) == len(pairing), "queries do not pair one to one"
    np.testing.assert_allclose(ours_boxes[pairing], boxes[0], rtol=rtol, atol=atol)
    np.testing.assert_allclose(out.logits[0].double().numpy()[pairing], logits[0], rtol=rtol, atol=atol)


@pytest.mark.parametrize("size", ["n", "s"])
def test_eval_predictions_and_deploy_equal_official(size):
    """Float64 decoder outputs (logits, normalised boxes) before and after deploy against the float64
    golden of the undeployed official model, to ``RTOL64`` (relative, and absolute near 0)."""
    golden = np.load(GOLDEN / "dfine_model_golden.npz")
    model = _build("dfine", size).eval()
    logits, boxes = golden[f"{size}_eval_logits"], golden[f"{size}_eval_boxes"]
    assert logits.dtype == boxes.dtype == np.float64
    before = _decoder_outputs(model, _image(0))
    assert before.logits.dtype == torch.float64
    _assert_same_queries(before, logits, boxes, rtol=RTOL64, atol=RTOL64)

    model.deploy()
    assert _count(model) == _golden()["eval"][size]["deploy"]["num_parameters"]
    _assert_same_queries(_decoder_outputs(model, _image(0)), logits, boxes, rtol=RTOL64, atol=RTOL64)


def test_eval_predictions_in_float32_near_official():
    """The one float32 comparison: our float32 D-FINE-N against the float64 golden, ``FLOAT32_ATOL``."""
    golden = np.load(GOLDEN / "dfine_model_golden.npz")
    out = _decoder_outputs(_build("dfine", "n", dtype=torch.float32).eval(), _image(0))
    assert out.logits.dtype == torch.float32
    _assert_same_queries(out, golden["n_eval_logits"], golden["n_eval_boxes"], rtol=0, atol=FLOAT32_ATOL)


@pytest.mark.parametrize("repo,size", [("dfine", "n"), ("dfine", "s"), ("deim", "n")])
def test_training_loss_without_denoising_equals_official(repo, size):
    """Float64 training losses (denoising off, BatchNorm in training mode; D-FINE: VFL, boxes, FGL,
    DDF; DEIM: MAL instead of VFL) against the official float64 ones, every term and the total to
    ``RTOL64``."""
    golden = _golden()["train"][size if repo == "dfine" else f"{repo}_{size}"]
    model = _build(repo, size, "model.decoder.denoising.num_denoising=0").train()
    batch = []
    for seed, target in zip([1, 2], train_targets()):
        instances = Instances((640, 640))
        instances.gt_boxes = Boxes(box_cxcywh_to_xyxy(target["boxes"]) * 640)
        instances.gt_classes = target["labels"]
        batch.append({"image": _image(seed), "height": 640, "width": 640, "instances": instances})
    with EventStorage():
        losses = model(batch)
    assert all(v.dtype == torch.float64 for v in losses.values())
    assert_all_close(losses, golden["losses"], rtol=RTOL64)
    assert sum(losses.values()).item() == pytest.approx(golden["total"], rel=RTOL64)
