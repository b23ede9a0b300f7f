"""PResNet-vd backbone and hybrid encoder: structure, freezing, position embedding, deploy fusion.

Official reference: lyuwenyu/RT-DETR, rtdetrv2_pytorch (commit 068dfde), src/nn/backbone/presnet.py,
src/zoo/rtdetr/hybrid_encoder.py and configs/rtdetrv2/*.yml. The golden files in tests/golden were
written by running that code (tools/golden/make_rtdetrv2_golden.py): the ``*_keys.json`` files hold
the official state-dict keys and shapes, the ``*_eval.npz`` files the official backbone and encoder
maps for synthetic weights and image, computed in float64. The D-FINE encoder's golden comes from
the official D-FINE code (tools/golden/make_dfine_golden.py, float64 as well).

Map comparisons run in float64 with ``RTOL64 = 1e-9`` (sums relative; slices relative to the map's
largest magnitude): ours and the official modules differ only by the order of float64 operations,
measured at most 5.8e-15 (RT-DETRv2 R18/R50 maps) and 2.8e-15 (D-FINE encoder, deploy included)
natively on AVX-512, with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 and with
ATEN_CPU_CAPABILITY=default; the margin is above 10^5, where float32 maps move by about 1e-6.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from dfine.modeling.backbone import PResNet, ResNet, freeze_batch_norm
from dfine.modeling.encoder import HybridEncoder, RepVggBlock, build_2d_sincos_position_embedding
from golden.synth import synth_image, synth_state_dict

GOLDEN = Path(__file__).resolve().parent / "golden"
RTOL64 = 1e-9


def _assert_map(x, expected_sum, expected_abs_sum, x_slice, golden_slice):
    """A float64 map against the official float64 map's sums and strided slice (``RTOL64``)."""
    assert x.dtype == torch.float64
    assert x.sum().item() == pytest.approx(float(expected_sum), rel=RTOL64, abs=RTOL64 * float(expected_abs_sum))
    assert x.abs().sum().item() == pytest.approx(float(expected_abs_sum), rel=RTOL64)
    np.testing.assert_allclose(x_slice.numpy(), golden_slice, rtol=RTOL64, atol=RTOL64 * np.abs(golden_slice).max())

# Backbone and encoder arguments of the official COCO configs (configs/rtdetrv2/rtdetrv2_{r18vd_120e,
# r34vd_120e,r50vd_6x,r101vd_6x}_coco.yml on top of include/rtdetrv2_r50vd.yml).
OFFICIAL_CONFIGS = {
    "r18": (dict(depth=18, freeze_at=-1, freeze_norm=False), dict(in_channels=[128, 256, 512], expansion=0.5)),
    "r34": (dict(depth=34, freeze_at=-1, freeze_norm=False), dict(in_channels=[128, 256, 512], expansion=0.5)),
    "r50": (dict(depth=50, freeze_at=0, freeze_norm=True), dict(in_channels=[512, 1024, 2048])),
    "r101": (dict(depth=101, freeze_at=0, freeze_norm=True),
             dict(in_channels=[512, 1024, 2048], hidden_dim=384, dim_feedforward=2048)),
}

# Parameters of backbone + encoder, counted from the official state-dict shapes in
# tests/golden/rtdetrv2_*_keys.json (see _official_parameter_count). The whole official models have
# 20,184,464 / 31,441,668 / 42,891,372 / 76,556,268; the rest is the decoder.
OFFICIAL_BACKBONE_ENCODER_PARAMS = {"r18": 16_165_088, "r34": 26_273_248, "r50": 35_424_864, "r101": 68_991_456}


def _build(name, **encoder_overrides):
    backbone_kwargs, encoder_kwargs = OFFICIAL_CONFIGS[name]
    encoder_kwargs = {"eval_spatial_size": [640, 640], **encoder_kwargs, **encoder_overrides}
    return PResNet(**backbone_kwargs), HybridEncoder(**encoder_kwargs)


def _official_keys(name):
    """Official backbone + encoder state-dict entries (key -> shape) and non-persistent buffers."""
    data = json.loads((GOLDEN / f"rtdetrv2_{name}_keys.json").read_text())
    keys = {k: v for k, v in data["state_dict"].items() if k.startswith(("backbone.", "encoder."))}
    return keys, data["non_persistent_buffers"]


def _official_parameter_count(name):
    """Parameters among the official entries: everything but BatchNorm statistics and, when the
    backbone norms are frozen, the backbone norms' weight and bias (FrozenBatchNorm2d buffers)."""
    keys, _ = _official_keys(name)
    frozen_norm = OFFICIAL_CONFIGS[name][0]["freeze_norm"]

    def is_parameter(key):
        if key.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked"):
            return False
        return not (frozen_norm and key.startswith("backbone.") and ".norm." in key)

    return sum(math.prod(shape) for key, shape in keys.items() if is_parameter(key))


