"""DINO's deformable encoder (input projection, sine position encoding, level embedding, 6 deformable
layers) is the official one: same parameters, same state-dict layout up to prefixes, same memory.

Golden values: tests/golden/dino_encoder_{4,5}scale.pt, written by tools/golden/make_dino_encoder_golden.py
from the official IDEA-Research/DINO code (the file's ``provenance`` holds the commit, the config and the
patches): the official ``build_dino`` models of config/DINO/DINO_{4,5}scale.py, their ``input_proj``,
``transformer.level_embed`` and ``transformer.encoder`` loaded with ``golden.synth.synth_state_dict``
(seed 0, pinned by a fingerprint), run IN FLOAT64 on stored feature maps (ResNet-50 sizes of a 64x80
resp. 32x48 image) from the official forward up to the encoder's output, for a batch with one padded
image and for the same maps unpadded. The official sine position encoding and valid ratios compute in
float32 whatever the dtype; the script patches both to float64 (tools/golden/float64_patches.py,
package ``models.dino``), as our encoder computes them in the model's dtype. The file also keeps the
unpatched official float32 position encodings, against which our float32 ``SinePositionEncoding`` is
checked.

Tolerances. In float64 ours and the official encoder differ only by the order of operations (both
sample with ``grid_sample``). The largest absolute difference measured on the memory (values up to
about 5 in magnitude) is 1.8e-14, natively (AVX-512), with ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 and with ATEN_CPU_CAPABILITY=default, so ``ATOL64 = 1e-10`` leaves a margin of
5x10^3; a single float32 step is far above it (float32 valid ratios move the memory by 4e-7, a
float32 position encoding by 8e-7). The padding-invariance check (ours against ours) measured 9e-15,
under the same tolerance. Our float32 position encodings equal the official float32 ones bit for bit
with the native and AVX2 kernels and within 1.2e-7 with the scalar ones (float32 sin / cos differ by
an ulp), hence ``POS32_ATOL = 1e-5``. One float32 comparison is kept: our float32 encoder against
the float64 golden, measured at most 1.1e-5 (AVX2 kernels; 5.1e-6 native and scalar), so
``FLOAT32_ATOL = 1e-4``.
"""
from pathlib import Path

import pytest
import torch

from dfine.modeling.decoder.input_projection import level_padding_masks
from dfine.modeling.encoder import DeformableEncoder
from dfine.modeling.layers.position_encoding import SinePositionEncoding
from golden.synth import fingerprint, synth_state_dict

GOLDEN = Path(__file__).resolve().parent / "golden"
SCALES = ["4scale", "5scale"]
ATOL64 = 1e-10
POS32_ATOL = 1e-5
FLOAT32_ATOL = 1e-4
# The official DINO-4scale sizes (ResNet-50 maps of 512, 1024 and 2048 channels, hidden 256).
OFFICIAL_4SCALE_COUNTS = {"input_proj": [131_840, 262_912, 525_056, 4_719_360], "level_embed": 1_024,
                          "encoder": 7_693_056}
OFFICIAL_PREFIXES = {"input_proj.": "input_proj.", "transformer.level_embed": "level_embed",
                     "transformer.encoder.layers.": "layers."}


def official_to_ours(key: str) -> str:
    """Our DeformableEncoder key of an official DINO state-dict key (its module docstring's table)."""
    for official, ours in OFFICIAL_PREFIXES.items():
        if key.startswith(official):
            return ours + key[len(official):]
    raise KeyError(f"not a key of the DINO encoder: {key}")


def _golden(scale):
    return torch.load(GOLDEN / f"dino_encoder_{scale}.pt", weights_only=True)


def _encoder(golden) -> DeformableEncoder:
    config = golden["config"]
    return DeformableEncoder(
        in_channels=config["in_channels"], feat_strides=config["feat_strides"], hidden_dim=config["hidden_dim"],
        num_levels=config["num_feature_levels"], num_layers=config["enc_layers"], num_heads=config["nheads"],
        num_points=config["enc_n_points"], dim_feedforward=config["dim_feedforward"], dropout=config["dropout"],
        pe_temperature_h=config["pe_temperatureH"], pe_temperature_w=config["pe_temperatureW"])


