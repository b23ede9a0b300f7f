"""DEIMv2's model (official configs/base/deimv2.yml) with the HGNetv2-B4 backbone of DEIMv2-L.

D-FINE's parts (configs/common/models/dfine.py) with DEIMv2's: a trainable backbone, the DEIM encoder
blocks, RMSNorm and SwiGLU in the decoder layers, one query position embedding shared by all layers,
cloned per-layer heads, no encoder output projection, SiLU in the MLPs, MAL, and the matcher switch.
Every per-size config sets its own backbone (pruned HGNetv2, or a DINOv3 ViT with the Spatial Tuning
Adapter) and sizes.

Ablations, one override each: target gating off ``model.decoder.layer.target_gate=False`` (as Atto,
Femto and Pico), LayerNorm instead of RMSNorm ``model.decoder.layer.norm_type=layer``, a plain FFN
instead of SwiGLU ``model.decoder.layer.ffn_type=mlp``, a query position embedding per layer
``model.decoder.query_pos_head.shared=False``, no matcher switch
``model.criterion.matcher.change_matcher=False``.
"""
from detectron2.config import LazyCall as L

from dfine.modeling import RealTimeDETR
from dfine.modeling.backbone import HGNetv2
from dfine.modeling.criterion import BoxLoss, DistributionLoss, HungarianMatcher, MatchabilityAwareLoss, SetCriterion
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
    # Trainable HGNetv2-B4 with BatchNorm (DEIM's "unfrozen BN").
    backbone=L(HGNetv2)(
        name="B4", use_lab=False, return_idx=[1, 2, 3], freeze_at=-1, freeze_stem_only=True, freeze_norm=False
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
        # GELAN fusion with DEIMv2's block (RepNCSPELAN5: CSP2 layers, no trailing 3x3 convs), summed
        # FPN/PAN inputs, and no input projection where a level already has the encoder's width.
        version="deim",
        csp_type="csp2",
        fuse_op="sum",
        identity_input_proj=True,
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
            # No projection before the encoder heads: the selection reads the raw memory.
            output_proj=False,
            mlp_act="silu",
        ),
        # D-FINE's layer with RMSNorm and a SwiGLU FFN (hidden dim_feedforward / 2).
        layer=L(DeformableDecoderLayer)(
            d_model="${..hidden_dim}",
            n_head=8,
            dim_feedforward=2048,
            dropout=0.0,
            activation="silu",
            target_gate=True,
            norm_type="rms",
            ffn_type="swiglu",
            cross_attn=L(MSDeformableAttention)(
                embed_dim="${..d_model}",
                num_heads="${..n_head}",
                num_levels="${...num_levels}",
                num_points=[3, 6, 3],
                method="default",
                projections=False,
            ),
        ),
        # One query position embedding of the initial boxes, shared by every layer.
        query_pos_head=L(BoxPositionEmbedding)(
            hidden_dim="${..hidden_dim}", method="as_reg", act="silu", clamp=10.0, shared=True, xavier_last=True
        ),
        # Per-layer heads that start as copies of one head.
        class_head=L(ClassHead)(
            hidden_dim="${..hidden_dim}",
            num_classes="${..num_classes}",
            num_layers="${..num_layers}",
            eval_idx="${..eval_idx}",
            clone=True,
        ),
        # Fine-grained Distribution Refinement over reg_max + 1 bins (`box_head.reg_max=null` is the
        # ablation with box deltas).
        box_head=L(BoxHead)(
            hidden_dim="${..hidden_dim}",
            num_layers="${..num_layers}",
            eval_idx="${..eval_idx}",
            reg_max=32,
            reg_scale=4.0,
            act="silu",
            lqe_act="silu",
            clone=True,
            share=False,
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
        # From `matcher_change_epoch` on the matcher ranks by -p * IoU^4 (the per-size configs set the epoch).
        matcher=L(HungarianMatcher)(
            weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2},
            alpha=0.25,
            gamma=2.0,
            change_matcher=True,
            iou_order_alpha=4.0,
            matcher_change_epoch=45,
        ),
        terms=[L(MatchabilityAwareLoss)(gamma=1.5), L(BoxLoss)(), L(DistributionLoss)(temperature=5.0)],
        # DEIM's MAL (gamma 1.5) with FGL + DDF over the GO-LSD union set; `go_lsd=False` is the official
        # `use_uni_set: False`.
        losses=["mal", "boxes", "local"],
        weight_dict={"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
        go_lsd=True,
    ),
    # The official weights expect RGB in [0, 1].
    pixel_mean=[0.0, 0.0, 0.0],
    pixel_std=[255.0, 255.0, 255.0],
    input_format="RGB",
    num_top_queries=300,
)
