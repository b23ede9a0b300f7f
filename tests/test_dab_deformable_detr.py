"""(DN-)DAB-Deformable-DETR's own parts, without the official code: the learned anchors and content, DAB's
conditional query scale, the Deformable-DETR sine encoding, the first box head's size bias, the checkpoint
conversion, the configs (parameter counts, recipe). The numerical parity with the official model is
tests/test_parity_dab_deformable_detr.py."""
import math

import pytest
import torch
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances

from dfine.checkpoint.official import (
    CheckpointMismatchError,
    coco_category_ids,
    DAB_DEFORMABLE_DETR_LAYOUT,
    DINO_LAYOUT,
    DN_DAB_DETR_LAYOUT,
    official_layout,
    official_to_ours,
)
from dfine.config import load_config
from dfine.modeling.decoder import BoxHead, LearnedAnchors, Memory, SineBoxPositionEmbedding
from dfine.modeling.encoder import DeformableEncoder
from dfine.modeling.layers.position_encoding import SinePositionEncoding

SMALL = ["model.backbone.depth=18", "model.encoder.in_channels=[128,256,512]", "model.encoder.hidden_dim=64",
         "model.encoder.num_layers=1", "model.decoder.hidden_dim=64", "model.decoder.num_layers=2",
         "model.decoder.num_queries=30", "model.decoder.input_proj.in_channels=[64,64,64,64]",
         "model.decoder.num_classes=6"]


def _memory(batch=2, hidden_dim=8):
    return Memory(torch.zeros(batch, 5, hidden_dim), [(1, 5)], None)


def test_learned_content_queries():
    """Learned content (``tgt_embed``, C - 1 wide) with an indicator 0, the same for every image, and
    anchors that keep their gradient; no label embedding unless asked for."""
    anchors = LearnedAnchors(hidden_dim=8, num_classes=3, num_queries=4, learned_content=True, label_embedding=False)
    assert not hasattr(anchors, "label_enc") and anchors.tgt_embed.weight.shape == (4, 7)
    selection = anchors(_memory())
    assert selection.content.shape == (2, 4, 8) and selection.proposals is None
    assert torch.equal(selection.content[0, :, :7], anchors.tgt_embed.weight)
    assert torch.equal(selection.content[..., 7], torch.zeros(2, 4))
    assert torch.equal(selection.reference_unact[1], anchors.refpoint_embed.weight)
    selection.reference_unact.sum().backward()
    assert torch.equal(anchors.refpoint_embed.weight.grad, torch.full((4, 4), 2.0))
    with_labels = LearnedAnchors(hidden_dim=8, num_classes=3, num_queries=4, learned_content=True)
    assert with_labels.label_enc.weight.shape == (4, 7)


def test_learned_anchors_refuse_models_the_official_code_has_not():
    with pytest.raises(ValueError, match="label_embedding must be True"):
        LearnedAnchors(hidden_dim=8, num_classes=3, num_queries=4, label_embedding=False)
    with pytest.raises(ValueError, match="no patterns"):
        LearnedAnchors(hidden_dim=8, num_classes=3, num_queries=4, num_patterns=3, learned_content=True)


def test_query_scale_multiplies_the_embedding_from_the_second_layer():
    torch.manual_seed(0)
    head = SineBoxPositionEmbedding(hidden_dim=16, query_scale=True)
    plain = SineBoxPositionEmbedding(hidden_dim=16)
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("query_scale.")})
    assert head.content_scaled and not plain.content_scaled
    boxes, content = torch.rand(2, 3, 4), torch.randn(2, 3, 16)
    assert torch.equal(head(boxes), plain(boxes))
    assert torch.equal(head(boxes, content), head.query_scale(content) * plain(boxes))
    assert sum(p.numel() for p in head.query_scale.parameters()) == 2 * (16 * 16 + 16)


