"""One-to-one Hungarian matching between the queries of one decoder output and the ground truth."""
from typing import Dict, List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..decoder.outputs import Predictions
from ..layers.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou

__all__ = ["HungarianMatcher", "union_matched_indices"]

IndexPairs = Sequence[Tuple[torch.Tensor, torch.Tensor]]

# scipy rejects a cost matrix holding NaN or -inf (and one whose +inf entries leave no assignment),
# which would abort training over one bad pair: GIoU is 0/0 for two zero-size boxes at one point, and a
# diverged prediction gives NaN/inf everywhere. Such pairs get a finite cost far above any real one
# (boxes lie in [0, 1], so real costs stay below ~50): they are matched only when nothing else is left.
_INVALID_COST = 1e6


class HungarianMatcher(nn.Module):
    """Minimum-cost one-to-one assignment of queries to ground-truth boxes, per image.

    The cost of assigning query ``q`` to ground truth ``g`` is
    ``cost_bbox * L1(box_q, box_g) + cost_class * class_cost + cost_giou * -GIoU(box_q, box_g)``
    with L1 on normalised cxcywh boxes. The class cost is the focal-loss difference
    ``alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` of the sigmoid probability ``p`` of
    the ground-truth class (``use_focal_loss=True``), or ``-softmax`` probability otherwise.

    DEIMv2's matcher switch (``change_matcher``): from epoch ``matcher_change_epoch`` on, the cost
    is ``-(p * IoU(box_q, box_g) ** iou_order_alpha)`` alone, with ``p`` the same probability (sigmoid
    or softmax) of the ground-truth class, for every output the criterion matches.
    The matcher has no parameters and no gradient.
    """

    def __init__(
        self,
        weight_dict: Dict[str, float] = {"cost_class": 2, "cost_bbox": 5, "cost_giou": 2},  # noqa: B006 (never mutated)
        use_focal_loss: bool = True,
        alpha: float = 0.25,
        gamma: float = 2.0,
        change_matcher: bool = False,
        iou_order_alpha: float = 1.0,
        matcher_change_epoch: int = 10000,
        giou_eps: float = 0.0,
    ):
        """
        Args:
            weight_dict: weights of the cost terms, keys ``cost_class``, ``cost_bbox``, ``cost_giou``.
            use_focal_loss: sigmoid focal class cost (every official config) instead of softmax.
            alpha, gamma: focal parameters of the class cost.
            change_matcher: switch to the IoU-ordered cost at ``matcher_change_epoch`` (DEIMv2: True).
            iou_order_alpha: exponent of the IoU in that cost (DEIMv2: 4).
            matcher_change_epoch: first epoch (0-based) of that cost.
            giou_eps: the GIoU cost's denominator epsilon (DETR and DINO: 1e-6).
        """
        super().__init__()
        self.cost_class = weight_dict["cost_class"]
        self.cost_bbox = weight_dict["cost_bbox"]
        self.cost_giou = weight_dict["cost_giou"]
        if self.cost_class == 0 and self.cost_bbox == 0 and self.cost_giou == 0:
            raise ValueError("HungarianMatcher needs at least one non-zero cost weight")
        self.use_focal_loss = use_focal_loss
        self.alpha = alpha
        self.gamma = gamma
        self.change_matcher = change_matcher
        self.iou_order_alpha = iou_order_alpha
        self.matcher_change_epoch = matcher_change_epoch
        self.giou_eps = giou_eps

    def uses_iou_order_cost(self, epoch: int) -> bool:
        """Whether the DEIMv2 cost applies at ``epoch``."""
        return self.change_matcher and epoch >= self.matcher_change_epoch

    def cost_matrix(
        self, logits: torch.Tensor, boxes: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
        epoch: int = 0,
    ) -> torch.Tensor:
        """Matching cost of every prediction against every ground truth.

        Args:
            logits: ``[N, C]`` class logits of N predictions.
            boxes: ``[N, 4]`` predicted boxes, normalised cxcywh.
            gt_labels: ``[M]`` int64 class ids in ``[0, C)``.
            gt_boxes: ``[M, 4]`` ground-truth boxes, normalised cxcywh.
            epoch: the training epoch, for ``change_matcher``.

        Returns:
            ``[N, M]`` cost, lower is better.
        """
        if self.uses_iou_order_cost(epoch):
            prob = (logits.sigmoid() if self.use_focal_loss else logits.softmax(-1))[:, gt_labels]
            iou = box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes))[0]
            return -(prob * iou**self.iou_order_alpha)
        if self.use_focal_loss:
            prob = logits.sigmoid()[:, gt_labels]
            neg_cost = (1 - self.alpha) * (prob**self.gamma) * (-(1 - prob + 1e-8).log())
            pos_cost = self.alpha * ((1 - prob) ** self.gamma) * (-(prob + 1e-8).log())
            cost_class = pos_cost - neg_cost
        else:
            cost_class = -logits.softmax(-1)[:, gt_labels]
        cost_bbox = torch.cdist(boxes, gt_boxes, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes), self.giou_eps)
        return self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

    @torch.no_grad()
    def forward(self, predictions: Predictions, targets: List[Dict[str, torch.Tensor]], epoch: int = 0
                ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            predictions: ``logits`` ``[B, Q, C]`` and ``boxes`` ``[B, Q, 4]`` (normalised cxcywh).
            targets: B dicts with ``"labels"`` ``[G_i]`` int64 and ``"boxes"`` ``[G_i, 4]`` (normalised cxcywh).
            epoch: the training epoch (a Python int), for ``change_matcher``.

        Returns:
            B pairs ``(query_idx, gt_idx)`` of int64 CPU tensors of length ``min(Q, G_i)``: query
            ``query_idx[k]`` of image i is matched to its ground truth ``gt_idx[k]``. Images without
            ground truth give two empty tensors.
        """
        batch_size, num_queries = predictions.logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        cost = self.cost_matrix(
            predictions.logits.flatten(0, 1),
            predictions.boxes.flatten(0, 1),
            torch.cat([t["labels"] for t in targets]),
            torch.cat([t["boxes"] for t in targets]),
            epoch,
        )
        # One transfer for the whole batch; scipy needs the costs on the host anyway.
        cost = cost.view(batch_size, num_queries, sum(sizes)).cpu()
        cost = torch.nan_to_num(cost, nan=_INVALID_COST, posinf=_INVALID_COST, neginf=_INVALID_COST)
        indices = []
        for i, image_cost in enumerate(cost.split(sizes, dim=-1)):
            query_idx, gt_idx = linear_sum_assignment(image_cost[i])
            indices.append((torch.as_tensor(query_idx, dtype=torch.int64), torch.as_tensor(gt_idx, dtype=torch.int64)))
        return indices


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
