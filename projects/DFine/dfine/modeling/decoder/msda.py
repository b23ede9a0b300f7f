"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in pure PyTorch, as RT-DETRv2 uses it.

Every head samples ``num_points[l]`` points on each level ``l`` around the query's reference box and
sums them with weights soft-maxed over all points of all levels jointly.

How a level is sampled is a pluggable *sampler* (see ``_SAMPLERS``): ``default`` is bilinear
``grid_sample``, ``discrete`` is the nearest-pixel gather of the official ``*_dsp`` models, and
``bilinear_gather`` is ``default`` computed by a gather, for runtimes without ``grid_sample`` (ONNX
export, see ``dfine.export``).
"""
import math
from typing import Callable, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformableAttention", "deformable_attention_core"]


class _Sampler(NamedTuple):
    """How one level is sampled.

    ``to_coords`` maps normalized (x, y) locations (``[..., 2]``, (0, 0) the top-left corner of the
    map, (1, 1) its bottom-right) to the coordinates ``sample`` takes; ``None`` keeps them.
    ``sample(value [N, D, H, W], coords [N, Q, P, 2]) -> [N, D, Q, P]``.
    """

    to_coords: Optional[Callable[[torch.Tensor], torch.Tensor]]
    sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _grid_sample_coords(locations: torch.Tensor) -> torch.Tensor:
    """``grid_sample``'s convention: -1 and 1 are the outer edges of the map."""
    return 2 * locations - 1


