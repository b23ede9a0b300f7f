"""Two-stage Deformable-DETR with iterative box refinement ("++ two-stage Deformable DETR"), ResNet-50,
50 epochs on COCO: the official fundamentalvision/Deformable-DETR
``configs/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage.sh``, i.e.
``python -u main.py --output_dir exps/r50_deformable_detr_plus_iterative_bbox_refinement_plus_plus_two_stage
--with_box_refine --two_stage`` (main.py's defaults otherwise: 50 epochs, LR drop at 40).
README: 46.9 box AP, 41M parameters."""
from .common.data.coco_detr import dataloader
from .common.deformable_detr import deformable_detr_schedule
from .common.models.deformable_detr import model
from .common.optim import DeformableDetrAdamW as optimizer
from .common.optim import dino_lr_multiplier as lr_multiplier
from .common.train import train

deformable_detr_schedule(train, lr_multiplier, dataloader, epochs=50, drop_epoch=40,
                         output_dir="./output/deformable_detr_r50_50ep")
