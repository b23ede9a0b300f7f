"""DeformableEncoder: the multi-scale deformable encoder of DINO (Zhang et al. 2022) and of (DAB-)Deformable
DETR (Zhu et al. 2021; Liu et al. 2022), which differ only in their sine position encoding.

Every backbone map is projected to ``hidden_dim`` channels (1x1 conv + GroupNorm); levels beyond the
backbone's are made by a stride-2 3x3 conv + GroupNorm, the first from the last *backbone* map (not
its projection), each further one from the previous extra level. Each level gets the 2-D sine
position encoding of its padding mask plus a learned per-level embedding; the levels are flattened
(finest first, each row-major) and refined by ``num_layers`` post-norm layers of deformable
self-attention (every token samples ``num_points`` points per head and level around its own pixel
centre) and a ReLU feed-forward block. The output is the refined memory cut back into one map per
level, which the decoder (with an identity input projection) flattens again.

Padding. ``padding_mask`` ([B, H, W] at input resolution, True on the padding of a smaller image of
the batch) is nearest-resized to every level, as DETR does (the extra levels too, from the input
mask, as the official code); from it come the position encodings, the valid ratios that scale the
reference points, and the mask that zeroes padded values in the attention. ``None`` means no image is
padded. Tokens on the padding still get an output (as officially), which the decoder masks. The
GroupNorms of the input projection take their statistics over the whole map, padding included (as
officially), so an image's memory depends on how much it is padded; the encoder proper
(:meth:`DeformableEncoder.encode`) does not.

dtype. The official code computes three things in float32 whatever the model dtype: the sine
position encoding, the valid ratios (``.float()``) and the reference-point grid
(``linspace(dtype=float32)``). This module computes all three in float32 for float32 and lower
precisions (as officially; also under autocast, where the projected maps are half precision) and in
float64 for a float64 model. The grid values (pixel centres ``i + 0.5``) are exact in every float
dtype, so only the encoding and the valid ratios differ from the official code, and only in a float64
model; the float64 goldens patch those two official steps to compute in float64 too
(``tools/golden/make_dino_encoder_golden.py``, recorded in the golden's provenance).

State dict. The parameters are named so that an official DINO checkpoint maps by prefix renames
only (ours inside the meta-architecture start with ``encoder.``):

=======================================  =========================================
official DINO key                        this module's key
=======================================  =========================================
``input_proj.{l}.0.{weight,bias}``       ``input_proj.{l}.0.{weight,bias}`` (conv)
``input_proj.{l}.1.{weight,bias}``       ``input_proj.{l}.1.{weight,bias}`` (GroupNorm)
``transformer.level_embed``              ``level_embed``
``transformer.encoder.layers.{i}.X``     ``layers.{i}.X``
=======================================  =========================================

with ``X`` one of ``self_attn.{sampling_offsets,attention_weights,value_proj,output_proj}.{weight,bias}``,
``norm1.{weight,bias}``, ``linear1.{weight,bias}``, ``linear2.{weight,bias}``, ``norm2.{weight,bias}``.
Our ``layers.{i}.self_attn.num_points_scale`` buffers are computed in the constructor and have no
official counterpart (keep ours). The official encoder has no final norm (``pre_norm=False``).
"""
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..decoder.input_projection import level_padding_masks, level_strides, valid_ratios
from ..decoder.msda import MSDeformableAttention
from ..layers.common import get_activation
from ..layers.position_encoding import SinePositionEncoding

__all__ = ["DeformableEncoder", "DeformableEncoderLayer", "encoder_reference_points"]


def encoder_reference_points(spatial_shapes: Sequence[Sequence[int]], ratios: torch.Tensor) -> torch.Tensor:
    """The reference points of every memory token on every level (Deformable DETR's encoder).

    A token's point is its pixel centre, normalized by the *valid* extent of its own level, then
    scaled back by each level's valid ratio, so that it lands on the same image position on every
    level.

    Args:
        spatial_shapes: ``[(H_l, W_l)]`` per level.
        ratios: ``[B, L, 2]`` valid ratios (x, y) (:func:`..decoder.input_projection.valid_ratios`);
            the result has their dtype and device.

    Returns:
        ``[B, sum(H_l*W_l), L, 2]`` normalized (x, y).
    """
    points = []
    for level, (h, w) in enumerate(spatial_shapes):
        ys = torch.arange(h, dtype=ratios.dtype, device=ratios.device) + 0.5
        xs = torch.arange(w, dtype=ratios.dtype, device=ratios.device) + 0.5
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        y = grid_y.reshape(1, -1) / (ratios[:, level, 1:2] * h)
        x = grid_x.reshape(1, -1) / (ratios[:, level, 0:1] * w)
        points.append(torch.stack((x, y), -1))
    return torch.cat(points, 1)[:, :, None] * ratios[:, None]