def _loaded_encoder(golden) -> DeformableEncoder:
    """Ours with the golden's official synthetic weights, mapped key by key (every official key used,
    shapes equal; ours has only its constructor-computed MSDA point scales besides)."""
    layout = golden["layout"]
    weights = synth_state_dict(layout, seed=golden["weights"]["seed"])
    assert fingerprint(weights) == golden["weights"]["fingerprint"], "synthetic weights changed"
    assert set(weights) == set(layout)
    encoder = _encoder(golden)
    ours = encoder.state_dict()
    mapped = {official_to_ours(k): v for k, v in weights.items()}
    assert len(mapped) == len(weights)
    for key, value in mapped.items():
        assert key in ours, key
        assert list(ours[key].shape) == list(value.shape) == layout[next(k for k in layout
                                                                        if official_to_ours(k) == key)], key
    missing, unexpected = encoder.load_state_dict(mapped, strict=False)
    assert not unexpected
    assert missing and all(k.endswith(".self_attn.num_points_scale") for k in missing), missing
    return encoder.double().eval()


@pytest.fixture(scope="module", params=SCALES)
def case(request):
    golden = _golden(request.param)
    return golden, _loaded_encoder(golden)


def _flat(maps):
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_memory_equals_official(case, padded):
    golden, encoder = case
    expected = golden["padded" if padded else "unpadded"]
    feats = [f.double() for f in golden["inputs"]["features"]]
    mask = golden["inputs"]["padding_mask"] if padded else None
    with torch.no_grad():
        maps = encoder(feats, padding_mask=mask)
    assert [list(m.shape[2:]) for m in maps] == expected["spatial_shapes"]
    memory = _flat(maps)
    assert memory.dtype == torch.float64 and memory.shape == expected["memory"].shape
    torch.testing.assert_close(memory, expected["memory"], rtol=0, atol=ATOL64)
    if padded:  # the padded image really is padded on several levels, and its memory differs
        masks = level_padding_masks(mask, expected["spatial_shapes"])
        assert sum(bool(m[1].any()) for m in masks) >= 3 and not any(bool(m[0].any()) for m in masks)


def test_float32_memory_near_official(case):
    """Our float32 encoder (float32 encodings, ratios and reference points, as the official float32
    model) against the float64 golden, padded batch."""
    golden, encoder = case
    encoder = _loaded_encoder(golden).float()
    feats = [f.float() for f in golden["inputs"]["features"]]
    with torch.no_grad():
        memory = _flat(encoder(feats, padding_mask=golden["inputs"]["padding_mask"]))
    assert memory.dtype == torch.float32
    torch.testing.assert_close(memory.double(), golden["padded"]["memory"], rtol=0, atol=FLOAT32_ATOL)


def test_position_encoding_equals_official(case):
    """``SinePositionEncoding`` with DINO's settings: in float64 the (patched) official encodings the
    golden run used, in float32 (the default) the unpatched official float32 ones."""
    golden, encoder = case
    shapes = golden["padded"]["spatial_shapes"]
    masks = level_padding_masks(golden["inputs"]["padding_mask"], shapes)
    encoding = SinePositionEncoding(128, temperature_h=20, temperature_w=20, normalize=True)
    channels = slice(None, None, 5)
    pos64 = _flat([encoding(m, torch.float64) for m in masks])[..., channels]
    pos32 = _flat([encoding(m) for m in masks])[..., channels]
    assert pos32.dtype == torch.float32
    torch.testing.assert_close(pos64, golden["padded"]["pos64"], rtol=0, atol=ATOL64)
    torch.testing.assert_close(pos32, golden["padded"]["pos32"], rtol=0, atol=POS32_ATOL)
    assert isinstance(encoder.position_encoding, SinePositionEncoding)
    assert (encoder.position_encoding.temperature_h, encoder.position_encoding.temperature_w) == (20, 20)


def test_parameter_counts_equal_official(case):
    golden, encoder = case
    ours = {"input_proj": [sum(p.numel() for p in proj.parameters()) for proj in encoder.input_proj],
            "level_embed": encoder.level_embed.numel(),
            "encoder": sum(p.numel() for p in encoder.layers.parameters())}
    assert ours == golden["counts"]
    if golden["config"]["num_feature_levels"] == 4:
        assert ours == OFFICIAL_4SCALE_COUNTS
    assert sum(p.numel() for p in encoder.parameters()) == sum(ours["input_proj"]) + ours["level_embed"] + \
        ours["encoder"]


