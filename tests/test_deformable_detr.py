"""Two-stage Deformable-DETR's own parts, without the official code: the first-logit top-k, the
proposal embedding as the queries' fixed position and content, the class-agnostic encoder loss over
every token, the recipe, a small model training. The numerical parity with the official model is
tests/test_parity_deformable_detr.py."""
import math

import pytest
import torch
from detectron2.config import instantiate

from dfine.config import load_config
from dfine.modeling.criterion import FocalLoss, HungarianMatcher, SetCriterion
from dfine.modeling.decoder import EncoderTopK, Memory
from dfine.modeling.decoder.outputs import Branch, DecoderOutput, Predictions, Proposals
from dfine.modeling.layers.position_encoding import sine_box_embedding
from test_dab_deformable_detr import _batch

CONFIG = "configs/deformable_detr_r50_50ep.py"
SMALL = ["model.backbone.depth=18", "model.encoder.in_channels=[128,256,512]", "model.encoder.hidden_dim=64",
         "model.encoder.num_layers=1", "model.decoder.hidden_dim=64", "model.decoder.num_layers=2",
         "model.decoder.num_queries=30", "model.decoder.input_proj.in_channels=[64,64,64,64]",
         "model.decoder.num_classes=6"]


def test_proposal_sine_embedding_keeps_the_coordinate_order():
    """``y_first=False``: x, y, w, h features in that order (Deformable-DETR's ``get_proposal_pos_embed``),
    each ``sin(2 pi v / T ** (2k / n))``, ``cos`` interleaved; the default puts y before x (DINO)."""
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    embedding = sine_box_embedding(boxes, 8, 10000, y_first=False)
    assert embedding.shape == (1, 32)
    for i, value in enumerate(boxes[0].tolist()):
        sine = torch.tensor(math.sin(2 * math.pi * value), dtype=torch.float64)
        torch.testing.assert_close(embedding[0, 8 * i], sine)
        frequency = 10000 ** (2 * 1 / 8)
        torch.testing.assert_close(embedding[0, 8 * i + 3],
                                   torch.tensor(math.cos(2 * math.pi * value / frequency), dtype=torch.float64))
    dino = sine_box_embedding(boxes, 8, 10000)
    assert torch.equal(dino[:, :8], embedding[:, 8:16]) and torch.equal(dino[:, 8:16], embedding[:, :8])
    assert torch.equal(dino[:, 16:], embedding[:, 16:])


def _selection(**kwargs):
    torch.manual_seed(0)
    return EncoderTopK(hidden_dim=16, num_classes=5, num_queries=3, in_strides=[8], num_levels=1,
                       method="first_logit", propose_padding=True, embed_proposals=True, supervise_all=True,
                       **kwargs)


def test_first_logit_selection_embeds_the_selected_boxes():
    """The top-k by each token's first class logit (not the max over classes); the queries' position and
    content are the two halves of ``pos_trans_norm(pos_trans(sine(x, y, w, h)))`` of the selected, detached
    boxes; every token's proposal is supervised, class-agnostic."""
    selection = _selection()
    memory = Memory(torch.randn(2, 12, 16), [(3, 4)], None)
    out = selection(memory)
    tokens = selection.enc_output(memory.tokens)
    logits = selection.enc_score_head(tokens)
    index = logits[..., 0].topk(3, dim=1).indices
    assert not torch.equal(index, logits.max(-1).values.topk(3, dim=1).indices)  # the seed makes them differ
    boxes_unact = out.proposals.boxes.logit()[torch.arange(2)[:, None], index]
    torch.testing.assert_close(out.reference_unact, boxes_unact)
    assert not out.reference_unact.requires_grad
    embedded = selection.pos_trans_norm(selection.pos_trans(
        sine_box_embedding(out.reference_unact.sigmoid(), 8, 10000, y_first=False)))
    assert torch.equal(out.query_pos, embedded[..., :16]) and torch.equal(out.content, embedded[..., 16:])
    assert out.proposals.logits.shape == (2, 12, 5) and out.proposals.boxes.shape == (2, 12, 4)
    assert out.proposals.class_agnostic and out.proposals.boxes.requires_grad


