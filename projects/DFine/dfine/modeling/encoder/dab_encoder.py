"""DabEncoder: the DETR transformer encoder as DAB-DETR and DN-DETR's DN-DAB-DETR use it.

The last backbone map (C5, stride 32; 16 for the DC5 models) is projected to ``hidden_dim`` channels
by a 1x1 conv (``input_proj``, with bias, no norm) and flattened; ``num_layers`` post-norm layers of
global multi-head self-attention and a feed-forward block refine it. The position embedding is the
2-d sine encoding of the padding mask (temperatures ``pe_temperature_h/w``, 20 in DN-DETR, no
offset), and DAB-DETR's encoder scales it, before each layer, element-wise by ``query_scale`` (an
``MLP(C, C, C, 2)``) of that layer's input: queries and keys of layer ``i`` are ``x + pos *
query_scale(x)``, values ``x``. Padded tokens are never attended to, but get an output (as
officially), which the decoder masks. The output is the memory as one map ``[B, C, H, W]``.

dtype. As :mod:`.deformable_encoder`: the sine encoding in float32 for float32 and lower precisions
(as officially), in float64 for a float64 model.

State dict (ours start with ``encoder.`` inside the meta-architecture):

==============================================  ================================
official DN-DAB-DETR key                        this module's key
==============================================  ================================
``input_proj.{weight,bias}``                    ``input_proj.{weight,bias}``
``transformer.encoder.query_scale.layers.{j}``  ``query_scale.layers.{j}``
``transformer.encoder.layers.{i}.X``            ``layers.{i}.X``
==============================================  ================================

with ``X`` one of ``self_attn.{in_proj_weight,in_proj_bias,out_proj.weight,out_proj.bias}``,
``linear1``, ``linear2``, ``norm1``, ``norm2`` and ``activation.weight`` (the PReLU slope).
"""
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..decoder.input_projection import level_padding_masks
from ..layers.common import MLP, get_activation
from ..layers.position_encoding import SinePositionEncoding

__all__ = ["DabEncoder", "DabEncoderLayer"]


class DabEncoderLayer(nn.Module):
    """One post-norm layer: ``x = norm1(x + attn(x + pos, x + pos, x))``, ``x = norm2(x + ffn(x))``.

    Args:
        hidden_dim, num_heads: of the self-attention (``nn.MultiheadAttention``, the official one).
        dim_feedforward, dropout, activation: of the feed-forward block (DN-DETR: 2048, 0.0, "prelu").
    """

    def __init__(self, hidden_dim: int = 256, num_heads: int = 8, dim_feedforward: int = 2048, dropout: float = 0.0,
                 activation: str = "prelu"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = get_activation(activation)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``src``, ``pos``: ``[B, N, C]``; ``padding``: optional ``[B, N]`` bool, True on padding tokens."""
        q = k = src + pos
        attended = self.self_attn(q, k, value=src, key_padding_mask=padding, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(hidden))


class DabEncoder(nn.Module):
    """DN-DAB-DETR's input projection and transformer encoder (see the module docstring).

    Args:
        in_channels, feat_strides: of the one backbone map the encoder takes (ResNet-50 C5:
            ``[2048]``, ``[32]``; DC5: ``[16]``).
        hidden_dim: width ``C`` (256).
        num_layers, num_heads, dim_feedforward, dropout, activation: 6, 8, 2048, 0.0, "prelu" in DN-DETR.
        pe_temperature_h, pe_temperature_w: of the sine position encoding (20 and 20).

    Input: ``feats``, the backbone's maps (the last one is used, as officially), optionally
    ``padding_mask`` ``[B, H, W]`` bool at input resolution, True on the padding. Output: one
    ``[B, hidden_dim, H, W]`` map.
    """

    uses_padding_mask = True

    def __init__(self, in_channels: Sequence[int] = (2048,), feat_strides: Sequence[int] = (32,), hidden_dim: int = 256,
                 num_layers: int = 6, num_heads: int = 8, dim_feedforward: int = 2048, dropout: float = 0.0,
                 activation: str = "prelu", pe_temperature_h: float = 20, pe_temperature_w: float = 20):
        super().__init__()
        if len(in_channels) != 1 or len(feat_strides) != 1:
            raise ValueError(f"DabEncoder takes one backbone map, got in_channels {list(in_channels)} and "
                             f"feat_strides {list(feat_strides)}")
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (half of it encodes y, half x), got {hidden_dim}")
        self.in_channels = [int(c) for c in in_channels]
        self.feat_strides = [int(s) for s in feat_strides]
        self.hidden_dim = hidden_dim
        self.out_channels: List[int] = [hidden_dim]
        self.out_strides: List[int] = list(self.feat_strides)
        self.input_proj = nn.Conv2d(self.in_channels[0], hidden_dim, kernel_size=1)
        self.position_encoding = SinePositionEncoding(hidden_dim // 2, pe_temperature_h, pe_temperature_w,
                                                      normalize=True)
        self.query_scale = MLP(hidden_dim, hidden_dim, hidden_dim, 2)
        self.layers = nn.ModuleList(
            DabEncoderLayer(hidden_dim, num_heads, dim_feedforward, dropout, activation) for _ in range(num_layers))
        # As the official transformer: Xavier-uniform every matrix of the encoder (the input
        # projection keeps PyTorch's default initialisation).
        for p in list(self.layers.parameters()) + list(self.query_scale.parameters()):
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, feats: List[torch.Tensor], padding_mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        x = feats[-1]
        if x.shape[1] != self.in_channels[0]:
            raise ValueError(f"DabEncoder expects a backbone map of {self.in_channels[0]} channels, got {x.shape[1]}")
        x = self.input_proj(x)
        batch, channels, height, width = x.shape
        if padding_mask is None:
            mask, padding = torch.zeros(batch, height, width, dtype=torch.bool, device=x.device), None
        else:
            if padding_mask.dim() != 3 or padding_mask.shape[0] != batch:
                raise ValueError(f"padding_mask must be [B={batch}, H, W] bool, got {list(padding_mask.shape)}")
            mask = level_padding_masks(padding_mask.to(x.device), [(height, width)])[0]
            padding = mask.flatten(1)
        exact_dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for a float64 model
        pos = self.position_encoding(mask, exact_dtype).to(x.dtype).flatten(2).transpose(1, 2)
        src = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            src = layer(src, pos * self.query_scale(src), padding)
        return [src.transpose(1, 2).reshape(batch, channels, height, width)]
