"""DEIM's training recipe (official DEIM configs/base/rt_deim.yml, deim.yml, rt_optimizer.yml) and
DEIMv2's (official DEIMv2 configs/base/deimv2.yml with base/dataloader.yml and base/optimizer.yml),
as values and functions that the per-model configs apply.

* configs/deim_rtdetrv2_*.py apply :func:`apply_to_rtdetrv2` to the RT-DETRv2 config of the same
  size, configs/deim_dfine_hgnetv2_*.py :func:`apply_to_dfine` to the D-FINE config of the same
  size; both set the epochs with :func:`set_stages` (policy, MixUp window, flat and no-aug epochs,
  stop epoch).
* configs/deimv2_*.py apply :func:`apply_deimv2_recipe` to the DEIMv2 model
  (configs/common/models/deimv2.py) and set the epochs with :func:`set_deimv2_stages`.

Ablations, one override each:

* Dense O2O off: ``dataloader.train.mapper.mosaic_prob=0`` (the DEIM configs set MixUp's probability
  to ``mosaic_prob``, both 0.5 in every official config, so MixUp goes off too);
* MAL -> VFL: ``model.criterion.losses=[vfl,boxes]`` (``[vfl,boxes,local]`` for D-FINE and DEIMv2;
  VFL keeps gamma 2.0);
* RT-DETRv2's LR schedule: ``lr_multiplier.lr_gamma=1.0`` (constant after the warm-up, as DEIM's own
  RT-DETRv2 baseline configs express it: lr_gamma 1, quadratic warm-up);
* DEIMv2: Copy-Blend off ``dataloader.train.copy_blend.prob=0``, MixUp off
  ``dataloader.train.mixup_prob=0``.

On the DETR pipeline (configs/common/data/coco_detr.py: aspect-preserving resizes and crops,
padded batches) the Mosaic canvas goes through the DETR augmentation like any image (flip, then
a resize to a shorter side of the DETR scales, or a resize, crop and resize), which is the
pipeline's only scale handling and runs in every stage: a policy there switches Mosaic (and
MixUp, by its epochs) only. MixUp mixes the images of a batch, each in its own frame
(:class:`dfine.data.MixUp`). configs/ablations/*_deim.py apply Dense O2O and MAL to these models.
"""
from detectron2.config import LazyCall as L

from dfine.data import CopyBlend, Mosaic, generate_scales
from dfine.modeling.criterion import MatchabilityAwareLoss
from dfine.solver import FlatCosine

# ImageNet statistics in the 0-255 range: the DINOv3 configs normalise their inputs with them.
IMAGENET_PIXEL_MEAN = [123.675, 116.28, 103.53]
IMAGENET_PIXEL_STD = [58.395, 57.12, 57.375]

# Dense O2O, per sample: Mosaic of four images at a shorter side of 320, then a random affine.
mosaic = L(Mosaic)(
    output_size=320,
    rotation_range=10,
    translation_range=[0.1, 0.1],
    scaling_range=[0.5, 1.5],
    probability=1.0,
    fill_value=0,
    use_cache=False,
    max_cached_images=50,
    random_pop=True,
)
# The official solver builds the LinearWarmup of its optimizer file before DEIM's flat-cosine
# schedule takes over from the first optimizer step, so iteration 0 runs at 1 / its warmup_duration:
# 2000 in rt_optimizer.yml (DEIM-RT-DETRv2), 500 in optimizer.yml (DEIM-D-FINE, DEIMv2).
RT_OPTIMIZER_WARMUP_DURATION = 2000
OPTIMIZER_WARMUP_DURATION = 500

# Flat-cosine LR: quadratic warm-up over 2000 iterations, flat until `flat_epochs`, cosine down to
# lr_gamma * lr, constant for the last `no_aug_epochs`, the epochs counted in the iterations per
# epoch that train_net.py sets from the training set (so `train.max_iter=N` and `train.epochs=null`
# keep the schedule).
lr_multiplier = L(FlatCosine)(
    max_iter="${train.max_iter}",
    iters_per_epoch="${train.iters_per_epoch}",
    flat_epochs=None,
    no_aug_epochs=None,
    initial_factor=1 / OPTIMIZER_WARMUP_DURATION,
    warmup_iters=2000,
    lr_gamma=0.5,
)


def use_dense_o2o(dataloader, mosaic_prob=0.5):
    """Mosaic on ``mosaic_prob`` of the samples and MixUp on the same share of the batches."""
    dataloader.train.mapper.update(mosaic=mosaic, mosaic_prob=mosaic_prob)
    dataloader.train.mixup_prob = "${.mapper.mosaic_prob}"