def _prefixed_state_shapes(backbone, encoder):
    shapes = {f"backbone.{k}": list(v.shape) for k, v in backbone.state_dict().items()}
    shapes.update({f"encoder.{k}": list(v.shape) for k, v in encoder.state_dict().items()})
    return shapes


def _randomize_norm_statistics(module, seed):
    """Non-trivial BatchNorm affine and running statistics, so fusion and freezing are really tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=gen)
            m.bias.data = torch.rand(n, generator=gen) - 0.5
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return module


@pytest.mark.parametrize("depth, channels", [(18, [128, 256, 512]), (34, [128, 256, 512]),
                                             (50, [512, 1024, 2048]), (101, [512, 1024, 2048])])
def test_presnet_outputs_for_every_depth(depth, channels):
    backbone = PResNet(depth).eval()
    assert backbone.out_channels == channels
    assert backbone.out_strides == [8, 16, 32]
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 64 // s) for c, s in zip(channels, [8, 16, 32])]


def test_presnet_all_stages_and_odd_sizes_round_up():
    backbone = PResNet(18, return_idx=(0, 1, 2, 3)).eval()
    assert backbone.out_channels == [64, 128, 256, 512]
    assert backbone.out_strides == [4, 8, 16, 32]
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 70, 50))
    # Every stride-2 step (3x3 convs with padding 1, the ceil-mode average pool) rounds up.
    assert [tuple(f.shape[2:]) for f in feats] == [(18, 13), (9, 7), (5, 4), (3, 2)]
    with pytest.raises(ValueError):
        PResNet(18, return_idx=(3, 1))


def test_resnet_stops_after_its_last_returned_stage():
    """A ResNet that returns C4 (a stride-16 map) does not run layer4 and does not train it; ResNet-18
    cannot dilate (the DC5 form), which is an error at construction that says so."""
    torch.manual_seed(0)
    full, c4 = ResNet(18, return_idx=[2, 3], freeze_at=0), ResNet(18, return_idx=[2], freeze_at=0)
    c4.load_state_dict(full.state_dict())
    c4.body.layer4.register_forward_hook(lambda *_: pytest.fail("layer4 ran"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(c4.eval()(x)[0], full.eval()(x)[0])
    assert (c4.out_channels, c4.out_strides) == ([256], [16])
    assert not any(p.requires_grad for p in c4.body.layer4.parameters())
    assert all(p.requires_grad for p in c4.body.layer3.parameters())
    with pytest.raises(ValueError, match="ResNet-18's basic blocks cannot dilate"):
        ResNet(18, dilation=True)


@pytest.mark.parametrize("name", sorted(OFFICIAL_CONFIGS))
def test_state_dict_and_parameter_count_equal_official(name):
    backbone, encoder = _build(name)
    official, non_persistent = _official_keys(name)
    ours = _prefixed_state_shapes(backbone, encoder)
    # Same keys, shapes and order: official checkpoints load with an identity key mapping.
    assert list(ours.items()) == list(official.items())
    # The precomputed position embedding is a buffer outside the state dict, as in the official model.
    buffers = {f"encoder.{k}" for k, _ in encoder.named_buffers()}
    assert {k for k in non_persistent if k.startswith("encoder.")} <= buffers - set(ours)

    count = sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in encoder.parameters())
    assert count == _official_parameter_count(name) == OFFICIAL_BACKBONE_ENCODER_PARAMS[name]


def test_freeze_at_freezes_stem_and_first_stages():
    backbone = PResNet(18, freeze_at=2, freeze_norm=False)
    assert not any(p.requires_grad for p in backbone.conv1.parameters())
    for i, stage in enumerate(backbone.res_layers):
        assert all(p.requires_grad != (i < 2) for p in stage.parameters()), i
    # freeze_at=0 freezes only the stem; a value past the last stage freezes everything.
    stem_only = PResNet(18, freeze_at=0, freeze_norm=False)
    assert {n.split(".")[0] for n, p in stem_only.named_parameters() if not p.requires_grad} == {"conv1"}
    assert not any(p.requires_grad for p in PResNet(18, freeze_at=9, freeze_norm=False).parameters())
    assert all(p.requires_grad for p in PResNet(18, freeze_at=-1, freeze_norm=False).parameters())


def test_freeze_norm_uses_frozen_batchnorm_without_step_counter():
    frozen = PResNet(50, freeze_at=0, freeze_norm=True)
    norms = [m for m in frozen.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    keys = frozen.state_dict().keys()
    assert not any(k.endswith("num_batches_tracked") for k in keys)
    # Norm affine and statistics are buffers: no norm parameter, but all four state-dict entries.
    assert not any(".norm." in n for n, _ in frozen.named_parameters())
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        assert f"conv1.conv1_1.norm.{leaf}" in keys
    # Trainable norms keep BatchNorm2d and its step counter (as the official R18/R34 checkpoints).
    trainable = PResNet(18, freeze_norm=False)
    assert any(k.endswith("num_batches_tracked") for k in trainable.state_dict())


def test_freeze_batch_norm_keeps_outputs_and_statistics():
    torch.manual_seed(0)
    model = _randomize_norm_statistics(PResNet(18, freeze_norm=False), seed=1).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    freeze_batch_norm(model)
    stats_before = model.res_layers[0].blocks[0].branch2a.norm.running_mean.clone()
    model.train()  # frozen norms ignore the mode: no batch statistics, no running-stat update
    with torch.no_grad():
        got = model(x)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.res_layers[0].blocks[0].branch2a.norm.running_mean, stats_before)


def test_position_embedding_layout_is_w_major():
    # Reference notes §8 item 11: for (w=3, h=2, D=8) row k has w_idx = k // 2 and h_idx = k % 2.
    embed = build_2d_sincos_position_embedding(w=3, h=2, embed_dim=8, temperature=10000.0)
    assert embed.shape == (1, 6, 8)
    omega = [1.0, 1.0 / 10000.0 ** 0.5]  # 1 / T^(k / (D / 4)), k = 0, 1
    for k in range(6):
        w_idx, h_idx = k // 2, k % 2
        expected = ([math.sin(w_idx * o) for o in omega] + [math.cos(w_idx * o) for o in omega]
                    + [math.sin(h_idx * o) for o in omega] + [math.cos(h_idx * o) for o in omega])
        torch.testing.assert_close(embed[0, k], torch.tensor(expected), rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        build_2d_sincos_position_embedding(3, 2, embed_dim=6)


def _tiny_encoder(**kwargs):
    return HybridEncoder(in_channels=[8, 16, 32], hidden_dim=16, nhead=2, dim_feedforward=32, expansion=0.5,
                         **kwargs)


def _tiny_feats(h, w, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, h // s, w // s, generator=gen) for c, s in zip([8, 16, 32], [8, 16, 32])]


def test_encoder_outputs():
    encoder = _tiny_encoder().eval()
    assert encoder.out_channels == [16, 16, 16]
    assert encoder.out_strides == [8, 16, 32]
    with torch.no_grad():
        outs = encoder(_tiny_feats(64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 8, 12), (2, 16, 4, 6), (2, 16, 2, 3)]
    with pytest.raises(ValueError):
        _tiny_encoder(version="v1")


def test_eval_spatial_size_precomputation_equals_on_the_fly():
    torch.manual_seed(0)
    precomputed = _randomize_norm_statistics(_tiny_encoder(eval_spatial_size=(64, 96)), seed=2).eval()
    on_the_fly = _tiny_encoder().eval()
    on_the_fly.load_state_dict(precomputed.state_dict())
    # Non-square on purpose: the stride-32 grid is h=2, w=3, so a transposed cache would differ.
    assert "pos_embed2" not in precomputed.state_dict()
    torch.testing.assert_close(precomputed.pos_embed2, build_2d_sincos_position_embedding(3, 2, 16), rtol=0, atol=0)
    assert not hasattr(on_the_fly, "pos_embed2")
    # At the eval size (cached embedding) and at another size (computed for that grid).
    for h, w in [(64, 96), (96, 64)]:
        feats = _tiny_feats(h, w, seed=3)
        with torch.no_grad():
            for a, b in zip(precomputed(feats), on_the_fly(feats)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_lateral_output_replaces_stored_top_feature():
    """Official quirk: the last PAN block fuses with the lateral-conv output of the coarsest level,
    not with the AIFI output that entered the lateral conv."""
    encoder = _tiny_encoder().eval()
    seen = {}
    encoder.lateral_convs[0].register_forward_hook(lambda m, i, o: seen.update(lateral_in=i[0], lateral_out=o))
    encoder.pan_blocks[-1].register_forward_pre_hook(lambda m, i: seen.update(pan_in=i[0]))
    with torch.no_grad():
        encoder(_tiny_feats(64, 64))
    pan_top = seen["pan_in"][:, 16:]  # [down-sampled map, stored top feature]
    assert torch.equal(pan_top, seen["lateral_out"])
    assert not torch.allclose(pan_top, seen["lateral_in"])


def test_repvgg_deploy_fusion_keeps_output():
    torch.manual_seed(0)
    block = _randomize_norm_statistics(RepVggBlock(8, 12, act="silu"), seed=4).eval()
    x = torch.randn(2, 8, 7, 9)
    with torch.no_grad():
        expected = block(x)
        block.convert_to_deploy()
        got = block(x)
    assert not hasattr(block, "conv1") and not hasattr(block, "conv2")
    assert sorted(block.state_dict()) == ["conv.bias", "conv.weight"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_encoder_deploy_fusion_keeps_output():
    torch.manual_seed(0)
    encoder = _randomize_norm_statistics(_tiny_encoder(eval_spatial_size=(64, 64)), seed=5).eval()
    feats = _tiny_feats(64, 64, seed=6)
    with torch.no_grad():
        expected = encoder(feats)
        encoder.convert_to_deploy()
        got = encoder(feats)
    blocks = [m for m in encoder.modules() if isinstance(m, RepVggBlock)]
    assert len(blocks) == 12  # 4 CSPRep layers x round(3 * depth_mult)
    assert not any(hasattr(b, "conv1") for b in blocks)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["r18", "r50"])
def test_backbone_and_encoder_maps_equal_official(name):
    """Synthetic official weights and image (golden/synth.py) through our backbone and encoder give
    the official maps (golden/rtdetrv2_{name}_eval.npz: sums and a strided slice per map), all in float64."""
    golden = np.load(GOLDEN / f"rtdetrv2_{name}_eval.npz")
    backbone, encoder = _build(name)
    keys, _ = _official_keys(name)
    weights = synth_state_dict(keys, seed=0)
    for prefix, module in (("backbone.", backbone), ("encoder.", encoder)):
        own = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(own, strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    image = torch.from_numpy(synth_image(640, 640, seed=0)).permute(2, 0, 1)[None].double() / 255.0
    backbone.double().eval()
    encoder.double().eval()
    with torch.no_grad():
        feats = backbone(image)
        outs = encoder(feats)
    for prefix, maps in (("backbone", feats), ("encoder", outs)):
        for i, x in enumerate(maps):
            h, w = x.shape[2:]
            assert list(x.shape) == golden[f"{prefix}_{i}_shape"].tolist()
            _assert_map(x, golden[f"{prefix}_{i}_sum"], golden[f"{prefix}_{i}_abs_sum"],
                        x[0, :16, :: h // 8, :: w // 8], golden[f"{prefix}_{i}_slice"])


# --------------------------------------------------------------------- D-FINE CCFF (version="dfine")
DFINE_ENCODER = json.loads((Path(__file__).parent / "golden" / "dfine_encoder_golden.json").read_text())
DFINE_ENCODER_ARRAYS = np.load(Path(__file__).parent / "golden" / "dfine_encoder_golden.npz")


@pytest.mark.parametrize("size", ["n", "s"])
def test_dfine_encoder_matches_official(size):
    """The official D-FINE HybridEncoder of the N (two levels) and S configs
    (tools/golden/make_dfine_golden.py): same state-dict layout, parameter counts before and after
    deploy, float64 outputs of synthetic weights (``RTOL64``), and deploy keeps the outputs."""
    from golden.dfine_inputs import encoder_features

    golden = DFINE_ENCODER["encoders"][size]
    encoder = HybridEncoder(**golden["config"], eval_spatial_size=[64, 64], version="dfine")
    assert {k: list(v.shape) for k, v in encoder.state_dict().items()} == golden["state_dict"]
    assert list(encoder.state_dict()) == list(golden["state_dict"])
    assert sum(p.numel() for p in encoder.parameters()) == golden["num_parameters"]
    missing, unexpected = encoder.load_state_dict(synth_state_dict(golden["state_dict"], seed=1), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    feats = encoder_features(golden["config"]["in_channels"], golden["config"]["feat_strides"], dtype=torch.float64)
    encoder.double().eval()
    with torch.no_grad():
        outs = encoder(feats)
        encoder.convert_to_deploy()
        deployed = encoder(feats)
    assert sum(p.numel() for p in encoder.parameters()) == golden["deploy_num_parameters"]
    for i, (out, expected) in enumerate(zip(outs, golden["outputs"])):
        assert list(out.shape) == expected["shape"]
        golden_slice = DFINE_ENCODER_ARRAYS[f"{size}_{i}"]
        _assert_map(out, expected["sum"], expected["abs_sum"], out[0, :8, ::2, ::2], golden_slice)
        torch.testing.assert_close(deployed[i], out, rtol=1e-12, atol=1e-12)
