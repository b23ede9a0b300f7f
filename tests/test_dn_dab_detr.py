"""DN-DETR's own parts, without the official code: the denoising groups, the learned anchors, the
checkpoint conversion, the configs (the numerical parity with the official model is
tests/test_parity_dn_dab_detr.py)."""
import re

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances
from torch import nn

from dfine.checkpoint.official import (
    CheckpointMismatchError,
    coco_category_ids,
    convert_dn_dab_detr_state_dict,
    dn_dab_detr_to_ours,
    is_dino_state_dict,
    is_dn_dab_detr_state_dict,
)
from dfine.config import load_config
from dfine.modeling.decoder import DnDetrDenoising, LearnedAnchors
from dfine.modeling.decoder.input_projection import Memory

SMALL = ["model.backbone.depth=18", "model.encoder.in_channels=[512]", "model.encoder.hidden_dim=64",
         "model.encoder.num_layers=1", "model.decoder.hidden_dim=64", "model.decoder.num_layers=2",
         "model.decoder.num_queries=20", "model.decoder.input_proj.in_channels=[64]", "model.decoder.num_classes=6"]


def _targets(counts, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        wh = 0.1 + 0.3 * torch.rand(n, 2, generator=g)
        centre = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
        out.append({"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": torch.cat([centre, wh], -1)})
    return out


def test_denoising_groups_layout_and_mask():
    """G groups of max_gt slots, each image's boxes first; padding slots zero; content = label
    embedding + indicator 1; matching queries blind to every group, each group to the others, the
    groups see the matching queries."""
    label_enc = nn.Embedding(6, 7)
    dn = DnDetrDenoising(num_classes=5, num_groups=3, label_noise_ratio=0.0, box_noise_scale=0.0)
    targets = _targets([2, 3])
    queries = dn(targets, num_queries=4, label_enc=label_enc)
    groups, max_gt = 3, 3
    num_dn = groups * max_gt
    assert queries.num_groups == groups
    assert queries.content.shape == (2, num_dn, 8) and queries.reference_unact.shape == (2, num_dn, 4)
    for g in range(groups):
        assert torch.equal(queries.content[0, g * max_gt + 2], torch.zeros(8))
        assert torch.equal(queries.reference_unact[0, g * max_gt + 2], torch.zeros(4))
        block = queries.content[1, g * max_gt:(g + 1) * max_gt]
        torch.testing.assert_close(block[:, :7], label_enc(targets[1]["labels"]))
        assert torch.equal(block[:, 7], torch.ones(3))
        torch.testing.assert_close(queries.reference_unact[1, g * max_gt:(g + 1) * max_gt].sigmoid(),
                                   targets[1]["boxes"])
    assert [idx.tolist() for idx in queries.positive_idx] == [[0, 1, 3, 4, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7, 8]]
    mask = queries.attn_mask
    assert mask.shape == (num_dn + 4, num_dn + 4)
    assert mask[num_dn:, :num_dn].all() and not mask[num_dn:, num_dn:].any() and not mask[:num_dn, num_dn:].any()
    for g in range(groups):
        rows = mask[g * max_gt:(g + 1) * max_gt, :num_dn]
        assert not rows[:, g * max_gt:(g + 1) * max_gt].any() and rows.sum() == max_gt * (num_dn - max_gt)


def test_denoising_noise_bounds():
    """Centres move by at most half the size times the scale, sizes by at most the size times the scale;
    about label_noise_ratio of the labels flip."""
    label_enc = nn.Embedding(81, 15)
    dn = DnDetrDenoising(num_classes=80, num_groups=50, label_noise_ratio=0.2, box_noise_scale=0.4)
    targets = _targets([4], num_classes=80)
    torch.manual_seed(0)
    queries = dn(targets, num_queries=10, label_enc=label_enc)
    boxes = queries.reference_unact[0].sigmoid().reshape(50, 4, 4)
    gt = targets[0]["boxes"]
    moved = (boxes - gt).abs()
    assert (moved[..., :2] <= gt[:, 2:] / 2 * 0.4 + 1e-6).all()
    assert (moved[..., 2:] <= gt[:, 2:] * 0.4 + 1e-6).all()
    embedded = queries.content[0, :, :15].reshape(50, 4, 15)
    unchanged = (embedded == label_enc(targets[0]["labels"])).all(-1).float().mean()
    assert 0.7 < unchanged < 0.9


def test_denoising_draws_follow_the_official_order():
    """One uniform per copy for the flips, a class per flipped copy, then one uniform per coordinate:
    the same draws in the same order as a seeded reference written out here."""
    label_enc = nn.Embedding(6, 3)
    dn = DnDetrDenoising(num_classes=5, num_groups=2, label_noise_ratio=0.5, box_noise_scale=0.4)
    targets = _targets([1, 2])
    labels = torch.cat([t["labels"] for t in targets]).repeat(2)
    boxes = torch.cat([t["boxes"] for t in targets]).repeat(2, 1)
    torch.manual_seed(3)
    flip = torch.nonzero(torch.rand(len(labels)) < 0.5).view(-1)
    labels = labels.scatter(0, flip, torch.randint(0, 5, (len(flip),)))
    noise = torch.rand(boxes.shape) * 2 - 1.0
    expected = (boxes + noise * torch.cat([boxes[:, 2:] / 2, boxes[:, 2:]], -1) * 0.4).clamp(0, 1)
    torch.manual_seed(3)
    queries = dn(targets, num_queries=4, label_enc=label_enc)
    # Group-major copies; image 0 has slot 0, image 1 slots 0 and 1 of each group of 2.
    order = [(0, 0), (1, 0), (1, 1), (0, 2), (1, 2), (1, 3)]
    got = torch.stack([queries.reference_unact[i, s] for i, s in order]).sigmoid()
    torch.testing.assert_close(got, expected.clamp(1e-3, 1 - 1e-3))
    got_labels = torch.stack([queries.content[i, s, :3] for i, s in order])
    torch.testing.assert_close(got_labels, label_enc(labels))


def test_denoising_without_ground_truth_makes_no_queries():
    dn = DnDetrDenoising(num_classes=5)
    queries = dn(_targets([0, 0]), num_queries=4, label_enc=nn.Embedding(6, 7))
    assert queries.content.shape == (2, 0, 8) and queries.attn_mask.shape == (4, 4)
    assert not queries.attn_mask.any() and all(len(idx) == 0 for idx in queries.positive_idx)


def test_learned_anchors_content_and_patterns():
    """Every matching query's content is the "no class" row + indicator 0, plus its pattern; anchor q
    is repeated in every pattern."""
    selection = LearnedAnchors(hidden_dim=8, num_classes=5, num_queries=4, num_patterns=3)
    memory = Memory(torch.zeros(2, 10, 8), [[2, 5]], None)
    out = selection(memory)
    assert out.content.shape == (2, 12, 8) and out.reference_unact.shape == (2, 12, 4) and out.proposals is None
    base = torch.cat([selection.label_enc.weight[5], torch.zeros(1)])
    for p in range(3):
        expected = (base + selection.patterns.weight[p]).expand(4, 8)
        torch.testing.assert_close(out.content[1, p * 4:(p + 1) * 4], expected)
        torch.testing.assert_close(out.reference_unact[0, p * 4:(p + 1) * 4], selection.refpoint_embed.weight)
    assert LearnedAnchors(8, 5, 4)(memory).content.shape == (2, 4, 8)


def test_conversion_replicates_shared_heads_maps_class_rows_and_checks_alias():
    official = {
        "refpoint_embed.weight": torch.zeros(3, 4),
        "transformer.encoder.query_scale.layers.0.weight": torch.zeros(2, 2),
        "transformer.decoder.layers.0.norm1.weight": torch.ones(2),
        "transformer.decoder.layers.1.norm1.weight": torch.ones(2),
        "label_enc.weight": torch.arange(92.0)[:, None].repeat(1, 2),
        "class_embed.weight": torch.arange(91.0)[:, None].repeat(1, 2),
        "class_embed.bias": torch.arange(91.0),
        "bbox_embed.layers.0.weight": torch.full((2, 2), 3.0),
        "transformer.decoder.bbox_embed.layers.0.weight": torch.full((2, 2), 3.0),
        "transformer.patterns.weight": torch.zeros(3, 2),
    }
    assert is_dn_dab_detr_state_dict(official) and not is_dino_state_dict(official)
    ids = coco_category_ids()
    ours = dn_dab_detr_to_ours(official, ids)
    assert ours["decoder.dec_score_head.0.bias"].tolist() == ids == ours["decoder.dec_score_head.1.bias"].tolist()
    assert ours["decoder.label_enc.weight"][:, 0].tolist() == ids + [91]
    assert torch.equal(ours["decoder.dec_bbox_head.1.layers.0.weight"], torch.full((2, 2), 3.0))
    assert "decoder.patterns.weight" in ours and "encoder.query_scale.layers.0.weight" in ours
    assert not any(k.startswith("transformer.") for k in ours)
    official["transformer.decoder.bbox_embed.layers.0.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointMismatchError, match="is not the box head bbox_embed.layers.0.weight"):
        dn_dab_detr_to_ours(official)
    with pytest.raises(CheckpointMismatchError, match="Keys of no DN-DAB-DETR part"):
        dn_dab_detr_to_ours({"transformer.something_else": torch.zeros(1)})


def test_conversion_of_a_full_official_layout_into_the_80_class_config():
    """A state dict with every official key (ours converted back) loads strictly into the 80-class
    config after the 91 -> 80 row mapping."""
    cfg = load_config("configs/dn_dab_detr_r50_50ep.py", SMALL[:2] + ["model.decoder.num_classes=91"])
    model91 = instantiate(cfg.model)
    ours = model91.state_dict()
    official = {}
    renames = [("backbone.body.", "backbone.0.body."), ("encoder.input_proj.", "input_proj."),
               ("encoder.", "transformer.encoder."), ("decoder.decoder.", "transformer.decoder."),
               ("decoder.query_pos_head.", "transformer.decoder.ref_point_head."),
               ("decoder.query_scale.", "transformer.decoder.query_scale."),
               ("decoder.ref_anchor_head.", "transformer.decoder.ref_anchor_head."),
               ("decoder.refpoint_embed.", "refpoint_embed."), ("decoder.label_enc.", "label_enc."),
               ("decoder.dec_score_head.0.", "class_embed."), ("decoder.dec_bbox_head.0.", "bbox_embed.")]
    for key, value in ours.items():
        if re.match(r"decoder\.dec_(score|bbox)_head\.[1-9]", key):  # the shared heads, once
            continue
        for prefix, official_prefix in renames:
            if key.startswith(prefix):
                official[official_prefix + key[len(prefix):]] = value
                break
    official.update({"transformer.decoder." + k: v for k, v in official.items() if k.startswith("bbox_embed.")})
    official = {k: v for k, v in official.items() if not k.endswith("num_batches_tracked")}
    cfg80 = load_config("configs/dn_dab_detr_r50_50ep.py", SMALL[:2])
    model80 = instantiate(cfg80.model)
    state = convert_dn_dab_detr_state_dict(official, model80)
    model80.load_state_dict(state, strict=True)
    torch.testing.assert_close(model80.decoder.query_selection.label_enc.weight,
                               official["label_enc.weight"][coco_category_ids() + [91]])


@pytest.mark.parametrize("name,expected", [
    ("dn_dab_detr_r50_50ep", 43_694_977), ("dn_dab_detr_r50_dc5_50ep", 43_694_977),
    ("dab_detr_r50_50ep", 43_694_977),
    # 3 patterns add 3 x 256; ResNet-101 adds its 33 extra bottlenecks.
    ("dn_dab_detr_r50_dc5_3pat_12ep", 43_695_745), ("dn_dab_detr_r101_dc5_3pat_12ep", 62_635_649),
])
def test_config_parameter_counts_equal_the_official_builds(name, expected):
    """43,694,977 for DN-DAB-DETR R50 (and DC5) with 91 classes, as the official build (measured with
    the official code; the 3-pattern R50 is tests/golden/dn_dab_detr_golden.json's)."""
    cfg = load_config(f"configs/{name}.py", ["model.decoder.num_classes=91"])
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_configs_recipe():
    cfg = load_config("configs/dn_dab_detr_r50_dc5_3pat_12ep.py")
    assert cfg.model.backbone.dilation and cfg.model.encoder.feat_strides == [16]
    assert cfg.model.decoder.query_selection.num_patterns == 3
    assert cfg.train.epochs == 12 and cfg.lr_multiplier.drop_epochs == [11]
    cfg = load_config("configs/dn_dab_detr_r50_50ep.py")
    assert cfg.train.epochs == 50 and cfg.lr_multiplier.drop_epochs == [40] and cfg.train.clip_grad.max_norm == 0.1
    assert cfg.dataloader.train.total_batch_size == 16 and not cfg.train.ema.enabled and not cfg.train.amp.enabled
    assert load_config("configs/dab_detr_r50_50ep.py").model.decoder.denoising is None


@pytest.mark.parametrize("counts", [(0, 0), (0, 2)])
def test_training_with_images_without_boxes(counts):
    """Background-only images train: without any box in the batch the denoising losses are zero (the
    official constants), with boxes in one image only the other's slots are padding; every loss is
    finite and the keys are the same."""
    model = instantiate(load_config("configs/dn_dab_detr_r50_50ep.py", SMALL).model).train()
    batch = []
    for (h, w), n in zip([(64, 80), (72, 64)], counts):
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0]] * n).reshape(n, 4))
        instances.gt_classes = torch.arange(n, dtype=torch.int64)
        batch.append({"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "instances": instances})
    losses = model(batch)
    denoising = {k: v for k, v in losses.items() if "_dn_" in k}
    assert len(denoising) == 2 * 3 and len(losses) == 4 * 3
    assert all(torch.isfinite(v) for v in losses.values())
    if sum(counts) == 0:
        assert all(v.item() == 0 for v in denoising.values())
    else:
        assert all(v.item() > 0 for v in denoising.values())
    sum(losses.values()).backward()
