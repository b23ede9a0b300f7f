"""Quick start: a small DN-DAB-Deformable-DETR (ResNet-18, 128-d deformable encoder and decoder, 100
anchor queries, DN-DETR's 5 denoising groups) trained from scratch on the bundled toy shapes data set
on CPU, then evaluated with Detectron2's COCOEvaluator.

    bash tools/env.sh python train_net.py --config-file configs/quickstart/dn_dab_deformable_detr_r18_toy.py

configs/dn_dab_deformable_detr_r50_50ep.py with its parts and recipe (learned 4-D anchors refined
layer by layer, DN-DETR's label and box denoising, focal loss, the DETR augmentation in padded
batches, AdamW, one LR drop), narrowed and shortened for 2 CPU cores as the DINO quick start
(configs/quickstart/dino_r18_toy.py): ResNet-18 with trainable BatchNorm (no pretrained weights can
be downloaded), 1 encoder and 3 decoder layers of width 128, training images of shorter side 96-144
(crops of 80-128), evaluation at 128, 6 epochs of batch 8 (600 iterations) with the LR drop after
epoch 5, at a higher LR than the official one (2e-4, the backbone too).

The same model without denoising (DAB-Deformable-DETR) is one override away:
``model.decoder.denoising=null``.
"""
from detectron2.config import LazyCall as L

from dfine.data import detr_test_augmentations, detr_train_augmentations

from ..common.quickstart import TOY_CLASSES, short_run, use_toy_shapes
from ..dn_dab_deformable_detr_r50_12ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.update(depth=18, freeze_at=0, frozen_bn=False)
model.encoder.update(in_channels=[128, 256, 512], hidden_dim=128, num_layers=1, dim_feedforward=512)
model.decoder.update(num_classes=TOY_CLASSES, hidden_dim=128, num_queries=100, num_layers=3)
model.decoder.input_proj.in_channels = [128, 128, 128, 128]
model.decoder.layer.dim_feedforward = 512
model.num_top_queries = 100

use_toy_shapes(dataloader, image_size=None)
# The DETR augmentation at the toy images' scale (256x256 on disk).
dataloader.train.mapper.augmentations = L(detr_train_augmentations)(
    scales=[96, 112, 128, 144], max_size=240, crop_resize_scales=[96, 112, 128], crop_size=[80, 128]
)
dataloader.test.mapper.augmentations = L(detr_test_augmentations)(size=128, max_size=213)

short_run(train, "./output/quickstart_dn_dab_deformable_detr_r18_toy", epochs=6, eval_epochs=6)
lr_multiplier.drop_epochs = [5]
optimizer.lr = 2e-4
optimizer.params.rules.backbone.lr = 2e-4