def test_encoder_sine_offset_is_deformable_detr_pixel_centres():
    """``pe_offset=-0.5`` with temperature 10000: position ``(count - 0.5) / last count * 2 pi``."""
    encoder = DeformableEncoder(in_channels=[8], feat_strides=[8], hidden_dim=32, num_levels=1, num_layers=1,
                                pe_temperature_h=10000, pe_temperature_w=10000, pe_offset=-0.5)
    encoding = encoder.position_encoding
    assert encoding.offset == -0.5 and encoding.temperature_h == encoding.temperature_w == 10000
    mask = torch.zeros(1, 2, 4, dtype=torch.bool)
    pos = encoding(mask)
    x = (torch.arange(4) + 0.5) / (4 + 1e-6) * 2 * math.pi
    torch.testing.assert_close(pos[0, 16, 0], x.sin())  # the first x feature: sin(x / 10000 ** 0)
    y = (torch.arange(2) + 0.5) / (2 + 1e-6) * 2 * math.pi
    torch.testing.assert_close(pos[0, 1, :, 0], y.cos())  # the first y cosine
    assert torch.equal(pos, SinePositionEncoding(16, 10000, 10000, normalize=True, offset=-0.5)(mask))


def test_first_box_head_size_bias():
    head = BoxHead(hidden_dim=8, num_layers=3, refinement="detached", eps=1e-3, first_size_bias=-2.0)
    assert torch.equal(head.dec_bbox_head[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    assert all(torch.equal(h.layers[-1].bias, torch.zeros(4)) for h in head.dec_bbox_head[1:])
    # With distributions (the FDR plug-in) the bias goes to the initial box they refine.
    head = BoxHead(hidden_dim=8, num_layers=3, reg_max=4, first_size_bias=-2.0)
    assert torch.equal(head.pre_bbox_head.layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    assert all(torch.equal(h.layers[-1].bias, torch.zeros(20)) for h in head.dec_bbox_head)


def _official(num_classes=91, hidden=4):
    """A miniature official state dict with one key of every kind (shapes are irrelevant to renaming)."""
    g = torch.Generator().manual_seed(0)
    keys = {
        "backbone.0.body.conv1.weight": (2,), "input_proj.0.0.weight": (2,), "transformer.level_embed": (4, hidden),
        "transformer.encoder.layers.0.norm1.weight": (hidden,), "transformer.decoder.layers.0.norm1.weight": (hidden,),
        "transformer.decoder.layers.0.norm2.weight": (hidden,),
        "transformer.decoder.layers.0.cross_attn.value_proj.weight": (hidden, hidden),
        "transformer.decoder.query_scale.layers.0.weight": (hidden, hidden),
        "transformer.decoder.ref_point_head.layers.0.weight": (hidden, 2 * hidden),
        "class_embed.0.weight": (num_classes, hidden), "class_embed.0.bias": (num_classes,),
        "bbox_embed.0.layers.2.bias": (4,), "label_enc.weight": (num_classes + 1, hidden - 1),
        "tgt_embed.weight": (3, hidden - 1), "refpoint_embed.weight": (3, 4),
    }
    out = {k: torch.randn(*s, generator=g) for k, s in keys.items()}
    out["transformer.decoder.bbox_embed.0.layers.2.bias"] = out["bbox_embed.0.layers.2.bias"].clone()
    return out


def test_conversion_renames_checks_aliases_and_maps_91_rows():
    official = _official()
    assert official_layout(official) is DAB_DEFORMABLE_DETR_LAYOUT
    assert not DINO_LAYOUT.matches(official) and not DN_DAB_DETR_LAYOUT.matches(official)
    ours = official_to_ours(official, DAB_DEFORMABLE_DETR_LAYOUT)
    layer = "transformer.decoder.layers.0."
    assert torch.equal(ours["decoder.decoder.layers.0.norm2.weight"], official[layer + "norm1.weight"])
    assert torch.equal(ours["decoder.decoder.layers.0.norm1.weight"], official[layer + "norm2.weight"])
    assert torch.equal(ours["decoder.query_pos_head.query_scale.layers.0.weight"],
                       official["transformer.decoder.query_scale.layers.0.weight"])
    assert {"encoder.level_embed", "decoder.tgt_embed.weight", "decoder.refpoint_embed.weight",
            "decoder.label_enc.weight", "decoder.query_pos_head.layers.0.weight", "backbone.body.conv1.weight",
            "encoder.input_proj.0.0.weight", "encoder.layers.0.norm1.weight", "decoder.dec_score_head.0.bias",
            "decoder.dec_bbox_head.0.layers.2.bias"} <= set(ours)
    assert not any("transformer" in k for k in ours)
    assert "decoder.label_enc.weight" not in official_to_ours(official, DAB_DEFORMABLE_DETR_LAYOUT, denoising=False)

    ids = coco_category_ids()
    mapped = official_to_ours(official, DAB_DEFORMABLE_DETR_LAYOUT, ids)
    assert torch.equal(mapped["decoder.dec_score_head.0.weight"], official["class_embed.0.weight"][ids])
    assert torch.equal(mapped["decoder.label_enc.weight"], official["label_enc.weight"][ids + [91]])

    official["transformer.decoder.bbox_embed.0.layers.2.bias"] += 1
    with pytest.raises(CheckpointMismatchError, match="is not the shared head"):
        official_to_ours(official, DAB_DEFORMABLE_DETR_LAYOUT)
    with pytest.raises(CheckpointMismatchError, match="Keys of no DAB-Deformable-DETR part"):
        official_to_ours({"transformer.something_else": torch.zeros(1)}, DAB_DEFORMABLE_DETR_LAYOUT)


@pytest.mark.parametrize("name,expected", [
    # The official build: 47,429,154 (tests/golden/dab_deformable_detr_golden.json), less label_enc
    # (92 x 255) without denoising.
    ("dab_deformable_detr_r50_50ep", 47_405_694), ("dn_dab_deformable_detr_r50_12ep", 47_429_154),
    ("dn_dab_deformable_detr_r50_24ep", 47_429_154), ("dn_dab_deformable_detr_r50_50ep", 47_429_154),
])
def test_config_parameter_counts_equal_the_official_build(name, expected):
    cfg = load_config(f"configs/{name}.py", ["model.decoder.num_classes=91"])
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name,epochs,drop", [
    ("dab_deformable_detr_r50_50ep", 50, 40), ("dn_dab_deformable_detr_r50_12ep", 12, 11),
    ("dn_dab_deformable_detr_r50_24ep", 24, 20), ("dn_dab_deformable_detr_r50_50ep", 50, 40),
])
def test_recipe(name, epochs, drop):
    """main.py's defaults: AdamW 1e-4 (backbone 1e-5), weight decay 1e-4, clipping 0.1, batch 16, one
    LR drop, no EMA nor AMP; the official post-processing keeps 100 detections."""
    cfg = load_config(f"configs/{name}.py")
    assert (cfg.train.epochs, cfg.lr_multiplier.drop_epochs, cfg.lr_multiplier.gamma) == (epochs, [drop], 0.1)
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.params.rules["backbone"]["lr"]) == \
        (1e-4, 1e-4, 1e-5)
    assert cfg.train.clip_grad.max_norm == 0.1 and cfg.dataloader.train.total_batch_size == 16
    assert not cfg.train.ema.enabled and not cfg.train.amp.enabled
    assert cfg.model.num_top_queries == 100
    denoising = cfg.model.decoder.denoising
    if name.startswith("dn_"):
        assert (denoising.num_groups, denoising.label_noise_ratio, denoising.box_noise_scale) == (5, 0.2, 0.4)
        assert cfg.model.criterion.denoising_normaliser == "local" and cfg.model.criterion.denoising_positives_only
    else:
        assert denoising is None


