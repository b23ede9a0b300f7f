"""Fine-grained Distribution Refinement (FDR), from D-FINE (Peng et al., 2024): the geometry of edge
distributions. Their losses (FGL, and DDF for GO-LSD) are in :mod:`dfine.modeling.criterion.losses`.

D-FINE predicts every box edge as a probability distribution over ``reg_max + 1`` bins instead of
a single offset. The bins sit at the non-uniform positions ``W(n)`` of :func:`weighting_function`;
the edge offset is the expectation ``sum_n P(n) W(n)`` (:func:`integral`), and
:func:`distance2bbox` moves the edges of a reference box by these offsets.

The FGL loss learns the ground-truth offset of each edge, which falls between two neighbouring bins,
as a two-bin target (:func:`bbox2distance`).

Conventions. Boxes are normalised ``cxcywh`` unless named ``xyxy``. An edge offset ``d`` of a
reference box ``(cx, cy, w, h)`` moves its left, top, right and bottom edge (in this order)
outwards by ``d * w / reg_scale`` (left, right) or ``d * h / reg_scale`` (top, bottom), so ``d = 0``
gives back the reference box. ``R = reg_max``; bins are indexed ``0..R``. ``up`` and ``reg_scale``
may be Python numbers or one-element tensors (the official decoder keeps them as frozen
``nn.Parameter`` of shape ``[1]``, which checkpoints carry).
"""
from typing import Tuple, Union

import torch
import torch.nn.functional as F

from ..layers.box_ops import box_xyxy_to_cxcywh
from ..layers.common import in_float32

__all__ = ["weighting_function", "integral", "distance2bbox", "bbox2distance"]

Scalar = Union[float, torch.Tensor]