def use_mal(criterion, losses):
    """The Matchability-Aware Loss (gamma 1.5) in place of VFL, which stays available (with its
    weight) for the one-override ablation ``model.criterion.losses=[vfl,...]``."""
    criterion.terms.append(L(MatchabilityAwareLoss)(gamma=1.5))
    criterion.weight_dict.loss_mal = 1
    criterion.losses = list(losses)


def apply_to_rtdetrv2(model, dataloader, lr_multiplier):
    """DEIM's recipe on an RT-DETRv2 config (official rt_deim.yml): PResNet fully trainable with its
    BatchNorm ("unfreezing BN"), the box-as-regression query position embedding and SiLU in the
    decoder, MAL in place of VFL, Dense O2O, the first iteration of rt_optimizer.yml's warm-up.
    The per-size configs set the epochs."""
    lr_multiplier.initial_factor = 1 / RT_OPTIMIZER_WARMUP_DURATION
    model.backbone.update(freeze_at=-1, freeze_norm=False)
    _silu_decoder(model)
    model.decoder.query_pos_head.method = "as_reg"
    use_mal(model.criterion, ["mal", "boxes"])
    use_dense_o2o(dataloader)


def apply_to_dfine(model, dataloader):
    """DEIM's recipe on a D-FINE config (official deim.yml): trainable HGNetv2 with BatchNorm, SiLU in
    the decoder (its FFNs, MLPs and quality heads), MAL with FGL and DDF, Dense O2O. The per-size
    configs set the epochs."""
    model.backbone.update(freeze_at=-1, freeze_norm=False)
    _silu_decoder(model)
    model.decoder.box_head.lqe_act = "silu"
    use_mal(model.criterion, ["mal", "boxes", "local"])
    use_dense_o2o(dataloader)


def _silu_decoder(model):
    """SiLU in the decoder's FFNs and in its MLPs (query position, proposal and box heads)."""
    decoder = model.decoder
    decoder.layer.activation = "silu"
    decoder.query_pos_head.act = "silu"
    decoder.query_selection.mlp_act = "silu"
    decoder.box_head.act = "silu"


def set_augmentation_stages(dataloader, policy):
    """DEIM's augmentation stages (official ``policy.epoch``, ``mixup_epochs``, ``stop_epoch``):
    ``policy = [e0, e1, e2]`` for the mapper (see :func:`dfine.data.policy_for_epoch`), MixUp in
    ``[e0, e1)``, batch multi-scale until ``e2``."""
    dataloader.train.mapper.policy_epoch = list(policy)
    dataloader.train.update(mixup_epochs=list(policy[:2]), multi_scale_stop_epoch=policy[2])


def apply_to_detr(model, dataloader, deim_lr_multiplier, policy, flat_epochs, no_aug_epochs, mosaic_size=320):
    """Dense O2O and MAL on a config of the DETR pipeline (configs/ablations/*_deim.py): Mosaic (tiles
    at a shorter side of ``mosaic_size``, half the training scale: 320 on COCO) and MixUp at 0.5 in
    ``[policy[0], policy[1])``, MAL in place of the focal loss, and ``deim_lr_multiplier`` (this
    module's :data:`lr_multiplier`) set up for the switch ``lr_multiplier=${deim_lr_multiplier}``
    (flat for ``flat_epochs``, constant for the last ``no_aug_epochs``); the base's LR schedule and
    the rest of its recipe stay."""
    use_dense_o2o(dataloader)
    dataloader.train.mapper.mosaic.output_size = mosaic_size
    set_augmentation_stages(dataloader, policy)
    use_mal(model.criterion, ["mal", "boxes"])
    deim_lr_multiplier.update(flat_epochs=flat_epochs, no_aug_epochs=no_aug_epochs)


def set_stages(dataloader, train, lr_multiplier, epochs, policy, flat_epochs, no_aug_epochs):
    """DEIM's schedule in epochs (official ``epoches``, ``policy.epoch``, ``mixup_epochs``,
    ``stop_epoch``, ``flat_epoch``, ``no_aug_epoch``): ``policy = [e0, e1, e2]`` gives the four
    augmentation stages (:func:`set_augmentation_stages`), the stage switch (best stage-1 state
    reloaded) at ``e2``; the LR stays flat for ``flat_epochs`` and constant for the last
    ``no_aug_epochs``."""
    set_augmentation_stages(dataloader, policy)
    train.epochs = epochs
    train.stage_switch.epoch = policy[2]
    lr_multiplier.update(flat_epochs=flat_epochs, no_aug_epochs=no_aug_epochs)


