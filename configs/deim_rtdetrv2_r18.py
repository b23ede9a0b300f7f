"""DEIM-RT-DETRv2-S: RT-DETRv2-S (configs/rtdetrv2_r18.py: PResNet-18vd) with DEIM's recipe for 120
epochs (official DEIM configs/deim_rtdetrv2/deim_r18vd_120e_coco.yml). README: 49.0 AP, 20M
parameters.

Stages (epochs): [0, 4) none, [4, 64) Dense O2O, [64, 117) RT-DETR augmentations, [117, 120) none.
Single-scale, as the official RT-DETRv2-S: the official DEIM file asks for that with
`collate_fn.scales: ~`, which its collate function rejects (the file crashes as shipped).
"""
from .common.deim import apply_to_rtdetrv2, lr_multiplier, set_stages
from .rtdetrv2_r18 import dataloader, model, optimizer, train

apply_to_rtdetrv2(model, dataloader, lr_multiplier)
dataloader.train.update(multi_scale=None, total_batch_size=16)
set_stages(dataloader, train, lr_multiplier, epochs=120, policy=[4, 64, 117], flat_epochs=64, no_aug_epochs=3)

train.output_dir = "./output/deim_rtdetrv2_r18"
train.ema.warmups = 2000

# The whole backbone at the base LR; no weight decay on any norm.
optimizer.lr = 2e-4
optimizer.params.rules = {
    "no_decay": {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
