"""Quick start, D-FINE: D-FINE-N (configs/dfine_hgnetv2_n.py) trained from scratch on the bundled toy
shapes at their own 256x256 size for 6 epochs on CPU, then evaluated with Detectron2's COCOEvaluator.

    bash tools/env.sh python train_net.py --config-file configs/quickstart/dfine_hgnetv2_n_toy.py

The FDR / GO-LSD ablation at equal iterations (projects/DFine/README.md has the results):

    ... model.decoder.fdr=False model.criterion.go_lsd=False train.output_dir=./output/quickstart_dfine_n_toy_off
"""
from ..common.data.toy_shapes import dataloader
from ..common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from ..common.train import train
from ..dfine_hgnetv2_n import model, optimizer

image_size = 256
model.encoder.eval_spatial_size = [image_size, image_size]
# 16x16 + 8x8 memory tokens at strides 16 and 32: 100 queries.
model.decoder.update(num_classes=6, num_queries=100, num_denoising=50, eval_spatial_size=[image_size, image_size])
model.num_top_queries = 100

dataloader.train.total_batch_size = 8
dataloader.train.seed = 0
# A short schedule from scratch: only flips, no photometric distortion / zoom-out / IoU crop.
dataloader.train.mapper.policy_epoch = 0

train.output_dir = "./output/quickstart_dfine_hgnetv2_n_toy"
train.epochs = 6
train.eval_epochs = 6
train.checkpoint_epochs = 2
train.log_period = 10
train.ema.warmups = 100
train.seed = 0
train.stage_switch.epoch = None

# configs/dfine_hgnetv2_n.py's LRs and parameter groups; the warm-up scaled down with the run.
lr_multiplier.warmup_iters = 100
