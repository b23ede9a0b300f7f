"""DEIM-RT-DETRv2-L: RT-DETRv2 with PResNet-50vd (configs/rtdetrv2_r50.py) trained with DEIM's recipe
for 60 epochs (official DEIM configs/deim_rtdetrv2/deim_r50vd_60e_coco.yml). README: 54.3 AP, 42M
parameters.

    python train_net.py --config-file configs/deim_rtdetrv2_r50.py

Stages (epochs): [0, 4) no augmentation, [4, 34) Dense O2O (Mosaic at 0.5 and MixUp at 0.5 per
batch, else the RT-DETR augmentations), [34, 58) RT-DETR augmentations, [58, 60) none; multi-scale
until 58, where the best state of the first 58 epochs is reloaded. See configs/common/deim.py for the
recipe and its ablations.
"""
from dfine.data import generate_scales

from .common.deim import apply_to_rtdetrv2, lr_multiplier, set_stages
from .rtdetrv2_r50 import dataloader, model, optimizer, train

apply_to_rtdetrv2(model, dataloader, lr_multiplier)
dataloader.train.update(multi_scale=generate_scales(640, 3), total_batch_size=16)
set_stages(dataloader, train, lr_multiplier, epochs=60, policy=[4, 34, 58], flat_epochs=34, no_aug_epochs=2)

train.output_dir = "./output/deim_rtdetrv2_r50"
train.ema.warmups = 2000

optimizer.lr = 2e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 2e-5},
    "no_decay": {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
