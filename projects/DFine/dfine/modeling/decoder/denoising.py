"""Denoising queries: noised copies of the ground truth that the decoder learns to reconstruct.

:class:`ContrastiveDenoising` is the contrastive denoising of DINO (Zhang et al. 2023) as RT-DETRv2,
D-FINE, DEIM and DEIMv2 build it (positive and negative groups, built by
:func:`contrastive_denoising_group`).
"""
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from ..layers.common import inverse_sigmoid

__all__ = ["contrastive_denoising_group", "ContrastiveDenoising", "DenoisingQueries"]


class DenoisingQueries(NamedTuple):
    """Denoising queries, placed before the ``K`` matching queries.

    Attributes:
        content: ``[B, T, C]`` query content.
        reference_unact: ``[B, T, 4]`` logits of the noised boxes.
        attn_mask: ``[T + K, T + K]`` bool self-attention mask, True = blocked: matching queries
            never see denoising ones, and denoising groups do not see each other.
        positive_idx: per image, the query indices of its positives, group after group.
        num_groups: ``G``.
    """

    content: torch.Tensor
    reference_unact: torch.Tensor
    attn_mask: torch.Tensor
    positive_idx: List[torch.Tensor]
    num_groups: int


class ContrastiveDenoising(nn.Module):
    """Contrastive denoising groups with a label embedding ``denoising_class_embed`` (``num_classes + 1``
    rows, the last one the zero padding row), as the official RT-DETRv2 decoder builds them.

    Args:
        num_classes, hidden_dim: classes and query width.
        num_denoising: budget of positive queries per image (rounded down to whole groups); 0 builds
            no queries and no embedding, as the official model with ``num_denoising: 0``.
        label_noise_ratio: twice the label-flip probability.
        box_noise_scale: noise amplitude in units of half the box size.
        abs_box_size: the DEIM / D-FINE variant for boxes whose corners cross (see
            :func:`contrastive_denoising_group`).
    """

    def __init__(self, num_classes: int, hidden_dim: int, num_denoising: int = 100, label_noise_ratio: float = 0.5,
                 box_noise_scale: float = 1.0, abs_box_size: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.abs_box_size = abs_box_size
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
            nn.init.normal_(self.denoising_class_embed.weight[:-1])

    def forward(self, targets: List[Dict[str, torch.Tensor]], num_queries: int) -> Optional[DenoisingQueries]:
        """The queries for ``targets`` (see :func:`contrastive_denoising_group`), None when
        ``num_denoising`` is 0."""
        if self.num_denoising <= 0:
            return None
        if targets is None:
            raise ValueError("Training with denoising needs the targets")
        content, boxes_unact, attn_mask, meta = contrastive_denoising_group(
            targets, self.num_classes, num_queries, self.denoising_class_embed, self.num_denoising,
            self.label_noise_ratio, self.box_noise_scale, self.abs_box_size)
        return DenoisingQueries(content, boxes_unact, attn_mask, list(meta["dn_positive_idx"]), meta["dn_num_group"])


def contrastive_denoising_group(
    targets: List[Dict[str, torch.Tensor]],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    abs_box_size: bool = False,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor], Optional[Dict]]:
    """Noised copies of the ground truth that the decoder learns to reconstruct.

    Every image's GT is padded to ``max_gt`` (label ``num_classes``, whose embedding is the zero
    padding row; box 0) and repeated in ``G = max(num_denoising // max_gt, 1)`` groups. A group is
    ``max_gt`` positives, whose corners move by less than half the box size, then ``max_gt``
    negatives, moved by one to two halves, which must be classified as background. Real (non-pad)
    labels of both kinds flip to a uniform random class with probability ``label_noise_ratio / 2``.

    A batch without any GT still gets one group of one pad query around the box (0.5, 0.5, 0.1, 0.1)
    and no positives, as in the current official code (commit 068dfde): every DDP process then runs
    the same graph and returns the same output and loss keys.

    The random draws (label flips, new labels, signs, magnitudes) are made in the official order
    and shapes, so a seeded run reproduces the official queries.

    Args:
        targets: per image ``{"labels": int64 [n], "boxes": [n, 4] normalized cxcywh}``.
        num_classes: number of real classes; ``class_embed`` has ``num_classes + 1`` rows.
        num_queries: number of matching queries ``K`` that follow the denoising ones.
        class_embed: label embedding giving the query content.
        num_denoising: budget of positive queries per image (rounded down to whole groups).
        label_noise_ratio: twice the label-flip probability.
        box_noise_scale: noise amplitude in units of half the box size.
        abs_box_size: when noise makes a box's corners cross, use its absolute width/height, as
            the DEIM and D-FINE copies of this function do. RT-DETRv2 keeps the negative size,
            which ``inverse_sigmoid`` clamps to a near-zero box.

    Returns:
        ``(content [B, T, C], boxes_unact [B, T, 4] (logits of cxcywh), attn_mask [T+K, T+K]
        (True = blocked), dn_meta)`` with ``T = 2 * max_gt * G``. ``dn_meta`` holds
        ``dn_positive_idx`` (per image, the query indices of its positives, group-major, pairing with
        ``arange(n).tile(G)``), ``dn_num_group`` ``G`` and ``dn_num_split`` ``[T, K]``.
        All four are ``None`` when ``num_denoising <= 0``.
    """
    if num_denoising <= 0:
        return None, None, None, None
    num_gts = [len(t["labels"]) for t in targets]
    device = targets[0]["labels"].device
    batch = len(targets)
    empty_batch = max(num_gts) == 0
    max_gt = max(max(num_gts), 1)
    num_group = 1 if empty_batch else max(num_denoising // max_gt, 1)

    labels = torch.full([batch, max_gt], num_classes, dtype=torch.int64, device=device)
    boxes = torch.zeros([batch, max_gt, 4], dtype=targets[0]["boxes"].dtype, device=device)
    if empty_batch:
        # A real box, so that noise and inverse_sigmoid stay finite and meaningful.
        boxes[..., :2], boxes[..., 2:] = 0.5, 0.1
    is_gt = torch.zeros([batch, max_gt], dtype=torch.bool, device=device)
    for i, (target, n) in enumerate(zip(targets, num_gts)):
        labels[i, :n] = target["labels"]
        boxes[i, :n] = target["boxes"]
        is_gt[i, :n] = True

    labels = labels.tile([1, 2 * num_group])
    boxes = boxes.tile([1, 2 * num_group, 1])
    is_gt = is_gt.tile([1, 2 * num_group])
    negative = torch.zeros([batch, 2 * max_gt, 1], dtype=boxes.dtype, device=device)
    negative[:, max_gt:] = 1
    negative = negative.tile([1, num_group, 1])
    positive = (1 - negative).squeeze(-1) * is_gt
    dn_positive_idx = torch.nonzero(positive)[:, 1].split([n * num_group for n in num_gts])
    num_dn = 2 * max_gt * num_group

    if label_noise_ratio > 0:
        flip = torch.rand_like(labels, dtype=torch.float) < label_noise_ratio * 0.5
        random_labels = torch.randint_like(labels, 0, num_classes)
        labels = torch.where(flip & is_gt, random_labels, labels)
    if box_noise_scale > 0:
        half_size = boxes[..., 2:].tile([1, 1, 2]) * 0.5 * box_noise_scale
        sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
        magnitude = torch.rand_like(boxes)
        magnitude = (magnitude + 1.0) * negative + magnitude * (1 - negative)
        corners = box_cxcywh_to_xyxy(boxes) + sign * magnitude * half_size
        boxes = box_xyxy_to_cxcywh(corners.clip(min=0.0, max=1.0))
        if abs_box_size:
            boxes = boxes.abs()
    boxes_unact = inverse_sigmoid(boxes)
    content = class_embed(labels)

    size = num_dn + num_queries
    attn_mask = torch.zeros([size, size], dtype=torch.bool, device=device)
    # Matching queries must not see the (noised) answers, and each group only sees itself.
    attn_mask[num_dn:, :num_dn] = True
    group = torch.arange(num_dn, device=device) // (2 * max_gt)
    attn_mask[:num_dn, :num_dn] = group[:, None] != group[None, :]
    dn_meta = {"dn_positive_idx": dn_positive_idx, "dn_num_group": num_group, "dn_num_split": [num_dn, num_queries]}
    return content, boxes_unact, attn_mask, dn_meta
