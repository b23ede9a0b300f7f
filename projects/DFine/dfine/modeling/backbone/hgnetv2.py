"""HGNetv2: the backbone of D-FINE, DEIM-D-FINE and the HGNetv2 sizes of DEIMv2 (PaddlePaddle's
PP-HGNetV2, official ``src/nn/backbone/hgnetv2.py`` of D-FINE, ``engine/backbone/hgnetv2.py`` of DEIMv2).

A stem of strided convs with a max-pool branch, then four stages of HG blocks: each block runs a
chain of convs (plain, or "light" = 1x1 + depth-wise), concatenates the input with every
intermediate output and squeezes the result back with two 1x1 convs. Optional learnable affine
blocks (LAB, a scalar scale and bias after each activation) are used by the small sizes. DEIMv2 adds
three pruned B0 derivatives with only three stages (Atto, Femto, Pico) for its smallest detectors.
Parameter names follow the official module, so official checkpoints load unchanged.
"""
from typing import Dict, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.common import get_activation
from .common import freeze_batch_norm, run_stages, select_stages

__all__ = ["HGNetv2", "HGNETV2_ARCHS", "HGNETV2_PRUNED_ARCHS"]


class StageSpec(NamedTuple):
    in_channels: int
    mid_channels: int
    out_channels: int
    num_blocks: int
    downsample: bool
    light_block: bool
    kernel_size: int
    layers_per_block: int


class ArchSpec(NamedTuple):
    stem_channels: Tuple[int, int, int]  # in, mid, out
    stages: Tuple[StageSpec, ...]


def _arch(stem, *stages) -> ArchSpec:
    return ArchSpec(tuple(stem), tuple(StageSpec(*s) for s in stages))


# The official arch_configs: stage = (in, mid, out, blocks, downsample, light, kernel, layers per block).
HGNETV2_ARCHS: Dict[str, ArchSpec] = {
    "B0": _arch((3, 16, 16), (16, 16, 64, 1, False, False, 3, 3), (64, 32, 256, 1, True, False, 3, 3),
                (256, 64, 512, 2, True, True, 5, 3), (512, 128, 1024, 1, True, True, 5, 3)),
    "B1": _arch((3, 24, 32), (32, 32, 64, 1, False, False, 3, 3), (64, 48, 256, 1, True, False, 3, 3),
                (256, 96, 512, 2, True, True, 5, 3), (512, 192, 1024, 1, True, True, 5, 3)),
    "B2": _arch((3, 24, 32), (32, 32, 96, 1, False, False, 3, 4), (96, 64, 384, 1, True, False, 3, 4),
                (384, 128, 768, 3, True, True, 5, 4), (768, 256, 1536, 1, True, True, 5, 4)),
    "B3": _arch((3, 24, 32), (32, 32, 128, 1, False, False, 3, 5), (128, 64, 512, 1, True, False, 3, 5),
                (512, 128, 1024, 3, True, True, 5, 5), (1024, 256, 2048, 1, True, True, 5, 5)),
    "B4": _arch((3, 32, 48), (48, 48, 128, 1, False, False, 3, 6), (128, 96, 512, 1, True, False, 3, 6),
                (512, 192, 1024, 3, True, True, 5, 6), (1024, 384, 2048, 1, True, True, 5, 6)),
    "B5": _arch((3, 32, 64), (64, 64, 128, 1, False, False, 3, 6), (128, 128, 512, 2, True, False, 3, 6),
                (512, 256, 1024, 5, True, True, 5, 6), (1024, 512, 2048, 2, True, True, 5, 6)),
    "B6": _arch((3, 48, 96), (96, 96, 192, 2, False, False, 3, 6), (192, 192, 512, 3, True, False, 3, 6),
                (512, 384, 1024, 6, True, True, 5, 6), (1024, 768, 2048, 3, True, True, 5, 6)),
}


def _pruned_b0(last_stage) -> ArchSpec:
    """B0's stem and first two stages, then ``last_stage`` in place of B0's last two stages."""
    b0 = HGNETV2_ARCHS["B0"]
    return ArchSpec(b0.stem_channels, b0.stages[:2] + (StageSpec(*last_stage),))


