"""Two-stage Deformable-DETR with iterative box refinement ("++ two-stage Deformable DETR"), ResNet-50:
the official fundamentalvision/Deformable-DETR model of
``configs/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh`` (``main.py
--with_box_refine --two_stage``, every other argument main.py's default). README: 46.9 box AP at 50
epochs, 41M parameters.

The parts: torchvision ResNet-50 (FrozenBN, stem and res2 frozen) -> the deformable encoder (1x1 conv
+ GroupNorm per map, one extra level from C5, Deformable-DETR's sine position encoding: temperature
10000, pixel centres (offset -0.5); six layers, FFN 1024, dropout 0.1) -> the decoder: two-stage
proposals from the memory (``enc_output`` Linear + LayerNorm on the memory, padded tokens and
proposals outside (0.01, 0.99) zeroed and +inf), the 300 proposals of highest *first* class logit,
whose sine embedding (x, y, w, h) through ``pos_trans`` + ``pos_trans_norm`` gives each query its
position (the same in every layer) and its content; six deformable layers (FFN 1024, dropout 0.1);
one class head and one box head per layer (clones of one initialisation), boxes refined layer by layer
on the detached previous box. Boxes are relative to each image, which a batch pads. Losses: sigmoid
focal (0.25, 2) weight 2, L1 5, GIoU 2 (DETR's, without epsilon), on every layer and on every token's
proposal, class-agnostic (every ground truth as class 0, the other logits as negatives); Hungarian
costs 2 / 5 / 2. Inference keeps the 100 best (query, class) pairs, as the official ``PostProcess``.

The class count is ``model.decoder.num_classes`` (80 for COCO in Detectron2's contiguous ids; the
official model has 91 rows, COCO's category ids, which tools/convert_official.py maps).

Parameters with ``num_classes=91``: 41,181,529 (40,959,129 trainable), as the official build
(tests/test_parity_deformable_detr.py).
"""
from detectron2.config import LazyCall as L

from dfine.modeling import RealTimeDETR
from dfine.modeling.backbone import ResNet
from dfine.modeling.criterion import BoxLoss, FocalLoss, HungarianMatcher, SetCriterion
from dfine.modeling.decoder import (
    BoxHead,
    ClassHead,
    DeformableDecoderLayer,
    DetrDecoder,
    EncoderTopK,
    InputProjection,
    MSDeformableAttention,
)
from dfine.modeling.encoder import DeformableEncoder

model = L(RealTimeDETR)(
    # layer2..layer4 (strides 8, 16, 32).
    backbone=L(ResNet)(depth=50, return_idx=[1, 2, 3], dilation=False, freeze_at=2),
    encoder=L(DeformableEncoder)(
        in_channels=[512, 1024, 2048],
        feat_strides=[8, 16, 32],
        hidden_dim=256,
        num_levels=4,
        num_layers=6,
        num_heads=8,
        num_points=4,
        dim_feedforward=1024,
        dropout=0.1,
        activation="relu",
        pe_temperature_h=10000,
        pe_temperature_w=10000,
        pe_offset=-0.5,
    ),
    decoder=L(DetrDecoder)(
        num_classes=80,
        hidden_dim=256,
        num_queries=300,
        num_layers=6,
        num_levels=4,
        eval_idx=-1,
        output_norm=False,
        image_relative_boxes=True,
        # The encoder's maps are the memory as they are.
        input_proj=L(InputProjection)(
            in_channels=[256, 256, 256, 256],
            in_strides=[8, 16, 32, 64],
            hidden_dim="${..hidden_dim}",
            num_levels="${..num_levels}",
            identity_when_equal=True,
        ),
        query_selection=L(EncoderTopK)(
            hidden_dim="${..hidden_dim}",
            num_classes="${..num_classes}",
            num_queries="${..num_queries}",
            in_strides="${..input_proj.in_strides}",
            num_levels="${..num_levels}",
            # Top-300 of the first class logit; the encoder loss is class-agnostic.
            method="first_logit",
            eps=0.01,
            propose_padding=True,
            embed_proposals=True,
            supervise_all=True,
        ),
        layer=L(DeformableDecoderLayer)(
            d_model="${..hidden_dim}",
            n_head=8,
            dim_feedforward=1024,
            dropout=0.1,
            activation="relu",
            cross_attn=L(MSDeformableAttention)(
                embed_dim="${..d_model}",
                num_heads="${..n_head}",
                num_levels="${...num_levels}",
                num_points=4,
            ),
        ),
        # The query selection gives every layer its position embedding.
        query_pos_head=None,
        class_head=L(ClassHead)(
            hidden_dim="${..hidden_dim}",
            num_classes="${..num_classes}",
            num_layers="${..num_layers}",
            eval_idx="${..eval_idx}",
            clone=True,
        ),
        box_head=L(BoxHead)(
            hidden_dim="${..hidden_dim}",
            num_layers="${..num_layers}",
            eval_idx="${..eval_idx}",
            refinement="detached",
            clone=True,
            eps=1e-5,
        ),
        denoising=None,
    ),
    criterion=L(SetCriterion)(
        num_classes="${..decoder.num_classes}",
        # DETR's GIoU without epsilon (Deformable-DETR's util/box_ops.py).
        matcher=L(HungarianMatcher)(
            weight_dict={"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0}, alpha=0.25, gamma=2.0,
        ),
        terms=[L(FocalLoss)(alpha=0.25, gamma=2.0), L(BoxLoss)()],
        losses=["focal", "boxes"],
        weight_dict={"loss_focal": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0},
    ),
    # ImageNet statistics on RGB in [0, 255] (the official ToTensor + Normalize).
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
    # A batch pads to its largest image only, as the official NestedTensor.
    size_divisibility=1,
    num_top_queries=100,
)
