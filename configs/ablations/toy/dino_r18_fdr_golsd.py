"""configs/quickstart/dino_r18_toy.py (the toy base: dino_r50_4scale_12ep.py narrowed by
configs/common/quickstart.py::detr_r18_toy) with FDR + GO-LSD (configs/common/dfine.py::use_fdr_golsd).
FDR alone: ``model.criterion.go_lsd=False``."""
from ...common.dfine import use_fdr_golsd
from ...common.quickstart import detr_r18_toy
from ...dino_r50_4scale_12ep import dataloader, lr_multiplier, model, optimizer, train

detr_r18_toy(model, dataloader, train, optimizer, lr_multiplier,
             "./output/ablations/toy/dino_r18_fdr_golsd", epochs=4)
use_fdr_golsd(model)
