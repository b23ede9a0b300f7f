"""DINO's own parts, without the official code: the denoising groups, the checkpoint conversion, the
schedule, the configs (the numerical parity with the official model is tests/test_parity_dino.py)."""
import pytest
import torch
from detectron2.config import instantiate

from dfine.checkpoint.official import (
    CheckpointMismatchError,
    coco_category_ids,
    DINO_LAYOUT,
    convert_renamed_state_dict,
    official_to_ours,
)
from dfine.config import load_config
from dfine.modeling.decoder import DinoContrastiveDenoising
from dfine.modeling.decoder.input_projection import valid_ratios
from dfine.modeling.decoder.query_selection import generate_anchors
from dfine.modeling.layers.position_encoding import sine_box_embedding
from dfine.solver import StepDecay


def _targets(counts, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        wh = 0.1 + 0.3 * torch.rand(n, 2, generator=g)
        centre = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
        out.append({"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": torch.cat([centre, wh], -1)})
    return out


def test_denoising_groups_layout_and_mask():
    """Groups of max_gt positives then max_gt negatives; padding rows zero with a zero logit; the
    matching queries blind to every group, each group to the others."""
    dn = DinoContrastiveDenoising(num_classes=5, hidden_dim=8, num_denoising=6, label_noise_ratio=0.0,
                                  box_noise_scale=0.0)
    targets = _targets([2, 3])
    queries = dn(targets, num_queries=4)
    groups, max_gt = 6 // 3, 3
    assert queries.num_groups == groups
    num_dn = 2 * max_gt * groups
    assert queries.content.shape == (2, num_dn, 8) and queries.reference_unact.shape == (2, num_dn, 4)
    # Image 0 has 2 boxes: slot 2 of every half-group is padding.
    for half in range(2 * groups):
        assert torch.equal(queries.content[0, half * max_gt + 2], torch.zeros(8))
        assert torch.equal(queries.reference_unact[0, half * max_gt + 2], torch.zeros(4))
        torch.testing.assert_close(queries.content[1, half * max_gt:half * max_gt + 3],
                                   dn.label_enc(targets[1]["labels"]))
    # Without noise a positive is its ground truth (up to the 1e-3 clipping of the logit).
    torch.testing.assert_close(queries.reference_unact[1, :3].sigmoid(), targets[1]["boxes"])
    assert [idx.tolist() for idx in queries.positive_idx] == [[0, 1, 6, 7], [0, 1, 2, 6, 7, 8]]
    mask = queries.attn_mask
    assert mask.shape == (num_dn + 4, num_dn + 4)
    assert mask[num_dn:, :num_dn].all() and not mask[num_dn:, num_dn:].any()
    assert not mask[:6, :6].any() and mask[:6, 6:12].all() and mask[6:12, :6].all()


def test_denoising_noise_moves_negatives_further():
    """Positives move their corners by less than half the box size times the noise scale, negatives by
    one to two halves."""
    dn = DinoContrastiveDenoising(num_classes=5, hidden_dim=8, num_denoising=100, label_noise_ratio=0.5,
                                  box_noise_scale=0.4)
    targets = _targets([4])
    torch.manual_seed(0)
    queries = dn(targets, num_queries=10)
    boxes = queries.reference_unact[0].sigmoid().reshape(queries.num_groups, 2, 4, 4)
    gt = targets[0]["boxes"]
    corners = torch.cat([gt[:, :2] - gt[:, 2:] / 2, gt[:, :2] + gt[:, 2:] / 2], -1)
    moved = torch.cat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1) - corners
    half = gt[:, 2:].repeat(1, 2) / 2 * 0.4
    inside = (corners + moved > 1e-3) & (corners + moved < 1 - 1e-3)  # away from the clamp
    assert (moved[:, 0].abs() <= half + 1e-6)[inside[:, 0]].all()
    assert (moved[:, 1].abs() >= half - 1e-6)[inside[:, 1]].all()


def test_denoising_without_ground_truth_makes_no_queries():
    """The official rule: a batch without boxes gets no denoising query (its losses are then zero)."""
    dn = DinoContrastiveDenoising(num_classes=5, hidden_dim=8)
    queries = dn(_targets([0, 0]), num_queries=4)
    assert queries.content.shape == (2, 0, 8) and queries.attn_mask.shape == (4, 4)
    assert not queries.attn_mask.any() and all(len(idx) == 0 for idx in queries.positive_idx)


def test_sine_box_embedding_order_and_values():
    """``[y, x, w, h]`` features; feature 2k of a coordinate c is sin(2 pi c / T^(2k/F))."""
    box = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    emb = sine_box_embedding(box, num_pos_feats=4, temperature=100)
    assert emb.shape == (1, 16)
    for block, value in enumerate([0.2, 0.1, 0.3, 0.4]):
        angle = torch.tensor([2 * torch.pi * value, 2 * torch.pi * value / 10], dtype=torch.float64)
        expected = torch.stack([angle[0].sin(), angle[0].cos(), angle[1].sin(), angle[1].cos()])
        torch.testing.assert_close(emb[0, 4 * block:4 * block + 4], expected)


