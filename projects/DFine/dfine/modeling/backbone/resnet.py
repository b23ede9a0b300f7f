"""torchvision's ResNet with frozen BatchNorm: the backbone of DETR, DN-DETR, DAB-DETR, Deformable-DETR
and DINO.

Parameter and buffer names are torchvision's under ``body`` (the official checkpoints' ``backbone.0.body``
without the ``0``), so that the official ImageNet and detection weights convert by a prefix.
"""
from typing import List, Sequence

import torch
import torchvision
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from .common import run_stages, select_stages

__all__ = ["ResNet"]

_STAGE_CHANNELS = {18: [64, 128, 256, 512], 34: [64, 128, 256, 512], 50: [256, 512, 1024, 2048],
                   101: [256, 512, 1024, 2048], 152: [256, 512, 1024, 2048]}


class ResNet(nn.Module):
    """A torchvision ResNet without its classifier, every BatchNorm frozen by default (eps 1e-5, as the
    official ``FrozenBatchNorm2d`` of DETR and DINO), returning the maps of the chosen stages.

    Args:
        depth: 18, 34, 50, 101 or 152.
        return_idx: stages whose maps are returned, 0..3 for ``layer1``..``layer4`` (strides 4, 8, 16,
            32): DINO 4-scale ``[1, 2, 3]``, 5-scale ``[0, 1, 2, 3]``, DN-DAB-DETR ``[3]``.
        dilation: dilate ``layer4`` instead of striding it (the "DC5" models: stride 16).
        freeze_at: frozen parameters, detectron2's convention: 0 none, 1 the stem, 2 the stem and
            ``layer1`` (the official DETR family: only ``layer2``..``layer4`` train), 5 everything.
        frozen_bn: every BatchNorm frozen (the official models, which start from ImageNet weights);
            False trains them (a network trained from scratch, as the quick starts).

    ``forward(x [B, 3, H, W])`` returns ``[B, out_channels[i], H / out_strides[i], W / out_strides[i]]``.
    """

    def __init__(self, depth: int = 50, return_idx: Sequence[int] = (1, 2, 3), dilation: bool = False,
                 freeze_at: int = 2, frozen_bn: bool = True):
        super().__init__()
        if depth not in _STAGE_CHANNELS:
            raise ValueError(f"ResNet depth must be one of {sorted(_STAGE_CHANNELS)}, got {depth}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        if dilation and depth < 50:
            raise ValueError(f"dilation (the DC5 models) needs a ResNet of depth 50 or more: ResNet-{depth}'s "
                             "basic blocks cannot dilate; use return_idx=[2] for a stride-16 map instead")
        body = getattr(torchvision.models, f"resnet{depth}")(
            weights=None, replace_stride_with_dilation=[False, False, dilation],
            norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
        del body.fc, body.avgpool
        self.body = body
        self.return_idx, self.out_channels, self.out_strides = select_stages(return_idx, _STAGE_CHANNELS[depth])
        if dilation:
            self.out_strides = [16 if i == 3 else s for i, s in zip(self.return_idx, self.out_strides)]
        stages = [body.conv1, body.layer1, body.layer2, body.layer3, body.layer4]  # the stem's norm is frozen
        for stage in stages[:freeze_at]:
            stage.requires_grad_(False)
        # Stages after the last returned one are never run (and never trained).
        for stage in stages[max(self.return_idx) + 2:]:
            stage.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        body = self.body
        x = body.maxpool(body.relu(body.bn1(body.conv1(x))))
        return run_stages(x, (body.layer1, body.layer2, body.layer3, body.layer4), self.return_idx)
