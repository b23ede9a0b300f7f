"""Loss terms: each one loss of a set of predictions, as a module that declares what it reads.

A term gets the :class:`~dfine.modeling.decoder.outputs.Predictions` of one decoder output (a layer,
the proposals, the denoising queries), the ground truth of the batch, the matched (prediction, ground
truth) pairs with their normaliser, and a :class:`LossContext`; it returns its unweighted losses keyed
by name (``loss_vfl``, ...). The criterion (:class:`~.criterion.SetCriterion`) chooses the pairs, adds
the output's key suffix and applies the weights of the config's ``weight_dict``.

* :class:`VarifocalLoss` (RT-DETR, D-FINE), :class:`MatchabilityAwareLoss` (DEIM) and
  :class:`FocalLoss` (DINO, DN-DETR, Deformable-DETR) read the logits (and the boxes for their IoU
  targets);
* :class:`BoxLoss` reads the boxes (L1 + GIoU);
* :class:`DistributionLoss` reads the edge distributions (``corners``): FGL, and with GO-LSD the DDF
  distillation towards the branch's last layer. Predictions without distributions get no such loss.

``supervises_boxes``: the term trains the boxes, so with GO-LSD it uses the union of all matchings.
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..decoder.outputs import DistributionGeometry, Predictions
from ..layers.box_ops import box_cxcywh_to_xyxy, elementwise_box_iou
from .losses import fgl_and_ddf_losses, focal_loss, giou_box_loss, l1_box_loss, matchability_aware_loss, varifocal_loss

__all__ = ["BatchTargets", "MatchedPairs", "LossContext", "LossTerm", "VarifocalLoss", "MatchabilityAwareLoss",
           "FocalLoss", "BoxLoss", "DistributionLoss"]


class BatchTargets(NamedTuple):
    """The ground truth of a batch, concatenated over images."""

    labels: torch.Tensor  # [G] int64 class ids in [0, num_classes)
    boxes: torch.Tensor  # [G, 4] normalised cxcywh
    sizes: List[int]  # ground-truth count per image
    num_classes: int


class MatchedPairs(NamedTuple):
    """(prediction, ground truth) pairs of one output, flattened over the batch, on the output's device.

    Pair k supervises query ``query_idx[k]`` of image ``batch_idx[k]`` with ground truth
    ``gt_idx[k]``, an index into the concatenated :class:`BatchTargets`.
    """

    batch_idx: torch.Tensor  # [N] int64
    query_idx: torch.Tensor  # [N] int64
    gt_idx: torch.Tensor  # [N] int64


class LossContext(NamedTuple):
    """What a term may need beyond one output's predictions and pairs.

    Attributes:
        geometry: how edge distributions decode into boxes (None without distributions).
        teacher: the GO-LSD teacher of this output (its branch's last layer), or None: no distillation.
        ddf_weights: ``(num_pos, num_neg)`` balance of the DDF loss (the union set's), or None.
    """

    geometry: Optional[DistributionGeometry] = None
    teacher: Optional[Predictions] = None
    ddf_weights: Optional[Tuple[torch.Tensor, torch.Tensor]] = None


class LossTerm(nn.Module):
    """Base class: ``forward(predictions, targets, pairs, num_boxes, context) -> {key: loss}``.
    ``name`` is how a criterion's ``losses`` selects the term (the official loss names); ``keys``
    are the loss keys it may return; ``kind`` is the group the training log sums them into."""

    name = ""
    keys = ()
    kind = ""
    supervises_boxes = False

    def applies_to(self, predictions: Predictions) -> bool:
        """Whether ``predictions`` carry what this term reads."""
        return True


def matched_boxes(predictions: Predictions, targets: BatchTargets, pairs: MatchedPairs):
    """``[N, 4]`` predicted and ground-truth cxcywh boxes of the matched pairs."""
    return predictions.boxes[pairs.batch_idx, pairs.query_idx], targets.boxes[pairs.gt_idx]


def quality_targets(predictions: Predictions, targets: BatchTargets, pairs: MatchedPairs) -> torch.Tensor:
    """``[B, Q]`` in the dtype of the logits: IoU of each matched query's box with its ground truth
    (0 for unmatched queries), detached: the classification loss must not move the boxes."""
    boxes, gt_boxes = matched_boxes(predictions, targets, pairs)
    ious = elementwise_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes)).detach()
    quality = predictions.logits.new_zeros(predictions.logits.shape[:2])
    quality[pairs.batch_idx, pairs.query_idx] = ious.to(quality.dtype)
    return quality


def one_hot_targets(logits: torch.Tensor, targets: BatchTargets, pairs: MatchedPairs) -> torch.Tensor:
    """``[B, Q, K]`` in the dtype of ``logits``: 1 at (image, query, class of its matched ground truth)."""
    if logits.shape[-1] != targets.num_classes:
        raise ValueError(f"The logits have {logits.shape[-1]} classes, the criterion expects {targets.num_classes}")
    one_hot = torch.zeros_like(logits)
    one_hot[pairs.batch_idx, pairs.query_idx, targets.labels[pairs.gt_idx]] = 1
    return one_hot


class VarifocalLoss(LossTerm):
    """``loss_vfl``: :func:`~.losses.varifocal_loss` with IoU targets (RT-DETR, D-FINE)."""

    name = "vfl"
    kind = "classification"
    keys = ("loss_vfl",)

    def __init__(self, alpha: float = 0.75, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, predictions, targets, pairs, num_boxes, context):
        logits = predictions.logits
        one_hot, quality = one_hot_targets(logits, targets, pairs), quality_targets(predictions, targets, pairs)
        return {"loss_vfl": varifocal_loss(logits, one_hot, quality, num_boxes, self.alpha, self.gamma)}


class MatchabilityAwareLoss(LossTerm):
    """``loss_mal``: :func:`~.losses.matchability_aware_loss` (DEIM). ``alpha`` weighs the negatives
    when given (no official config sets it)."""

    name = "mal"
    kind = "classification"
    keys = ("loss_mal",)

    def __init__(self, gamma: float = 1.5, alpha: Optional[float] = None):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, predictions, targets, pairs, num_boxes, context):
        logits = predictions.logits
        one_hot, quality = one_hot_targets(logits, targets, pairs), quality_targets(predictions, targets, pairs)
        return {"loss_mal": matchability_aware_loss(logits, one_hot, quality, num_boxes, self.gamma, self.alpha)}


class FocalLoss(LossTerm):
    """``loss_focal``: sigmoid focal loss against the matched classes (:func:`~.losses.focal_loss`)."""

    name = "focal"
    kind = "classification"
    keys = ("loss_focal",)

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, predictions, targets, pairs, num_boxes, context):
        one_hot = one_hot_targets(predictions.logits, targets, pairs)
        return {"loss_focal": focal_loss(predictions.logits, one_hot, num_boxes, self.alpha, self.gamma)}


class BoxLoss(LossTerm):
    """``loss_bbox`` (L1 of cxcywh) and ``loss_giou`` (1 - GIoU) of the matched boxes; ``giou_eps`` is
    the GIoU's denominator epsilon (DETR and DINO: 1e-6; the RT-DETR family: none)."""

    name = "boxes"
    kind = "boxes"
    keys = ("loss_bbox", "loss_giou")

    supervises_boxes = True

    def __init__(self, giou_eps: float = 0.0):
        super().__init__()
        self.giou_eps = giou_eps

    def forward(self, predictions, targets, pairs, num_boxes, context):
        boxes, gt_boxes = matched_boxes(predictions, targets, pairs)
        return {
            "loss_bbox": l1_box_loss(boxes, gt_boxes, num_boxes),
            "loss_giou": giou_box_loss(boxes, gt_boxes, num_boxes, self.giou_eps),
        }


class DistributionLoss(LossTerm):
    """``loss_fgl`` (Fine-Grained Localization) of the matched edge distributions and, when the context
    names a GO-LSD teacher, ``loss_ddf`` (Decoupled Distillation Focal): :func:`~.losses.fgl_and_ddf_losses`.

    Args:
        temperature: the distillation temperature ``T`` (5, fixed in the official D-FINE code).
    """

    name = "local"
    kind = "distribution"
    keys = ("loss_fgl", "loss_ddf")

    supervises_boxes = True

    def __init__(self, temperature: float = 5.0):
        super().__init__()
        self.temperature = temperature

    def applies_to(self, predictions: Predictions) -> bool:
        return predictions.corners is not None

    def forward(self, predictions, targets, pairs, num_boxes, context):
        teacher = context.teacher
        geometry = context.geometry
        return fgl_and_ddf_losses(
            predictions.corners, predictions.boxes, predictions.reference, pairs.batch_idx, pairs.query_idx,
            targets.boxes[pairs.gt_idx], num_boxes, geometry.reg_scale, geometry.up,
            teacher_corners=None if teacher is None else teacher.corners,
            teacher_logits=None if teacher is None else teacher.logits,
            ddf_weights=context.ddf_weights, temperature=self.temperature,
        )

