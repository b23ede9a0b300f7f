"""DEIMv2's backbone and encoder pieces against the official DEIMv2 code: the pruned HGNetv2
(Atto/Femto/Pico), the HybridEncoder switches (``version="deim"``, ``csp_type="csp2"``,
``fuse_op="sum"``, identity input projections) and the LiteEncoder.

Golden values: ``tests/golden/deimv2_encoders_golden.{json,npz}``, written by
``tools/golden/make_deimv2_encoders_golden.py`` with the official Intellindust-AI-Lab/DEIMv2 code (commit
in the JSON's ``official``), from the official modules built with the resolved arguments of the 12
official DEIMv2 COCO configs (``GOLDEN["configs"]``) and the synthetic weights and inputs of
``tests/golden/synth.py`` / ``tests/golden/deimv2_synth.py``. The forward passes run in float64 on both
sides (the official HybridEncoder's always-float32 sin-cos embedding patched to float64, see the JSON's
``patches``; ours computes it in float64 in a float64 model), so they differ only by the order of
float64 operations: at most MEASURED absolute on the maps (values of magnitude 1 to 10) over native
AVX-512, ``ATEN_CPU_CAPABILITY=avx2`` + ``ONEDNN_MAX_CPU_ISA=AVX2`` and
``ATEN_CPU_CAPABILITY=default``. ATOL / RTOL lie far above that noise and far below any real difference
(a wrong constant, activation or wiring moves outputs by 1e-4 or more).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dfine.modeling.backbone.hgnetv2 import HGNetv2
from dfine.modeling.encoder.hybrid_encoder import HybridEncoder
from dfine.modeling.encoder.lite_encoder import LiteEncoder
from golden.deimv2_synth import BACKBONE_FORWARD, ENCODER_FORWARD, FORWARD_SIZE, encoder_features
from golden.synth import synth_image, synth_state_dict

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "deimv2_encoders_golden.json").read_text())
ARRAYS = np.load(GOLDEN_DIR / "deimv2_encoders_golden.npz")


def build_backbone(official_kwargs):
    """Our HGNetv2 from an official ``HGNetv2`` config section: the same arguments, less the
    download ones (pretrained weights come in through ``train.init_checkpoint``)."""
    return HGNetv2(**{k: v for k, v in official_kwargs.items() if k not in ("pretrained", "local_model_dir")})


def build_encoder(encoder_type, official_kwargs):
    """Our encoder from an official ``HybridEncoder`` / ``LiteEncoder`` config section.

    DEIMv2's HybridEncoder always replaces the projection of a level with ``hidden_dim`` channels by
    an identity; ours does so only with ``identity_input_proj=True``. Our LiteEncoder has no use for
    ``eval_spatial_size`` (the official one stores it and never reads it)."""
    if encoder_type == "LiteEncoder":
        return LiteEncoder(**{k: v for k, v in official_kwargs.items() if k != "eval_spatial_size"})
    assert encoder_type == "HybridEncoder"
    return HybridEncoder(**official_kwargs, identity_input_proj=True)


def load_synthetic(model, seed):
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = model.load_state_dict(synth_state_dict(shapes, seed=seed), strict=False)
    # synth_state_dict leaves out only the BatchNorm step counters.
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)


MEASURED = 1e-14  # max abs on the maps: 8.0e-15 native AVX-512, 9.5e-15 avx2, 8.0e-15 default (sums: 4.9e-16 rel)
ATOL = 1e-10
RTOL = 1e-10


def assert_maps_equal_golden(outs, expected, array_prefix):
    assert len(outs) == len(expected)
    for i, (out, exp) in enumerate(zip(outs, expected)):
        assert out.dtype == torch.float64
        assert list(out.shape) == exp["shape"]
        assert out.sum().item() == pytest.approx(exp["sum"], rel=RTOL, abs=ATOL * out.numel())
        assert out.abs().sum().item() == pytest.approx(exp["abs_sum"], rel=RTOL)
        np.testing.assert_allclose(out[0, :8, ::2, ::2].numpy(), ARRAYS[f"{array_prefix}_{i}"], rtol=RTOL, atol=ATOL)


def shapes_of(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("size", sorted(GOLDEN["backbones"]))
def test_hgnetv2_state_dict_and_parameter_counts_equal_official(size):
    """Official HGNetv2 of each DEIMv2 HGNetv2 config: same keys in the same order with the same
    shapes (official checkpoints load strictly), same total and trainable parameter counts."""
    golden = GOLDEN["backbones"][size]
    model = build_backbone(GOLDEN["configs"][size]["backbone"]["kwargs"])
    assert list(shapes_of(model).items()) == list(golden["state_dict"].items())
    assert sum(p.numel() for p in model.parameters()) == golden["num_parameters"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == golden["num_trainable"]


@pytest.mark.parametrize("size", BACKBONE_FORWARD)
def test_pruned_hgnetv2_feature_map_equals_official(size):
    """Atto/Femto/Pico with synthetic weights (seed 0) on a 98x130 synthetic image, float64: one
    stride-16 map (``return_idx=[2]`` of three stages), the official output (golden ``backbones[size]``)
    within ATOL / RTOL."""
    golden = GOLDEN["backbones"][size]
    model = build_backbone(GOLDEN["configs"][size]["backbone"]["kwargs"])
    load_synthetic(model, seed=0)
    image = torch.from_numpy(synth_image(98, 130, seed=4)).permute(2, 0, 1)[None].double() / 255
    with torch.no_grad():
        outs = model.eval().double()(image)
    assert model.out_strides == [16]
    assert model.out_channels == [golden["outputs"][0]["shape"][1]]
    assert_maps_equal_golden(outs, golden["outputs"], f"backbone_{size}")


@pytest.mark.parametrize("key", sorted(GOLDEN["encoders"]))
def test_encoder_state_dict_and_parameter_counts_equal_official(key):
    """The encoder of each of the 12 DEIMv2 configs, before and after deploy conversion: the
    official state-dict keys (in order), shapes and parameter counts."""
    golden = GOLDEN["encoders"][key]
    encoder = GOLDEN["configs"][key]["encoder"]
    model = build_encoder(encoder["type"], encoder["kwargs"])
    assert list(shapes_of(model).items()) == list(golden["state_dict"].items())
    assert sum(p.numel() for p in model.parameters()) == golden["num_parameters"]
    model.eval().convert_to_deploy()
    assert list(shapes_of(model).items()) == list(golden["deploy_state_dict"].items())
    assert sum(p.numel() for p in model.parameters()) == golden["deploy_num_parameters"]


@pytest.mark.parametrize("key", ENCODER_FORWARD)
def test_encoder_outputs_equal_official_before_and_after_deploy(key):
    """Atto (LiteEncoder), N (version "dfine" + csp2 + sum), M (version "deim") and DINOv3-S
    (identity input projections) with synthetic weights (seed 1) on synthetic maps of a 96x96
    image, in eval mode, float64: the official outputs (golden ``encoders[key]``) within ATOL / RTOL, and
    still them after ``convert_to_deploy``."""
    golden = GOLDEN["encoders"][key]
    encoder = GOLDEN["configs"][key]["encoder"]
    kwargs = golden["forward_kwargs"]
    model = build_encoder(encoder["type"], kwargs)
    load_synthetic(model, seed=1)
    model.eval().double()
    feats = encoder_features(kwargs["in_channels"], kwargs["feat_strides"], size=FORWARD_SIZE)
    with torch.no_grad():
        outs = model(feats)
    assert model.out_channels == [o["shape"][1] for o in golden["outputs"]]
    assert model.out_strides == [FORWARD_SIZE // o["shape"][2] for o in golden["outputs"]]
    assert_maps_equal_golden(outs, golden["outputs"], f"encoder_{key}")

    model.convert_to_deploy()
    with torch.no_grad():
        deployed = model(feats)
    assert_maps_equal_golden(deployed, golden["outputs"], f"encoder_{key}")


def test_identity_input_projection_is_a_switch():
    """DEIMv2-S (HGNetv2) has a 256-channel level and hidden_dim 256: the official DEIMv2 encoder
    skips its projection, D-FINE-S (same channels) keeps it, so the default must keep it."""
    kwargs = dict(in_channels=[256, 512, 1024], hidden_dim=256, version="dfine")
    kept = HybridEncoder(**kwargs)
    skipped = HybridEncoder(**kwargs, identity_input_proj=True)
    assert all(isinstance(p, nn.Sequential) for p in kept.input_proj)
    assert isinstance(skipped.input_proj[0], nn.Identity)
    assert all(isinstance(p, nn.Sequential) for p in skipped.input_proj[1:])
    assert "input_proj.0.conv.weight" in kept.state_dict()
    assert "input_proj.0.conv.weight" not in skipped.state_dict()


def test_fuse_op_sum_adds_the_two_inputs():
    """With ``fuse_op="sum"`` the fusion blocks see ``up + lateral`` (hidden_dim channels): feeding
    the same FPN block the sum by hand gives the encoder's fine output."""
    torch.manual_seed(0)
    model = HybridEncoder(in_channels=[8, 8], feat_strides=[16, 32], hidden_dim=8, nhead=2, dim_feedforward=16,
                          use_encoder_idx=[1], num_encoder_layers=0, version="deim", fuse_op="sum").eval()
    feats = [torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)]
    with torch.no_grad():
        outs = model(feats)
        top = model.lateral_convs[0](model.input_proj[1](feats[1]))
        up = torch.nn.functional.interpolate(top, scale_factor=2.0, mode="nearest")
        fine = model.fpn_blocks[0](up + model.input_proj[0](feats[0]))
    torch.testing.assert_close(outs[0], fine)
    assert model.fpn_blocks[0].cv1.conv.in_channels == 8


def test_configuration_errors():
    with pytest.raises(ValueError, match="Atto"):
        HGNetv2("B7")
    with pytest.raises(ValueError, match="return_idx"):
        HGNetv2("Pico", return_idx=[2, 3])
    with pytest.raises(ValueError, match="csp_type"):
        HybridEncoder(version="deim", csp_type="csp")
    with pytest.raises(ValueError, match="csp_type"):
        HybridEncoder(version="rt_detrv2", csp_type="csp2")
    with pytest.raises(ValueError, match="csp_type"):
        HybridEncoder(version="dfine", csp_type="csp3")
    with pytest.raises(ValueError, match="fuse_op"):
        HybridEncoder(fuse_op="mean")
    with pytest.raises(ValueError, match="one backbone map"):
        LiteEncoder(in_channels=[256, 512], feat_strides=[16, 32])
