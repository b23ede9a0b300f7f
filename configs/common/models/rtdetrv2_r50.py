"""RT-DETRv2 with a PResNet-50vd backbone: the official include/rtdetrv2_r50vd.yml model.

The other sizes start from this model and override what the official configs override.
"""
from detectron2.config import LazyCall as L

from dfine.modeling import RealTimeDETR
from dfine.modeling.backbone import PResNet
from dfine.modeling.criterion import HungarianMatcher, RTDETRCriterion
from dfine.modeling.decoder import RTDETRv2Decoder
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
    decoder=L(RTDETRv2Decoder)(
        num_classes=80,
        feat_channels=[256, 256, 256],
        feat_strides=[8, 16, 32],
        hidden_dim=256,
        num_levels=3,
        num_layers=6,
        num_queries=300,
        num_denoising=100,
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
        eval_idx=-1,
        num_points=[4, 4, 4],
        cross_attn_method="default",
        query_select_method="default",
        eval_spatial_size=[640, 640],
    ),
    criterion=L(RTDETRCriterion)(
        num_classes="${..decoder.num_classes}",
        matcher=L(HungarianMatcher)(weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, alpha=0.25, gamma=2.0),
        weight_dict={"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2},
        losses=["vfl", "boxes"],
        alpha=0.75,
        gamma=2.0,
    ),
    # The official weights expect RGB in [0, 1].
    pixel_mean=[0.0, 0.0, 0.0],
    pixel_std=[255.0, 255.0, 255.0],
    input_format="RGB",
    num_top_queries=300,
)
