"""The memory a decoder attends to: every input map projected to the decoder's width and flattened."""
from collections import OrderedDict
from typing import List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Memory", "InputProjection", "memory_valid_mask", "level_padding_masks", "valid_ratios", "level_strides"]


def level_strides(in_strides: Sequence[int], num_levels: int) -> List[int]:
    """The stride of every memory level: those of the input maps, then each extra level at twice the
    previous one."""
    strides = [int(s) for s in in_strides]
    return strides + [strides[-1] * 2 ** (i + 1) for i in range(num_levels - len(strides))]


class Memory(NamedTuple):
    """Flattened multi-scale features.

    Attributes:
        tokens: ``[B, sum(H_l*W_l), C]``, levels finest first, each row-major.
        spatial_shapes: ``[(H_l, W_l)]`` per level.
        valid: ``[B, sum(H_l*W_l)]`` bool, True where a token lies on the image rather than on the
            zero padding of a smaller image of the batch; None when no image is padded.
    """

    tokens: torch.Tensor
    spatial_shapes: List[List[int]]
    valid: Optional[torch.Tensor]


def level_padding_masks(padding_mask: torch.Tensor, spatial_shapes) -> List[torch.Tensor]:
    """The input's ``[B, H, W]`` padding mask (True on the padding) nearest-resized to every level
    ``(H_l, W_l)``, as DETR resizes it: ``[B, H_l, W_l]`` bool per level."""
    padded = padding_mask[:, None].float()
    return [F.interpolate(padded, size=(h, w), mode="nearest")[:, 0] > 0.5 for h, w in spatial_shapes]


def memory_valid_mask(padding_mask: Optional[torch.Tensor], spatial_shapes) -> Optional[torch.Tensor]:
    """``[B, sum(H_l*W_l)]`` validity of the memory tokens from the input's ``[B, H, W]`` padding
    mask (True on the padding), nearest-resized to every level; None when ``padding_mask`` is None."""
    if padding_mask is None:
        return None
    return torch.cat([(~level).flatten(1) for level in level_padding_masks(padding_mask, spatial_shapes)], 1)


def valid_ratios(valid: Optional[torch.Tensor], spatial_shapes, batch: int, dtype=torch.float32,
                 device=None) -> torch.Tensor:
    """``[B, L, 2]``: per image and level, the (x, y) fraction of the map that lies on the image
    (Deformable-DETR's valid ratios: the valid columns of the first row and the valid rows of the
    first column, over the map's width and height). ``valid`` is :attr:`Memory.valid`; None
    (no padding) gives ones."""
    if valid is None:
        return torch.ones(batch, len(spatial_shapes), 2, dtype=dtype, device=device)
    ratios, start = [], 0
    for h, w in spatial_shapes:
        level = valid[:, start:start + h * w].reshape(-1, h, w)
        start += h * w
        ratios.append(torch.stack([level[:, 0, :].sum(1).to(dtype) / w, level[:, :, 0].sum(1).to(dtype) / h], -1))
    return torch.stack(ratios, 1)


class InputProjection(nn.ModuleList):
    """One projection per memory level: a 1x1 conv + BatchNorm for each input map (RT-DETRv2), or
    nothing where the map already has the decoder's width and ``identity_when_equal`` (D-FINE); each
    level beyond the inputs is a stride-2 3x3 conv + BatchNorm of the last input map (the first extra
    level) or of the previous level. Parameter names are the official ``input_proj.{l}.conv/norm``.

    Args:
        in_channels: channels of the input maps, finest first.
        in_strides: their strides.
        hidden_dim: the decoder's width ``C``.
        num_levels: memory levels, at least ``len(in_channels)``.
        identity_when_equal: use an input map of ``hidden_dim`` channels as it is.
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], hidden_dim: int, num_levels: int,
                 identity_when_equal: bool = False):
        super().__init__()
        if len(in_channels) != len(in_strides) or not 0 < len(in_channels) <= num_levels:
            raise ValueError(f"in_channels {list(in_channels)} and in_strides {list(in_strides)} need one entry per "
                             f"input map, at most num_levels ({num_levels})")
        self.in_channels = [int(c) for c in in_channels]
        self.in_strides = [int(s) for s in in_strides]
        self.strides = level_strides(in_strides, num_levels)
        for level in range(num_levels):
            if level < len(in_channels):
                if identity_when_equal and in_channels[level] == hidden_dim:
                    self.append(nn.Identity())
                    continue
                conv = nn.Conv2d(in_channels[level], hidden_dim, 1, bias=False)
            else:
                c_in = in_channels[-1] if level == len(in_channels) else hidden_dim
                conv = nn.Conv2d(c_in, hidden_dim, 3, 2, padding=1, bias=False)
            self.append(nn.Sequential(OrderedDict([("conv", conv), ("norm", nn.BatchNorm2d(hidden_dim))])))
        for proj in self:
            if not isinstance(proj, nn.Identity):
                nn.init.xavier_uniform_(proj.conv.weight)

    def forward(self, feats: List[torch.Tensor], padding_mask: Optional[torch.Tensor] = None) -> Memory:
        """``feats``: ``[B, in_channels[l], H_l, W_l]`` per input map; ``padding_mask``: optional
        ``[B, H, W]`` bool at input resolution, True on the padding."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"The decoder expects {len(self.in_channels)} input maps, got {len(feats)}")
        maps = [proj(feat) for proj, feat in zip(self, feats)]
        for level in range(len(feats), len(self)):
            maps.append(self[level](feats[-1] if level == len(feats) else maps[-1]))
        spatial_shapes = [list(m.shape[2:]) for m in maps]
        tokens = torch.cat([m.flatten(2).permute(0, 2, 1) for m in maps], 1)
        return Memory(tokens, spatial_shapes, memory_valid_mask(padding_mask, spatial_shapes))
