"""DEIMv2-Atto (official configs/deimv2/deimv2_hgnetv2_atto_coco.yml): 500 epochs on COCO at 320.
README: 23.8 AP, 0.5M parameters, 0.8 GFLOPs.

configs/deimv2_hgnetv2_femto.py with HGNetv2-Atto (a 256-channel last stage with 3x3 kernels), a
64-channel encoder and decoder, 100 queries, Mosaic at 0.3, boxes thinner than 12 px dropped, and
LRs 2e-3 (backbone 1e-3).
"""
from .deimv2_hgnetv2_femto import dataloader, lr_multiplier, model, optimizer, set_input_size, train

model.backbone.name = "Atto"
model.encoder.update(in_channels=[256], hidden_dim=64)
model.decoder.update(feat_channels=[64, 64], hidden_dim=64, num_queries=100, dim_feedforward=160)
dataloader.train.mapper.update(mosaic_prob=0.3, min_box_size=12)
train.output_dir = "./output/deimv2_hgnetv2_atto"
optimizer.lr = 2e-3
optimizer.params.rules = [
    {"pattern": r"^(?=.*backbone)(?!.*norm|bn).*$", "lr": 1e-3},
    {"pattern": r"^(?=.*backbone)(?=.*norm|bn).*$", "lr": 1e-3, "weight_decay": 0.0},
    {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
]
set_input_size(model, dataloader, 320)
