"""Quick start, DEIMv2: DEIMv2-Atto (configs/deimv2_hgnetv2_atto.py: pruned HGNetv2, LiteEncoder,
RMSNorm/SwiGLU decoder with a shared box head, MAL) trained from scratch on the bundled toy shapes
at their own 256x256 size for 8 epochs on CPU, then evaluated with Detectron2's COCOEvaluator.

    bash tools/env.sh python train_net.py --config-file configs/quickstart/deimv2_hgnetv2_atto_toy.py

Atto's recipe on a short schedule, stages (epochs): [0, 1) none, [1, 4) Mosaic at 0.3 (Atto's, with
128-pixel tiles, as 160 is half of 320), [4, 6) RT-DETR augmentations, [6, 8) none, with the best
state of the first 6 epochs reloaded at epoch 6; the matcher switches to -p * IoU^4 at epoch 7 (as
450 of 500). Like Atto, no MixUp or Copy-Blend. Batch 8 and the data of the RT-DETRv2 quick start.
"""
from ..common.deim import set_deimv2_stages, set_input_size
from ..common.quickstart import short_run, toy_detector, use_toy_shapes
from ..deimv2_hgnetv2_atto import dataloader, lr_multiplier, model, optimizer, train

image_size = 256
toy_detector(model, image_size)
use_toy_shapes(dataloader, image_size)
set_input_size(model, dataloader, image_size)
set_deimv2_stages(dataloader, train, lr_multiplier, model, epochs=8, policy=[1, 4, 6], flat_epochs=4, no_aug_epochs=2,
                  matcher_change_epoch=7)
dataloader.train.copy_blend.epochs = [40000, 15000]  # off, as Atto

short_run(train, "./output/quickstart_deimv2_hgnetv2_atto_toy", epochs=8, eval_epochs=2)
train.ddp.find_unused_parameters = False  # only the DINOv3 trunks have parameters without gradient
# Warm-up scaled down with the run (official: 4000 iterations).
lr_multiplier.update(warmup_iters=100, initial_factor=1 / 100)