def _sample_bilinear(value: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples, zero outside the map (``align_corners=False``: pixel centres at (i + 0.5) / size)."""
    return F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _sample_discrete(value: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel samples at normalized locations, as the official ``discrete`` method takes them.

    The pixel index is ``int64(loc * size + 0.5)`` (truncation), clamped to ``[0, H - 1]`` for
    **both** x and y: the official code assumes square maps, so on wide maps x never goes beyond
    column ``H - 1``. x is also kept below ``W`` so that tall maps, where the official gather goes
    out of bounds, stay valid.
    """
    n, d, h, w = value.shape
    q, p = locations.shape[1:3]
    xy = (locations * locations.new_tensor([w, h]) + 0.5).to(torch.int64).clamp(0, h - 1)
    x, y = xy[..., 0].clamp(max=w - 1), xy[..., 1]
    index = (y * w + x).reshape(n, q * p, 1).expand(-1, -1, d)
    # Gathered as [N, Q*P, D] rows and returned as a view, the memory layout the official gather
    # produces, so that the weighted sum reduces in the same order.
    pixels = value.flatten(2).transpose(1, 2).gather(1, index)
    return pixels.permute(0, 2, 1).reshape(n, d, q, p)


def _sample_bilinear_gather(value: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``_sample_bilinear`` without ``grid_sample``: the four neighbouring pixels of every point by one
    gather, for runtimes that lack GridSample or compile it wrongly (equal up to float rounding).

    ``grid`` is in ``grid_sample``'s convention and is mapped to pixel coordinates by its formula
    (``align_corners=False``: ``x = ((g + 1) * W - 1) / 2``). A neighbour outside the map gets weight 0
    and a clamped, valid index (zero padding).
    """
    n, d, h, w = value.shape
    q, p = grid.shape[1:3]
    x = ((grid[..., 0] + 1) * w - 1) / 2
    y = ((grid[..., 1] + 1) * h - 1) / 2
    x0, y0 = x.floor(), y.floor()
    # Neighbours and weights in grid_sample's order and arithmetic (north-west, north-east,
    # south-west, south-east; a weight is the area of the opposite sub-rectangle), stacked last.
    west, east, north, south = x0 + 1 - x, x - x0, y0 + 1 - y, y - y0
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], -1)
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], -1)
    weights = torch.stack([west * north, east * north, west * south, east * south], -1)
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    weights = weights * inside.to(weights.dtype)
    index = ys.clamp(0, h - 1).to(torch.int64) * w + xs.clamp(0, w - 1).to(torch.int64)
    index = index.reshape(n, q * p * 4, 1).expand(-1, -1, d)
    pixels = value.flatten(2).transpose(1, 2).gather(1, index).reshape(n, q, p, 4, d)
    return (pixels * weights.unsqueeze(-1)).sum(-2).permute(0, 3, 1, 2)


_SAMPLERS = {
    "default": _Sampler(_grid_sample_coords, _sample_bilinear),
    "discrete": _Sampler(None, _sample_discrete),
    "bilinear_gather": _Sampler(_grid_sample_coords, _sample_bilinear_gather),
}


def deformable_attention_core(value: torch.Tensor, spatial_shapes: Sequence[Sequence[int]],
                              sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                              num_points_list: List[int], method: str = "default") -> torch.Tensor:
    """Sample ``value`` at ``sampling_locations`` and sum the samples with ``attention_weights``.

    Args:
        value: ``[B, sum(H_l*W_l), n_heads, head_dim]``; each level flattened row-major (y, then x),
            levels concatenated in order.
        spatial_shapes: ``[(H_l, W_l)]`` per level.
        sampling_locations: ``[B, Q, n_heads, sum(P_l), 2]`` normalized (x, y) in the map, (0, 0)
            its top-left corner and (1, 1) its bottom-right; points grouped by level.
        attention_weights: ``[B, Q, n_heads, sum(P_l)]``.
        num_points_list: ``P_l`` per level.
        method: a key of ``_SAMPLERS``: ``"default"`` (bilinear), ``"discrete"`` (nearest pixel) or
            ``"bilinear_gather"`` (``"default"``'s result without ``grid_sample``).

    Returns:
        ``[B, Q, n_heads * head_dim]``, heads concatenated.
    """
    if method not in _SAMPLERS:
        raise ValueError(f"Unknown deformable attention method {method!r}; choose one of {sorted(_SAMPLERS)}")
    sampler = _SAMPLERS[method]
    batch, _, n_heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    # Coordinates are mapped before the per-level split, as in the official code: grid_sample's CPU
    # backward rounds differently for a contiguous grid, so this keeps gradients bit-identical.
    coords = sampling_locations if sampler.to_coords is None else sampler.to_coords(sampling_locations)
    # Heads become batch entries: values [B*n_heads, head_dim, H_l*W_l], coords [B*n_heads, Q, P_l, 2].
    values = value.permute(0, 2, 3, 1).flatten(0, 1).split([h * w for h, w in spatial_shapes], dim=-1)
    coords = coords.permute(0, 2, 1, 3, 4).flatten(0, 1).split(num_points_list, dim=-2)
    samples = [sampler.sample(value_l.reshape(batch * n_heads, head_dim, h, w), coords_l)
               for (h, w), value_l, coords_l in zip(spatial_shapes, values, coords)]
    weights = attention_weights.permute(0, 2, 1, 3).reshape(batch * n_heads, 1, num_queries, sum(num_points_list))
    output = (torch.cat(samples, dim=-1) * weights).sum(-1).reshape(batch, n_heads * head_dim, num_queries)
    return output.permute(0, 2, 1)


class MSDeformableAttention(nn.Module):
    """Deformable cross-attention from queries to a multi-level memory, around reference boxes.

    A predicted offset ``o`` moves a point of level ``l`` to ``box_centre + o * box_size * offset_scale / P_l``,
    so a level's points cover the box whatever their number: initially point ``k`` (1-based) is
    ``k / P_l`` of the way from the centre to the box edge (with ``offset_scale`` 0.5). Parameter and
    buffer names follow the official module.

    Args:
        embed_dim: query and memory channels ``C``.
        num_heads: attention heads; must divide ``embed_dim``.
        num_levels: memory levels.
        num_points: points per head and level: an int, or one count per level.
        method: ``"default"`` (bilinear), ``"bilinear_gather"`` (the same without ``grid_sample``) or
            ``"discrete"`` (nearest pixel; the offsets are frozen, as in the official models, since
            rounding gives them no gradient).
        offset_scale: offsets are in units of ``offset_scale * box_size / P_l``.
        projections: the value and output projections of the original deformable attention; D-FINE
            drops both (the memory is attended as it is), which saves ``2 * C * (C + 1)`` parameters per
            layer.
    """

    def __init__(self, embed_dim=256, num_heads=8, num_levels=4, num_points=4, method="default", offset_scale=0.5,
                 projections=True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if method not in _SAMPLERS:
            raise ValueError(f"Unknown deformable attention method {method!r}; choose one of {sorted(_SAMPLERS)}")
        points = [num_points] * num_levels if isinstance(num_points, int) else [int(n) for n in num_points]
        if len(points) != num_levels:
            raise ValueError(f"num_points {points} must give one count per level of num_levels={num_levels}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points_list = points
        self.method = method
        self.offset_scale = offset_scale
        self.head_dim = embed_dim // num_heads
        point_scale = [1 / n for n in points for _ in range(n)]
        self.register_buffer("num_points_scale", torch.tensor(point_scale, dtype=torch.float32))
        total_points = num_heads * sum(points)
        self.sampling_offsets = nn.Linear(embed_dim, total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim) if projections else nn.Identity()
        self.output_proj = nn.Linear(embed_dim, embed_dim) if projections else nn.Identity()
        self._reset_parameters()
        if method == "discrete":
            self.sampling_offsets.requires_grad_(False)

    def _reset_parameters(self):
        # Offsets start input-independent: head h looks in direction 2*pi*h/H (scaled so that its
        # larger coordinate is 1), point k of a level k times as far.
        nn.init.constant_(self.sampling_offsets.weight, 0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.cat([torch.arange(1, n + 1) for n in self.num_points_list]).reshape(1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_((directions[:, None, :] * steps).flatten())
        # Uniform attention over all points at the start.
        nn.init.constant_(self.attention_weights.weight, 0)
        nn.init.constant_(self.attention_weights.bias, 0)
        for proj in (self.value_proj, self.output_proj):
            if isinstance(proj, nn.Linear):
                nn.init.xavier_uniform_(proj.weight)
                nn.init.constant_(proj.bias, 0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: Sequence[Sequence[int]], value_mask: torch.Tensor = None) -> torch.Tensor:
        """
        Args:
            query: ``[B, Q, C]``.
            reference_points: normalized cxcywh boxes ``[B, Q, 1, 4]`` shared by all levels (RT-DETR)
                or ``[B, Q, L, 4]`` one per level (DINO, scaled by each level's valid ratio); or
                normalized (x, y) points ``[B, Q, L, 2]`` (the Deformable-DETR encoder), around which
                offsets are in pixels of the level.
            value: ``[B, sum(H_l*W_l), C]``, levels flattened as ``deformable_attention_core`` expects.
            spatial_shapes: ``[(H_l, W_l)]``.
            value_mask: optional ``[B, sum(H_l*W_l)]``, True where the memory is valid.

        Returns:
            ``[B, Q, C]``.
        """
        dims, levels = reference_points.shape[-1], reference_points.shape[2]
        if dims not in (2, 4) or levels not in (1, self.num_levels) or (dims == 2 and levels != self.num_levels):
            raise ValueError(f"reference_points must be [B, Q, 1 or {self.num_levels}, 4] boxes or "
                             f"[B, Q, {self.num_levels}, 2] points, got {list(reference_points.shape)}")
        batch, num_queries = query.shape[:2]
        value = self.value_proj(value)
        if value_mask is not None:
            value = value * value_mask.to(value.dtype).unsqueeze(-1)
        value = value.reshape(batch, value.shape[1], self.num_heads, self.head_dim)
        total = sum(self.num_points_list)
        offsets = self.sampling_offsets(query).reshape(batch, num_queries, self.num_heads, total, 2)
        weights = self.attention_weights(query).reshape(batch, num_queries, self.num_heads, total).softmax(-1)
        if levels > 1:
            # One reference per sampling point: that of the point's level.
            point_level = torch.repeat_interleave(torch.arange(levels, device=query.device),
                                                  torch.tensor(self.num_points_list, device=query.device))
            reference_points = reference_points[:, :, point_level]
        reference_points = reference_points[:, :, None]
        if dims == 2:
            sizes = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
            locations = reference_points + offsets / torch.repeat_interleave(
                sizes, torch.tensor(self.num_points_list, device=query.device), dim=0)
        else:
            scale = self.num_points_scale.to(query.dtype).unsqueeze(-1)
            # Product order as in the official code, so results agree bit for bit.
            offsets = offsets * scale * reference_points[..., 2:] * self.offset_scale
            locations = reference_points[..., :2] + offsets
        output = deformable_attention_core(value, spatial_shapes, locations, weights, self.num_points_list, self.method)
        return self.output_proj(output)
