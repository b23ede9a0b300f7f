"""PResNet-vd: the ResNet variant of RT-DETR / RT-DETRv2 / DEIM-RT-DETRv2.

Differences from torchvision's ResNet, as in the official backbone (Paddle's ResNet-vd):
a three-conv 3x3 stem (variants c/d), the stride on the 3x3 conv of bottlenecks, and, in the
``d`` variant, an average-pool + 1x1 conv shortcut when a block down-samples. Parameter names
follow the official module so official checkpoints load unchanged.
"""
from collections import OrderedDict
from typing import Sequence

import torch.nn.functional as F
from torch import nn

from ..layers.common import ConvNormLayer, get_activation
from .common import freeze_batch_norm, run_stages, select_stages

__all__ = ["PResNet"]

BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
STAGE_WIDTHS = [64, 128, 256, 512]


def _shortcut(ch_in, ch_out, stride, variant):
    if variant == "d" and stride == 2:
        # Average-pool then 1x1 conv: the down-sampling shortcut keeps every input pixel.
        return nn.Sequential(OrderedDict([
            ("pool", nn.AvgPool2d(2, 2, 0, ceil_mode=True)),
            ("conv", ConvNormLayer(ch_in, ch_out, 1, 1)),
        ]))
    return ConvNormLayer(ch_in, ch_out, 1, stride)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, ch_in, ch_out, stride, shortcut, act="relu", variant="d"):
        super().__init__()
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(ch_in, ch_out, stride, variant)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 3, stride, act=act)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, 1)
        self.act = get_activation(act)

    def forward(self, x):
        out = self.branch2b(self.branch2a(x))
        return self.act(out + (x if self.shortcut else self.short(x)))


class BottleNeck(nn.Module):
    expansion = 4

    def __init__(self, ch_in, ch_out, stride, shortcut, act="relu", variant="d"):
        super().__init__()
        # Variant "a" strides the first 1x1 conv; b/c/d stride the 3x3 conv.
        stride1, stride2 = (stride, 1) if variant == "a" else (1, stride)
        self.branch2a = ConvNormLayer(ch_in, ch_out, 1, stride1, act=act)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, stride2, act=act)
        self.branch2c = ConvNormLayer(ch_out, ch_out * self.expansion, 1, 1)
        self.shortcut = shortcut
        if not shortcut:
            self.short = _shortcut(ch_in, ch_out * self.expansion, stride, variant)
        self.act = get_activation(act)

    def forward(self, x):
        out = self.branch2c(self.branch2b(self.branch2a(x)))
        return self.act(out + (x if self.shortcut else self.short(x)))


class Blocks(nn.Module):
    """One stage: the first block changes width (and stride, except in the first stage)."""

    def __init__(self, block, ch_in, ch_out, count, first_stage, act="relu", variant="d"):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(count):
            stride = 2 if i == 0 and not first_stage else 1
            self.blocks.append(block(ch_in, ch_out, stride=stride, shortcut=i > 0, act=act, variant=variant))
            ch_in = ch_out * block.expansion

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class PResNet(nn.Module):
    """ResNet-vd backbone returning the feature maps of the stages in ``return_idx``.

    Args:
        depth: 18, 34, 50 or 101.
        variant: "d" (official RT-DETR models), or a/b/c.
        num_stages: number of residual stages built (``res_layers``), at most 4.
        return_idx: increasing stage indices to return; stage i has stride ``4 * 2**i``.
        act: activation of the stem, the blocks and the residual sums.
        freeze_at: -1 trains everything; ``k >= 0`` sets ``requires_grad=False`` on the stem and the
            first ``k`` stages (so 0 freezes the stem only).
        freeze_norm: replace every BatchNorm2d by detectron2's FrozenBatchNorm2d (fixed statistics and
            affine, kept as buffers), see :func:`freeze_batch_norm`.

    Input ``[B, 3, H, W]``; output a list, one map per ``return_idx`` entry, of shape
    ``[B, out_channels[i], ceil(H / out_strides[i]), ceil(W / out_strides[i])]``.
    """

    def __init__(self, depth: int, variant: str = "d", num_stages: int = 4, return_idx: Sequence[int] = (1, 2, 3),
                 act: str = "relu", freeze_at: int = -1, freeze_norm: bool = True):
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"PResNet depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
        stem_width = 64
        if variant in ("c", "d"):
            stem = [(3, stem_width // 2, 3, 2, "conv1_1"), (stem_width // 2, stem_width // 2, 3, 1, "conv1_2"),
                    (stem_width // 2, stem_width, 3, 1, "conv1_3")]
        else:
            stem = [(3, stem_width, 7, 2, "conv1_1")]
        self.conv1 = nn.Sequential(OrderedDict(
            (name, ConvNormLayer(cin, cout, k, s, act=act)) for cin, cout, k, s, name in stem
        ))

        block = BottleNeck if depth >= 50 else BasicBlock
        stage_channels = [block.expansion * w for w in STAGE_WIDTHS]
        self.res_layers = nn.ModuleList()
        ch_in = stem_width
        for i in range(num_stages):
            count = BLOCKS_PER_STAGE[depth][i]
            self.res_layers.append(Blocks(block, ch_in, STAGE_WIDTHS[i], count, i == 0, act, variant))
            ch_in = stage_channels[i]

        self.return_idx, self.out_channels, self.out_strides = select_stages(return_idx, stage_channels[:num_stages])

        if freeze_at >= 0:
            for module in [self.conv1, *self.res_layers[:min(freeze_at, num_stages)]]:
                module.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)

    def forward(self, x):
        return run_stages(F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1), self.res_layers,
                          self.return_idx)
