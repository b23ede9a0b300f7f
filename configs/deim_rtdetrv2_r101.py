"""DEIM-RT-DETRv2-X: RT-DETRv2-X (configs/rtdetrv2_r101.py: PResNet-101vd, hidden 384 encoder) with
DEIM's recipe for 60 epochs (official DEIM configs/deim_rtdetrv2/deim_r101vd_60e_coco.yml). README:
55.5 AP, 76M parameters. Stages as configs/deim_rtdetrv2_r50.py."""
from dfine.data import generate_scales

from .common.deim import apply_to_rtdetrv2, lr_multiplier, set_stages
from .rtdetrv2_r101 import dataloader, model, optimizer, train

apply_to_rtdetrv2(model, dataloader, lr_multiplier)
dataloader.train.update(multi_scale=generate_scales(640, 3), total_batch_size=16)
set_stages(dataloader, train, lr_multiplier, epochs=60, policy=[4, 34, 58], flat_epochs=34, no_aug_epochs=2)

train.output_dir = "./output/deim_rtdetrv2_r101"
train.ema.warmups = 2000

optimizer.lr = 2e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 2e-6},
    "no_decay": {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
