"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch, as RT-DETRv2 uses it.

Per level, every head samples ``num_points[level]`` points around each query's reference box and
averages them with weights that are soft-maxed over all points of all levels jointly.
"""
import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformableAttention", "deformable_attention_core"]


def deformable_attention_core(value: torch.Tensor, spatial_shapes: Sequence[Sequence[int]],
                              sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                              num_points_list: List[int], method: str = "default") -> torch.Tensor:
    """Sample ``value`` at ``sampling_locations`` and sum the samples with ``attention_weights``.

    Args:
        value: ``[B, sum(H_l*W_l), n_heads, head_dim]``, levels flattened h-major and concatenated.
        spatial_shapes: ``[(H_l, W_l)]`` per level.
        sampling_locations: ``[B, Q, n_heads, sum(P_l), 2]`` normalized (x, y) in [0, 1].
        attention_weights: ``[B, Q, n_heads, sum(P_l)]``.
        num_points_list: ``P_l`` per level.
        method: ``"default"`` bilinear sampling with zero padding (``grid_sample``,
            ``align_corners=False``); ``"discrete"`` nearest-pixel gather, as the official
            ``*_dsp`` models do (including their clamp of x by ``H - 1``, which assumes square maps).

    Returns:
        ``[B, Q, n_heads * head_dim]``.
    """
    batch, _, n_heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    # [B*n_heads, head_dim, sum(HW)] split per level.
    values = value.permute(0, 2, 3, 1).flatten(0, 1).split([h * w for h, w in spatial_shapes], dim=-1)
    locations = sampling_locations.permute(0, 2, 1, 3, 4).flatten(0, 1).split(num_points_list, dim=-2)
    samples = []
    for (h, w), value_l, loc_l, points in zip(spatial_shapes, values, locations, num_points_list):
        value_l = value_l.reshape(batch * n_heads, head_dim, h, w)
        if method == "default":
            samples.append(F.grid_sample(value_l, 2 * loc_l - 1, mode="bilinear", padding_mode="zeros", align_corners=False))
        elif method == "discrete":
            coord = (loc_l * loc_l.new_tensor([w, h]) + 0.5).to(torch.int64).clamp(0, h - 1)
            coord = coord.reshape(batch * n_heads, num_queries * points, 2)
            rows = torch.arange(coord.shape[0], device=value.device).unsqueeze(-1).expand(-1, coord.shape[1])
            gathered = value_l[rows, :, coord[..., 1], coord[..., 0]]  # [B*n_heads, Q*P, head_dim]
            samples.append(gathered.permute(0, 2, 1).reshape(batch * n_heads, head_dim, num_queries, points))
        else:
            raise ValueError(f"Unknown deformable attention method {method!r}")
    weights = attention_weights.permute(0, 2, 1, 3).reshape(batch * n_heads, 1, num_queries, sum(num_points_list))
    output = (torch.cat(samples, dim=-1) * weights).sum(-1).reshape(batch, n_heads * head_dim, num_queries)
    return output.permute(0, 2, 1)


class MSDeformableAttention(nn.Module):
    """Deformable cross-attention from queries to a multi-level memory.

    ``num_points`` is an int or one count per level. Offsets around the reference box
    (cx, cy, w, h) are scaled by ``offset_scale * box_size / num_points_level``. Parameter names
    follow the official module.
    """

    def __init__(self, embed_dim=256, num_heads=8, num_levels=4, num_points=4, method="default", offset_scale=0.5):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        points = [num_points] * num_levels if isinstance(num_points, int) else [int(n) for n in num_points]
        if len(points) != num_levels:
            raise ValueError(f"num_points {points} must give one count per level ({num_levels})")
        self.embed_dim, self.num_heads, self.num_levels = embed_dim, num_heads, num_levels
        self.num_points_list = points
        self.offset_scale = offset_scale
        self.method = method
        self.head_dim = embed_dim // num_heads
        self.register_buffer("num_points_scale", torch.tensor([1 / n for n in points for _ in range(n)], dtype=torch.float32))
        total_points = num_heads * sum(points)
        self.sampling_offsets = nn.Linear(embed_dim, total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()
        if method == "discrete":
            # Rounded sampling has no gradient w.r.t. the offsets; the official models freeze them.
            self.sampling_offsets.requires_grad_(False)

    def _reset_parameters(self):
        nn.init.constant_(self.sampling_offsets.weight, 0)
        # Head h starts looking in direction 2*pi*h/H, point k of a level k steps away.
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.cat([torch.arange(1, n + 1) for n in self.num_points_list]).reshape(1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_((directions[:, None, :] * steps).flatten())
        nn.init.constant_(self.attention_weights.weight, 0)
        nn.init.constant_(self.attention_weights.bias, 0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0)

    def forward(self, query, reference_points, value, spatial_shapes, value_mask=None):
        """
        Args:
            query: ``[B, Q, C]``.
            reference_points: ``[B, Q, 1, 4]`` normalized cxcywh boxes, shared by all levels.
            value: ``[B, sum(H_l*W_l), C]``.
            spatial_shapes: ``[(H_l, W_l)]``.
            value_mask: optional ``[B, sum(H_l*W_l)]``, True where the memory is valid.

        Returns:
            ``[B, Q, C]``.
        """
        batch, num_queries = query.shape[:2]
        value = self.value_proj(value)
        if value_mask is not None:
            value = value * value_mask.to(value.dtype).unsqueeze(-1)
        value = value.reshape(batch, value.shape[1], self.num_heads, self.head_dim)
        total = sum(self.num_points_list)
        offsets = self.sampling_offsets(query).reshape(batch, num_queries, self.num_heads, total, 2)
        weights = self.attention_weights(query).reshape(batch, num_queries, self.num_heads, total).softmax(-1)
        if reference_points.shape[-1] != 4:
            raise ValueError(f"reference_points must be boxes (cx, cy, w, h), got {reference_points.shape[-1]} values")
        scale = self.num_points_scale.to(query.dtype).unsqueeze(-1)
        locations = reference_points[:, :, None, :, :2] + offsets * scale * reference_points[:, :, None, :, 2:] * self.offset_scale
        output = deformable_attention_core(value, spatial_shapes, locations, weights, self.num_points_list, self.method)
        return self.output_proj(output)
