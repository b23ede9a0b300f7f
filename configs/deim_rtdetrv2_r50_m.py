"""DEIM-RT-DETRv2-M*: RT-DETRv2-M* (configs/rtdetrv2_r50_m.py: PResNet-50vd, encoder expansion 0.5)
with 3 decoder layers evaluated at the third, 60 epochs with DEIM's recipe (official DEIM
configs/deim_rtdetrv2/deim_r50vd_m_60e_coco.yml). README: 53.2 AP, 33M parameters.
Stages as configs/deim_rtdetrv2_r50.py."""
from dfine.data import generate_scales

from .common.deim import apply_to_rtdetrv2, lr_multiplier, set_stages
from .rtdetrv2_r50_m import dataloader, model, optimizer, train

model.decoder.num_layers = 3

apply_to_rtdetrv2(model, dataloader, lr_multiplier)
dataloader.train.update(multi_scale=generate_scales(640, 3), total_batch_size=16)
set_stages(dataloader, train, lr_multiplier, epochs=60, policy=[4, 34, 58], flat_epochs=34, no_aug_epochs=2)

train.output_dir = "./output/deim_rtdetrv2_r50_m"
train.ema.warmups = 2000

optimizer.lr = 2e-4
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 2e-5},
    "no_decay": {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
