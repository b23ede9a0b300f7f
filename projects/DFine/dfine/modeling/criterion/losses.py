"""Loss functions of the DETR family, as pure functions of tensors: classification (VFL, MAL, focal),
boxes (L1, GIoU) and edge distributions (FGL, and GO-LSD's DDF).

Classification losses take dense per-query targets built from the matching:
``one_hot`` ``[B, Q, C]`` is 1 at (image, query, class of the matched ground truth) and 0 elsewhere,
``quality`` ``[B, Q]`` is the IoU of each matched query's box with its ground truth (0 for unmatched
queries, no gradient). Box losses take the matched pairs only, ``[N, 4]`` normalised cxcywh.

Every loss is a sum divided by ``num_boxes`` (a float or 0-dim tensor: the number of ground-truth
boxes per process, see :class:`RTDETRCriterion`), as in the official implementations.
"""
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as _elementwise_focal_loss

from ..decoder.fdr import bbox2distance
from ..layers.box_ops import box_cxcywh_to_xyxy, elementwise_box_iou, generalized_box_iou

__all__ = ["varifocal_loss", "matchability_aware_loss", "focal_loss", "l1_box_loss", "giou_box_loss",
           "unimodal_distribution_focal_loss", "ddf_balance_weights", "fgl_and_ddf_losses"]

Scalar = Union[float, torch.Tensor]


def _sum_over_queries(elementwise: torch.Tensor, num_boxes) -> torch.Tensor:
    """Sum of a ``[B, Q, C]`` loss over every element, divided by ``num_boxes``.

    Written as mean over queries times Q, the official order of operations, so that results
    agree to the last bit. No query (DINO's denoising part of a batch without boxes) sums to 0.
    """
    if elementwise.shape[1] == 0:
        return elementwise.sum() / num_boxes
    return elementwise.mean(1).sum() * elementwise.shape[1] / num_boxes


def varifocal_loss(
    logits: torch.Tensor,
    one_hot: torch.Tensor,
    quality: torch.Tensor,
    num_boxes,
    alpha: float = 0.75,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Varifocal loss (Zhang et al., VarifocalNet, 2021), as used by RT-DETR and D-FINE.

    Binary cross-entropy of every class logit against the IoU-aware target ``quality * one_hot``.
    Positives are weighted by their target (so a matched query with IoU 0 contributes nothing);
    negatives get the focal weight ``alpha * p^gamma`` with ``p = sigmoid(logit)`` detached.

    Args:
        logits: ``[B, Q, C]``.
        one_hot: ``[B, Q, C]`` in the dtype of ``logits``.
        quality: ``[B, Q]`` in the dtype of ``logits``.
    """
    target_score = quality.unsqueeze(-1) * one_hot
    pred_score = logits.sigmoid().detach()
    weight = alpha * pred_score.pow(gamma) * (1 - one_hot) + target_score
    loss = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
    return _sum_over_queries(loss, num_boxes)


def matchability_aware_loss(
    logits: torch.Tensor,
    one_hot: torch.Tensor,
    quality: torch.Tensor,
    num_boxes,
    gamma: float = 1.5,
    alpha: Optional[float] = None,
) -> torch.Tensor:
    """Matchability-Aware Loss (DEIM, Huang et al., 2025), DEIM's replacement for VFL.

    The positive target is ``quality ** gamma`` (so low-IoU matches still get a small, non-zero
    target) and positives have weight 1 whatever their IoU; negatives keep the focal weight
    ``p^gamma`` (times ``alpha`` when given; no official config sets it, so their ``alpha`` of
    0.75 is not used by MAL).

    Args:
        logits: ``[B, Q, C]``.
        one_hot: ``[B, Q, C]`` in the dtype of ``logits``.
        quality: ``[B, Q]`` IoU of each matched query with its ground truth, 0 elsewhere.
    """
    target_score = (quality.unsqueeze(-1) * one_hot).pow(gamma)
    negative_weight = logits.sigmoid().detach().pow(gamma)
    if alpha is not None:
        negative_weight = alpha * negative_weight
    weight = negative_weight * (1 - one_hot) + one_hot
    loss = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")
    return _sum_over_queries(loss, num_boxes)


def focal_loss(
    logits: torch.Tensor, one_hot: torch.Tensor, num_boxes, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., 2017) of ``[B, Q, C]`` logits against a ``[B, Q, C]`` one-hot target."""
    return _sum_over_queries(_elementwise_focal_loss(logits, one_hot, alpha, gamma, reduction="none"), num_boxes)


def l1_box_loss(boxes: torch.Tensor, gt_boxes: torch.Tensor, num_boxes) -> torch.Tensor:
    """L1 distance of matched ``[N, 4]`` cxcywh boxes, summed over the four coordinates and the pairs."""
    return F.l1_loss(boxes, gt_boxes, reduction="none").sum() / num_boxes


def giou_box_loss(boxes: torch.Tensor, gt_boxes: torch.Tensor, num_boxes, eps: float = 0.0) -> torch.Tensor:
    """``1 - GIoU`` of matched ``[N, 4]`` cxcywh boxes, summed over the pairs (``eps``: see
    :func:`~dfine.modeling.layers.box_ops.generalized_box_iou`)."""
    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes), eps))
    return (1 - giou).sum() / num_boxes


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
