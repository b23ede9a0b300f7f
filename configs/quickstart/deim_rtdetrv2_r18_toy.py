"""Quick start, DEIM variant: the small RT-DETRv2 of rtdetrv2_r18_toy.py trained from scratch on the
bundled toy shapes with DEIM's recipe (configs/common/deim.py) for 8 epochs on CPU.

    bash tools/env.sh python train_net.py --config-file configs/quickstart/deim_rtdetrv2_r18_toy.py

Stages (epochs): [0, 1) no augmentation, [1, 4) Dense O2O (Mosaic of four 64-pixel images at 0.5,
MixUp at 0.5 per batch, else the RT-DETR augmentations), [4, 6) RT-DETR augmentations, [6, 8) none,
with the best state of the first 6 epochs reloaded at epoch 6. projects/DFine/README.md shows how to
compare it with the RT-DETRv2 recipe at equal iterations.
"""
from dfine.data import generate_scales

from ..common.deim import apply_to_rtdetrv2, lr_multiplier, set_stages
from ..common.quickstart import rtdetrv2_r18_toy
from ..rtdetrv2_r18 import dataloader, model, optimizer, train

image_size = 128
rtdetrv2_r18_toy(model, dataloader, train, optimizer, lr_multiplier, image_size)
apply_to_rtdetrv2(model, dataloader, lr_multiplier)

# Mosaic tiles are half the training size, as 320 is half of 640 on COCO.
dataloader.train.mapper.mosaic.output_size = image_size // 2
dataloader.train.multi_scale = generate_scales(image_size, 3)
set_stages(dataloader, train, lr_multiplier, epochs=8, policy=[1, 4, 6], flat_epochs=4, no_aug_epochs=2)

train.output_dir = "./output/quickstart_deim_rtdetrv2_r18_toy"
train.eval_epochs = 1
train.checkpoint_epochs = 2

# Warm-up scaled down with the run (official: 2000 iterations, first iteration at lr / 2000).
lr_multiplier.update(warmup_iters=100, initial_factor=1 / 100)
