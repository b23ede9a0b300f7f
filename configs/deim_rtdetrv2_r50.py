"""DEIM-RT-DETRv2-L: RT-DETRv2 with PResNet-50vd trained with DEIM's recipe for 60 epochs (official
DEIM configs/deim_rtdetrv2/deim_r50vd_60e_coco.yml). README: 54.3 AP, 42M parameters.

    python train_net.py --config-file configs/deim_rtdetrv2_r50.py

Stages (epochs): [0, 4) no augmentation, [4, 34) Dense O2O (Mosaic at 0.5 and MixUp at 0.5 per
batch, else the RT-DETR augmentations), [34, 58) RT-DETR augmentations, [58, 60) none; multi-scale
until 58, where the best state of the first 58 epochs is reloaded. See configs/common/deim.py for the
recipe and its ablations.
"""
from dfine.data import generate_scales

from .common.deim import backbone as _backbone
from .common.deim import criterion as _criterion
from .common.deim import decoder as _decoder
from .common.deim import lr_multiplier
from .common.deim import mosaic as _mosaic
from .common.deim import set_stages
from .rtdetrv2_r50 import dataloader, model, optimizer, train

model.backbone.update(_backbone)
model.decoder.update(_decoder)
model.criterion.update(_criterion)

dataloader.train.mapper.update(mosaic=_mosaic, mosaic_prob=0.5)
dataloader.train.update(mixup_prob="${.mapper.mosaic_prob}", multi_scale=generate_scales(640, 3), total_batch_size=16)
set_stages(dataloader, train, lr_multiplier, epochs=60, policy=[4, 34, 58], flat_epochs=34, no_aug_epochs=2)

train.output_dir = "./output/deim_rtdetrv2_r50"
train.ema.warmups = 2000

optimizer.lr = 2e-4
optimizer.params.rules = [
    {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 2e-5},
    {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
]
