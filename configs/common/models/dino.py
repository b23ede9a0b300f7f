"""DINO with a ResNet-50 backbone, 4 scales: the official IDEA-Research/DINO config/DINO/DINO_4scale.py
model (``build_dino``).

The parts: torchvision ResNet-50 (FrozenBN, stem and res2 frozen) -> the deformable encoder (1x1 conv
+ GroupNorm per map, one extra level from C5, sine position encoding with temperature 20, six
layers) -> the decoder: two-stage proposals from the memory, mixed query selection (the 900 best
proposals' boxes, learned content), deformable layers, one class head and one box head shared by all
layers on the layers' normalised outputs, look-forward-twice, and DINO's contrastive denoising
(100 positive queries per image in groups, label and box noise). Boxes are relative to each image,
which a batch pads. Losses: sigmoid focal (0.25, 2), L1 5, GIoU 2, on every layer, on the proposals
and on the denoising queries; Hungarian costs 2 / 5 / 2.

The class count is ``model.decoder.num_classes`` (80 for COCO in Detectron2's contiguous ids; the
official model has 91 rows, COCO's category ids, which tools/convert_official.py maps).
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
    DinoContrastiveDenoising,
    EncoderTopK,
    InputProjection,
    MSDeformableAttention,
    SineBoxPositionEmbedding,
)
from dfine.modeling.encoder import DeformableEncoder

model = L(RealTimeDETR)(
    # layer2..layer4 (strides 8, 16, 32); 5-scale adds layer1.
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
        pe_temperature_h=20,
        pe_temperature_w=20,
    ),
    decoder=L(DetrDecoder)(
        num_classes=80,
        hidden_dim=256,
        num_queries=900,
        num_layers=6,
        num_levels=4,
        eval_idx=-1,
        output_norm=True,
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
            method="default",
            eps=0.01,
            learn_content=True,
            content_init="normal",
            propose_padding=True,
        ),
        layer=L(DeformableDecoderLayer)(
            d_model="${..hidden_dim}",
            n_head=8,
            dim_feedforward=2048,
            dropout=0.0,
            activation="relu",
            cross_attn=L(MSDeformableAttention)(
                embed_dim="${..d_model}",
                num_heads="${..n_head}",
                num_levels="${...num_levels}",
                num_points=4,
            ),
        ),
        query_pos_head=L(SineBoxPositionEmbedding)(hidden_dim="${..hidden_dim}", temperature=10000),
        class_head=L(ClassHead)(
            hidden_dim="${..hidden_dim}",
            num_classes="${..num_classes}",
            num_layers="${..num_layers}",
            eval_idx="${..eval_idx}",
            share=True,
        ),
        box_head=L(BoxHead)(
            hidden_dim="${..hidden_dim}",
            num_layers="${..num_layers}",
            eval_idx="${..eval_idx}",
            refinement="look_forward_twice",
            share=True,
            eps=1e-3,
        ),
        denoising=L(DinoContrastiveDenoising)(
            num_classes="${..num_classes}",
            hidden_dim="${..hidden_dim}",
            num_denoising=100,
            label_noise_ratio=0.5,
            box_noise_scale=0.4,
        ),
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
    num_top_queries=300,
)
