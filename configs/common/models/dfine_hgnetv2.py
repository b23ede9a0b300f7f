"""D-FINE with an HGNetv2 backbone: the official configs/dfine/include/dfine_hgnetv2.yml model with
the B4 backbone of D-FINE-L (configs/dfine/dfine_hgnetv2_l_coco.yml).

It is RT-DETRv2's model (rtdetrv2_r50.py: the same encoder and decoder sizes, matcher, input
convention) with D-FINE's backbone, CCFF blocks, decoder and losses. The other sizes start from
this model and override what the official configs override.
"""
from detectron2.config import LazyCall as L

from dfine.modeling.backbone import HGNetv2
from dfine.modeling.decoder import DFINEDecoder

from .rtdetrv2_r50 import model

# Stem frozen; every BatchNorm frozen (FrozenBatchNorm2d).
model.backbone = L(HGNetv2)(name="B4", use_lab=False, return_idx=[1, 2, 3], freeze_at=0, freeze_stem_only=True,
                            freeze_norm=True)
# GELAN-style CCFF: RepNCSPELAN4 fusion blocks, SCDown down-sampling.
model.encoder.version = "dfine"
# RT-DETRv2's decoder arguments, for D-FINE's decoder: Fine-grained Distribution Refinement over
# reg_max + 1 bins (`fdr=False` is the ablation with box deltas), 3/6/3 sampling points.
model.decoder._target_ = DFINEDecoder
model.decoder.update(dim_feedforward=1024, num_points=[3, 6, 3], fdr=True, reg_max=32, reg_scale=4.0)
model.criterion.update(
    weight_dict={"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
    # "local": FGL, plus DDF with GO-LSD.
    losses=["vfl", "boxes", "local"],
    # GO-LSD (union-set matching + DDF distillation); `go_lsd=False` is the ablation.
    go_lsd=True,
)
