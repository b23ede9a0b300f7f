"""DEIM-RT-DETRv2-M*: PResNet-50vd, encoder expansion 0.5, 3 decoder layers evaluated at the third,
60 epochs with DEIM's recipe (official DEIM configs/deim_rtdetrv2/deim_r50vd_m_60e_coco.yml).
README: 53.2 AP, 33M parameters."""
from .deim_rtdetrv2_r50 import dataloader, lr_multiplier, model, optimizer, train

model.encoder.expansion = 0.5
model.decoder.num_layers = 3
model.decoder.eval_idx = 2

train.output_dir = "./output/deim_rtdetrv2_r50_m"
