"""DINO's Swin Transformer backbone against the official IDEA-Research/DINO ``SwinTransformer``.

Golden values: tests/golden/dino_swin_l.pt, written by tools/golden/make_dino_swin_golden.py from the
official code (commit in its ``provenance``). Numeric values are float64: the official module ``.double()``
in eval mode on float64 inputs, with the synthetic weights of tests/golden/dino_swin_synth.py (a function of
the state-dict keys and shapes only, so they are redrawn here instead of stored), for two reduced-size
configurations (embed_dim 48, depths [2, 2, 2, 2]; window 7 / 4-scale outputs and window 12 / 5-scale outputs
with the absolute position embedding). Swin-L itself (195M parameters, 1.5 GB in float64) is checked by its
state-dict layout and parameter count, built on the meta device, and by the official builder's arguments.
"""
from pathlib import Path

import pytest
import torch

from dfine.modeling.backbone import SWIN_PRESETS, SwinTransformer
from dfine.modeling.backbone.swin import relative_position_index, shifted_window_mask
from golden.dino_swin_synth import SWIN_CASES, swin_input, synth_swin_state_dict
from golden.synth import fingerprint

pytestmark = pytest.mark.parity

GOLDEN = torch.load(Path(__file__).parent / "golden" / "dino_swin_l.pt", weights_only=True)
SWIN_L = dict(SWIN_PRESETS["swin_L_384_22k"])
TINY = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7, out_indices=(0, 1, 2, 3),
            drop_path_rate=0.2)

# Both sides run the same float64 operations in the same order (our reshapes differ from the official ones
# only in memory layout): outputs of magnitude ~1 are bit-identical natively (AVX-512) and differ by at most
# MEASURED with ATEN_CPU_CAPABILITY=avx2 + ONEDNN_MAX_CPU_ISA=AVX2 (1.1e-14) or ATEN_CPU_CAPABILITY=default
# (1.06e-14). ATOL / RTOL leave a factor of ~1e4 over it and stay far below a real difference: dropping the
# shift mask moves the outputs by 1.4-1.9, a transposed relative-position index by 1.2.
MEASURED = 1.1e-14
ATOL = 1e-10
RTOL = 1e-10
# Our float32 model against the float64 golden: at most 3.1e-6 over the same three CPU settings.
ATOL_FLOAT32 = 3e-5


def with_synthetic_weights(model, seed=0):
    state = model.state_dict()
    synth = synth_swin_state_dict({k: list(v.shape) for k, v in state.items()}, seed=seed)
    model.load_state_dict({**state, **synth}, strict=True)
    return synth


def build_case(name):
    model = SwinTransformer(**SWIN_CASES[name]["kwargs"]).double().eval()
    synth = with_synthetic_weights(model)
    assert fingerprint(synth) == GOLDEN["cases"][name]["weights_fingerprint"]
    return model


def assert_outputs(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.dtype == torch.float64 and a.shape == e.shape
        torch.testing.assert_close(a, e, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", sorted(SWIN_CASES))
def test_outputs_equal_official(name):
    golden = GOLDEN["cases"][name]
    case = SWIN_CASES[name]
    x = swin_input(case["input_shape"], case["input_seed"])
    assert torch.equal(x, golden["input"])
    model = build_case(name)
    assert [tuple(o.shape[1:2]) for o in golden["outputs"]] == [(c,) for c in model.out_channels]
    with torch.no_grad():
        assert_outputs(model(x), golden["outputs"])


def tiny_model():
    """A cheaper model for the tests that need no golden: every code path of the golden cases."""
    model = SwinTransformer(**TINY).double().eval()
    with_synthetic_weights(model)
    return model


def test_float32_outputs_close_to_official_float64():
    for name in sorted(SWIN_CASES):
        golden = GOLDEN["cases"][name]
        model = build_case(name).float()
        with torch.no_grad():
            outs = model(golden["input"].float())
        for a, e in zip(outs, golden["outputs"]):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a.double(), e, atol=ATOL_FLOAT32, rtol=0)


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients():
    # Training mode, stochastic depth on: the recomputation replays the same DropPath draws (the RNG state
    # is restored), so outputs are identical and gradients equal up to float64 rounding.
    x = swin_input((2, 3, 45, 62), seed=4)
    results = []
    for use_checkpoint in (False, True):
        model = tiny_model().train()
        model.use_checkpoint = use_checkpoint
        torch.manual_seed(0)
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, {k: p.grad for k, p in model.named_parameters()}))
    (outs, grads), (outs_ckpt, grads_ckpt) = results
    assert_outputs(outs_ckpt, [o.detach() for o in outs])
    assert grads.keys() == grads_ckpt.keys() and all(g is not None for g in grads.values())
    for k in grads:
        torch.testing.assert_close(grads_ckpt[k], grads[k], atol=1e-12, rtol=1e-10, msg=k)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (33, 47)])
