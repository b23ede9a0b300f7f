"""Quick start, D-FINE: D-FINE-N (configs/dfine_hgnetv2_n.py) trained from scratch on the bundled toy
shapes at their own 256x256 size for 6 epochs on CPU, then evaluated with Detectron2's COCOEvaluator.

    bash tools/env.sh python train_net.py --config-file configs/quickstart/dfine_hgnetv2_n_toy.py

The FDR / GO-LSD ablation at equal iterations (projects/DFine/README.md has the results):

    ... model.decoder.box_head.reg_max=null model.criterion.go_lsd=False \\
        train.output_dir=./output/quickstart_dfine_n_toy_off

The data and schedule (batch 8, flips only, linear warm-up over 100 iterations) are those of the
RT-DETRv2 quick start (configs/common/quickstart.py); the LRs and parameter groups those of
configs/dfine_hgnetv2_n.py.
"""
from ..common.quickstart import short_run, toy_detector, use_toy_shapes
from ..dfine_hgnetv2_n import dataloader, lr_multiplier, model, optimizer, train

image_size = 256
# 16x16 + 8x8 memory tokens at strides 16 and 32: 100 queries.
toy_detector(model, image_size)
use_toy_shapes(dataloader, image_size)
dataloader.train.mapper.policy_epoch = 0
dataloader.train.multi_scale_stop_epoch = None

short_run(train, "./output/quickstart_dfine_hgnetv2_n_toy", epochs=6, eval_epochs=6)
train.stage_switch.epoch = None  # no augmentation stages to switch from
lr_multiplier.warmup_iters = 100
