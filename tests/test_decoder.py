"""RT-DETRv2's decoder: contrastive denoising, anchors, multi-scale deformable attention, and the
composed decoder of configs/common/models/rtdetrv2.py.

Reference values were computed by running the official lyuwenyu/RT-DETR code (rtdetrv2_pytorch,
``src/zoo/rtdetr/denoising.py``, ``rtdetrv2_decoder.py``); the official key lists and shapes come from
tests/golden/rtdetrv2_*_keys.json (official commit 068dfde, see tests/golden/README.md).
"""
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from decoders import family_decoder
from dfine.modeling.decoder import (
    MSDeformableAttention,
    contrastive_denoising_group,
    deformable_attention_core,
    generate_anchors,
)
from dfine.modeling.layers.box_ops import box_cxcywh_to_xyxy
from dfine.modeling.layers.common import inverse_sigmoid

GOLDEN = Path(__file__).resolve().parent / "golden"

# A tiny RT-DETRv2 decoder: 64x64 input images, so maps of 8x8, 4x4 and 2x2 at strides 8, 16, 32.
TINY = {"num_classes": 3, "hidden_dim": 32, "num_queries": 10, "input_proj.in_channels": [16, 24, 32],
        "input_proj.in_strides": [8, 16, 32], "num_levels": 3, "layer.cross_attn.num_points": 4, "layer.n_head": 4,
        "num_layers": 2, "layer.dim_feedforward": 64, "query_selection.eval_spatial_size": [64, 64]}


def _feats(batch=2, size=64, channels=(16, 24, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size // s, size // s, generator=g) for c, s in zip(channels, (8, 16, 32))]


def _targets(counts, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for n in counts:
        centres = 0.3 + 0.4 * torch.rand(n, 2, generator=g)
        sizes = 0.1 + 0.2 * torch.rand(n, 2, generator=g)
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=g),
                        "boxes": torch.cat([centres, sizes], -1)})
    return targets


def _tiny_decoder(overrides=None):
    torch.manual_seed(0)
    return family_decoder("rtdetrv2", {**TINY, **(overrides or {})})


