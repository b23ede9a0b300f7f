"""DEIMv2's ViT trunks and Spatial Tuning Adapter against the official DINOv3STAs.

Golden values: tests/golden/deimv2_vit_golden.{json,npz}, written by tools/golden/make_deimv2_vit_golden.py
with the official DEIMv2 code (commit in the JSON's ``official``) in float64 (modules
``.to(torch.float64)``, float64 inputs), on the synthetic weights of ``synth_vit_state_dict`` and the
inputs of tests/golden/deimv2_synth.py. The official RoPE modules compute in float32 whatever the model
dtype; for the golden they are set to float64 after the cast (JSON ``patches``), and ours computes RoPE
in float64 in a float64 model, period ladder and rescale draw included. Our modules run in float64 too,
so the two sides differ only by the order of float64 operations: at most MEASURED (absolute, outputs of
magnitude up to ~10; sums within 1.1e-15 relative) over native AVX-512, ``ATEN_CPU_CAPABILITY=avx2`` +
``ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=default``; ATOL / RTOL leave a factor of about
5000 over it, far below any real difference (1e-4 or more).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dfine.modeling.backbone.sta import DINOv3STA
from dfine.modeling.backbone.vit import RopePositionEmbedding, VisionTransformer, build_vit
from golden.deimv2_synth import (PRESETS, ROPE_TRAIN_SEED, TRUNK_TRAIN_SEED, block_input, sta_input,
                                 synth_vit_state_dict)
from golden.synth import fingerprint

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN = json.loads((GOLDEN_DIR / "deimv2_vit_golden.json").read_text())
ARRAYS = np.load(GOLDEN_DIR / "deimv2_vit_golden.npz")


def ours(config):
    """Our module from the official DINOv3STAs arguments (same names and meanings)."""
    return DINOv3STA(**config)


def with_synthetic_weights(model, seed=0):
    """Loads the golden script's synthetic weights strictly: every official key must exist in ours;
    ``periods`` / ``num_batches_tracked`` (not drawn, as in the golden script) come from our own model."""
    state = model.state_dict()
    synth = synth_vit_state_dict({k: list(v.shape) for k, v in state.items()}, seed=seed)
    model.load_state_dict({**state, **synth}, strict=True)
    return model


MEASURED = 2e-14  # max abs: 2.4e-15 native AVX-512, 2.0e-14 avx2, 1.8e-14 default
ATOL = 1e-10
RTOL = 1e-10


def close(actual, expected):
    assert actual.dtype == torch.float64
    np.testing.assert_allclose(actual.detach().numpy(), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("size", sorted(PRESETS))
def test_state_dict_layout_and_parameter_count(size):
    # Official DINOv3STAs(**config).state_dict() of the DEIMv2 S/M/L/X configs: official checkpoints load
    # strictly and unrenamed (buffers included: RoPE periods, qkv bias_mask, BatchNorm statistics).
    golden = GOLDEN["presets"][size]
    model = ours(golden["config"])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == golden["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == golden["num_parameters"]
    assert sorted({m.eps for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}) == golden["layer_norm_eps"]
    assert model.out_channels == [golden["config"].get("hidden_dim", model.dinov3.embed_dim)] * 3
    assert model.out_strides == [8, 16, 32]


def test_rope_tables_match_official():
    # Official rope_embed(H=4, W=6) of dinov3_vits16 and vit_tiny in eval, and dinov3_vits16's in train
    # mode right after torch.manual_seed(ROPE_TRAIN_SEED): same RNG, same single (float64) draw. Both
    # sides in float64, periods included (the official module patched to follow the dtype).
    h, w = GOLDEN["rope"]["grid"]
    dinov3 = build_vit("dinov3_vits16").rope_embed.eval().double()
    tiny = build_vit("vit_tiny")._model.rope_embed.eval().double()
    for rope, name in ((dinov3, "dinov3"), (tiny, "tiny")):
        sin, cos = rope(h, w)
        close(sin, ARRAYS[f"rope_{name}_sin"])
        close(cos, ARRAYS[f"rope_{name}_cos"])
    dinov3.train()
    torch.manual_seed(ROPE_TRAIN_SEED)
    sin, cos = dinov3(h, w)
    close(sin, ARRAYS["rope_train_sin"])
    close(cos, ARRAYS["rope_train_cos"])
    assert not np.allclose(ARRAYS["rope_train_sin"], ARRAYS["rope_dinov3_sin"], atol=1e-3)
    # Unconverted, the tables are float32 as the official ones: within the float32 rounding of angles
    # up to 2 pi (about 5e-7) of the float64 golden.
    sin32, cos32 = build_vit("dinov3_vits16").rope_embed.eval()(h, w)
    assert sin32.dtype == cos32.dtype == torch.float32
    np.testing.assert_allclose(sin32.numpy(), ARRAYS["rope_dinov3_sin"], rtol=0, atol=2e-6)
    np.testing.assert_allclose(cos32.numpy(), ARRAYS["rope_dinov3_cos"], rtol=0, atol=2e-6)


def test_swiglu_layerscale_block_matches_official():
    # Block 0 of dinov3_vits16plus (SwiGLU FFN, LayerScale, masked key bias) with the X preset's synthetic
    # weights, on the golden 2x29x384 tokens (5 prefix tokens + a 4x6 grid) with the eval RoPE tables.
    model = with_synthetic_weights(ours(PRESETS["x"])).eval().double()
    tokens = block_input()
    assert fingerprint(tokens) == GOLDEN["block"]["input_crc32"]
    with torch.no_grad():
        out = model.dinov3.blocks[0](tokens, rope=model.dinov3.rope_embed(*GOLDEN["rope"]["grid"]))
    close(out, ARRAYS["block_output"])


@pytest.mark.parametrize("case", sorted(GOLDEN["sta"]))
def test_sta_outputs_match_official(case):
    # Official DINOv3STAs in eval on sta_input() (2x3x128x160) with synth_vit_state_dict(seed=0):
    # S (vit_tiny, taps 3/7/11), S with the single tap [11] repeated, and L (dinov3_vits16, taps 5/8/11).
    golden = GOLDEN["sta"][case]
    model = with_synthetic_weights(ours(golden["config"])).eval().double()
    with torch.no_grad():
        outs = model(sta_input())
    assert len(outs) == 3
    for i, (out, stats) in enumerate(zip(outs, golden["outputs"])):
        assert list(out.shape) == stats["shape"]
        close(out[:, ::16, ::2, ::2], ARRAYS[f"sta_{case}_{i}"])
        assert out.sum().item() == pytest.approx(stats["sum"], rel=RTOL, abs=ATOL * out.numel())
        assert out.abs().sum().item() == pytest.approx(stats["abs_sum"], rel=RTOL)


def test_dinov3_train_mode_draws_a_rope_factor_per_block():
    # Official dinov3_vits16 get_intermediate_layers in train mode right after
    # torch.manual_seed(TRUNK_TRAIN_SEED): each of the 12 blocks draws its own rescale factor, in order.
    model = with_synthetic_weights(ours(PRESETS["l"])).double()
    trunk = model.dinov3.train()
    torch.manual_seed(TRUNK_TRAIN_SEED)
    with torch.no_grad():
        maps = trunk(sta_input(), PRESETS["l"]["interaction_indexes"])
    for i, (feature, stats) in enumerate(zip(maps, GOLDEN["trunk_train"]["taps"])):
        tokens = feature.flatten(2).transpose(1, 2)  # back to the official [B, h*w, D]
        assert list(tokens.shape) == stats["shape"]
        close(tokens[:, ::7, ::16], ARRAYS[f"trunk_train_{i}"])
        assert tokens.abs().sum().item() == pytest.approx(stats["abs_sum"], rel=RTOL)


def test_rope_augmentation_only_in_training_and_seeded():
    # Behaviour of DINOv3's rescale_coords=2 (official rope_position_encoding.py): random in train mode,
    # reproducible under torch.manual_seed, absent in eval; the tiny ViT has none.
    trunk = with_synthetic_weights(ours(PRESETS["l"])).dinov3  # fresh LayerScale 1e-5 hides attention
    x = sta_input()[:1, :, :64, :96].float()
    with torch.no_grad():
        trunk.eval()
        eval_a, eval_b = trunk(x, [11])[0], trunk(x, [11])[0]
        trunk.train()
        torch.manual_seed(1)
        train_a = trunk(x, [11])[0]
        train_b = trunk(x, [11])[0]
        torch.manual_seed(1)
        train_a_again = trunk(x, [11])[0]
    torch.testing.assert_close(eval_a, eval_b, rtol=0, atol=0)
    torch.testing.assert_close(train_a, train_a_again, rtol=0, atol=0)
    assert (train_a - train_b).abs().max() > 1e-3
    assert (train_a - eval_a).abs().max() > 1e-3

    tiny = build_vit("vit_tiny")._model.rope_embed
    assert tiny.train().rescale_coords is None
    torch.testing.assert_close(tiny(3, 5), tiny.eval()(3, 5), rtol=0, atol=0)


def test_finetune_false_freezes_the_trunk_only():
    # Official finetune=False: trunk .eval() + requires_grad_(False). Ours also keeps it in eval under
    # model.train(), so a frozen DINOv3 trunk never applies its RoPE augmentation.
    model = ours(dict(PRESETS["l"], finetune=False)).train()
    assert not any(p.requires_grad for p in model.dinov3.parameters())
    assert not model.dinov3.training and not model.dinov3.rope_embed.training
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("dinov3."))
    assert model.sta.training and model.norms[0].training
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    a = model.dinov3(x, [11])[0]
    torch.manual_seed(1)
    b = model.dinov3(x, [11])[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    model(x)[0].sum().backward()
    assert all(p.grad is None for p in model.dinov3.parameters())
    assert model.convs[0].weight.grad is not None

    trainable = ours(PRESETS["l"]).train()
    assert trainable.dinov3.training and all(p.requires_grad for p in trainable.parameters())


def test_fresh_dinov3_is_finite():
    # Differs from the official on purpose: its qkv bias_mask starts as NaN (only a checkpoint fixes it).
    model = ours(PRESETS["x"]).eval()
    qkv = model.dinov3.blocks[0].attn.qkv
    assert qkv.bias_mask.tolist() == [1.0] * 384 + [0.0] * 384 + [1.0] * 384
    with torch.no_grad():
        assert all(torch.isfinite(o).all() for o in model(torch.randn(1, 3, 64, 64)))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="interaction_indexes"):
        DINOv3STA("vit_tiny", interaction_indexes=[3, 7])
    with pytest.raises(ValueError, match="interaction_indexes"):
        DINOv3STA("vit_tiny", interaction_indexes=[7, 3, 11])
    with pytest.raises(ValueError, match="embed_dim"):
        DINOv3STA("dinov3_vits16", embed_dim=192)
    with pytest.raises(ValueError, match="unknown ViT preset"):
        DINOv3STA("vit_base")
    assert isinstance(build_vit("vit_tiny", embed_dim=128, num_heads=2)._model, VisionTransformer)
    with pytest.raises(ValueError, match="divisible by 4"):
        RopePositionEmbedding(head_dim=30)