def test_attributes_and_fresh_init():
    encoder = DeformableEncoder(in_channels=[256, 512, 1024, 2048], feat_strides=[4, 8, 16, 32], num_levels=5)
    assert encoder.out_channels == [256] * 5 and encoder.out_strides == [4, 8, 16, 32, 64]
    assert encoder.uses_padding_mask is True
    for proj in encoder.input_proj:  # the official init: Xavier-uniform convs with zero bias
        assert torch.count_nonzero(proj[0].bias) == 0
        bound = (6 / (proj[0].weight[0].numel() + proj[0].weight.shape[0] * proj[0].weight[0, 0].numel())) ** 0.5
        assert proj[0].weight.abs().max() <= bound
    assert encoder.level_embed.std() > 0.5
    assert torch.count_nonzero(encoder.layers[0].self_attn.sampling_offsets.weight) == 0
    # the first extra level convolves the last backbone map, the second the first extra level
    assert encoder.input_proj[4][0].in_channels == 2048 and encoder.input_proj[4][0].stride == (2, 2)
    four = DeformableEncoder(num_levels=6)
    assert four.input_proj[3][0].in_channels == 2048 and four.input_proj[4][0].in_channels == 256
    assert four.input_proj[5][0].in_channels == 256 and four.out_strides == [8, 16, 32, 64, 128, 256]


def test_padding_invariance():
    """An image's valid tokens get the same memory alone as padded in a batch (next to a larger image,
    whatever lies on its padding), to float64 rounding (``ATOL64``). Checked on ``encode``, the part
    after the input projection: the projection's GroupNorms take statistics over the padding too (as
    the official ones), so the whole encoder is not padding-invariant."""
    torch.manual_seed(0)
    encoder = _loaded_encoder(_golden("4scale"))
    shapes, valid_hw = [(8, 10), (4, 5), (2, 3), (1, 2)], (28, 50)
    maps = [torch.randn(2, 256, h, w, dtype=torch.float64) for h, w in shapes]
    mask = torch.ones(2, 64, 80, dtype=torch.bool)
    mask[0] = False
    mask[1, :valid_hw[0], :valid_hw[1]] = False
    level_masks = level_padding_masks(mask, shapes)
    sizes = [((~m[1]).any(1).sum().item(), (~m[1]).any(0).sum().item()) for m in level_masks]
    for m, (h, w) in zip(level_masks, sizes):  # the valid part is a top-left rectangle on every level
        assert not m[1, :h, :w].any() and m[1].sum() == m[1].numel() - h * w
    assert sizes != shapes
    alone_maps = [m[1:2, :, :h, :w] for m, (h, w) in zip(maps, sizes)]
    with torch.no_grad():
        batched = encoder.encode(maps, mask)
        maps[0][1][:, level_masks[0][1]] = 1e3  # garbage on the padding changes nothing
        batched_garbage = encoder.encode(maps, mask)
        alone = encoder.encode(alone_maps)
    for b, g, a, (h, w) in zip(batched, batched_garbage, alone, sizes):
        torch.testing.assert_close(b[1:2, :, :h, :w], a, rtol=0, atol=ATOL64)
        torch.testing.assert_close(g[1:2, :, :h, :w], a, rtol=0, atol=ATOL64)


def test_bad_inputs():
    encoder = DeformableEncoder(num_layers=1)
    feats = [torch.randn(1, c, s, s) for c, s in zip([512, 1024, 2048], [8, 4, 2])]
    with pytest.raises(ValueError, match="expects 3 backbone maps"):
        encoder(feats[:2])
    with pytest.raises(ValueError, match="channels"):
        encoder([feats[0], feats[0], feats[2]])
    with pytest.raises(ValueError, match="padding_mask"):
        encoder(feats, padding_mask=torch.zeros(64, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="one entry per backbone map"):
        DeformableEncoder(in_channels=[512, 1024], feat_strides=[8, 16, 32])
    with pytest.raises(ValueError, match="at most num_levels"):
        DeformableEncoder(num_levels=2)
