"""DEIMv2-M with HGNetv2-B2 (official configs/deimv2/deimv2_hgnetv2_m_coco.yml): 102 epochs on COCO.

Stages (epochs): [0, 4) none, [4, 49) Dense O2O, [49, 90) RT-DETR augmentations with Copy-Blend,
[90, 102) none; matcher switch at 80.
"""
from dfine.data import generate_scales

from .common.data.coco import dataloader
from .common.deim import apply_deimv2_recipe, lr_multiplier, set_deimv2_stages
from .common.models.deimv2 import model
from .common.optim import AdamW as optimizer
from .common.train import train

apply_deimv2_recipe(dataloader, optimizer, train)
model.backbone.update(name="B2", use_lab=True)
model.encoder.update(in_channels=[384, 768, 1536], depth_mult=0.67)
model.decoder.num_layers = 4

set_deimv2_stages(dataloader, train, lr_multiplier, model, epochs=102, policy=[4, 49, 90], flat_epochs=49,
                  no_aug_epochs=12, matcher_change_epoch=80)
dataloader.train.multi_scale = generate_scales(640, 6)
train.output_dir = "./output/deimv2_hgnetv2_m"
optimizer.update(lr=4e-4, weight_decay=1e-4)
# Official rules verbatim: the backbone at 4e-5 (its LAB and norm parameters too), and no weight
# decay on any norm or BatchNorm parameter.
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*bn).*$", "lr": 4e-5},
    "no_decay": {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
