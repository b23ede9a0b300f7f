"""Set criterion of the real-time DETR family: which output is supervised with which pairs."""
import itertools
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..layers.box_ops import box_cxcywh_to_xyxy, elementwise_box_iou
from .losses import focal_loss, giou_box_loss, l1_box_loss, matchability_aware_loss, varifocal_loss

__all__ = ["RTDETRCriterion"]


class _BatchTargets(NamedTuple):
    """The ground truth of a batch, concatenated over images."""

    labels: torch.Tensor  # [G] int64 class ids in [0, num_classes)
    boxes: torch.Tensor  # [G, 4] normalised cxcywh
    sizes: List[int]  # ground-truth count per image
    num_classes: int


class _MatchedPairs(NamedTuple):
    """(prediction, ground truth) pairs of one output, flattened over the batch, on the output's device.

    Pair k supervises query ``query_idx[k]`` of image ``batch_idx[k]`` with ground truth
    ``gt_idx[k]``, an index into the concatenated :class:`_BatchTargets`.
    """

    batch_idx: torch.Tensor  # [N] int64
    query_idx: torch.Tensor  # [N] int64
    gt_idx: torch.Tensor  # [N] int64


def _hungarian_pairs(indices, sizes: List[int], device: torch.device) -> _MatchedPairs:
    """Pairs from the matcher's per-image ``(query_idx, gt_idx)`` CPU tensors."""
    offsets = [0, *itertools.accumulate(sizes)]
    batch_idx = torch.cat([torch.full_like(query_idx, i) for i, (query_idx, _) in enumerate(indices)])
    query_idx = torch.cat([query_idx for query_idx, _ in indices])
    gt_idx = torch.cat([gt_idx + offset for (_, gt_idx), offset in zip(indices, offsets)])
    return _MatchedPairs(batch_idx.to(device), query_idx.to(device), gt_idx.to(device))


def _denoising_pairs(dn_meta: Dict, sizes: List[int]) -> _MatchedPairs:
    """Pairs of the contrastive-denoising queries (built on the device, no host synchronisation).

    Denoising group g of image i holds one positive query per ground truth, in ground-truth order;
    ``dn_meta["dn_positive_idx"][i]`` lists these queries group after group, so they pair with
    ``arange(G_i)`` repeated ``dn_num_group`` times.
    """
    positive_idx, num_groups = dn_meta["dn_positive_idx"], dn_meta["dn_num_group"]
    batch_idx, gt_idx = [], []
    offset = 0
    for i, (num_gt, queries) in enumerate(zip(sizes, positive_idx)):
        if len(queries) != num_gt * num_groups:
            raise ValueError(
                f"dn_positive_idx[{i}] has {len(queries)} queries, expected {num_gt} ground truths "
                f"x {num_groups} denoising groups"
            )
        batch_idx.append(torch.full_like(queries, i))
        gt_idx.append(torch.arange(offset, offset + num_gt, device=queries.device).repeat(num_groups))
        offset += num_gt
    return _MatchedPairs(torch.cat(batch_idx), torch.cat(list(positive_idx)), torch.cat(gt_idx))


