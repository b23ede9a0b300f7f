"""D-FINE-M: HGNetv2-B2 with LAB, 132 epochs on COCO (official configs/dfine/dfine_hgnetv2_m_coco.yml).
README: 52.3 AP, 19M parameters, 57 GFLOPs."""
from dfine.data import generate_scales

from .dfine_hgnetv2_l import dataloader, lr_multiplier, model, optimizer, train

# The whole backbone trains, BatchNorm included.
model.backbone.update(name="B2", use_lab=True, freeze_at=-1, freeze_norm=False)
model.encoder.update(in_channels=[384, 768, 1536], depth_mult=0.67)
model.decoder.num_layers = 4

dataloader.train.mapper.policy_epoch = 120
dataloader.train.update(multi_scale=generate_scales(640, 6), multi_scale_stop_epoch=120)
train.output_dir = "./output/dfine_hgnetv2_m"
train.epochs = 132
train.stage_switch.epoch = 120

# The official patterns, verbatim: "(?!.*norm|bn)" keeps the backbone BatchNorm affine parameters
# in the first group (it excludes "bn" only at the start of a name), so the second group is empty.
optimizer.lr = 2e-4
optimizer.weight_decay = 1e-4
optimizer.params.rules = [
    {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 2e-5},
    {"pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 2e-5, "weight_decay": 0.0},
    {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn|bias)).*$", "weight_decay": 0.0},
]
