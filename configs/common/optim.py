"""AdamW with official regex parameter groups, and the RT-DETRv2 learning-rate schedule.

``optimizer.params.model`` is set by train_net.py. The rules are named (override one with e.g.
``optimizer.params.rules.backbone.lr=2e-5``); their learning rates are absolute, as in the official
YAML files, and per-model configs replace them with their official patterns, verbatim (quirks
included, see ``dfine.solver.param_groups``).
"""
import torch
from detectron2.config import LazyCall as L

from dfine.solver import ConstantSchedule, LinearWarmup, StepDecay, param_groups

# Official configs/rtdetrv2/include/optimizer.yml: the backbone at 1e-5 except parameters whose
# name contains "norm" (those train at the base LR with weight decay, as officially); no weight
# decay on encoder/decoder norms; everything else at lr 1e-4 and weight decay 1e-4.
AdamW = L(torch.optim.AdamW)(
    params=L(param_groups)(
        rules={
            "backbone": {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-5},
            "no_decay": {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
        }
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)

# Official LinearWarmup(warmup_duration=2000), then constant: the MultiStepLR that follows it
# officially never reaches its milestone. `train.max_iter` is read when train_net.py builds the
# schedule, after converting `train.epochs`.
rtdetrv2_lr_multiplier = L(LinearWarmup)(
    scheduler=L(ConstantSchedule)(value=1.0),
    warmup_iters=2000,
    max_iter="${train.max_iter}",
)

# Official DINO (main.py, util/get_param_dicts.py 'default', config/DINO/DINO_4scale.py): AdamW with
# lr 1e-4, parameters with "backbone" in their name at 1e-5, weight decay 1e-4 on every parameter.
DinoAdamW = L(torch.optim.AdamW)(
    params=L(param_groups)(rules={"backbone": {"pattern": r"backbone", "lr": 1e-5}}),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)

# Official DINO StepLR(lr_drop), stepped per epoch: one drop by 10 at `drop_epochs` (12 epochs: 11;
# 24: 20; 36: 33), no warm-up.
dino_lr_multiplier = L(StepDecay)(
    max_iter="${train.max_iter}",
    iters_per_epoch="${train.iters_per_epoch}",
    drop_epochs=[11],
    gamma=0.1,
)

# Official Deformable-DETR (main.py defaults): AdamW with lr 2e-4, parameters named "backbone" at 2e-5,
# the linear projections named "reference_points" (the one-stage model's; the two-stage model has none)
# and "sampling_offsets" (every deformable attention's) at lr x lr_linear_proj_mult 0.1, weight decay 1e-4
# on every parameter.
DeformableDetrAdamW = L(torch.optim.AdamW)(
    params=L(param_groups)(
        rules={
            "backbone": {"pattern": r"backbone", "lr": 2e-5},
            "linear_proj": {"pattern": r"reference_points|sampling_offsets", "lr": 2e-4 * 0.1},
        }
    ),
    lr=2e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)
