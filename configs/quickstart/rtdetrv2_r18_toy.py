"""Quick start: a small RT-DETRv2 (PResNet-18vd, 128-d encoder/decoder, 128x128 inputs) trained
from scratch on the bundled toy shapes data set for 4 epochs on CPU, then evaluated with
Detectron2's COCOEvaluator.

    bash tools/env.sh python train_net.py --config-file configs/quickstart/rtdetrv2_r18_toy.py

configs/rtdetrv2_r18.py on the toy data with the short schedule of
configs/common/quickstart.py::rtdetrv2_r18_toy.
"""
from ..common.quickstart import rtdetrv2_r18_toy
from ..rtdetrv2_r18 import dataloader, lr_multiplier, model, optimizer, train

rtdetrv2_r18_toy(model, dataloader, train, optimizer, lr_multiplier)
