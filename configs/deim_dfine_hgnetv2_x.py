"""DEIM-D-FINE-X: D-FINE-X (configs/dfine_hgnetv2_x.py) trained with DEIM's recipe for 58 epochs
(official DEIM configs/deim_dfine/deim_hgnetv2_x_coco.yml). README: 56.5 AP, 62M parameters, 202 GFLOPs.
Same stages as configs/deim_dfine_hgnetv2_l.py."""
from .common.deim import apply_to_dfine, lr_multiplier, set_stages
from .dfine_hgnetv2_x import dataloader, model, optimizer, train

apply_to_dfine(model, dataloader)
set_stages(dataloader, train, lr_multiplier, epochs=58, policy=[4, 29, 50], flat_epochs=29,
           no_aug_epochs=8)
train.output_dir = "./output/deim_dfine_hgnetv2_x"

optimizer.lr = 5e-4
optimizer.params.rules.backbone.lr = 5e-6
