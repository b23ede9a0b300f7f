"""DEIM's training recipe on RT-DETRv2 (official DEIM configs/base/rt_deim.yml and rt_optimizer.yml).

The per-model configs configs/deim_rtdetrv2_*.py apply these pieces to the RT-DETRv2 model of the
same size, and configs/deim_dfine_hgnetv2_*.py apply them (configs/base/deim.yml) to the D-FINE
model of the same size with ``apply_to_dfine``; both set the epochs of the recipe with
``set_stages`` (policy, MixUp window, flat and no-aug epochs, stop epoch). Ablations, one override
each:

* Dense O2O off: ``dataloader.train.mapper.mosaic_prob=0`` (the configs set MixUp's probability to
  ``mosaic_prob``, both 0.5 in every official config, so MixUp goes off too);
* MAL -> VFL: ``model.criterion.losses=[vfl,boxes]`` (``[vfl,boxes,local]`` for D-FINE; VFL keeps
  gamma 2.0);
* RT-DETRv2's LR schedule: ``lr_multiplier.lr_gamma=1.0`` (constant after the warm-up, as DEIM's own
  RT-DETRv2 baseline configs express it: lr_gamma 1, quadratic warm-up).
"""
from detectron2.config import LazyCall as L

from dfine.data import Mosaic
from dfine.solver import FlatCosine

# PResNet fully trainable, BatchNorm included ("Unfreezing BN").
backbone = dict(freeze_at=-1, freeze_norm=False)
# Decoder: box-as-regression query position embedding, SiLU activations.
decoder = dict(query_pos_method="as_reg", activation="silu", mlp_act="silu")
# The Matchability-Aware Loss replaces VFL (gamma 1.5); the weight dict keeps loss_vfl for the ablation.
criterion = dict(
    losses=["mal", "boxes"],
    weight_dict={"loss_vfl": 1, "loss_mal": 1, "loss_bbox": 5, "loss_giou": 2},
    alpha=0.75,
    gamma=2.0,
    mal_gamma=1.5,
)
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
# Flat-cosine LR: quadratic warm-up over 2000 iterations, flat until `flat_epochs`, cosine down to
# lr_gamma * lr, constant for the last `no_aug_epochs`. The first iteration runs at lr / 2000, the
# value the official LinearWarmup(2000) of rt_optimizer.yml leaves behind.
lr_multiplier = L(FlatCosine)(
    max_iter="${train.max_iter}",
    epochs="${train.epochs}",
    flat_epochs=None,
    no_aug_epochs=None,
    warmup_iters=2000,
    lr_gamma=0.5,
    initial_factor=1 / 2000,
)


def apply_to_dfine(model, dataloader):
    """DEIM's recipe on a D-FINE config (official DEIM configs/base/deim.yml): trainable HGNetv2 with
    BatchNorm, SiLU in the decoder (its FFNs, MLPs and quality heads), MAL with FGL and DDF, and
    Mosaic at 0.5 (MixUp at the same probability). The per-size configs set the epochs."""
    model.backbone.update(backbone)
    model.decoder.update(activation="silu", mlp_act="silu", lqe_act="silu")
    model.criterion.update(criterion)
    model.criterion.losses = ["mal", "boxes", "local"]
    model.criterion.weight_dict.update(loss_fgl=0.15, loss_ddf=1.5)
    dataloader.train.mapper.update(mosaic=mosaic, mosaic_prob=0.5)
    dataloader.train.mixup_prob = "${.mapper.mosaic_prob}"


def set_stages(dataloader, train, lr_multiplier, epochs, policy, flat_epochs, no_aug_epochs):
    """DEIM's schedule in epochs (official ``epoches``, ``policy.epoch``, ``mixup_epochs``,
    ``stop_epoch``, ``flat_epoch``, ``no_aug_epoch``): ``policy = [e0, e1, e2]`` gives the four
    augmentation stages, MixUp in ``[e0, e1)``, multi-scale and the stage switch (best stage-1
    state reloaded) at ``e2``; the LR stays flat for ``flat_epochs`` and constant for the last
    ``no_aug_epochs``."""
    dataloader.train.mapper.policy_epoch = list(policy)
    dataloader.train.update(mixup_epochs=list(policy[:2]), multi_scale_stop_epoch=policy[2])
    train.epochs = epochs
    train.stage_switch.epoch = policy[2]
    lr_multiplier.update(flat_epochs=flat_epochs, no_aug_epochs=no_aug_epochs)