class RTDETRCriterion(nn.Module):
    """Losses of RT-DETRv2: a Hungarian match per output, then classification and box losses.

    Supervised outputs and their pairs / normaliser (official RT-DETRv2):

    * the last decoder layer (keys ``loss_*``) and every ``aux_outputs[i]`` (``loss_*_aux_{i}``):
      their own Hungarian match, ``num_boxes``;
    * every ``dn_aux_outputs[i]`` (``loss_*_dn_{i}``): the denoising positives of ``dn_meta``,
      ``num_boxes * dn_num_group``;
    * every ``enc_aux_outputs[i]`` (``loss_*_enc_{i}``): its own Hungarian match, ``num_boxes``; with
      ``enc_meta["class_agnostic"]`` every ground truth counts as class 0.

    ``num_boxes`` is the number of ground-truth boxes averaged over processes, at least 1. It stays a
    tensor on the device: the host waits for the device only where the matcher hands its costs to
    scipy and its indices come back.

    The loss terms are selected by name in ``losses``; the term ``name`` is the method
    ``_loss_{name}(output, targets, pairs, num_boxes)`` returning unweighted losses keyed as in the
    official code, which ``weight_dict`` weights. Every process returns the same keys whatever its
    ground truth (losses are then 0 but part of the graph), so distributed training cannot hang.
    """

    def __init__(
        self,
        matcher: nn.Module,
        weight_dict: Dict[str, float] = {"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2},  # noqa: B006 (never mutated)
        losses: Sequence[str] = ("vfl", "boxes"),
        alpha: float = 0.75,
        gamma: float = 2.0,
        num_classes: int = 80,
        mal_alpha: Optional[float] = None,
        mal_gamma: Optional[float] = None,
    ):
        """
        Args:
            matcher: returns per-image ``(query_idx, gt_idx)`` pairs, see :class:`HungarianMatcher`.
            weight_dict: weight of every loss key the selected terms produce.
            losses: loss terms, among ``"vfl"`` (loss_vfl), ``"mal"`` (loss_mal, DEIM), ``"focal"``
                (loss_focal) and ``"boxes"`` (loss_bbox, loss_giou).
            alpha, gamma: focal parameters of the classification loss (MAL uses only ``gamma``,
                1.5 in DEIM).
            mal_alpha: optional weight of MAL's negatives (None in every official config).
            mal_gamma: MAL's gamma when it differs from ``gamma`` (the official criterion has one
                ``gamma`` for every term; a separate one lets a config switch between MAL at 1.5
                and VFL at 2.0 by changing ``losses`` alone).
            num_classes: number of classes K of ``pred_logits`` (no background slot).
        """
        super().__init__()
        unknown = [name for name in losses if not hasattr(self, f"_loss_{name}")]
        if unknown:
            raise ValueError(f"Unknown loss terms {unknown}")
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.losses = tuple(losses)
        self.alpha = alpha
        self.gamma = gamma
        self.num_classes = num_classes
        self.mal_alpha = mal_alpha
        self.mal_gamma = gamma if mal_gamma is None else mal_gamma

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: the decoder's training output: ``pred_logits`` ``[B, Q, K]`` and ``pred_boxes``
                ``[B, Q, 4]`` (normalised cxcywh), optional lists ``aux_outputs``,
                ``enc_aux_outputs``, ``dn_aux_outputs`` of dicts with the same two keys, ``dn_meta``
                (``dn_positive_idx``: B int64 tensors, ``dn_num_group``) when ``dn_aux_outputs``
                is present, and optional ``enc_meta`` (``class_agnostic``).
            targets: B dicts with ``labels`` ``[G_i]`` int64 and ``boxes`` ``[G_i, 4]`` (normalised
                cxcywh), on the device of the outputs.

        Returns:
            Weighted losses, ``{"loss_vfl": ..., "loss_bbox_aux_0": ..., "loss_giou_dn_5": ...}``.
        """
        device = outputs["pred_logits"].device
        # The official engine computes the losses outside autocast.
        with torch.autocast(device.type, enabled=False):
            sizes = [len(t["labels"]) for t in targets]
            batch_targets = _BatchTargets(
                torch.cat([t["labels"] for t in targets]),
                torch.cat([t["boxes"] for t in targets]),
                sizes,
                self.num_classes,
            )
            num_boxes = self._num_boxes(sum(sizes), device)

            # Key order follows the official dict (main, aux, dn, enc), so summing the dict
            # adds the terms in the same order.
            losses = self._hungarian_losses(outputs, targets, batch_targets, num_boxes, "")
            for i, aux in enumerate(outputs.get("aux_outputs", ())):
                losses.update(self._hungarian_losses(aux, targets, batch_targets, num_boxes, f"_aux_{i}"))

            if "dn_aux_outputs" in outputs:
                dn_meta = outputs["dn_meta"]
                pairs = _denoising_pairs(dn_meta, sizes)
                dn_num_boxes = num_boxes * dn_meta["dn_num_group"]
                for i, dn in enumerate(outputs["dn_aux_outputs"]):
                    losses.update(self._output_losses(dn, batch_targets, pairs, dn_num_boxes, f"_dn_{i}"))

            if "enc_aux_outputs" in outputs:
                if outputs.get("enc_meta", {}).get("class_agnostic", False):
                    # Matched on class 0 too: the official code matches single-class logits against the
                    # real labels, which indexes past the logits as soon as a label is not 0.
                    targets = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
                    batch_targets = batch_targets._replace(labels=torch.zeros_like(batch_targets.labels), num_classes=1)
                for i, enc in enumerate(outputs["enc_aux_outputs"]):
                    losses.update(self._hungarian_losses(enc, targets, batch_targets, num_boxes, f"_enc_{i}"))
        return losses

    @staticmethod
    def _num_boxes(local_count: int, device: torch.device) -> torch.Tensor:
        """Ground-truth boxes per process, averaged over processes, at least 1 (0-dim float tensor)."""
        # Filled on the device, unlike torch.tensor(), which copies from the host and waits.
        num_boxes = torch.full((), float(local_count), dtype=torch.float32, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / dist.get_world_size()
        return num_boxes.clamp(min=1)

    def _hungarian_losses(self, output, targets, batch_targets, num_boxes, suffix):
        pairs = _hungarian_pairs(self.matcher(output, targets), batch_targets.sizes, output["pred_logits"].device)
        return self._output_losses(output, batch_targets, pairs, num_boxes, suffix)

    def _output_losses(self, output, targets: _BatchTargets, pairs: _MatchedPairs, num_boxes, suffix: str):
        """Every selected loss term of one output, weighted and with the output's key suffix."""
        losses = {}
        for name in self.losses:
            for key, value in getattr(self, f"_loss_{name}")(output, targets, pairs, num_boxes).items():
                losses[key + suffix] = value * self.weight_dict[key]
        return losses

    def _loss_vfl(self, output, targets: _BatchTargets, pairs: _MatchedPairs, num_boxes):
        logits = output["pred_logits"]
        one_hot, quality = _one_hot_targets(logits, targets, pairs), _quality_targets(output, targets, pairs)
        return {"loss_vfl": varifocal_loss(logits, one_hot, quality, num_boxes, self.alpha, self.gamma)}

    def _loss_mal(self, output, targets: _BatchTargets, pairs: _MatchedPairs, num_boxes):
        logits = output["pred_logits"]
        one_hot, quality = _one_hot_targets(logits, targets, pairs), _quality_targets(output, targets, pairs)
        return {"loss_mal": matchability_aware_loss(logits, one_hot, quality, num_boxes, self.mal_gamma, self.mal_alpha)}

    def _loss_focal(self, output, targets: _BatchTargets, pairs: _MatchedPairs, num_boxes):
        logits = output["pred_logits"]
        one_hot = _one_hot_targets(logits, targets, pairs)
        return {"loss_focal": focal_loss(logits, one_hot, num_boxes, self.alpha, self.gamma)}

    def _loss_boxes(self, output, targets: _BatchTargets, pairs: _MatchedPairs, num_boxes):
        boxes, gt_boxes = _matched_boxes(output, targets, pairs)
        return {
            "loss_bbox": l1_box_loss(boxes, gt_boxes, num_boxes),
            "loss_giou": giou_box_loss(boxes, gt_boxes, num_boxes),
        }


def _matched_boxes(output, targets: _BatchTargets, pairs: _MatchedPairs):
    """``[N, 4]`` predicted and ground-truth cxcywh boxes of the matched pairs."""
    return output["pred_boxes"][pairs.batch_idx, pairs.query_idx], targets.boxes[pairs.gt_idx]


def _quality_targets(output, targets: _BatchTargets, pairs: _MatchedPairs) -> torch.Tensor:
    """``[B, Q]`` in the dtype of the logits: IoU of each matched query's box with its ground truth
    (0 for unmatched queries), detached: the classification loss must not move the boxes."""
    boxes, gt_boxes = _matched_boxes(output, targets, pairs)
    ious = elementwise_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes)).detach()
    quality = output["pred_logits"].new_zeros(output["pred_logits"].shape[:2])
    quality[pairs.batch_idx, pairs.query_idx] = ious.to(quality.dtype)
    return quality


def _one_hot_targets(logits: torch.Tensor, targets: _BatchTargets, pairs: _MatchedPairs) -> torch.Tensor:
    """``[B, Q, K]`` in the dtype of ``logits``: 1 at (image, query, class of its matched ground truth)."""
    if logits.shape[-1] != targets.num_classes:
        raise ValueError(f"pred_logits have {logits.shape[-1]} classes, the criterion expects {targets.num_classes}")
    one_hot = torch.zeros_like(logits)
    one_hot[pairs.batch_idx, pairs.query_idx, targets.labels[pairs.gt_idx]] = 1
    return one_hot
