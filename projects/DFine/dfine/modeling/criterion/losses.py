"""Loss functions of the real-time DETR family, as pure functions of tensors.

Classification losses take dense per-query targets built from the matching:
``one_hot`` ``[B, Q, C]`` is 1 at (image, query, class of the matched ground truth) and 0 elsewhere,
``quality`` ``[B, Q]`` is the IoU of each matched query's box with its ground truth (0 for unmatched
queries, no gradient). Box losses take the matched pairs only, ``[N, 4]`` normalised cxcywh.

Every loss is a sum divided by ``num_boxes`` (a float or 0-dim tensor: the number of ground-truth
boxes per process, see :class:`RTDETRCriterion`), as in the official implementations.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as _elementwise_focal_loss

from ..layers.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["varifocal_loss", "focal_loss", "l1_box_loss", "giou_box_loss"]


def _sum_over_queries(elementwise: torch.Tensor, num_boxes) -> torch.Tensor:
    """Sum of a ``[B, Q, C]`` loss over every element, divided by ``num_boxes``.

    Written as mean over queries times Q, the official order of operations, so that results
    agree to the last bit.
    """
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


def giou_box_loss(boxes: torch.Tensor, gt_boxes: torch.Tensor, num_boxes) -> torch.Tensor:
    """``1 - GIoU`` of matched ``[N, 4]`` cxcywh boxes, summed over the pairs."""
    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes)))
    return (1 - giou).sum() / num_boxes
