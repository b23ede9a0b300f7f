"""DEIMv2's model (official configs/base/deimv2.yml): the D-FINE model of configs/common/models/dfine_hgnetv2.py
with DEIMv2's encoder and decoder and DEIM's losses. The base backbone is HGNetv2-B4 (DEIMv2-L);
every per-size config sets its own backbone (pruned HGNetv2, or a DINOv3 ViT with the Spatial
Tuning Adapter) and sizes.

Ablations, one override each: target gating off ``model.decoder.target_gate=False`` (as Atto,
Femto and Pico), LayerNorm instead of RMSNorm ``model.decoder.norm_type=layer``, a plain FFN
instead of SwiGLU ``model.decoder.ffn_type=mlp``, a query position embedding per layer
``model.decoder.share_query_pos=False``, no matcher switch ``model.criterion.matcher.change_matcher=False``.
"""
from .dfine_hgnetv2 import model

# Trainable HGNetv2-B4 with BatchNorm (DEIM's "unfrozen BN").
model.backbone.update(name="B4", use_lab=False, freeze_at=-1, freeze_stem_only=True, freeze_norm=False)
# GELAN fusion with DEIMv2's block (RepNCSPELAN5: CSP2 layers, no trailing 3x3 convs), summed
# FPN/PAN inputs, and no input projection where a level already has the encoder's width.
model.encoder.update(version="deim", csp_type="csp2", fuse_op="sum", identity_input_proj=True)
# DEIMTransformer: D-FINE's decoder with RMSNorm, SwiGLU FFNs (hidden dim_feedforward / 2), one
# query position embedding shared by all layers, no projection before the encoder score head, and
# SiLU in the MLPs and the quality estimator.
model.decoder.update(
    dim_feedforward=2048,
    activation="silu",
    mlp_act="silu",
    lqe_act="silu",
    norm_type="rms",
    ffn_type="swiglu",
    share_query_pos=True,
    query_pos_method="as_reg",
    query_pos_xavier_last=True,
    encoder_output_proj=False,
    clone_layer_heads=True,
    target_gate=True,
    share_bbox_head=False,
)
# DEIM's losses: MAL (gamma 1.5) with FGL + DDF over the GO-LSD union set; `go_lsd=False` is the
# official `use_uni_set: False`. The matcher switches to -p * IoU^4 at `matcher_change_epoch`.
model.criterion.update(
    losses=["mal", "boxes", "local"],
    weight_dict={"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
    alpha=0.75,
    gamma=2.0,
    mal_gamma=1.5,
    go_lsd=True,
)
model.criterion.matcher.update(change_matcher=True, iou_order_alpha=4.0, matcher_change_epoch=45)
