"""What every backbone here shares: freezing BatchNorm, and returning the maps of chosen stages."""
from typing import List, Sequence, Tuple

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["STAGE_STRIDES", "freeze_batch_norm", "select_stages", "run_stages"]

# Output stride of stage i of the ResNet-like backbones (stride-4 stem, then one halving per stage).
STAGE_STRIDES = [4, 8, 16, 32]


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d / SyncBatchNorm in ``module`` by detectron2's ``FrozenBatchNorm2d``.

    Weight, bias, running statistics and eps carry over. The step counter ``num_batches_tracked``
    does not: the official frozen norm has none, and detectron2 main's own
    ``convert_frozen_batchnorm`` would keep it as a state-dict entry the official checkpoints lack.
    Returns the new module when ``module`` itself is a norm, else ``module`` converted in place.
    """
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        frozen.running_mean.copy_(module.running_mean.detach())
        frozen.running_var.copy_(module.running_var.detach())
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        return frozen.to(module.running_mean.device)
    for name, child in module.named_children():
        new_child = freeze_batch_norm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def select_stages(return_idx: Sequence[int], stage_channels: Sequence[int]) -> Tuple[List[int], List[int], List[int]]:
    """Check ``return_idx`` (increasing indices of existing stages) and return it as a list with the
    ``out_channels`` and ``out_strides`` of those stages."""
    return_idx = list(return_idx)
    num_stages = len(stage_channels)
    if return_idx != sorted(set(return_idx)) or not set(return_idx) <= set(range(num_stages)):
        raise ValueError(f"return_idx must be increasing stage indices below {num_stages}, got {return_idx}")
    return return_idx, [stage_channels[i] for i in return_idx], [STAGE_STRIDES[i] for i in return_idx]


def run_stages(x: torch.Tensor, stages: Sequence[nn.Module], return_idx: Sequence[int]) -> List[torch.Tensor]:
    """Run ``stages`` in a chain on ``x`` and return the outputs of the stages in ``return_idx``
    (increasing); the stages after the last of them are not run."""
    outs = []
    for i, stage in enumerate(stages[:return_idx[-1] + 1]):
        x = stage(x)
        if i in return_idx:
            outs.append(x)
    return outs
