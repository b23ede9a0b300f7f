"""Quick start, D-FINE: D-FINE-N (configs/dfine_hgnetv2_n.py) trained from scratch on the bundled toy
shapes at their own 256x256 size for 6 epochs on CPU, then evaluated with Detectron2's COCOEvaluator.

    bash tools/env.sh python train_net.py --config-file configs/quickstart/dfine_hgnetv2_n_toy.py

The FDR / GO-LSD ablation at equal iterations (projects/DFine/README.md has the results):

    ... model.decoder.fdr=False model.criterion.go_lsd=False train.output_dir=./output/quickstart_dfine_n_toy_off

The data pipeline, schedule (batch 8, flips only, linear warm-up over 100 iterations) and training
defaults are those of the RT-DETRv2 quick start (rtdetrv2_r18_toy.py); the LRs and parameter groups
those of configs/dfine_hgnetv2_n.py.
"""
from ..dfine_hgnetv2_n import model, optimizer
from .rtdetrv2_r18_toy import dataloader, lr_multiplier, train

image_size = 256
model.encoder.eval_spatial_size = [image_size, image_size]
# 16x16 + 8x8 memory tokens at strides 16 and 32: 100 queries.
model.decoder.update(num_classes=6, num_queries=100, num_denoising=50, eval_spatial_size=[image_size, image_size])
model.num_top_queries = 100

dataloader.train.mapper.image_size = image_size
dataloader.test.mapper.image_size = image_size

train.output_dir = "./output/quickstart_dfine_hgnetv2_n_toy"
train.epochs = 6
train.eval_epochs = 6
