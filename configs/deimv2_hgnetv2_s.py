"""DEIMv2-S with HGNetv2-B0 (official configs/deimv2/deimv2_hgnetv2_s_coco.yml): 132 epochs on COCO.

D-FINE's GELAN block (with CSP2 layers) in the encoder; 3 decoder layers. Stages (epochs): [0, 4)
none, [4, 64) Dense O2O, [64, 120) RT-DETR augmentations with Copy-Blend, [120, 132) none; matcher
switch at 100.
"""
from dfine.data import generate_scales

from .common.data.coco import dataloader
from .common.deim import apply_deimv2_recipe, lr_multiplier, set_deimv2_stages
from .common.models.deimv2 import model
from .common.optim import AdamW as optimizer
from .common.train import train

apply_deimv2_recipe(dataloader, optimizer, train)
model.backbone.update(name="B0", use_lab=True)
model.encoder.update(in_channels=[256, 512, 1024], version="dfine", expansion=0.5, depth_mult=0.34)
model.decoder.num_layers = 3

set_deimv2_stages(dataloader, train, lr_multiplier, model, epochs=132, policy=[4, 64, 120], flat_epochs=64,
                  no_aug_epochs=12, matcher_change_epoch=100)
dataloader.train.multi_scale = generate_scales(640, 20)
train.output_dir = "./output/deimv2_hgnetv2_s"
optimizer.update(lr=4e-4, weight_decay=1e-4)
# Official rules verbatim: the backbone at 2e-4 (its LAB and norm parameters too), and no weight
# decay on any norm or BatchNorm parameter.
optimizer.params.rules = {
    "backbone": {"pattern": r"^(?=.*backbone)(?!.*bn).*$", "lr": 2e-4},
    "no_decay": {"pattern": r"^(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
}
