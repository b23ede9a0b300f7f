"""D-FINE with an HGNetv2 backbone: the official configs/dfine/include/dfine_hgnetv2.yml model with the
B4 backbone of D-FINE-L (configs/dfine/dfine_hgnetv2_l_coco.yml).

RT-DETRv2's parts (configs/common/models/rtdetrv2.py, same widths and matcher) with D-FINE's: HGNetv2,
the GELAN encoder blocks, the lighter decoder layer, the distribution box head (FDR) and its losses
with GO-LSD. The per-size configs (configs/dfine_hgnetv2_*.py) override what the official ones do.
"""
from detectron2.config import LazyCall as L

from dfine.modeling import RealTimeDETR
from dfine.modeling.backbone import HGNetv2
from dfine.modeling.criterion import BoxLoss, DistributionLoss, HungarianMatcher, SetCriterion, VarifocalLoss
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
    # Stem frozen; every BatchNorm frozen (FrozenBatchNorm2d).
    backbone=L(HGNetv2)(
        name="B4", use_lab=False, return_idx=[1, 2, 3], freeze_at=0, freeze_stem_only=True, freeze_norm=True
    ),
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
        # GELAN-style CCFF: RepNCSPELAN4 fusion blocks, SCDown down-sampling.
        version="dfine",
    ),
    decoder=L(DetrDecoder)(
        num_classes=80,
        hidden_dim=256,
        num_queries=300,
        num_layers=6,
        num_levels=3,
        eval_idx=-1,
        # The encoder's maps as they are when they have the decoder's width.
        input_proj=L(InputProjection)(
            in_channels=[256, 256, 256],
            in_strides=[8, 16, 32],
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
            eval_spatial_size=[640, 640],
        ),
        # D-FINE's lighter layer: target gating, no projections in the deformable attention.
        layer=L(DeformableDecoderLayer)(
            d_model="${..hidden_dim}",
            n_head=8,
            dim_feedforward=1024,
            dropout=0.0,
            activation="relu",
            target_gate=True,
            cross_attn=L(MSDeformableAttention)(
                embed_dim="${..d_model}",
                num_heads="${..n_head}",
                num_levels="${...num_levels}",
                num_points=[3, 6, 3],
                method="default",
                projections=False,
            ),
        ),
        query_pos_head=L(BoxPositionEmbedding)(hidden_dim="${..hidden_dim}", method="default", act="relu", clamp=10.0),
        class_head=L(ClassHead)(
            hidden_dim="${..hidden_dim}",
            num_classes="${..num_classes}",
            num_layers="${..num_layers}",
            eval_idx="${..eval_idx}",
        ),
        # Fine-grained Distribution Refinement over reg_max + 1 bins (`box_head.reg_max=null` is the
        # ablation with box deltas).
        box_head=L(BoxHead)(
            hidden_dim="${..hidden_dim}",
            num_layers="${..num_layers}",
            eval_idx="${..eval_idx}",
            reg_max=32,
            reg_scale=4.0,
            act="relu",
            lqe_act="relu",
        ),
        denoising=L(ContrastiveDenoising)(
            num_classes="${..num_classes}",
            hidden_dim="${..hidden_dim}",
            num_denoising=100,
            label_noise_ratio=0.5,
            box_noise_scale=1.0,
            abs_box_size=True,
        ),
    ),
    criterion=L(SetCriterion)(
        num_classes="${..decoder.num_classes}",
        matcher=L(HungarianMatcher)(
            weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, alpha=0.25, gamma=2.0
        ),
        # `losses` selects among the `terms` by name; "local": FGL, plus DDF with GO-LSD.
        terms=[L(VarifocalLoss)(alpha=0.75, gamma=2.0), L(BoxLoss)(), L(DistributionLoss)(temperature=5.0)],
        losses=["vfl", "boxes", "local"],
        weight_dict={"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
        # GO-LSD (union-set matching + DDF distillation); `go_lsd=False` is the ablation.
        go_lsd=True,
    ),
    # The official weights expect RGB in [0, 1].
    pixel_mean=[0.0, 0.0, 0.0],
    pixel_std=[255.0, 255.0, 255.0],
    input_format="RGB",
    num_top_queries=300,
)
