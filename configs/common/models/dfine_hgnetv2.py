"""D-FINE with an HGNetv2 backbone: the official configs/dfine/include/dfine_hgnetv2.yml model with
the B4 backbone of D-FINE-L (configs/dfine/dfine_hgnetv2_l_coco.yml).

The other sizes start from this model and override what the official configs override.
"""
from detectron2.config import LazyCall as L

from dfine.modeling import RealTimeDETR
from dfine.modeling.backbone import HGNetv2
from dfine.modeling.criterion import HungarianMatcher, RTDETRCriterion
from dfine.modeling.decoder import DFINEDecoder
from dfine.modeling.encoder import HybridEncoder

model = L(RealTimeDETR)(
    # Stem frozen; every BatchNorm frozen (FrozenBatchNorm2d).
    backbone=L(HGNetv2)(name="B4", use_lab=False, return_idx=[1, 2, 3], freeze_at=0, freeze_stem_only=True,
                        freeze_norm=True),
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
    decoder=L(DFINEDecoder)(
        num_classes=80,
        feat_channels=[256, 256, 256],
        feat_strides=[8, 16, 32],
        hidden_dim=256,
        num_levels=3,
        num_layers=6,
        dim_feedforward=1024,
        eval_idx=-1,
        num_queries=300,
        num_denoising=100,
        label_noise_ratio=0.5,
        box_noise_scale=1.0,
        # Fine-grained Distribution Refinement; `fdr=False` is the ablation with box deltas.
        fdr=True,
        reg_max=32,
        reg_scale=4.0,
        num_points=[3, 6, 3],
        cross_attn_method="default",
        query_select_method="default",
        eval_spatial_size=[640, 640],
    ),
    criterion=L(RTDETRCriterion)(
        num_classes="${..decoder.num_classes}",
        matcher=L(HungarianMatcher)(weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, alpha=0.25, gamma=2.0),
        weight_dict={"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
        # "local": FGL, plus DDF with GO-LSD.
        losses=["vfl", "boxes", "local"],
        alpha=0.75,
        gamma=2.0,
        # GO-LSD (union-set matching + DDF distillation); `go_lsd=False` is the ablation.
        go_lsd=True,
    ),
    # The official weights expect RGB in [0, 1].
    pixel_mean=[0.0, 0.0, 0.0],
    pixel_std=[255.0, 255.0, 255.0],
    input_format="RGB",
    num_top_queries=300,
)
