"""configs/ablations/toy/deformable_detr_r18.py (the toy base: deformable_detr_r50_50ep.py narrowed by
configs/common/quickstart.py::detr_r18_toy) with FDR + GO-LSD (configs/common/dfine.py::use_fdr_golsd).
FDR alone: ``model.criterion.go_lsd=False``."""
from ...common.dfine import use_fdr_golsd
from ...common.quickstart import detr_r18_toy
from ...deformable_detr_r50_50ep import dataloader, lr_multiplier, model, optimizer, train

detr_r18_toy(model, dataloader, train, optimizer, lr_multiplier,
             "./output/ablations/toy/deformable_detr_r18_fdr_golsd", epochs=4)
use_fdr_golsd(model)
