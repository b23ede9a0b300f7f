"""RT-DETRv2 with a PResNet-50vd backbone: the official include/rtdetrv2_r50vd.yml model.

The decoder is the composition of parts that makes RT-DETRv2: top-K selection from the encoder
memory, deformable decoder layers, box deltas refined with look-forward-twice, and contrastive
denoising. The per-size configs (configs/rtdetrv2_r*.py) override what the official configs override.
"""
from detectron2.config import LazyCall as L

from dfine.modeling import RealTimeDETR
from dfine.modeling.backbone import PResNet
from dfine.modeling.criterion import BoxLoss, HungarianMatcher, SetCriterion, VarifocalLoss
from dfine.modeling.decoder import (
    BoxHead,
    BoxPositionEmbedding,
    ClassHead,
    ContrastiveDenoising,
    DeformableDecoderLayer,
    DetrDecoder,
    EncoderTopK,
    InputProjection,
    MSDeformableAttention,
)
from dfine.modeling.encoder import HybridEncoder

model = L(RealTimeDETR)(
    backbone=L(PResNet)(depth=50, variant="d", num_stages=4, return_idx=[1, 2, 3], freeze_at=0, freeze_norm=True),
    encoder=L(HybridEncoder)(
        in_channels=[512, 1024, 2048],
        feat_strides=[8, 16, 32],
        hidden_dim=256,
        use_encoder_idx=[2],
        num_encoder_layers=1,
        nhead=8,
        dim_feedforward=1024,
        dropout=0.0,
        enc_act="gelu",
        expansion=1.0,
        depth_mult=1.0,
        act="silu",
        eval_spatial_size=[640, 640],
    ),
    decoder=L(DetrDecoder)(
        num_classes=80,
        hidden_dim=256,
        num_queries=300,
        num_layers=6,
        num_levels=3,
        eval_idx=-1,
        # The encoder's maps, each through a 1x1 conv + BN.
        input_proj=L(InputProjection)(
            in_channels=[256, 256, 256],
            in_strides=[8, 16, 32],
            hidden_dim="${..hidden_dim}",
            num_levels="${..num_levels}",
        ),
        query_selection=L(EncoderTopK)(
            hidden_dim="${..hidden_dim}",
            num_classes="${..num_classes}",
            num_queries="${..num_queries}",
            in_strides="${..input_proj.in_strides}",
            num_levels="${..num_levels}",
            method="default",
            eval_spatial_size=[640, 640],
        ),
        layer=L(DeformableDecoderLayer)(
            d_model="${..hidden_dim}",
            n_head=8,
            dim_feedforward=1024,
            dropout=0.0,
            activation="relu",
            cross_attn=L(MSDeformableAttention)(
                embed_dim="${..d_model}",
                num_heads="${..n_head}",
                num_levels="${...num_levels}",
                num_points=[4, 4, 4],
                method="default",
            ),
        ),
        query_pos_head=L(BoxPositionEmbedding)(hidden_dim="${..hidden_dim}", method="default", act="relu"),
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
            refinement="look_forward_twice",
            act="relu",
        ),
        denoising=L(ContrastiveDenoising)(
            num_classes="${..num_classes}",
            hidden_dim="${..hidden_dim}",
            num_denoising=100,
            label_noise_ratio=0.5,
            box_noise_scale=1.0,
        ),
    ),
    criterion=L(SetCriterion)(
        num_classes="${..decoder.num_classes}",
        matcher=L(HungarianMatcher)(
            weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, alpha=0.25, gamma=2.0
        ),
        # `losses` selects among the `terms` by name.
        terms=[L(VarifocalLoss)(alpha=0.75, gamma=2.0), L(BoxLoss)()],
        losses=["vfl", "boxes"],
        weight_dict={"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2},
    ),
    # The official weights expect RGB in [0, 1].
    pixel_mean=[0.0, 0.0, 0.0],
    pixel_std=[255.0, 255.0, 255.0],
    input_format="RGB",
    num_top_queries=300,
)
