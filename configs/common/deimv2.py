"""DEIMv2's training recipe (official configs/base/deimv2.yml with base/dataloader.yml and
base/optimizer.yml), on the model of configs/common/models/deimv2.py. The per-size configs
configs/deimv2_*.py start from it and set the model size, the epochs (``set_stages``) and the LRs.

* Dense O2O: Mosaic (its cache on, as in DEIMv2) at ``mosaic_prob`` 0.5, batch MixUp at 0.5 in the
  Mosaic epochs, and object-level Copy-Blend (:class:`dfine.data.CopyBlend`: 3 objects of at least
  100 px, blended with an expanded margin) at 0.5 until the no-augmentation stage.
* Flat-cosine LR (warm-up 2000 iterations, lr_gamma 0.5), EMA warm-up 1000, batch 32, multi-scale
  until the stage switch.

Ablations, one override each: Copy-Blend off ``dataloader.train.copy_blend.prob=0``, MixUp off
``dataloader.train.mixup_prob=0``, Mosaic off ``dataloader.train.mapper.mosaic_prob=0``.
"""
import copy

from detectron2.config import LazyCall as L

from dfine.data import CopyBlend, generate_scales

from .data.coco import dataloader
from .deim import lr_multiplier as _deim_lr_multiplier
from .deim import mosaic as _deim_mosaic
from .deim import set_stages as set_deim_stages
from .models.deimv2 import model
from .optim import AdamW as optimizer
from .train import train

# ImageNet statistics in the 0-255 range: the DINOv3 configs normalise their inputs with them.
IMAGENET_PIXEL_MEAN = [123.675, 116.28, 103.53]
IMAGENET_PIXEL_STD = [58.395, 57.12, 57.375]

_mosaic = copy.deepcopy(_deim_mosaic)
_mosaic.use_cache = True
dataloader.train.mapper.update(mosaic=_mosaic, mosaic_prob=0.5)
dataloader.train.update(
    total_batch_size=32,
    multi_scale=generate_scales(640, 3),
    mixup_prob=0.5,
    copy_blend=L(CopyBlend)(prob=0.5, epochs=[4, 50], area_threshold=100, num_objects=3, with_expand=True,
                            expand_ratios=[0.1, 0.25]),
)

lr_multiplier = copy.deepcopy(_deim_lr_multiplier)
optimizer.lr = 5e-4
optimizer.weight_decay = 1.25e-4
optimizer.params.rules = [
    {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 2.5e-5},
    {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
]

train.eval_epochs = 1
train.checkpoint_epochs = 1
train.ema.warmups = 1000
train.stage_switch = dict(epoch=50, ema_restart_decay=0.9999)
# The DINOv3 trunks hold a mask token that detection never uses (official runtime.yml too).
train.ddp.find_unused_parameters = True


def set_stages(dataloader, train, lr_multiplier, model, epochs, policy, flat_epochs, no_aug_epochs,
               matcher_change_epoch, copy_blend_epochs=None):
    """DEIM's schedule (``set_stages`` of configs/common/deim.py: policy ``[e0, e1, e2]``, MixUp in
    ``[e0, e1)``, multi-scale and the stage switch at ``e2``, flat and no-aug LR epochs) plus
    DEIMv2's: Copy-Blend in ``copy_blend_epochs`` (default ``[e0, e2)``) and the matcher switch
    at ``matcher_change_epoch``."""
    set_deim_stages(dataloader, train, lr_multiplier, epochs, policy, flat_epochs, no_aug_epochs)
    dataloader.train.copy_blend.epochs = list(copy_blend_epochs or [policy[0], policy[2]])
    model.criterion.matcher.matcher_change_epoch = matcher_change_epoch


def set_input_size(model, dataloader, size):
    """Train and evaluate at ``size`` x ``size`` (Atto 320, Femto 416): mapper sizes, the
    precomputed anchors and position embeddings, the Mosaic canvas and the multi-scale base."""
    if "eval_spatial_size" in model.encoder:  # the LiteEncoder has no position embedding to precompute
        model.encoder.eval_spatial_size = [size, size]
    model.decoder.eval_spatial_size = [size, size]
    dataloader.train.mapper.image_size = size
    dataloader.test.mapper.image_size = size
    dataloader.train.mapper.mosaic.output_size = size // 2


def use_dinov3_backbone(model, optimizer, backbone, backbone_lr, width):
    """A DINOv3 ViT with the Spatial Tuning Adapter (``backbone``, a LazyCall of
    :class:`~dfine.modeling.backbone.sta.DINOv3STA`) feeding encoder and decoder of width ``width``,
    on ImageNet-normalised inputs, with the official parameter groups: the ViT at ``backbone_lr``
    (its norms and biases without weight decay), no weight decay on the norms and biases of the STA,
    encoder and decoder."""
    model.backbone = backbone
    model.pixel_mean = IMAGENET_PIXEL_MEAN
    model.pixel_std = IMAGENET_PIXEL_STD
    model.encoder.update(in_channels=[width] * 3, hidden_dim=width)
    model.decoder.update(feat_channels=[width] * 3, hidden_dim=width)
    optimizer.params.rules = [
        {"pattern": r"^(?=.*.dinov3)(?!.*(?:norm|bn|bias)).*$", "lr": backbone_lr},
        {"pattern": r"^(?=.*.dinov3)(?=.*(?:norm|bn|bias)).*$", "lr": backbone_lr, "weight_decay": 0.0},
        {"pattern": r"^(?=.*(?:sta|encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
    ]