def test_query_selection_options_that_exclude_each_other():
    with pytest.raises(ValueError, match="learn_content and embed_proposals"):
        _selection(learn_content=True)
    with pytest.raises(ValueError, match="Unknown query selection method"):
        EncoderTopK(hidden_dim=16, num_classes=5, num_queries=3, in_strides=[8], num_levels=1, method="first")


def test_class_agnostic_proposals_keep_every_logit():
    """The encoder loss: every ground truth as class 0, matched by class 0's cost, focal loss over all
    the classes' logits (the others are negatives), as the official ``bin_targets``."""
    torch.manual_seed(0)
    logits, boxes = torch.randn(1, 4, 3), torch.rand(1, 4, 4) * 0.5 + 0.25
    targets = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    matcher = HungarianMatcher(weight_dict={"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0})
    criterion = SetCriterion(matcher=matcher, terms=[FocalLoss()], losses=["focal"], weight_dict={"loss_focal": 1.0},
                             num_classes=3)
    final = Predictions(torch.zeros(1, 4, 3), boxes)
    output = DecoderOutput(Branch([final]), Proposals(logits, boxes, class_agnostic=True))
    encoder = criterion(output, targets)["loss_focal_enc_0"]
    as_class_0 = [{"labels": torch.tensor([0]), "boxes": targets[0]["boxes"]}]
    expected = criterion(DecoderOutput(Branch([Predictions(logits, boxes)])), as_class_0)["loss_focal"]
    torch.testing.assert_close(encoder, expected)


def test_recipe():
    """main.py's defaults: AdamW 2e-4 (backbone 2e-5, sampling offsets 2e-5), weight decay 1e-4, 50 epochs
    with the drop at 40, clipping 0.1, batch 32 (the README), no EMA nor AMP; the model's values."""
    cfg = load_config(CONFIG)
    rules = cfg.optimizer.params.rules
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, rules["backbone"]["lr"]) == (2e-4, 1e-4, 2e-5)
    assert rules["linear_proj"]["lr"] == pytest.approx(2e-5)
    assert (cfg.train.epochs, cfg.lr_multiplier.drop_epochs, cfg.lr_multiplier.gamma) == (50, [40], 0.1)
    assert cfg.train.clip_grad.max_norm == 0.1 and cfg.dataloader.train.total_batch_size == 32
    assert not cfg.train.ema.enabled and not cfg.train.amp.enabled and cfg.model.num_top_queries == 100
    assert cfg.model.encoder.dim_feedforward == cfg.model.decoder.layer.dim_feedforward == 1024
    assert cfg.model.encoder.dropout == cfg.model.decoder.layer.dropout == 0.1
    assert cfg.model.criterion.weight_dict == {"loss_focal": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    cfg.optimizer.params.model = instantiate(load_config(CONFIG, SMALL).model)
    groups = {g["name"]: g for g in instantiate(cfg.optimizer).param_groups}
    names = {id(p): n for n, p in cfg.optimizer.params.model.named_parameters()}
    assert groups["linear_proj"]["params"] and all("sampling_offsets" in names[id(p)]
                                                   for p in groups["linear_proj"]["params"])


@pytest.mark.parametrize("boxes_per_image", [(1, 3), (0, 0)])
def test_small_model_trains_and_keeps_the_query_position(boxes_per_image):
    """A padded batch trains end to end (the encoder loss on every token, ``_enc_0``); the proposal
    embedding and the encoder heads get gradients; every decoder layer gets the same query position."""
    torch.manual_seed(0)
    model = instantiate(load_config(CONFIG, SMALL).model).train()
    positions = []
    for layer in model.decoder.layers:
        layer.register_forward_pre_hook(lambda module, args: positions.append(args[-1]))
    losses = model(_batch(boxes_per_image))
    assert len(positions) == 2 and positions[0] is positions[1]
    assert {"loss_focal_enc_0", "loss_bbox_enc_0", "loss_giou_aux_0"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    selection = model.decoder.query_selection
    for parameter in (selection.pos_trans.weight, selection.enc_score_head.weight, selection.enc_output.proj.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        (result, _) = model(_batch((0, 0)))
    assert len(result["instances"]) == 100
