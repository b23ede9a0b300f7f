"""DAB-Deformable-DETR with a ResNet-50 backbone: the official IDEA-Research/DN-DETR model
``-m dn_dab_deformable_detr --transformer_activation relu`` (``build_dab_deformable_detr``) without
``--use_dn``; configs/dn_dab_deformable_detr_r50_*.py add its denoising. README: 49.5 box AP with
denoising at 50 epochs (DN-DAB-Deformable-DETR-R50-v2).

The parts: torchvision ResNet-50 (FrozenBN, stem and res2 frozen) -> the deformable encoder (1x1 conv
+ GroupNorm per map, one extra level from C5, Deformable-DETR's sine position encoding: temperature
10000, pixel centres (offset -0.5); six layers) -> the decoder: 300 learned anchor boxes with learned
content (DAB-DETR, one-stage: no proposals), deformable layers whose query position is the sine
embedding of the reference box through ``ref_point_head``, scaled from the second layer on by
``query_scale`` of the query content; one class head and one box head per layer, boxes refined layer
by layer on the detached previous box (Deformable-DETR's iterative refinement). Boxes are relative
to each image, which a batch pads. Losses: sigmoid focal (0.25, 2), L1 5, GIoU 2 (DETR's epsilon), on
every layer; Hungarian costs 2 / 5 / 2. Inference keeps the 100 best (query, class) pairs, as the
official ``PostProcess`` (which ignores ``--num_select``).

The class count is ``model.decoder.num_classes`` (80 for COCO in Detectron2's contiguous ids; the
official model has 91 rows, COCO's category ids, which tools/convert_official.py maps).

Parameters with ``num_classes=91``: 47,405,694; the official build has 23,460 more in every variant,
its denoising label embedding ``label_enc`` (92 x 255), which only the denoising uses.
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
    InputProjection,
    LearnedAnchors,
    MSDeformableAttention,
    SineBoxPositionEmbedding,
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
        dim_feedforward=2048,
        dropout=0.0,
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
        # Learned content; without denoising, no label embedding.
        query_selection=L(LearnedAnchors)(
            hidden_dim="${..hidden_dim}",
            num_classes="${..num_classes}",
            num_queries="${..num_queries}",
            learned_content=True,
            label_embedding=False,
        ),
        layer=L(DeformableDecoderLayer)(
            d_model="${..hidden_dim}",
            n_head=8,
            dim_feedforward=2048,
            dropout=0.0,
            # The official transformer is built with "relu" whatever --transformer_activation says.
            activation="relu",
            cross_attn=L(MSDeformableAttention)(
                embed_dim="${..d_model}",
                num_heads="${..n_head}",
                num_levels="${...num_levels}",
                num_points=4,
            ),
        ),
        query_pos_head=L(SineBoxPositionEmbedding)(hidden_dim="${..hidden_dim}", temperature=10000, query_scale=True),
        class_head=L(ClassHead)(
            hidden_dim="${..hidden_dim}",
            num_classes="${..num_classes}",
            num_layers="${..num_layers}",
            eval_idx="${..eval_idx}",
        ),
        box_head=L(BoxHead)(
            hidden_dim="${..hidden_dim}",
            num_layers="${..num_layers}",
            eval_idx="${..eval_idx}",
            refinement="detached",
            eps=1e-3,
            first_size_bias=-2.0,
        ),
        denoising=None,
    ),
    criterion=L(SetCriterion)(
        num_classes="${..decoder.num_classes}",
        matcher=L(HungarianMatcher)(
            weight_dict={"cost_class": 2.0, "cost_bbox": 5.0, "cost_giou": 2.0}, alpha=0.25, gamma=2.0,
            giou_eps=1e-6,
        ),
        # DETR's GIoU adds 1e-6 to the union and the enclosing area.
        terms=[L(FocalLoss)(alpha=0.25, gamma=2.0), L(BoxLoss)(giou_eps=1e-6)],
        losses=["focal", "boxes"],
        weight_dict={"loss_focal": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0},
    ),
    # ImageNet statistics on RGB in [0, 255] (the official ToTensor + Normalize).
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
    # A batch pads to its largest image only, as the official NestedTensor.
    size_divisibility=1,
    num_top_queries=100,
)
