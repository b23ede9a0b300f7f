"""DEIMv2-Femto (official configs/deimv2/deimv2_hgnetv2_femto_coco.yml): 500 epochs on COCO at 416.
README: 31.0 AP, 1.0M parameters, 1.7 GFLOPs.

configs/deimv2_hgnetv2_pico.py with HGNetv2-Femto (one HG block in the last stage), a 96-channel
encoder and decoder, 150 queries, and boxes thinner than 10 px dropped.
"""
from .deimv2_hgnetv2_pico import dataloader, lr_multiplier, model, optimizer, set_input_size, train

model.backbone.name = "Femto"
model.encoder.hidden_dim = 96
model.decoder.update(feat_channels=[96, 96], hidden_dim=96, num_queries=150, dim_feedforward=256)
dataloader.train.mapper.min_box_size = 10
train.output_dir = "./output/deimv2_hgnetv2_femto"
set_input_size(model, dataloader, 416)