def test_odd_input_sizes(size):
    # Any H, W: ceil(H / stride) x ceil(W / stride) maps, batch entries independent (padding is per image).
    model = tiny_model()
    x = swin_input((2, 3) + size, seed=3)
    with torch.no_grad():
        outs = model(x)
        single = model(x[1:])
    for o, s, c, stride in zip(outs, single, model.out_channels, model.out_strides):
        assert o.shape == (2, c, -(-size[0] // stride), -(-size[1] // stride))
        assert torch.isfinite(o).all()
        torch.testing.assert_close(o[1:], s, atol=1e-12, rtol=1e-12)


def test_swin_l_layout_and_parameter_count():
    # Official build_swin_transformer("swin_L_384_22k", 384, out_indices=...) of DINO 4- and 5-scale: same
    # keys in the same order, same shapes (relative_position_index buffers included), same parameter count;
    # the official checkpoints' backbone.0.* entries therefore load with strict=True.
    golden = GOLDEN["swin_L_384_22k"]
    for suffix, out_indices in (("", (1, 2, 3)), ("_5scale", (0, 1, 2, 3))):
        with torch.device("meta"):
            model = SwinTransformer(**SWIN_L, out_indices=out_indices)
        assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == golden["state_dict" + suffix]
        assert sum(p.numel() for p in model.parameters()) == golden["num_parameters" + suffix]
        assert model.out_channels == [192 * 2 ** i for i in out_indices]
        assert model.out_strides == [4 * 2 ** i for i in out_indices]
    assert golden["num_parameters"] == 195_200_820 and golden["num_parameters_5scale"] == 195_201_204


def test_swin_l_as_official_dino_builds_it():
    # What the official build_backbone gives the Swin of DINO_4scale_swin.py: out_indices from
    # return_interm_indices, no frozen stages, checkpointing on (the config's use_checkpoint), and the
    # constructor's default drop_path_rate 0.2 spread over the 24 blocks (float32 linspace).
    dino = GOLDEN["dino"]
    assert dino["backbone_out_indices"] == [1, 2, 3] and dino["backbone_frozen_stages"] == -1
    assert dino["backbone_use_checkpoint"] == [True] * 4
    with torch.device("meta"):
        model = SwinTransformer(**SWIN_L, out_indices=(1, 2, 3), use_checkpoint=True)
    assert model.use_checkpoint
    # torch's float32 linspace rounds by its CPU kernel (measured: an ulp, 1.5e-8, apart with
    # ATEN_CPU_CAPABILITY=default), so the rates agree to float32 rounding, not bit for bit.
    rates = [b.drop_path.p for stage in model.layers for b in stage.blocks]
    assert rates == pytest.approx(dino["backbone_drop_path"], rel=1e-6, abs=1e-9)
    assert all(p.requires_grad for p in model.parameters())


def test_official_dino_parameter_counts():
    # Full official DINO Swin-L (num_classes 91), for the meta-architecture's count test.
    assert GOLDEN["dino"]["num_parameters_4scale"] == 217_230_066
    assert GOLDEN["dino"]["num_parameters_5scale"] == 217_576_690


def test_relative_position_index_and_shift_mask():
    # Small hand-checkable cases of the two computed tables.
    index = relative_position_index(2)  # tokens (0,0), (0,1), (1,0), (1,1); table rows (dy + 1) * 3 + (dx + 1)
    assert index.tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    mask = shifted_window_mask(4, 4, window=2, shift=1)  # 4 windows; only the top-left one is unmasked
    assert mask.shape == (4, 4, 4) and not mask[0].any()
    assert (mask[3] != 0).sum() == 12 and set(mask.unique().tolist()) == {0.0, -100.0}