def _perturb(module, seed=0):
    """Add noise to every parameter, so that zero-initialised layers (box heads) neither block
    gradients nor make layers indistinguishable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return module


def _freeze_batchnorm(module):
    """Training mode with BatchNorm on running statistics, so that train and eval graphs agree."""
    module.train()
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return module


# ---------------------------------------------------------------- contrastive denoising


def test_cdn_bookkeeping_matches_official_reference():
    # §8 item 13: GT counts [2, 1], num_denoising 100, K = 300.
    embed = nn.Embedding(81, 16, padding_idx=80)
    torch.manual_seed(0)
    content, boxes_unact, mask, meta = contrastive_denoising_group(
        _targets([2, 1], num_classes=80), num_classes=80, num_queries=300, class_embed=embed, num_denoising=100)
    assert meta["dn_num_group"] == 50
    assert meta["dn_num_split"] == [200, 300]
    assert content.shape == (2, 200, 16) and boxes_unact.shape == (2, 200, 4)
    assert mask.shape == (500, 500) and mask.dtype == torch.bool
    positives = meta["dn_positive_idx"]
    assert [len(p) for p in positives] == [100, 50]
    assert positives[0][:6].tolist() == [0, 1, 4, 5, 8, 9]
    assert positives[0].tolist() == [4 * g + j for g in range(50) for j in range(2)]
    assert positives[1].tolist() == [4 * g for g in range(50)]
    assert mask[200:, :200].all()  # matching queries never see denoising queries
    assert not mask[200:, 200:].any()  # matching queries see each other
    assert not mask[:200, 200:].any()  # denoising queries see the matching ones
    group = torch.arange(200) // 4
    assert torch.equal(mask[:200, :200], group[:, None] != group[None, :])  # groups are isolated


def test_cdn_noise_semantics():
    """Positives move each corner by less than half the box size, negatives by one to two halves;
    padding queries get the zero embedding."""
    # Boxes small and central enough that no noised corner is clipped to the image.
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.45, 0.55, 0.2, 0.2]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.4, 0.2, 0.2]])}]
    embed = nn.Embedding(4, 8, padding_idx=3)
    torch.manual_seed(1)
    content, boxes_unact, _, meta = contrastive_denoising_group(targets, 3, 10, embed, num_denoising=10)
    num_group, max_gt = meta["dn_num_group"], 2
    assert num_group == 5
    corners = box_cxcywh_to_xyxy(boxes_unact.sigmoid()).reshape(2, num_group, 2, max_gt, 4)  # [B, G, pos/neg, gt, 4]
    for i, t in enumerate(targets):
        n = len(t["labels"])
        gt = box_cxcywh_to_xyxy(t["boxes"])
        half = t["boxes"][:, 2:].repeat(1, 2) / 2
        shift = (corners[i, :, :, :n] - gt).abs() / half  # in units of half the box size
        assert (shift[:, 0] < 1 + 1e-4).all()
        # Negatives can cross their corners (a negative size, clamped by inverse_sigmoid): skip those.
        sizes = boxes_unact[i].sigmoid().reshape(num_group, 2, max_gt, 4)[:, 1, :n, 2:]
        uncrossed = (sizes > 1e-3).repeat(1, 1, 2)
        assert uncrossed.float().mean() > 0.5
        assert ((shift[:, 1] > 1 - 1e-4) & (shift[:, 1] < 2 + 1e-4))[uncrossed].all()
    # Image 1 has one GT: its second slot of every positive and negative block is padding.
    assert torch.equal(content[1].reshape(num_group, 2, max_gt, 8)[:, :, 1], torch.zeros(num_group, 2, 8))


def test_cdn_without_noise_reproduces_the_ground_truth():
    # (box_noise_scale 0 raises a NameError in the official code; here it means "no box noise".)
    targets = _targets([3, 1])
    embed = nn.Embedding(4, 8, padding_idx=3)
    content, boxes_unact, _, meta = contrastive_denoising_group(targets, 3, 10, embed, num_denoising=6,
                                                                label_noise_ratio=0.0, box_noise_scale=0.0)
    assert meta["dn_num_group"] == 2
    for i, t in enumerate(targets):
        for idx, gt_index in zip(meta["dn_positive_idx"][i].tolist(), torch.arange(len(t["labels"])).tile(2).tolist()):
            assert torch.equal(content[i, idx], embed.weight[t["labels"][gt_index]])
            assert torch.allclose(boxes_unact[i, idx], inverse_sigmoid(t["boxes"][gt_index]))


def test_cdn_zero_gt_batch_keeps_one_dummy_group():
    # Official commit 068dfde: a batch without GT still builds one group (one positive slot, one
    # negative slot) around the box (0.5, 0.5, 0.1, 0.1), without positives.
    embed = nn.Embedding(4, 8, padding_idx=3)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    torch.manual_seed(0)
    content, boxes_unact, mask, meta = contrastive_denoising_group([empty, empty], 3, 10, embed)
    assert meta["dn_num_group"] == 1 and meta["dn_num_split"] == [2, 10]
    assert [p.numel() for p in meta["dn_positive_idx"]] == [0, 0]
    assert torch.equal(content, torch.zeros(2, 2, 8))  # the padding class
    boxes = boxes_unact.sigmoid()
    assert torch.isfinite(boxes_unact).all()
    assert torch.allclose(boxes[:, 0, :2], torch.full((2, 2), 0.5), atol=0.05 + 1e-6)  # positive: < half a size
    assert mask.shape == (12, 12) and mask[2:, :2].all() and not mask[:2].any()


def test_cdn_disabled():
    assert contrastive_denoising_group(_targets([1]), 3, 10, nn.Embedding(4, 8), num_denoising=0) == (None,) * 4


def test_cdn_abs_box_size_only_changes_flipped_boxes():
    # DEIM/D-FINE take |w|, |h| of a negative whose corners crossed; RT-DETRv2 clamps them to ~0.
    targets = _targets([4, 2])
    embed = nn.Embedding(4, 8, padding_idx=3)
    torch.manual_seed(2)
    rt2 = contrastive_denoising_group(targets, 3, 10, embed)[1].sigmoid()
    torch.manual_seed(2)
    deim = contrastive_denoising_group(targets, 3, 10, embed, abs_box_size=True)[1].sigmoid()
    changed = deim != rt2
    assert changed.any()
    assert not changed[..., :2].any()  # centres are never negative
    assert torch.allclose(rt2[changed], torch.tensor(1e-5), rtol=1e-3)  # RT-DETRv2: clamped to ~0
    assert (deim[changed] > 1e-4).all()


# ---------------------------------------------------------------- anchors


def test_anchors_640_reference():
    # §8 item 10: 640x640, strides 8/16/32 -> 8400 anchors, 316 invalid (+inf).
    anchors, valid = generate_anchors([[80, 80], [40, 40], [20, 20]])
    assert anchors.shape == (1, 8400, 4) and valid.shape == (1, 8400, 1)
    assert int((~valid).sum()) == 316
    assert torch.isinf(anchors[~valid[..., 0]]).all() and (anchors[~valid[..., 0]] > 0).all()
    assert torch.isfinite(anchors[valid[..., 0]]).all()
    boxes = anchors.sigmoid()[0]
    assert not valid[0, 0] and valid[0, 81]  # the first cell's centre 0.5 / 80 is within eps of the border
    assert torch.allclose(boxes[81], torch.tensor([1.5 / 80, 1.5 / 80, 0.05, 0.05]))  # row 1, column 1
    assert torch.allclose(boxes[6400 + 41], torch.tensor([1.5 / 40, 1.5 / 40, 0.1, 0.1]))  # row 1, column 1
    assert torch.allclose(boxes[-1], torch.tensor([19.5 / 20, 19.5 / 20, 0.2, 0.2]))


def test_anchors_two_levels_reference():
    # §8 item 10: 2-level s16/s32 -> (1, 2000, 4), no invalid anchor, sizes 0.05 and 0.1.
    anchors, valid = generate_anchors([[40, 40], [20, 20]])
    assert anchors.shape == (1, 2000, 4) and bool(valid.all())
    sizes = anchors.sigmoid()[0, :, 2:]
    assert torch.allclose(sizes[:1600], torch.tensor(0.05)) and torch.allclose(sizes[1600:], torch.tensor(0.1))


def test_decoder_anchor_buffers_for_eval_size():
    small = {
        "input_proj.in_channels": [8, 8, 8],
        "hidden_dim": 16,
        "layer.n_head": 2,
        "num_layers": 1,
        "num_classes": 2,
    }
    decoder = family_decoder("rtdetrv2", {**small, "query_selection.eval_spatial_size": [640, 640]})
    expected_anchors, expected_valid = generate_anchors([[80, 80], [40, 40], [20, 20]])
    selection = decoder.query_selection
    assert torch.equal(selection.anchors, expected_anchors) and torch.equal(selection.valid_mask, expected_valid)
    assert "anchors" in decoder.state_dict() and "valid_mask" in decoder.state_dict()
    assert (
        "anchors" not in family_decoder("rtdetrv2", {**small, "query_selection.eval_spatial_size": None}).state_dict()
    )


# ---------------------------------------------------------------- deformable attention


def _bilinear_zero_padded(image, x, y):
    """Independent reference: bilinear interpolation of ``image [D, H, W]`` at normalized (x, y),
    pixel centres at (i + 0.5) / size, zero outside the map."""
    _, h, w = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(image.shape[0], dtype=torch.float64)
    for xi, wx in ((x0, x0 + 1 - px), (x0 + 1, px - x0)):
        for yi, wy in ((y0, y0 + 1 - py), (y0 + 1, py - y0)):
            if 0 <= xi < w and 0 <= yi < h:
                out += wx * wy * image[:, yi, xi].double()
    return out


def _core_inputs(seed, shapes, points, batch=2, heads=2, head_dim=3, queries=3):
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, head_dim, generator=g)
    locations = torch.rand(batch, queries, heads, sum(points), 2, generator=g) * 1.4 - 0.2  # some outside the map
    weights = torch.rand(batch, queries, heads, sum(points), generator=g).softmax(-1)
    return value, locations, weights


def _core_reference(value, shapes, locations, weights, points, sample):
    batch, _, heads, head_dim = value.shape
    queries = locations.shape[1]
    starts = [0] + torch.tensor([h * w for h, w in shapes]).cumsum(0).tolist()
    level_of_point = [lvl for lvl, n in enumerate(points) for _ in range(n)]
    out = torch.zeros(batch, queries, heads, head_dim, dtype=torch.float64)
    for b in range(batch):
        for m in range(heads):
            maps = [value[b, starts[lvl]:starts[lvl + 1], m].T.reshape(head_dim, h, w)
                    for lvl, (h, w) in enumerate(shapes)]
            for q in range(queries):
                for p, lvl in enumerate(level_of_point):
                    x, y = locations[b, q, m, p].tolist()
                    out[b, q, m] += weights[b, q, m, p].double() * sample(maps[lvl], x, y)
    return out.reshape(batch, queries, heads * head_dim)


def test_msda_core_default_equals_direct_bilinear_sum():
    shapes, points = [(4, 5), (2, 3)], [2, 3]
    value, locations, weights = _core_inputs(0, shapes, points)
    ours = deformable_attention_core(value, shapes, locations, weights, points, "default")
    expected = _core_reference(value, shapes, locations, weights, points, _bilinear_zero_padded)
    assert ours.shape == (2, 3, 6)
    assert torch.allclose(ours.double(), expected, atol=1e-5)


def test_msda_core_discrete_uses_official_rounding_and_clamp():
    def nearest(image, x, y):
        # Official rule: int64(loc * size + 0.5), then x and y both clamped to [0, H - 1].
        _, h, w = image.shape
        xi = min(max(int(x * w + 0.5), 0), h - 1)
        yi = min(max(int(y * h + 0.5), 0), h - 1)
        return image[:, yi, xi].double()

    shapes, points = [(3, 6), (4, 4)], [3, 2]  # a wide map shows the square-map clamp
    value, locations, weights = _core_inputs(1, shapes, points)
    ours = deformable_attention_core(value, shapes, locations, weights, points, "discrete")
    assert torch.allclose(ours.double(), _core_reference(value, shapes, locations, weights, points, nearest), atol=1e-5)

    # On a 3x6 map, x = 0.95 would be column 6 (rounded) but is clamped to column H - 1 = 2.
    one = torch.arange(18.0).reshape(1, 18, 1, 1)
    location = torch.tensor([0.95, 0.1]).reshape(1, 1, 1, 1, 2)
    assert deformable_attention_core(one, [(3, 6)], location, torch.ones(1, 1, 1, 1), [1], "discrete").item() == 2.0


def test_msda_core_rejects_unknown_method():
    value, locations, weights = _core_inputs(0, [(2, 2)], [1])
    with pytest.raises(ValueError, match="bilinear|discrete|default"):
        deformable_attention_core(value, [(2, 2)], locations, weights, [1], "bicubic")


def test_msda_offset_bias_init_pattern():
    # §8 item 9 / official _reset_parameters: head h points in direction 2*pi*h/H, scaled so that
    # its larger coordinate is 1; point k (1-based) of a level is k times as far.
    attn = MSDeformableAttention(embed_dim=16, num_heads=8, num_levels=2, num_points=[2, 3])
    bias = attn.sampling_offsets.bias.detach().reshape(8, 5, 2)
    steps = torch.tensor([1.0, 2.0, 1.0, 2.0, 3.0])
    directions = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]]).float()
    assert torch.allclose(bias, directions[:, None, :] * steps[None, :, None], atol=1e-6)
    assert not attn.sampling_offsets.weight.any()
    assert not attn.attention_weights.weight.any() and not attn.attention_weights.bias.any()
    assert not attn.value_proj.bias.any() and not attn.output_proj.bias.any()
    assert torch.allclose(attn.num_points_scale, torch.tensor([1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3]))
    assert attn.sampling_offsets.weight.requires_grad
    discrete = MSDeformableAttention(16, 8, 2, [2, 3], method="discrete")
    assert not any(p.requires_grad for p in discrete.sampling_offsets.parameters())
    assert discrete.attention_weights.weight.requires_grad


def test_msda_module_samples_around_the_reference_box():
    # §8 item 9: loc = ref_xy + offset * (1 / P_l) * ref_wh * 0.5, weights soft-maxed over all points.
    torch.manual_seed(0)
    attn = MSDeformableAttention(embed_dim=8, num_heads=2, num_levels=2, num_points=[1, 2])
    nn.init.normal_(attn.sampling_offsets.weight, std=0.1)
    nn.init.normal_(attn.attention_weights.weight)
    shapes = [(4, 4), (2, 2)]
    query, memory = torch.randn(1, 3, 8), torch.randn(1, 20, 8)
    ref = torch.tensor([[[0.5, 0.5, 0.4, 0.2], [0.2, 0.7, 0.3, 0.3], [0.9, 0.1, 0.1, 0.5]]]).unsqueeze(2)
    offsets = attn.sampling_offsets(query).reshape(1, 3, 2, 3, 2)
    scale = torch.tensor([1.0, 0.5, 0.5]).reshape(1, 1, 1, 3, 1)
    locations = ref[:, :, None, :, :2] + offsets * scale * ref[:, :, None, :, 2:] * 0.5
    weights = attn.attention_weights(query).reshape(1, 3, 2, 3).softmax(-1)
    value = attn.value_proj(memory).reshape(1, 20, 2, 4)
    expected = attn.output_proj(deformable_attention_core(value, shapes, locations, weights, [1, 2]))
    assert torch.allclose(attn(query, ref, memory, shapes), expected, atol=1e-6)


# ---------------------------------------------------------------- decoder


def test_decoder_layers_start_as_clones():
    # As in the official code (copies of one layer); seeded, the whole initialisation then matches it.
    first, *others = _tiny_decoder({"num_layers": 3}).layers
    for layer in others:
        for (name, a), b in zip(first.state_dict().items(), layer.state_dict().values()):
            assert torch.equal(a, b), name
        assert layer.linear1.weight is not first.linear1.weight


def test_decoder_training_output_structure():
    decoder = _tiny_decoder().train()
    targets = _targets([2, 1])
    out = decoder(_feats(), targets)
    assert out.proposals is not None and out.denoising is not None and out.matching.pre is None
    assert out.final.logits.shape == (2, 10, 3) and out.final.boxes.shape == (2, 10, 4)
    assert len(out.matching.layers) - 1 == 1  # auxiliary layers 0 .. L-2
    assert out.proposals.class_agnostic is False
    num_dn = out.denoising.branch.final.logits.shape[1]
    assert num_dn == 2 * 2 * 50 and out.final.logits.shape[1] == 10
    assert len(out.denoising.branch.layers) == 2  # every layer
    for head in [*out.matching.layers[:-1], out.proposals]:
        assert head.logits.shape == (2, 10, 3) and head.boxes.shape == (2, 10, 4)
    for head in out.denoising.branch.layers:
        assert head.logits.shape == (2, num_dn, 3) and head.boxes.shape == (2, num_dn, 4)
    assert ((out.final.boxes > 0) & (out.final.boxes < 1)).all()


def test_decoder_zero_gt_batch_gives_the_same_keys():
    """Under DDP every process must produce the same outputs, whether or not its batch has GT."""
    decoder = _tiny_decoder().train()
    with_gt = decoder(_feats(), _targets([2, 1]))
    without_gt = decoder(_feats(), _targets([0, 0]))
    assert (without_gt.proposals is None, without_gt.denoising is None) == (
        with_gt.proposals is None,
        with_gt.denoising is None,
    )
    assert without_gt.denoising.branch.final.logits.shape[1] == 2 and without_gt.final.logits.shape[1] == 10
    assert len(without_gt.denoising.branch.layers) == len(with_gt.denoising.branch.layers)


def test_decoder_eval_output_and_deploy():
    decoder = _tiny_decoder().eval()
    with torch.no_grad():
        out = decoder(_feats())
    assert out.proposals is None and out.denoising is None and len(out.matching.layers) == 1
    assert out.final.logits.shape == (2, 10, 3) and out.final.boxes.shape == (2, 10, 4)
    keys = list(decoder.state_dict())
    assert decoder.convert_to_deploy() is decoder and not decoder.training
    assert list(decoder.state_dict()) == keys
    with torch.no_grad():
        deployed = decoder(_feats())
    for key in ("logits", "boxes"):
        assert torch.equal(getattr(deployed.final, key), getattr(out.final, key))


def test_decoder_eval_at_another_input_size_regenerates_anchors():
    fixed = _tiny_decoder().eval()  # anchors precomputed for 64x64
    free = _tiny_decoder({"query_selection.eval_spatial_size": None}).eval()
    feats = _feats(size=96, seed=3)
    with torch.no_grad():
        a, b = fixed(feats).final, free(feats).final
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.logits, b.logits)


def test_memory_of_invalid_anchors_is_hidden_from_the_proposals():
    # eps = 0.07 invalidates every level-0 anchor (side 0.05): changing level 0 must not change the
    # encoder proposals, while the decoder's cross-attention still reads the unmasked memory.
    decoder = _freeze_batchnorm(_tiny_decoder({"query_selection.eps": 0.07, "denoising.num_denoising": 0}))
    feats = _feats()
    with torch.no_grad():
        a, b = decoder(feats), decoder([feats[0] + 1.0, *feats[1:]])
    for key in ("logits", "boxes"):
        assert torch.equal(getattr(a.proposals, key), getattr(b.proposals, key))
    assert not torch.allclose(a.final.logits, b.final.logits)


def test_eval_idx_returns_that_layer_and_stops_there():
    decoder = _perturb(_tiny_decoder({"num_layers": 3, "denoising.num_denoising": 0}))
    feats = _feats()
    with torch.no_grad():
        per_layer = _freeze_batchnorm(decoder)(feats).matching.layers  # training mode returns every layer
        assert not torch.allclose(per_layer[0].boxes, per_layer[1].boxes, atol=1e-4)
        decoder.eval()
        for eval_idx in (0, 1, -1):
            decoder.eval_idx = eval_idx % 3
            calls = []
            hook = decoder.layers[2].register_forward_hook(lambda *args: calls.append(1))
            out = decoder(feats).final
            hook.remove()
            expected = per_layer[eval_idx]
            assert torch.allclose(out.logits, expected.logits, atol=1e-5)
            assert torch.allclose(out.boxes, expected.boxes, atol=1e-6)
            assert bool(calls) == (eval_idx == -1)  # layers after eval_idx are not run
    with pytest.raises(ValueError, match="eval_idx"):
        family_decoder("rtdetrv2", {**TINY, "eval_idx": 2})


def test_denoising_queries_do_not_change_the_matching_queries():
    """The attention mask hides the denoising queries from the matching ones."""
    decoder = _freeze_batchnorm(_tiny_decoder())
    feats, targets = _feats(), _targets([3, 1])
    with_dn = decoder(feats, targets)
    decoder.denoising.num_denoising = 0
    without_dn = decoder(feats, targets)
    assert with_dn.denoising is not None and without_dn.denoising is None
    for a, b in zip(with_dn.matching.layers, without_dn.matching.layers):
        assert torch.allclose(a.logits, b.logits, atol=1e-5)
        assert torch.allclose(a.boxes, b.boxes, atol=1e-6)


def test_gradients_reach_every_parameter():
    decoder = _perturb(_tiny_decoder()).train()
    out = decoder(_feats(), _targets([2, 1]))
    heads = [*out.matching.layers, out.proposals, *out.denoising.branch.layers]
    sum(h.logits.sum() + h.boxes.sum() for h in heads).backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_look_forward_twice():
    decoder = _tiny_decoder({"denoising.num_denoising": 0}).train()
    decoder(_feats(), None).final.boxes.sum().backward()  # the last layer's boxes only
    # Layer 1's supervised box builds on layer 0's undetached box, so layer 0's box head learns from it.
    assert decoder.box_head.dec_bbox_head[0].layers[-1].weight.grad.abs().sum() > 0


def test_decoder_queries_are_detached_from_the_encoder_proposals():
    decoder = _tiny_decoder({"denoising.num_denoising": 0}).train()
    out = decoder(_feats(), None).final
    (out.logits.sum() + out.boxes.sum()).backward()
    # Neither the query content nor the reference boxes carry gradient back to the proposal heads ...
    selection = decoder.query_selection
    assert selection.enc_output.proj.weight.grad is None and selection.enc_bbox_head.layers[-1].weight.grad is None
    assert selection.enc_score_head.weight.grad is None
    # ... while the memory itself is trained through the cross-attention values.
    assert decoder.input_proj[0].conv.weight.grad.abs().sum() > 0


def test_training_with_denoising_needs_targets():
    with pytest.raises(ValueError, match="targets"):
        _tiny_decoder().train()(_feats())


def test_deim_query_position_head():
    decoder = _tiny_decoder({"query_pos_head.method": "as_reg", "query_pos_head.act": "silu", "box_head.act": "silu",
                             "query_selection.mlp_act": "silu", "layer.activation": "silu"})
    assert [tuple(layer.weight.shape) for layer in decoder.query_pos_head.layers] == [(32, 4), (32, 32), (32, 32)]
    assert isinstance(decoder.query_pos_head.act, nn.SiLU) and isinstance(
        decoder.box_head.dec_bbox_head[0].act, nn.SiLU
    )
    assert isinstance(decoder.layers[0].activation, nn.SiLU)
    default = _tiny_decoder()
    assert [tuple(layer.weight.shape) for layer in default.query_pos_head.layers] == [(64, 4), (32, 64)]
    assert isinstance(default.query_pos_head.act, nn.ReLU)


def _official_decoder_keys(name):
    keys = json.loads((GOLDEN / f"rtdetrv2_{name}_keys.json").read_text())["state_dict"]
    return {k[len("decoder."):]: shape for k, shape in keys.items() if k.startswith("decoder.")}


@pytest.mark.parametrize("name, num_layers, feat_channels, num_params", [
    ("r18", 3, [256] * 3, 4_019_376),
    ("r34", 4, [256] * 3, 5_168_420),
    ("r50", 6, [256] * 3, 7_466_508),
    ("r101", 6, [384] * 3, 7_564_812),
])
def test_official_configs_state_dict_and_parameter_count(name, num_layers, feat_channels, num_params):
    # Decoder arguments of the official configs/rtdetrv2/rtdetrv2_{name}vd_*.yml. The parameter counts
    # are the decoder share of the official totals (R18 20,184,464; R34 31,441,668; R50 42,891,372;
    # R101 76,556,268), summed from the official shapes.
    decoder = family_decoder("rtdetrv2", {"num_classes": 80, "input_proj.in_channels": feat_channels,
                                          "num_layers": num_layers})
    ours = {k: list(v.shape) for k, v in decoder.state_dict().items()}
    assert ours == _official_decoder_keys(name)
    assert list(ours) == list(_official_decoder_keys(name))  # same order, too
    assert sum(p.numel() for p in decoder.parameters()) == num_params


def test_state_dict_is_in_the_official_layout_while_modules_keep_their_parts():
    """Checkpoints use the official keys (``enc_score_head.weight``, ``decoder.layers.0...``) and load
    back strictly; the modules stay grouped by part (``query_selection.enc_score_head``)."""
    decoder = _tiny_decoder()
    state = decoder.state_dict()
    assert {"enc_score_head.weight", "decoder.layers.0.cross_attn.sampling_offsets.weight", "anchors",
            "dec_bbox_head.1.layers.2.bias", "denoising_class_embed.weight"} <= set(state)
    assert not any(
        k.split(".")[0] in ("query_selection", "box_head", "class_head", "denoising", "layers") for k in state
    )
    names = dict(decoder.named_parameters())
    assert "query_selection.enc_score_head.weight" in names and "layers.0.norm1.weight" in names
    other = _perturb(_tiny_decoder())
    assert not torch.equal(other.state_dict()["enc_score_head.weight"], state["enc_score_head.weight"])
    other.load_state_dict(state)  # strict
    for key, value in other.state_dict().items():
        assert torch.equal(value, state[key]), key
    with pytest.raises(RuntimeError, match="not_a_module"):
        other.load_state_dict({**state, "not_a_module.weight": torch.zeros(1)})
