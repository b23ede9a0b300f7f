"""RT-DETRv2-M*: PResNet-50vd, encoder expansion 0.5, evaluated at decoder layer 3, 84 epochs
(official configs/rtdetrv2/rtdetrv2_r50vd_m_7x_coco.yml). README: 51.9 AP, 36M parameters."""
from .common.data.coco import dataloader
from .common.models.rtdetrv2 import model
from .common.optim import AdamW as optimizer
from .common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from .common.train import train

model.encoder.expansion = 0.5
model.decoder.eval_idx = 2

train.output_dir = "./output/rtdetrv2_r50_m"
train.epochs = 84
train.eval_epochs = 1
train.checkpoint_epochs = 1
dataloader.train.mapper.policy_epoch = 81
dataloader.train.multi_scale_stop_epoch = 81

optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-5},
    "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
