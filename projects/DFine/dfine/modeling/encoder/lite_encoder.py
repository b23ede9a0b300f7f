"""LiteEncoder: the attention-free two-scale encoder of DEIMv2 Atto, Femto and Pico.

The pruned HGNetv2 backbones stop at stride 16. The encoder derives a stride-32 map from it by
average pooling, mixes global context into that map (the paper's "Bi-Fusion", a global-average
term added before a 1x1 conv), and runs one top-down and one bottom-up GELAN fusion with summed
inputs. Its blocks are those of :mod:`.hybrid_encoder`; parameter names follow the official
``engine/deim/lite_encoder.py`` of DEIMv2, so official checkpoints load unchanged.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.common import ConvNormLayer, get_activation
from .hybrid_encoder import convert_submodules_to_deploy, dfine_ccff_blocks, input_projection

__all__ = ["LiteEncoder", "GAPFusion", "avg_pool_downsample"]


class GAPFusion(nn.Module):
    """Bi-Fusion of DEIMv2 (official ``GAP_Fusion``, after YOLOv6's BiFusion): add the map's global
    average to every position, then a 1x1 conv + BN + act. ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, channels: int, act="silu"):
        super().__init__()
        self.cv = ConvNormLayer(channels, channels, 1, 1, act=act)

    def forward(self, x):
        return self.cv(x + F.adaptive_avg_pool2d(x, 1))


def avg_pool_downsample(channels: int, act="silu") -> nn.Sequential:
    """3x3 stride-2 average pooling (padding 1, padded zeros counted), then 1x1 conv (no bias) + BN +
    act: ``[B, C, H, W] -> [B, C, ceil(H / 2), ceil(W / 2)]``. The conv and BN stay separate at
    deploy time, as in the official model (state-dict names ``1.weight``, ``2.running_mean``, ...)."""
    return nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1), nn.Conv2d(channels, channels, 1, bias=False),
                         nn.BatchNorm2d(channels), get_activation(act))


class LiteEncoder(nn.Module):
    """Two-scale encoder of DEIMv2 Atto/Femto/Pico, without AIFI.

    ``P16 = input_proj(x)``; ``P32 = bi_fusion(down_sample1(P16))``;
    ``o16 = fpn_block(P16 + upsample_2x(P32))``; ``o32 = pan_block(P32 + down_sample2(o16))``.

    Args:
        in_channels, feat_strides: channels and stride of the single backbone map (lists of one, as
            for :class:`HybridEncoder`).
        hidden_dim: channels of every map inside and of both outputs.
        expansion, depth_mult, act: the fusion blocks are D-FINE's GELAN
            (``RepNCSPELAN4(hidden_dim, hidden_dim, 2 * hidden_dim, round(expansion * hidden_dim // 2),
            round(3 * depth_mult))``) with activation ``act``, also used by the down-samplers and
            the Bi-Fusion conv.
        csp_type: CSP layer inside the GELAN blocks, "csp2" (DEIMv2) or "csp" (:data:`CSP_TYPES`).

    Input: ``[feat]`` with ``feat`` of shape ``[B, in_channels[0], H, W]``, H and W even (the
    official model has the same requirement). Output: ``[o16, o32]`` of shapes
    ``[B, hidden_dim, H, W]`` and ``[B, hidden_dim, H / 2, W / 2]``, at ``out_strides`` =
    ``[s, 2 * s]`` for the input stride ``s``.
    """

    def __init__(self, in_channels: Sequence[int] = (512,), feat_strides: Sequence[int] = (16,),
                 hidden_dim: int = 256, expansion: float = 1.0, depth_mult: float = 1.0, act: str = "silu",
                 csp_type: str = "csp2"):
        super().__init__()
        if len(in_channels) != 1 or len(feat_strides) != 1:
            raise ValueError("LiteEncoder takes exactly one backbone map; got "
                             f"in_channels={list(in_channels)}, feat_strides={list(feat_strides)}")
        self.in_channels = list(in_channels)
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.out_channels: List[int] = [hidden_dim, hidden_dim]
        self.out_strides: List[int] = [feat_strides[0], 2 * feat_strides[0]]

        self.input_proj = nn.ModuleList([input_projection(in_channels[0], hidden_dim)])
        self.down_sample1 = avg_pool_downsample(hidden_dim, act)  # makes the coarse level
        self.down_sample2 = avg_pool_downsample(hidden_dim, act)  # bottom-up path
        self.bi_fusion = GAPFusion(hidden_dim, act=act)
        blocks = dfine_ccff_blocks(hidden_dim, expansion, depth_mult, act, csp_type=csp_type)
        self.fpn_block = blocks.fusion(hidden_dim)
        self.pan_block = blocks.fusion(hidden_dim)

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        if len(feats) != 1:
            raise ValueError(f"LiteEncoder expects 1 feature map, got {len(feats)}")
        fine = self.input_proj[0](feats[0])
        coarse = self.bi_fusion(self.down_sample1(fine))
        fine_out = self.fpn_block(fine + F.interpolate(coarse, scale_factor=2.0, mode="nearest"))
        coarse_out = self.pan_block(coarse + self.down_sample2(fine_out))
        return [fine_out, coarse_out]

    def convert_to_deploy(self):
        """Fold the RepVGG blocks and the conv+BN layers of the fusion blocks and the Bi-Fusion for
        inference, as the official ``deploy()``; outputs stay the same. Call it in eval mode."""
        convert_submodules_to_deploy(self)
