"""DEIMv2-L with HGNetv2-B4 (official configs/deimv2/deimv2_hgnetv2_l_coco.yml): 58 epochs on COCO.
The README reports no AP for the HGNetv2 L/M/S/X variants (its L/X rows are the DINOv3 models).

    python train_net.py --config-file configs/deimv2_hgnetv2_l.py --num-gpus 4

Stages (epochs): [0, 4) no augmentation, [4, 29) Dense O2O (Mosaic, MixUp and Copy-Blend at 0.5),
[29, 50) RT-DETR augmentations with Copy-Blend, [50, 58) none; multi-scale until 50, where the best
state of the first 50 epochs is reloaded; the matcher switches to -p * IoU^4 at 45. See
configs/common/deim.py for the recipe and its ablations.
"""
from dfine.data import generate_scales

from .common.data.coco import dataloader
from .common.deim import apply_deimv2_recipe, lr_multiplier, set_deimv2_stages
from .common.models.deimv2 import model
from .common.optim import AdamW as optimizer
from .common.train import train

apply_deimv2_recipe(dataloader, optimizer, train)
set_deimv2_stages(
    dataloader,
    train,
    lr_multiplier,
    model,
    epochs=58,
    policy=[4, 29, 50],
    flat_epochs=29,
    no_aug_epochs=8,
    matcher_change_epoch=45,
)
dataloader.train.multi_scale = generate_scales(640, 4)
train.output_dir = "./output/deimv2_hgnetv2_l"
