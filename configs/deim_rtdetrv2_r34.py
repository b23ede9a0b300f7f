"""DEIM-RT-DETRv2-M: RT-DETRv2-M (configs/rtdetrv2_r34.py: PResNet-34vd) with DEIM's recipe for 120
epochs (official DEIM configs/deim_rtdetrv2/deim_r34vd_120e_coco.yml). README: 50.9 AP, 31M
parameters. Stages as configs/deim_rtdetrv2_r18.py, multi-scale."""
from dfine.data import generate_scales

from .common.deim import apply_to_rtdetrv2, lr_multiplier, set_stages
from .rtdetrv2_r34 import dataloader, model, optimizer, train

apply_to_rtdetrv2(model, dataloader, lr_multiplier)
dataloader.train.update(multi_scale=generate_scales(640, 3), total_batch_size=16)
set_stages(dataloader, train, lr_multiplier, epochs=120, policy=[4, 64, 117], flat_epochs=64, no_aug_epochs=3)

train.output_dir = "./output/deim_rtdetrv2_r34"
train.ema.warmups = 2000

optimizer.lr = 2e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-4},
    "no_decay": {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