# DEIMv2's three-stage variants (stride 16 at most). They have no ImageNet checkpoints of their own
# (DEIMv2 starts them from B0's where the shapes agree), hence a table apart from the PP-HGNetV2
# sizes. Pico is B0 without its last stage; Femto also has a single block in stage 3, and Atto
# additionally narrows stage 3 to 256 channels with 3x3 depth-wise kernels.
HGNETV2_PRUNED_ARCHS: Dict[str, ArchSpec] = {
    "Atto": _pruned_b0((256, 64, 256, 1, True, True, 3, 3)),
    "Femto": _pruned_b0((256, 64, 512, 1, True, True, 5, 3)),
    "Pico": _pruned_b0((256, 64, 512, 2, True, True, 5, 3)),
}


class LearnableAffineBlock(nn.Module):
    """``scale * x + bias`` with one learnable scalar each (LAB)."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale]))
        self.bias = nn.Parameter(torch.tensor([bias]))

    def forward(self, x):
        return self.scale * x + self.bias


class ConvBNAct(nn.Module):
    """Conv (no bias, "same" padding for odd kernels) -> BatchNorm -> activation -> LAB.

    The activation and the LAB are identities when ``use_act`` is False; the LAB is also one when
    ``use_lab`` is False.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, use_act=True, use_lab=False,
                 act="relu"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = get_activation(act) if use_act else nn.Identity()
        self.lab = LearnableAffineBlock() if use_act and use_lab else nn.Identity()

    def forward(self, x):
        return self.lab(self.act(self.bn(self.conv(x))))


class LightConvBNAct(nn.Module):
    """A 1x1 conv without activation, then a depth-wise ``kernel_size`` conv with activation."""

    def __init__(self, in_channels, out_channels, kernel_size, use_lab=False, act="relu"):
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 1, use_act=False, use_lab=use_lab, act=act)
        self.conv2 = ConvBNAct(out_channels, out_channels, kernel_size, groups=out_channels, use_lab=use_lab, act=act)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class StemBlock(nn.Module):
    """Stride-4 stem: a 3x3/2 conv, then two branches on its (bottom/right zero-padded) output,
    a 2x2/1 max-pool and two 2x2 convs, concatenated and reduced by a 3x3/2 and a 1x1 conv."""

    def __init__(self, in_channels, mid_channels, out_channels, use_lab=False, act="relu"):
        super().__init__()
        self.stem1 = ConvBNAct(in_channels, mid_channels, 3, stride=2, use_lab=use_lab, act=act)
        self.stem2a = ConvBNAct(mid_channels, mid_channels // 2, 2, use_lab=use_lab, act=act)
        self.stem2b = ConvBNAct(mid_channels // 2, mid_channels, 2, use_lab=use_lab, act=act)
        self.stem3 = ConvBNAct(mid_channels * 2, mid_channels, 3, stride=2, use_lab=use_lab, act=act)
        self.stem4 = ConvBNAct(mid_channels, out_channels, 1, use_lab=use_lab, act=act)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=1, ceil_mode=True)

    def forward(self, x):
        # The 2x2 convs and the pool keep the size thanks to the one-pixel bottom/right padding.
        x = F.pad(self.stem1(x), (0, 1, 0, 1))
        branch = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))
        return self.stem4(self.stem3(torch.cat([self.pool(x), branch], dim=1)))


