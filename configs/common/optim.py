"""AdamW with official-style regex parameter groups, and the RT-DETRv2 learning-rate schedule."""
import torch
from detectron2.config import LazyCall as L

from dfine.solver import LinearWarmupConstant, param_groups

# `params.model` is set by train_net.py. The rules are those of the official
# configs/rtdetrv2/include/optimizer.yml: a 10x lower backbone LR (its norms excluded, so they
# train at the base LR, as officially), and no weight decay on encoder/decoder norms.
AdamW = L(torch.optim.AdamW)(
    params=L(param_groups)(
        rules=[
            {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-5},
            {"pattern": r"^(?=.*(?:encoder|decoder))(?=.*(?:norm|bn)).*$", "weight_decay": 0.0},
        ]
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=1e-4,
)

# Official LinearWarmup(2000) then constant (its MultiStepLR milestone is never reached).
rtdetrv2_lr_multiplier = L(LinearWarmupConstant)(warmup_iters=2000, max_iter="${train.max_iter}")
