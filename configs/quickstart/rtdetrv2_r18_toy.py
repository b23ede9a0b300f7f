"""Quick start: a small RT-DETRv2 (PResNet-18vd, 128-d encoder/decoder, 128x128 inputs) trained
from scratch on the bundled toy shapes data set for 4 epochs on CPU, then evaluated with
Detectron2's COCOEvaluator.

    bash tools/env.sh python train_net.py --config-file configs/quickstart/rtdetrv2_r18_toy.py
"""
from ..common.data.toy_shapes import dataloader
from ..common.optim import rtdetrv2_lr_multiplier as lr_multiplier
from ..common.train import train
from ..rtdetrv2_r18 import model, optimizer

# RT-DETRv2-S (configs/rtdetrv2_r18.py), narrowed to 128 channels for the small inputs.
image_size = 128
model.encoder.hidden_dim = 128
model.encoder.dim_feedforward = 512
model.encoder.eval_spatial_size = [image_size, image_size]
model.decoder.num_classes = 6
model.decoder.feat_channels = [128, 128, 128]
model.decoder.hidden_dim = 128
model.decoder.dim_feedforward = 512
model.decoder.num_queries = 100
model.decoder.num_denoising = 50
model.decoder.eval_spatial_size = [image_size, image_size]
model.num_top_queries = 100

dataloader.train.mapper.image_size = image_size
dataloader.test.mapper.image_size = image_size
dataloader.train.total_batch_size = 8
dataloader.train.seed = 0
# A short schedule from scratch: only flips, no photometric distortion / zoom-out / IoU crop.
dataloader.train.mapper.policy_epoch = 0

train.output_dir = "./output/quickstart_rtdetrv2_r18_toy"
train.epochs = 4
train.eval_epochs = 4
train.checkpoint_epochs = 2
train.log_period = 10
train.ema.warmups = 100
train.seed = 0

# From scratch (no pretrained backbone can be downloaded): a higher LR, with rtdetrv2_r18.py's
# parameter groups (one LR for all, no decay on norms).
optimizer.lr = 4e-4
lr_multiplier.warmup_iters = 100