class HGBlock(nn.Module):
    """``layers_per_block`` convs in a chain; the input and every output are concatenated and
    aggregated by two 1x1 convs (``total -> out / 2 -> out``, official ``agg="se"``, the only
    aggregation the official models use). Every block but the first of a stage is residual."""

    def __init__(self, in_channels, mid_channels, out_channels, layers_per_block, kernel_size=3, residual=False,
                 light_block=False, use_lab=False, act="relu"):
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(layers_per_block):
            ch_in = in_channels if i == 0 else mid_channels
            if light_block:
                self.layers.append(LightConvBNAct(ch_in, mid_channels, kernel_size, use_lab=use_lab, act=act))
            else:
                self.layers.append(ConvBNAct(ch_in, mid_channels, kernel_size, use_lab=use_lab, act=act))
        total = in_channels + layers_per_block * mid_channels
        self.aggregation = nn.Sequential(
            ConvBNAct(total, out_channels // 2, 1, use_lab=use_lab, act=act),
            ConvBNAct(out_channels // 2, out_channels, 1, use_lab=use_lab, act=act),
        )

    def forward(self, x):
        outputs = [x]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        y = self.aggregation(torch.cat(outputs, dim=1))
        return y + x if self.residual else y


class HGStage(nn.Module):
    """An optional depth-wise 3x3/2 down-sampling conv (no activation), then the HG blocks."""

    def __init__(self, spec: StageSpec, use_lab=False, act="relu"):
        super().__init__()
        c_in = spec.in_channels
        if spec.downsample:
            self.downsample = ConvBNAct(c_in, c_in, 3, stride=2, groups=c_in, use_act=False, use_lab=use_lab, act=act)
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[
            HGBlock(c_in if i == 0 else spec.out_channels, spec.mid_channels, spec.out_channels,
                    spec.layers_per_block, spec.kernel_size, residual=i > 0, light_block=spec.light_block,
                    use_lab=use_lab, act=act)
            for i in range(spec.num_blocks)
        ])

    def forward(self, x):
        return self.blocks(self.downsample(x))


class HGNetv2(nn.Module):
    """HGNetv2 (B0-B6, or DEIMv2's Atto/Femto/Pico) returning the feature maps of the stages in ``return_idx``.

    Args:
        name: "B0" ... "B6" (:data:`HGNETV2_ARCHS`) or "Atto", "Femto", "Pico"
            (:data:`HGNETV2_PRUNED_ARCHS`, three stages: ``return_idx=[2]`` gives the stride-16 map).
        use_lab: learnable affine blocks after the activations (D-FINE N/S/M and DEIMv2
            Atto/Femto/Pico/N/S/M use them).
        return_idx: increasing stage indices to return; stage i has stride ``4 * 2**i``.
        freeze_at: -1 trains everything; ``k >= 0`` freezes the stem, and with
            ``freeze_stem_only=False`` also the stages ``0..k`` (the official rule).
        freeze_stem_only: see ``freeze_at``.
        freeze_norm: replace every BatchNorm2d by detectron2's FrozenBatchNorm2d.
        act: activation of every conv that has one ("relu" in all D-FINE/DEIM/DEIMv2 configs; DEIMv2
            made it an argument).

    Input ``[B, 3, H, W]``; output a list, one map per ``return_idx`` entry, of shape
    ``[B, out_channels[i], ceil(H / out_strides[i]), ceil(W / out_strides[i])]``.
    The official model downloads ImageNet weights when built (B0's for the pruned variants, loaded
    non-strictly); here pretrained weights come in through ``train.init_checkpoint`` (see
    tools/convert_official.py).
    """

    def __init__(self, name: str, use_lab: bool = False, return_idx: Sequence[int] = (1, 2, 3), freeze_at: int = 0,
                 freeze_stem_only: bool = True, freeze_norm: bool = True, act: str = "relu"):
        super().__init__()
        archs = {**HGNETV2_ARCHS, **HGNETV2_PRUNED_ARCHS}
        if name not in archs:
            raise ValueError(f"HGNetv2 name must be one of {sorted(archs)}, got {name!r}")
        arch = archs[name]
        self.stem = StemBlock(*arch.stem_channels, use_lab=use_lab, act=act)
        self.stages = nn.ModuleList([HGStage(spec, use_lab=use_lab, act=act) for spec in arch.stages])

        self.return_idx, self.out_channels, self.out_strides = select_stages(
            return_idx, [spec.out_channels for spec in arch.stages])

        if freeze_at >= 0:
            frozen = [self.stem] if freeze_stem_only else [self.stem, *self.stages[:freeze_at + 1]]
            for module in frozen:
                module.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)

    def forward(self, x):
        return run_stages(self.stem(x), self.stages, self.return_idx)
