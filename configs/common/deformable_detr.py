"""What every Deformable-DETR config shares: the official fundamentalvision/Deformable-DETR training
recipe (main.py's defaults): the DETR augmentation, AdamW with lr 2e-4, parameters named "backbone" at
2e-5, the sampling offsets (``--lr_linear_proj_names reference_points sampling_offsets``) at lr x
``lr_linear_proj_mult`` 0.1, weight decay 1e-4 on every parameter, a total batch of 32 (the README:
"trained with total batch size of 32"; 8 GPUs x ``--batch_size`` 4), 50 epochs with one LR drop by 10
at epoch 40 (``StepLR(lr_drop=40)``), gradient clipping 0.1, no EMA, float32 (no AMP), an evaluation and
a checkpoint every epoch.
"""
import torch
from detectron2.config import LazyCall as L

from dfine.solver import param_groups

LR = 2e-4
# main.py --lr_linear_proj_mult: the factor on the LR of the linear projections named in
# --lr_linear_proj_names ("reference_points", which the two-stage model does not have, and the
# deformable attentions' "sampling_offsets").
LINEAR_PROJ_MULT = 0.1

optimizer = L(torch.optim.AdamW)(
    params=L(param_groups)(
        rules={
            "backbone": {"pattern": r"backbone", "lr": 2e-5},
            "linear_proj": {"pattern": r"reference_points|sampling_offsets", "lr": LR * LINEAR_PROJ_MULT},
        }
    ),
    lr=LR,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)


def deformable_detr_schedule(train, lr_multiplier, dataloader, epochs, drop_epoch, output_dir):
    """``epochs`` with one LR drop at ``drop_epoch``, evaluation and a checkpoint every epoch, no EMA,
    no AMP, clipping 0.1, a total batch of 32."""
    train.update(output_dir=output_dir, epochs=epochs, eval_epochs=1, checkpoint_epochs=1)
    train.ema.enabled = False
    train.amp.enabled = False
    train.clip_grad.max_norm = 0.1
    lr_multiplier.drop_epochs = [drop_epoch]
    dataloader.train.total_batch_size = 32