def _batch(boxes_per_image):
    batch = []
    for (h, w), n in zip([(64, 80), (72, 64)], boxes_per_image):
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0]]).repeat(n, 1))
        instances.gt_classes = torch.arange(n) % 6
        batch.append({"image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8), "instances": instances})
    return batch


@pytest.mark.parametrize("boxes_per_image", [(1, 3), (0, 0)])
def test_small_dn_model_trains_with_and_without_ground_truth(boxes_per_image):
    """A padded batch trains end to end; the anchors, the learned content and the label embedding get
    gradients. Without any box, the denoising losses are zeros (as the official ones) and the rest is
    finite."""
    torch.manual_seed(0)
    model = instantiate(load_config("configs/dn_dab_deformable_detr_r50_50ep.py", SMALL).model).train()
    losses = model(_batch(boxes_per_image))
    denoising = {k: v for k, v in losses.items() if "_dn_" in k}
    assert len(denoising) == 2 * 3 and all(torch.isfinite(v) for v in losses.values())
    assert all(v.item() == 0 for v in denoising.values()) == (sum(boxes_per_image) == 0)
    sum(losses.values()).backward()
    selection = model.decoder.query_selection
    for parameter in (selection.refpoint_embed.weight, selection.tgt_embed.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    if sum(boxes_per_image):
        assert selection.label_enc.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        results = model(_batch(boxes_per_image))
    assert [len(r["instances"]) for r in results] == [100, 100]