def test_image_relative_anchors_follow_each_image():
    """With padding, an image's anchors are relative to its valid rows and columns; without, to the map."""
    valid = torch.ones(2, 4 * 6, dtype=torch.bool)
    valid[1].view(4, 6)[:, 3:] = False  # image 1 covers 3 of 6 columns
    anchors, _ = generate_anchors([[4, 6]], valid=valid, eps=0.0)
    plain, _ = generate_anchors([[4, 6]], eps=0.0)
    torch.testing.assert_close(anchors[0], plain[0])
    xy = anchors[1, :, :2].sigmoid().reshape(4, 6, 2)
    torch.testing.assert_close(xy[0, :3, 0], torch.tensor([0.5, 1.5, 2.5]) / 3)
    ratios = valid_ratios(valid, [[4, 6]], 2)
    torch.testing.assert_close(ratios, torch.tensor([[[1.0, 1.0]], [[0.5, 1.0]]]))


def test_step_decay():
    schedule = StepDecay(max_iter=100, iters_per_epoch=10, drop_epochs=[8])
    assert [schedule(i / 100) for i in (0, 79, 80, 99)] == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]
    with pytest.raises(ValueError, match="iters_per_epoch"):
        StepDecay(max_iter=100, iters_per_epoch=None, drop_epochs=[8])


def test_conversion_maps_91_category_rows_to_80_classes_and_checks_aliases():
    official = {
        "transformer.tgt_embed.weight": torch.zeros(3, 2),
        "label_enc.weight": torch.arange(92.0)[:, None].repeat(1, 2),
        "class_embed.0.weight": torch.arange(91.0)[:, None].repeat(1, 2),
        "class_embed.0.bias": torch.arange(91.0),
        "transformer.decoder.class_embed.0.weight": torch.arange(91.0)[:, None].repeat(1, 2),
        "transformer.decoder.class_embed.0.bias": torch.arange(91.0),
        "transformer.decoder.layers.0.norm1.weight": torch.ones(2),
        "transformer.decoder.layers.0.norm2.weight": torch.zeros(2),
    }
    ids = coco_category_ids()
    assert len(ids) == 80 and ids[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13] and ids[-1] == 90
    ours = official_to_ours(official, DINO_LAYOUT, ids)
    assert ours["decoder.dec_score_head.0.bias"].tolist() == ids
    assert ours["decoder.label_enc.weight"][:, 0].tolist() == ids + [91]
    assert "transformer.decoder.class_embed.0.bias" not in ours and len(ours) == 6
    # DINO's norm1 follows the cross-attention, ours norm2.
    assert ours["decoder.decoder.layers.0.norm2.weight"].tolist() == [1, 1]
    official["transformer.decoder.class_embed.0.bias"] = torch.zeros(91)
    with pytest.raises(CheckpointMismatchError, match="is not the shared head class_embed.0.bias"):
        official_to_ours(official, DINO_LAYOUT)
    with pytest.raises(CheckpointMismatchError, match="Keys of no DINO part"):
        official_to_ours({"transformer.something_else": torch.zeros(1)}, DINO_LAYOUT)


def test_conversion_refuses_other_class_counts():
    cfg = load_config("configs/dino_r50_4scale_12ep.py", ["model.decoder.num_classes=6"])
    with torch.device("meta"):
        model = instantiate(cfg.model)
    official = {"class_embed.0.bias": torch.zeros(91), "transformer.tgt_embed.weight": torch.zeros(1),
                "label_enc.weight": torch.zeros(92, 1)}
    with pytest.raises(CheckpointMismatchError, match="91 classes, the model 6"):
        convert_renamed_state_dict(official, model, DINO_LAYOUT)


@pytest.mark.parametrize("name,expected", [
    ("dino_r50_4scale_12ep", 46_893_182), ("dino_r50_5scale_36ep", 47_255_806),
    # Measured on the official build (tests/golden/dino_swin_l.pt records them).
    ("dino_swinl_4scale_36ep", 217_230_066), ("dino_swinl_5scale_12ep", 217_576_690),
])
def test_config_parameter_counts_equal_the_official_builds(name, expected):
    cfg = load_config(f"configs/{name}.py", ["model.decoder.num_classes=91"])
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_batch_without_boxes_trains_with_zero_denoising_losses():
    """Background-only images are training data: the official DINO builds no denoising query then,
    and its denoising losses are zeros; ours keeps the same keys (every process of a DDP run returns
    the same dict), zero, and the rest of the loss finite."""
    from detectron2.structures import Boxes, Instances

    overrides = ["model.backbone.depth=18", "model.encoder.in_channels=[128,256,512]", "model.encoder.hidden_dim=64",
                 "model.encoder.num_layers=1", "model.decoder.hidden_dim=64", "model.decoder.num_layers=2",
                 "model.decoder.num_queries=30", "model.decoder.input_proj.in_channels=[64,64,64,64]",
                 "model.decoder.num_classes=6"]
    model = instantiate(load_config("configs/dino_r50_4scale_12ep.py", overrides).model).train()
    batch = []
    for h, w in [(64, 80), (72, 64)]:
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.zeros(0, 4))
        instances.gt_classes = torch.zeros(0, dtype=torch.int64)
        batch.append({"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "instances": instances})
    losses = model(batch)
    denoising = {k: v for k, v in losses.items() if "_dn_" in k}
    assert len(denoising) == 2 * 3 and all(v.item() == 0 for v in denoising.values())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
