"""Fine-grained Distribution Refinement (FDR) and its losses, from D-FINE (Peng et al., 2024).

D-FINE predicts every box edge as a probability distribution over ``reg_max + 1`` bins instead of
a single offset. The bins sit at the non-uniform positions ``W(n)`` of :func:`weighting_function`;
the edge offset is the expectation ``sum_n P(n) W(n)`` (:func:`integral`), and
:func:`distance2bbox` moves the edges of a reference box by these offsets.

Training adds two losses (:func:`fgl_and_ddf_losses`):

* FGL (Fine-Grained Localization): the ground-truth offset of each edge, which falls between two
  neighbouring bins, becomes a two-bin target (:func:`bbox2distance`), learned with
  :func:`unimodal_distribution_focal_loss`.
* DDF (Decoupled Distillation Focal): GO-LSD self-distillation of every decoder layer's
  distributions towards the last layer's.

Conventions. Boxes are normalised ``cxcywh`` unless named ``xyxy``. An edge offset ``d`` of a
reference box ``(cx, cy, w, h)`` moves its left, top, right and bottom edge (in this order)
outwards by ``d * w / reg_scale`` (left, right) or ``d * h / reg_scale`` (top, bottom), so ``d = 0``
gives back the reference box. ``R = reg_max``; bins are indexed ``0..R``. ``up`` and ``reg_scale``
may be Python numbers or one-element tensors (the official decoder keeps them as frozen
``nn.Parameter`` of shape ``[1]``, which checkpoints carry).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, elementwise_box_iou
from ..layers.common import in_float32

__all__ = [
    "weighting_function",
    "integral",
    "distance2bbox",
    "bbox2distance",
    "unimodal_distribution_focal_loss",
    "union_matched_indices",
    "ddf_balance_weights",
    "fgl_and_ddf_losses",
]

Scalar = Union[float, torch.Tensor]
IndexPairs = Sequence[Tuple[torch.Tensor, torch.Tensor]]


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


@torch.no_grad()
def bbox2distance(
    points: torch.Tensor,
    bbox: torch.Tensor,
    reg_max: int,
    reg_scale: Scalar,
    up: Scalar,
    eps: float = 0.1,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FGL targets: the edge offsets from reference boxes to ground-truth boxes, as bin positions.

    Each offset ``v`` falls between two neighbouring bins ``W(k) <= v < W(k + 1)`` and becomes the
    pair of bins ``k, k + 1`` with linear-interpolation weights. Offsets below ``W(0)`` go wholly to
    bin 0; offsets at or above ``W(R)`` go wholly to bin ``R`` (target ``R - 0.1``, whose floor is
    ``R - 1``, with ``weight_right = 1``).

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
    target = torch.where(above, torch.full_like(target, reg_max - 0.1), target)
    return target.clamp(min=0, max=reg_max - eps), weight_right, weight_left


def unimodal_distribution_focal_loss(
    pred: torch.Tensor,
    label: torch.Tensor,
    weight_right: torch.Tensor,
    weight_left: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    reduction: str = "sum",
    avg_factor: Optional[Scalar] = None,
) -> torch.Tensor:
    """Cross-entropy towards the two bins around each target (a DFL, Li et al. 2020, with the
    interpolation weights of :func:`bbox2distance`).

    ``loss_i = CE(pred_i, k_i) * weight_left_i + CE(pred_i, k_i + 1) * weight_right_i`` with
    ``k_i = floor(label_i)``, times ``weight_i`` when given.

    Args:
        pred: ``[M, R + 1]`` bin logits.
        label, weight_right, weight_left: ``[M]``, from :func:`bbox2distance`.
        weight: ``[M]`` per-row weight (FGL: the IoU of the matched box), or ``None``.
        reduction: ``"sum"``, ``"mean"`` or ``"none"``; ignored when ``avg_factor`` is given.
        avg_factor: when given, the result is ``sum / avg_factor``.
    """
    left = label.long()
    loss = F.cross_entropy(pred, left, reduction="none") * weight_left.reshape(-1) + F.cross_entropy(
        pred, left + 1, reduction="none"
    ) * weight_right.reshape(-1)
    if weight is not None:
        loss = loss * weight
    if avg_factor is not None:
        return loss.sum() / avg_factor
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def union_matched_indices(
    indices: IndexPairs, indices_aux_list: Sequence[IndexPairs]
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """GO-LSD's union set: one (query, ground truth) matching per image gathered over all layers.

    Per image, the ``(query, gt)`` pairs of ``indices`` and of every entry of ``indices_aux_list``
    are pooled and counted. Pairs are ranked by count, most frequent first; each query keeps the
    ground truth of its best-ranked pair, and the queries come out in the order of their
    best-ranked pair, as in the official ``_get_go_indices``. Ties are ranked by the same unstable
    ``argsort`` as officially: a query matched to two ground truths equally often gets the one the
    official code picks (with the same torch; the matcher's indices are on the CPU).

    Args:
        indices: per image ``(query_idx, gt_idx)`` int64 tensors (the final layer's matching).
        indices_aux_list: more matchings of the same form (auxiliary, first-layer, encoder).

    Returns:
        per image ``(query_idx, gt_idx)`` int64 tensors; every query appears once.
    """
    results = []
    for image, (queries, gts) in enumerate(indices):
        queries = torch.cat([queries] + [aux[image][0] for aux in indices_aux_list])
        gts = torch.cat([gts] + [aux[image][1] for aux in indices_aux_list])
        if queries.numel() == 0:
            results.append((queries.long(), gts.long()))
            continue
        pairs, counts = torch.unique(torch.stack([queries, gts], 1), dim=0, return_counts=True)
        ranked = pairs[torch.argsort(counts, descending=True)]
        # Keep the best-ranked pair of each query: the first of its run after a stable sort by query.
        by_query, position = torch.sort(ranked[:, 0], stable=True)
        first = torch.ones_like(by_query, dtype=torch.bool)
        first[1:] = by_query[1:] != by_query[:-1]
        kept = ranked[position[first].sort().values]
        results.append((kept[:, 0].long(), kept[:, 1].long()))
    return results


def ddf_balance_weights(
    batch_idx: torch.Tensor, query_idx: torch.Tensor, batch_size: int, num_queries: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The weights of the matched and unmatched parts of the DDF loss.

    ``sqrt(count * 8 / batch_size)`` for the edges of matched and of unmatched queries: the mix
    of the two means follows the square root of their sizes, scaled to a batch of 8 so that it
    does not depend on the per-process batch size.

    Args:
        batch_idx, query_idx: ``[N]`` the matched queries (duplicates count once).
        batch_size, num_queries: ``B`` and ``Q`` of the outputs.

    Returns:
        ``(num_pos, num_neg)`` 0-dim float tensors.
    """
    matched = _matched_edge_mask(batch_idx, query_idx, batch_size, num_queries)
    batch_scale = 8 / batch_size
    return (matched.sum() * batch_scale) ** 0.5, ((~matched).sum() * batch_scale) ** 0.5


def _matched_edge_mask(batch_idx, query_idx, batch_size: int, num_queries: int) -> torch.Tensor:
    """``[B * Q * 4]`` bool, True on the four edges of every matched query."""
    matched = torch.zeros(batch_size, num_queries, dtype=torch.bool, device=batch_idx.device)
    matched[batch_idx, query_idx] = True
    return matched.unsqueeze(-1).expand(-1, -1, 4).reshape(-1)


def fgl_and_ddf_losses(
    pred_corners: torch.Tensor,
    pred_boxes: torch.Tensor,
    ref_points: torch.Tensor,
    batch_idx: torch.Tensor,
    query_idx: torch.Tensor,
    target_boxes: torch.Tensor,
    num_boxes: Scalar,
    reg_scale: Scalar,
    up: Scalar,
    teacher_corners: Optional[torch.Tensor] = None,
    teacher_logits: Optional[torch.Tensor] = None,
    ddf_weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    temperature: float = 5.0,
) -> Dict[str, torch.Tensor]:
    """The FGL and DDF losses of one decoder output (the official ``loss_local``), unweighted.

    FGL, over the ``N`` matched queries::

        sum_{query, edge} UDFL(pred_corners, bbox2distance(ref_points, gt)) * IoU(pred_box, gt) / num_boxes

    DDF, over all ``B * Q`` queries, when ``teacher_corners`` is given::

        KL_e = w_e * T^2 * KL(softmax(teacher_e / T) || softmax(pred_e / T))   for every edge e
        loss_ddf = (mean_{matched e} KL_e * num_pos + mean_{unmatched e} KL_e * num_neg) / (num_pos + num_neg)

    where ``w`` is the IoU of the query's box with its ground truth for matched queries and the
    teacher's highest class probability for the others, and ``(num_pos, num_neg)`` is
    ``ddf_weights`` (default: :func:`ddf_balance_weights` of this matching). A mean over an empty
    set is 0. When the teacher is the output itself (the last layer), ``loss_ddf`` is an exact 0
    that keeps the graph.

    Every weight and target is computed without gradient; only ``pred_corners`` gets one.

    Differences from the official code, which give the same numbers:

    * the official criterion computes the FGL targets once per call and reuses them for every
      layer (right because all layers share ``ref_points`` and, with the union set, the
      matching); here they are recomputed from the arguments each time;
    * the official criterion stores ``num_pos``/``num_neg`` on itself while it processes the
      non-denoising outputs and reuses them for the denoising ones. To reproduce that, pass
      ``ddf_weights=ddf_balance_weights(...)`` of the non-denoising matching when computing the
      losses of denoising outputs.

    Args:
        pred_corners: ``[B, Q, 4 * (R + 1)]`` bin logits of this output.
        pred_boxes: ``[B, Q, 4]`` boxes of this output, cxcywh.
        ref_points: ``[B, Q, 4]`` reference boxes the corners refine, cxcywh.
        batch_idx, query_idx: ``[N]`` int64, the matched queries.
        target_boxes: ``[N, 4]`` their ground-truth boxes, cxcywh.
        num_boxes: FGL normaliser (the official criterion passes the size of the union set
            for matching outputs and ``num_gt * dn_num_group`` for denoising ones).
        reg_scale, up: as in :func:`weighting_function`.
        teacher_corners: ``[B, Q, 4 * (R + 1)]`` corners of the teacher (last) layer; no DDF when
            ``None``.
        teacher_logits: ``[B, Q, C]`` class logits of the teacher layer; needed with
            ``teacher_corners``.
        ddf_weights: ``(num_pos, num_neg)``, see above.
        temperature: distillation temperature ``T`` (5 in D-FINE).

    Returns:
        ``{"loss_fgl": ...}``, plus ``"loss_ddf"`` when ``teacher_corners`` is given.
    """
    num_bins = pred_corners.shape[-1] // 4
    reg_max = num_bins - 1
    with torch.no_grad():
        ious = elementwise_box_iou(
            box_cxcywh_to_xyxy(pred_boxes[batch_idx, query_idx]), box_cxcywh_to_xyxy(target_boxes)
        )
        target, weight_right, weight_left = bbox2distance(
            ref_points[batch_idx, query_idx], box_cxcywh_to_xyxy(target_boxes), reg_max, reg_scale, up
        )
    losses = {
        "loss_fgl": unimodal_distribution_focal_loss(
            pred_corners[batch_idx, query_idx].reshape(-1, num_bins),
            target,
            weight_right,
            weight_left,
            ious.repeat_interleave(4),
            avg_factor=num_boxes,
        )
    }
    if teacher_corners is None:
        return losses

    student = pred_corners.reshape(-1, num_bins)
    teacher = teacher_corners.reshape(-1, num_bins).detach()
    if torch.equal(student, teacher):
        losses["loss_ddf"] = student.sum() * 0
        return losses
    batch_size, num_queries = pred_corners.shape[:2]
    with torch.no_grad():
        confidence = teacher_logits.sigmoid().amax(-1)
        confidence[batch_idx, query_idx] = ious.to(confidence.dtype)
        edge_weight = confidence.repeat_interleave(4, dim=-1).reshape(-1)
        matched = _matched_edge_mask(batch_idx, query_idx, batch_size, num_queries)
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1), reduction="none"
    ).sum(-1)
    per_edge = edge_weight * (temperature**2) * kl
    if ddf_weights is None:
        ddf_weights = ddf_balance_weights(batch_idx, query_idx, batch_size, num_queries)
    num_pos, num_neg = ddf_weights
    # Masked sums over counts clamped to 1: an empty part contributes 0 without a host sync.
    matched_mean = torch.where(matched, per_edge, 0).sum() / matched.sum().clamp(min=1)
    unmatched_mean = torch.where(matched, 0, per_edge).sum() / (~matched).sum().clamp(min=1)
    losses["loss_ddf"] = (matched_mean * num_pos + unmatched_mean * num_neg) / (num_pos + num_neg)
    return losses
