"""The synthetic weights and inputs behind the golden files must never change silently.

The golden values in tests/golden/ were computed by the official RT-DETRv2 code on the tensors that
tests/golden/synth.py builds (see tools/golden/make_rtdetrv2_golden.py); the CRC-32 fingerprints
checked here were recorded by that script in the golden JSON files.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from golden.synth import CONSTRUCTOR_BUFFERS, fingerprint, synth_image, synth_state_dict, synth_targets

GOLDEN = Path(__file__).resolve().parent / "golden"

KEY_SHAPES = {
    "backbone.conv1.conv1_1.conv.weight": [8, 3, 3, 3],
    "backbone.conv1.conv1_1.norm.weight": [8],
    "backbone.conv1.conv1_1.norm.bias": [8],
    "backbone.conv1.conv1_1.norm.running_mean": [8],
    "backbone.conv1.conv1_1.norm.running_var": [8],
    "backbone.conv1.conv1_1.norm.num_batches_tracked": [],
    "encoder.encoder.0.layers.0.self_attn.in_proj_weight": [48, 16],
    "encoder.encoder.0.layers.0.self_attn.in_proj_bias": [48],
    "decoder.denoising_class_embed.weight": [6, 16],
    "decoder.anchors": [1, 10, 4],
    "decoder.valid_mask": [1, 10, 1],
    "decoder.decoder.layers.0.cross_attn.num_points_scale": [12],
    "decoder.dec_score_head.0.weight": [5, 16],
    "decoder.dec_score_head.0.bias": [5],
}


def _load_json(name):
    return json.loads((GOLDEN / name).read_text())


def _assert_same(a: dict, b: dict):
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_state_dict_is_deterministic_and_independent_of_other_keys():
    first = synth_state_dict(KEY_SHAPES, seed=0)
    _assert_same(first, synth_state_dict(KEY_SHAPES, seed=0))
    reordered = synth_state_dict(dict(reversed(list(KEY_SHAPES.items()))), seed=0)
    _assert_same(first, {k: reordered[k] for k in first})
    alone = synth_state_dict({"decoder.dec_score_head.0.bias": [5]}, seed=0)
    assert torch.equal(alone["decoder.dec_score_head.0.bias"], first["decoder.dec_score_head.0.bias"])
    other_seed = synth_state_dict(KEY_SHAPES, seed=1)
    assert not any(torch.equal(first[k], other_seed[k]) for k in first)


def test_state_dict_skips_constructor_buffers_and_rejects_unknown_keys():
    weights = synth_state_dict(KEY_SHAPES)
    skipped = {k for k in KEY_SHAPES if k.rpartition(".")[2] in CONSTRUCTOR_BUFFERS}
    assert set(weights) == set(KEY_SHAPES) - skipped
    assert all(w.dtype == torch.float32 and list(w.shape) == KEY_SHAPES[k] for k, w in weights.items())
    with pytest.raises(ValueError, match="layer_scale.gamma"):
        synth_state_dict({"block.layer_scale.gamma": [4]})


def test_state_dict_scales():
    w = synth_state_dict(KEY_SHAPES)
    conv = w["backbone.conv1.conv1_1.conv.weight"]
    assert conv.abs().max() <= math.sqrt(3.0 / 27) and conv.abs().max() > 0.8 * math.sqrt(3.0 / 27)
    assert ((w["backbone.conv1.conv1_1.norm.weight"] - 1).abs() <= 0.1).all()
    assert ((w["backbone.conv1.conv1_1.norm.running_var"] - 1).abs() <= 0.5).all()
    assert w["decoder.denoising_class_embed.weight"].std() > 0.7  # unit-variance rows, not fan-in scaled
    assert w["decoder.dec_score_head.0.bias"].abs().max() <= 0.1


def test_image_is_deterministic_and_smooth():
    image = synth_image(48, 64, seed=5)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert np.array_equal(image, synth_image(48, 64, seed=5))
    assert not np.array_equal(image, synth_image(48, 64, seed=6))
    pixels = image.astype(np.float64)
    neighbour_step = np.abs(np.diff(pixels, axis=1)).mean()
    assert pixels.std() > 3 * neighbour_step  # structure, not white noise


def test_targets_are_deterministic_and_valid():
    targets = synth_targets([4, 0, 7], num_classes=5, seed=9)
    again = synth_targets([4, 0, 7], num_classes=5, seed=9)
    assert [len(t["labels"]) for t in targets] == [4, 0, 7]
    for t, u in zip(targets, again):
        assert torch.equal(t["labels"], u["labels"]) and torch.equal(t["boxes"], u["boxes"])
        assert t["labels"].dtype == torch.int64 and t["boxes"].dtype == torch.float32
        assert ((t["labels"] >= 0) & (t["labels"] < 5)).all()
        cx, cy, w, h = t["boxes"].unbind(-1)
        assert ((w >= 0.05) & (w <= 0.5) & (h >= 0.05) & (h <= 0.5)).all()
        assert ((cx - w / 2 >= 0) & (cx + w / 2 <= 1) & (cy - h / 2 >= 0) & (cy + h / 2 <= 1)).all()


@pytest.mark.parametrize("model", ["r18", "r50"])
def test_rebuilds_the_eval_golden_inputs(model):
    keys = _load_json(f"rtdetrv2_{model}_keys.json")["state_dict"]
    recorded = _load_json(f"rtdetrv2_{model}_eval.json")
    assert fingerprint(synth_state_dict(keys, seed=recorded["weight_seed"])) == recorded["weights_crc32"]
    assert fingerprint(synth_image(640, 640, seed=0)) == recorded["image_crc32"]


def test_rebuilds_the_train_and_criterion_golden_inputs():
    recorded = _load_json("rtdetrv2_r18_train_loss.json")
    # The train golden uses num_denoising 0, which drops the denoising embedding from the model.
    keys = _load_json("rtdetrv2_r18_keys.json")["state_dict"]
    keys = {k: s for k, s in keys.items() if not k.startswith("decoder.denoising_class_embed.")}
    assert fingerprint(synth_state_dict(keys, seed=recorded["weight_seed"])) == recorded["weights_crc32"]
    images = [synth_image(640, 640, seed) for seed in recorded["image_seeds"]]
    assert fingerprint(images) == recorded["images_crc32"]
    assert fingerprint(synth_targets([3, 5], 80, seed=3)) == recorded["targets_crc32"]

    deim = _load_json("deim_rtdetrv2_r18_train.json")
    assert fingerprint(synth_state_dict(deim["state_dict"], seed=deim["weight_seed"])) == deim["weights_crc32"]

    stored = np.load(GOLDEN / "rtdetrv2_criterion.npz")
    for b, t in enumerate(synth_targets([3, 2], 5, seed=11)):
        assert np.array_equal(stored[f"target_{b}_labels"], t["labels"].numpy())
        assert np.array_equal(stored[f"target_{b}_boxes"], t["boxes"].numpy())