def apply_deimv2_recipe(dataloader, optimizer, train):
    """DEIMv2's recipe: Dense O2O with Mosaic (its cache on) at 0.5, batch MixUp at 0.5 in the
    Mosaic epochs, object-level Copy-Blend (:class:`dfine.data.CopyBlend`: 3 objects of at least
    100 px, blended with an expanded margin) at 0.5 until the no-augmentation stage; batch 32,
    multi-scale until the stage switch; AdamW at 5e-4 (backbone 2.5e-5), EMA warm-up 1000. Use
    :data:`lr_multiplier` (warm-up 2000 iterations, lr_gamma 0.5) and :func:`set_deimv2_stages`."""
    dataloader.train.mapper.update(mosaic=mosaic, mosaic_prob=0.5)
    dataloader.train.mapper.mosaic.use_cache = True
    dataloader.train.update(
        total_batch_size=32,
        multi_scale=generate_scales(640, 3),
        mixup_prob=0.5,
        copy_blend=L(CopyBlend)(prob=0.5, epochs=[4, 50], area_threshold=100, num_objects=3, with_expand=True,
                                expand_ratios=[0.1, 0.25]),
    )
    optimizer.lr = 5e-4
    optimizer.weight_decay = 1.25e-4
    optimizer.params.rules = {
        "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 2.5e-5},
        "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
    }
    train.eval_epochs = 1
    train.checkpoint_epochs = 1
    train.ema.warmups = 1000
    train.stage_switch = dict(epoch=50, ema_restart_decay=0.9999)
    # The DINOv3 trunks hold a mask token that detection never uses (official runtime.yml too).
    train.ddp.find_unused_parameters = True


def set_deimv2_stages(dataloader, train, lr_multiplier, model, epochs, policy, flat_epochs, no_aug_epochs,
                      matcher_change_epoch, copy_blend_epochs=None):
    """DEIM's schedule (:func:`set_stages`) plus DEIMv2's: Copy-Blend in ``copy_blend_epochs``
    (default ``[e0, e2)``) and the matcher switch at ``matcher_change_epoch``."""
    set_stages(dataloader, train, lr_multiplier, epochs, policy, flat_epochs, no_aug_epochs)
    dataloader.train.copy_blend.epochs = list(copy_blend_epochs or [policy[0], policy[2]])
    model.criterion.matcher.matcher_change_epoch = matcher_change_epoch


def set_input_size(model, dataloader, size):
    """Train and evaluate at ``size`` x ``size`` (DEIMv2 Atto 320, Femto 416): mapper sizes, the
    precomputed anchors and position embeddings, the Mosaic canvas and the multi-scale base."""
    if "eval_spatial_size" in model.encoder:  # the LiteEncoder has no position embedding to precompute
        model.encoder.eval_spatial_size = [size, size]
    model.decoder.query_selection.eval_spatial_size = [size, size]
    dataloader.train.mapper.image_size = size
    dataloader.test.mapper.image_size = size
    dataloader.train.mapper.mosaic.output_size = size // 2


def set_width(model, width, input_channels=None):
    """Encoder and decoder of width ``width`` on ``input_channels`` (default ``width``) per backbone map."""
    levels = len(model.encoder.in_channels)
    model.encoder.update(in_channels=list(input_channels or [width] * levels), hidden_dim=width)
    model.decoder.hidden_dim = width
    model.decoder.input_proj.in_channels = [width] * len(model.decoder.input_proj.in_channels)


def use_dinov3_backbone(model, optimizer, backbone, backbone_lr, width):
    """A DINOv3 ViT with the Spatial Tuning Adapter (``backbone``, a LazyCall of
    :class:`~dfine.modeling.backbone.sta.DINOv3STA`) feeding encoder and decoder of width ``width``,
    on ImageNet-normalised inputs, with the official parameter groups: the ViT at ``backbone_lr``
    (its norms and biases without weight decay), no weight decay on the norms and biases of the STA,
    encoder and decoder."""
    model.backbone = backbone
    model.pixel_mean = IMAGENET_PIXEL_MEAN
    model.pixel_std = IMAGENET_PIXEL_STD
    set_width(model, width)
    optimizer.params.rules = {
        "vit": {"pattern": r"^(?=.*.dinov3)(?!.*(?:norm|bn|bias)).*$", "lr": backbone_lr},
        "vit_norm_bias": {
            "pattern": r"^(?=.*.dinov3)(?=.*(?:norm|bn|bias)).*$",
            "lr": backbone_lr,
            "weight_decay": 0.0,
        },
        "no_decay": {"pattern": r"^(?=.*(?:sta|encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
    }
