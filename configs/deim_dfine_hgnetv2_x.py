"""DEIM-D-FINE-X: D-FINE-X (configs/dfine_hgnetv2_x.py) trained with DEIM's recipe for 58 epochs
(official DEIM configs/deim_dfine/deim_hgnetv2_x_coco.yml). README: 56.5 AP, 62M parameters, 202 GFLOPs.
Same stages as configs/deim_dfine_hgnetv2_l.py."""
from .common.deim import apply_to_dfine, lr_multiplier
from .dfine_hgnetv2_x import dataloader, model, optimizer, train

apply_to_dfine(model, dataloader)
dataloader.train.mapper.policy_epoch = [4, 29, 50]
dataloader.train.update(mixup_epochs=[4, 29], multi_scale_stop_epoch=50)

train.output_dir = "./output/deim_dfine_hgnetv2_x"
train.epochs = 58
train.stage_switch.epoch = 50
lr_multiplier.update(flat_epochs=29, no_aug_epochs=8)

optimizer.lr = 5e-4
optimizer.params.rules[0]["lr"] = 5e-6
