"""DN-DETR with a ResNet-50 backbone: the official IDEA-Research/DN-DETR DN-DAB-DETR model
(``main.py -m dn_dab_detr --use_dn``, ``models/DN_DAB_DETR``).

The parts: torchvision ResNet-50 (FrozenBN, stem and res2 frozen) returning C5 -> the DAB-DETR
encoder (1x1 conv to 256, sine position encoding with temperature 20 scaled per layer by
``query_scale``, six post-norm layers of global self-attention with PReLU feed-forward blocks) -> the
DAB-DETR decoder: 300 learned anchor boxes whose content is the "no class" label embedding plus an
indicator 0, six layers of self-attention and conditional cross-attention with positional queries
from the boxes' sines (``ref_point_head``, ``query_scale``, width/height-modulated attention), one
class head and one box head shared by all layers on the layers' normalised outputs,
look-forward-twice box refinement, and DN-DETR's denoising (5 groups of noised ground truth: labels
flipped with probability 0.2, centres and sizes moved by up to 0.4 of the size, an indicator 1).
Boxes are relative to each image, which a batch pads. Losses: sigmoid focal (0.25, 2), L1 5, GIoU 2
on every layer (Hungarian costs 2 / 5 / 2), and on every layer's denoising positives, normalised by
the ground truths times 5 (``num_tgt``).

The class count is ``model.decoder.num_classes`` (80 for COCO in Detectron2's contiguous ids; the
official model has 91 rows, COCO's category ids, which tools/convert_official.py maps). Without
denoising (``model.decoder.denoising=None``) this is DAB-DETR as DN-DETR builds it.
"""
from detectron2.config import LazyCall as L

from dfine.modeling import RealTimeDETR
from dfine.modeling.backbone import ResNet
from dfine.modeling.criterion import BoxLoss, FocalLoss, HungarianMatcher, SetCriterion
from dfine.modeling.decoder import (
    BoxHead,
    ClassHead,
    DabDecoderLayer,
    DabDetrDecoder,
    DnDetrDenoising,
    InputProjection,
    LearnedAnchors,
    SineBoxPositionEmbedding,
)
from dfine.modeling.encoder import DabEncoder

model = L(RealTimeDETR)(
    # layer4 only (stride 32; 16 with dilation, the DC5 models).
    backbone=L(ResNet)(depth=50, return_idx=[3], dilation=False, freeze_at=2),
    encoder=L(DabEncoder)(
        in_channels=[2048],
        feat_strides=[32],
        hidden_dim=256,
        num_layers=6,
        num_heads=8,
        dim_feedforward=2048,
        dropout=0.0,
        activation="prelu",
        pe_temperature_h=20,
        pe_temperature_w=20,
    ),
    decoder=L(DabDetrDecoder)(
        num_classes=80,
        hidden_dim=256,
        num_queries=300,
        num_layers=6,
        num_levels=1,
        eval_idx=-1,
        output_norm=True,
        image_relative_boxes=True,
        query_scale_type="cond_elewise",
        modulate_hw_attn=True,
        keep_query_pos=False,
        pe_temperature_h="${..encoder.pe_temperature_h}",
        pe_temperature_w="${..encoder.pe_temperature_w}",
        # The encoder's map is the memory as it is.
        input_proj=L(InputProjection)(
            in_channels=[256],
            in_strides="${...encoder.feat_strides}",
            hidden_dim="${..hidden_dim}",
            num_levels="${..num_levels}",
            identity_when_equal=True,
        ),
        query_selection=L(LearnedAnchors)(
            hidden_dim="${..hidden_dim}",
            num_classes="${..num_classes}",
            num_queries="${..num_queries}",
            num_patterns=0,
            random_refpoints_xy=False,
        ),
        layer=L(DabDecoderLayer)(
            d_model="${..hidden_dim}",
            n_head=8,
            dim_feedforward=2048,
            dropout=0.0,
            activation="prelu",
        ),
        # ref_point_head: MLP(512, 256, 256, 2) of the boxes' sines (temperature 10000).
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
        denoising=L(DnDetrDenoising)(
            num_classes="${..num_classes}",
            num_groups=5,
            label_noise_ratio=0.2,
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
        # DN-DETR's tgt_loss_*: the positive denoising queries only, over num_tgt = GT x groups.
        denoising_normaliser="local",
        denoising_positives_only=True,
    ),
    # ImageNet statistics on RGB in [0, 255] (the official ToTensor + Normalize).
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
    # A batch pads to its largest image only, as the official NestedTensor.
    size_divisibility=1,
    num_top_queries=300,
)