class DeformableEncoderLayer(nn.Module):
    """One post-norm encoder layer: ``x = norm1(x + attn(x + pos, x))``, ``x = norm2(x + ffn(x))``.

    Args:
        hidden_dim: token width ``C``.
        num_heads, num_levels, num_points: of the deformable self-attention.
        dim_feedforward: hidden width of the feed-forward block.
        dropout: after the attention, inside and after the feed-forward block.
        activation: of the feed-forward block (a name for ``get_activation``).
    """

    def __init__(self, hidden_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 dim_feedforward: int = 2048, dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        self.self_attn = MSDeformableAttention(hidden_dim, num_heads, num_levels, num_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.activation = get_activation(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(hidden_dim)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: Sequence[Sequence[int]], valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``src``, ``pos``: ``[B, N, C]``; ``reference_points``: ``[B, N, L, 2]``; ``valid``: optional
        ``[B, N]`` bool, True on the image. Returns ``[B, N, C]``."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, valid)
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(hidden))


class DeformableEncoder(nn.Module):
    """DINO's input projection, position and level embeddings and deformable encoder (see the module
    docstring for the computation, the padding, the dtype and the official state-dict names).

    Args:
        in_channels: channels of the backbone maps, finest first (DINO-4scale with ResNet-50:
            ``[512, 1024, 2048]``; 5-scale: ``[256, 512, 1024, 2048]``).
        feat_strides: their strides.
        hidden_dim: width ``C`` of every level and token (DINO: 256).
        num_levels: memory levels, at least ``len(in_channels)``; the extra ones are stride-2 convs.
        num_layers: encoder layers (DINO: 6).
        num_heads, num_points: of the deformable self-attention (DINO: 8 and 4).
        dim_feedforward, dropout, activation: of the feed-forward blocks (DINO: 2048, 0.0, "relu").
        num_groups: GroupNorm groups of the input projection (DINO: 32).
        pe_temperature_h, pe_temperature_w: of the sine position encoding (DINO: 20 and 20;
            Deformable-DETR and DAB-Deformable-DETR: 10000 and 10000).
        pe_offset: added to the cumulative pixel counts of the sine position encoding before they are
            normalised (DINO: 0; Deformable-DETR and DAB-Deformable-DETR: -0.5, pixel centres).

    Input: ``feats``, one ``[B, in_channels[l], H_l, W_l]`` map per backbone level, and optionally
    ``padding_mask`` ``[B, H, W]`` bool at input resolution, True on the padding. Output: one
    ``[B, hidden_dim, H_l, W_l]`` map per memory level, finest first, at ``out_strides``.
    """

    uses_padding_mask = True

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), feat_strides: Sequence[int] = (8, 16, 32),
                 hidden_dim: int = 256, num_levels: int = 4, num_layers: int = 6, num_heads: int = 8,
                 num_points: int = 4, dim_feedforward: int = 2048, dropout: float = 0.0, activation: str = "relu",
                 num_groups: int = 32, pe_temperature_h: float = 20, pe_temperature_w: float = 20,
                 pe_offset: float = 0.0):
        super().__init__()
        if len(in_channels) != len(feat_strides) or not 0 < len(in_channels) <= num_levels:
            raise ValueError(f"in_channels {list(in_channels)} and feat_strides {list(feat_strides)} need one entry "
                             f"per backbone map, at most num_levels ({num_levels})")
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (half of it encodes y, half x), got {hidden_dim}")
        self.in_channels = [int(c) for c in in_channels]
        self.feat_strides = [int(s) for s in feat_strides]
        self.hidden_dim = hidden_dim
        self.num_levels = num_levels
        self.out_channels: List[int] = [hidden_dim] * num_levels
        self.out_strides: List[int] = level_strides(self.feat_strides, num_levels)

        projections = []
        for level in range(num_levels):
            if level < len(in_channels):
                conv = nn.Conv2d(self.in_channels[level], hidden_dim, kernel_size=1)
            else:
                c_in = self.in_channels[-1] if level == len(in_channels) else hidden_dim
                conv = nn.Conv2d(c_in, hidden_dim, kernel_size=3, stride=2, padding=1)
            projections.append(nn.Sequential(conv, nn.GroupNorm(num_groups, hidden_dim)))
        self.input_proj = nn.ModuleList(projections)
        self.position_encoding = SinePositionEncoding(hidden_dim // 2, pe_temperature_h, pe_temperature_w,
                                                      normalize=True, offset=pe_offset)
        self.level_embed = nn.Parameter(torch.empty(num_levels, hidden_dim))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(hidden_dim, num_heads, num_levels, num_points, dim_feedforward, dropout, activation)
            for _ in range(num_layers))
        self._reset_parameters()

    def _reset_parameters(self):
        # As the official DINO: Xavier-uniform projection convs with zero bias (GroupNorm at 1 and 0),
        # N(0, 1) level embeddings, Xavier-uniform feed-forward weights (biases keep PyTorch's default);
        # the deformable attention initialises itself as the official MSDeformAttn.
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.constant_(proj[0].bias, 0)
        nn.init.normal_(self.level_embed)
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.linear1.weight)
            nn.init.xavier_uniform_(layer.linear2.weight)

    def project(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        """The ``num_levels`` projected maps ``[B, hidden_dim, H_l, W_l]`` of the backbone maps."""
        maps = [proj(feat) for proj, feat in zip(self.input_proj, feats)]
        for level in range(len(feats), self.num_levels):
            maps.append(self.input_proj[level](feats[-1] if level == len(feats) else maps[-1]))
        return maps

    def forward(self, feats: List[torch.Tensor], padding_mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """``feats``: one ``[B, in_channels[l], H_l, W_l]`` map per backbone level; ``padding_mask``:
        optional ``[B, H, W]`` bool at input resolution, True on the padding. Returns one
        ``[B, hidden_dim, H_l, W_l]`` map per memory level."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"DeformableEncoder expects {len(self.in_channels)} backbone maps "
                             f"(in_channels={self.in_channels}), got {len(feats)}")
        channels = [int(f.shape[1]) for f in feats]
        if channels != self.in_channels:
            raise ValueError(f"DeformableEncoder expects backbone maps of {self.in_channels} channels, got {channels}")
        return self.encode(self.project(feats), padding_mask)

    def encode(self, maps: List[torch.Tensor], padding_mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """The encoder proper on the ``num_levels`` projected maps ``[B, hidden_dim, H_l, W_l]``
        (:meth:`project`): position and level embeddings, flattening, the layers, and the memory cut
        back into maps of the same shapes.

        Unlike :meth:`forward` (whose GroupNorms take statistics over the padding too), this part
        gives an image's valid tokens the same values alone as padded in a batch, up to rounding."""
        if len(maps) != self.num_levels:
            raise ValueError(f"DeformableEncoder.encode expects {self.num_levels} maps, got {len(maps)}")
        batch = maps[0].shape[0]
        if padding_mask is not None and (padding_mask.dim() != 3 or padding_mask.shape[0] != batch):
            raise ValueError(f"padding_mask must be [B={batch}, H, W] bool, got {list(padding_mask.shape)}")
        dtype, device = maps[0].dtype, maps[0].device
        spatial_shapes = [tuple(m.shape[2:]) for m in maps]
        if padding_mask is None:
            masks = [torch.zeros(batch, h, w, dtype=torch.bool, device=device) for h, w in spatial_shapes]
            valid = None
        else:
            masks = level_padding_masks(padding_mask.to(device), spatial_shapes)
            valid = torch.cat([(~m).flatten(1) for m in masks], 1)
        exact_dtype = torch.promote_types(dtype, torch.float32)  # float32, or float64 for a float64 model
        pos = torch.cat([(self.position_encoding(m, exact_dtype).to(dtype).flatten(2) + embed[:, None]).transpose(1, 2)
                         for m, embed in zip(masks, self.level_embed)], 1)
        memory = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        ratios = valid_ratios(valid, spatial_shapes, batch, dtype=exact_dtype, device=device)
        reference_points = encoder_reference_points(spatial_shapes, ratios)
        for layer in self.layers:
            memory = layer(memory, pos, reference_points, spatial_shapes, valid)
        sizes = [h * w for h, w in spatial_shapes]
        return [level.transpose(1, 2).reshape(batch, self.hidden_dim, h, w)
                for level, (h, w) in zip(memory.split(sizes, 1), spatial_shapes)]