def weighting_function(reg_max: int, up: Scalar, reg_scale: Scalar) -> torch.Tensor:
    """The bin positions ``W(n)``, ``n = 0..reg_max``, a ``[reg_max + 1]`` tensor.

    With ``a = |up| * |reg_scale|`` and ``step = (a + 1) ** (2 / (reg_max - 2))``::

        W = [-2a, -(step^(R/2-1) - 1), ..., -(step - 1), 0, step - 1, ..., step^(R/2-1) - 1, 2a]

    The inner bins span ``[-a, a]`` and are densest around 0 (small corrections are the common
    case); the two end bins at ``±2a`` catch large ones. ``W`` is odd-symmetric and increasing.

    The values are computed in tensor arithmetic in the dtype and on the device of ``up`` (the
    default dtype on CPU when ``up`` is a number), as the official training-mode code does. The
    official ``deploy=True`` variant computes the same formula in Python double precision and
    differs by at most ~2e-6 for ``reg_max = 32``; only the training-mode variant exists here, so
    that training, evaluation and export use the same numbers.

    Args:
        reg_max: ``R``, even and at least 4.
        up: half the largest offset in units of ``reg_scale`` (0.5 in every official config).
        reg_scale: curvature; larger values flatten ``W`` near 0 and steepen it at the ends.
    """
    if reg_max < 4 or reg_max % 2:
        raise ValueError(f"reg_max must be an even number >= 4, got {reg_max}")
    up = torch.as_tensor(up)
    if not up.is_floating_point():
        up = up.to(torch.get_default_dtype())
    reg_scale = torch.as_tensor(reg_scale, dtype=up.dtype, device=up.device)
    a = up.abs().reshape(()) * reg_scale.abs().reshape(())
    step = (a + 1) ** (2 / (reg_max - 2))
    exponents = torch.arange(1, reg_max // 2, dtype=up.dtype, device=up.device)
    right = step**exponents - 1
    ends = (2 * a).reshape(1)
    return torch.cat([-ends, -right.flip(0), torch.zeros_like(ends), right, ends])


@in_float32
def integral(corner_logits: torch.Tensor, project: torch.Tensor) -> torch.Tensor:
    """Expected edge offsets of per-edge bin logits.

    Args:
        corner_logits: ``[..., 4 * (R + 1)]``, edges in (l, t, r, b) order, bins innermost.
        project: ``[R + 1]`` bin positions, :func:`weighting_function`.

    Returns:
        ``[..., 4]`` offsets ``sum_n softmax(logits)_n * W(n)`` per edge.
    """
    probs = F.softmax(corner_logits.reshape(*corner_logits.shape[:-1], 4, project.numel()), dim=-1)
    return F.linear(probs, project.to(device=probs.device, dtype=probs.dtype))


@in_float32
def distance2bbox(points: torch.Tensor, distance: torch.Tensor, reg_scale: Scalar) -> torch.Tensor:
    """Move the edges of reference boxes by edge offsets.

    Args:
        points: ``[..., 4]`` reference boxes, cxcywh.
        distance: ``[..., 4]`` offsets (l, t, r, b), positive outwards, in units of
            ``w / |reg_scale|`` and ``h / |reg_scale|``.

    Returns:
        ``[..., 4]`` boxes, cxcywh.
    """
    reg_scale = abs(reg_scale)
    cx, cy, w, h = points.unbind(-1)
    # Written as (half box + offset) * unit, the official order of operations, to agree bit for bit.
    x1 = cx - (0.5 * reg_scale + distance[..., 0]) * (w / reg_scale)
    y1 = cy - (0.5 * reg_scale + distance[..., 1]) * (h / reg_scale)
    x2 = cx + (0.5 * reg_scale + distance[..., 2]) * (w / reg_scale)
    y2 = cy + (0.5 * reg_scale + distance[..., 3]) * (h / reg_scale)
    return box_xyxy_to_cxcywh(torch.stack([x1, y1, x2, y2], -1))


# FGL targets stay this far below the last bin R, so that the left bin floor(target) is at most
# R - 1 and its right neighbour R exists (official ``translate_gt`` and ``bbox2distance``, D-FINE
# src/zoo/dfine/dfine_utils.py: ``reg_max - 0.1`` and ``eps=0.1``).
LAST_BIN_MARGIN = 0.1


@torch.no_grad()
def bbox2distance(
    points: torch.Tensor,
    bbox: torch.Tensor,
    reg_max: int,
    reg_scale: Scalar,
    up: Scalar,
    eps: float = LAST_BIN_MARGIN,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FGL targets: the edge offsets from reference boxes to ground-truth boxes, as bin positions.

    Each offset ``v`` falls between two neighbouring bins ``W(k) <= v < W(k + 1)`` and becomes the
    pair of bins ``k, k + 1`` with linear-interpolation weights. Offsets below ``W(0)`` go wholly to
    bin 0; offsets at or above ``W(R)`` go wholly to bin ``R`` (target ``R -``
    :data:`LAST_BIN_MARGIN`, whose floor is ``R - 1``, with ``weight_right = 1``).

    Args:
        points: ``[N, 4]`` reference boxes, cxcywh.
        bbox: ``[N, 4]`` ground-truth boxes, **xyxy**.
        reg_max, reg_scale, up: as in :func:`weighting_function`.
        eps: the targets are clamped to ``[0, R - eps]`` so that ``floor(target) + 1 <= R``.

    Returns:
        ``(target, weight_right, weight_left)``, each ``[4 * N]`` in (box, edge l/t/r/b) order,
        without gradient. ``target`` is a float whose floor is the left bin ``k``;
        ``weight_right`` goes to bin ``k + 1`` and ``weight_left = 1 - weight_right`` to bin ``k``.
    """
    reg_scale = abs(reg_scale)
    cx, cy, w, h = points.unbind(-1)
    x1, y1, x2, y2 = bbox.unbind(-1)
    span = torch.stack([cx - x1, cy - y1, x2 - cx, y2 - cy], -1)
    unit = torch.stack([w, h, w, h], -1) / reg_scale + 1e-16  # 1e-16 keeps a zero-size box finite
    offsets = (span / unit - 0.5 * reg_scale).reshape(-1)

    bins = weighting_function(reg_max, up, reg_scale)
    left_bin = (bins[None, :] <= offsets[:, None]).sum(1) - 1
    below, above = left_bin < 0, left_bin >= reg_max
    inner = left_bin.clamp(0, reg_max - 1)
    to_left = (offsets - bins[inner]).abs()
    to_right = (bins[inner + 1] - offsets).abs()
    weight_right = to_left / (to_left + to_right)
    weight_right = torch.where(below, torch.zeros_like(weight_right), weight_right)
    weight_right = torch.where(above, torch.ones_like(weight_right), weight_right)
    weight_left = 1.0 - weight_right

    target = left_bin.to(weight_right.dtype)
    target = torch.where(below, torch.zeros_like(target), target)
    target = torch.where(above, torch.full_like(target, reg_max - LAST_BIN_MARGIN), target)
    return target.clamp(min=0, max=reg_max - eps), weight_right, weight_left
