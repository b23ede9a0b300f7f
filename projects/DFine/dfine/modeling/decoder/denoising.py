"""Denoising queries: noised copies of the ground truth that the decoder learns to reconstruct.

:class:`ContrastiveDenoising` is the contrastive denoising of DINO (Zhang et al. 2023) as RT-DETRv2,
D-FINE, DEIM and DEIMv2 build it (positive and negative groups, built by
:func:`contrastive_denoising_group`); :class:`DinoContrastiveDenoising` is the official DINO's own
(``prepare_for_cdn``), which differs in its random draws, its padding queries and its logit clipping.
:class:`DnDetrDenoising` is the original denoising of DN-DETR (Li et al. 2022), positives only, in a
fixed number of groups (``prepare_for_dn`` of IDEA-Research/DN-DETR's DN-DAB-DETR).
"""
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from ..layers.common import inverse_sigmoid

__all__ = ["contrastive_denoising_group", "ContrastiveDenoising", "DinoContrastiveDenoising", "DnDetrDenoising",
           "DenoisingQueries", "denoising_attention_mask"]


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


def denoising_attention_mask(num_dn: int, group_size: int, num_queries: int, device) -> torch.Tensor:
    """``[T + K, T + K]`` bool self-attention mask, True = blocked, for ``T = num_dn`` denoising
    queries in groups of ``group_size`` followed by ``K`` matching queries: the matching queries
    must not see the (noised) answers, and each group only sees itself."""
    size = num_dn + num_queries
    attn_mask = torch.zeros([size, size], dtype=torch.bool, device=device)
    attn_mask[num_dn:, :num_dn] = True
    if num_dn:
        group = torch.arange(num_dn, device=device) // group_size
        attn_mask[:num_dn, :num_dn] = group[:, None] != group[None, :]
    return attn_mask


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

    attn_mask = denoising_attention_mask(num_dn, 2 * max_gt, num_queries, device)
    dn_meta = {"dn_positive_idx": dn_positive_idx, "dn_num_group": num_group, "dn_num_split": [num_dn, num_queries]}
    return content, boxes_unact, attn_mask, dn_meta


class DinoContrastiveDenoising(nn.Module):
    """Contrastive denoising as the official DINO builds it (``models/dino/dn_components.py``).

    ``G = num_denoising // max_gt`` groups (one when the batch has no ground truth, which then has
    no denoising query at all), each ``max_gt`` positives then ``max_gt`` negatives, image by image
    padded to ``max_gt``. Compared with :func:`contrastive_denoising_group`:

    * labels flip with probability ``label_noise_ratio / 2`` to a uniform class, drawn over the
      batch's real ground truths only (group-major, images in order), as the official draws;
    * the padding queries have zero content and a zero box logit (a centred box of side 0.5), not
      the embedding of a padding class;
    * box logits are clipped at ``eps`` 1e-3 (the official ``inverse_sigmoid``).

    The label embedding ``label_enc`` has ``num_classes + 1`` rows (the official ``dn_labelbook_size
    + 1``); the last one is never used.

    Args:
        num_classes, hidden_dim: classes and query width.
        num_denoising: budget of positive queries per image (the official ``dn_number`` 100).
        label_noise_ratio: twice the label-flip probability (``dn_label_noise_ratio`` 0.5).
        box_noise_scale: corner noise in units of half the box size (``dn_box_noise_scale`` 1.0 in
            the R50 configs).
        eps: clipping of ``inverse_sigmoid``.
    """

    def __init__(self, num_classes: int, hidden_dim: int, num_denoising: int = 100, label_noise_ratio: float = 0.5,
                 box_noise_scale: float = 1.0, eps: float = 1e-3):
        super().__init__()
        self.num_classes = num_classes
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.eps = eps
        self.label_enc = nn.Embedding(num_classes + 1, hidden_dim)

    def forward(self, targets: List[Dict[str, torch.Tensor]], num_queries: int) -> Optional[DenoisingQueries]:
        if self.num_denoising <= 0:
            return None
        if targets is None:
            raise ValueError("Training with denoising needs the targets")
        num_gts = [len(t["labels"]) for t in targets]
        max_gt = max(num_gts)
        weight = self.label_enc.weight
        batch, device = len(targets), weight.device
        num_group = max(self.num_denoising // max_gt, 1) if max_gt else 1
        labels = torch.cat([t["labels"] for t in targets]).repeat(2 * num_group)
        boxes = torch.cat([t["boxes"] for t in targets]).repeat(2 * num_group, 1)
        total = sum(num_gts)
        if self.label_noise_ratio > 0:
            flip = torch.nonzero(torch.rand_like(labels.float()) < self.label_noise_ratio * 0.5).view(-1)
            labels = labels.scatter(0, flip, torch.randint_like(flip, 0, self.num_classes))
        if self.box_noise_scale > 0:
            half_size = boxes[:, 2:].repeat(1, 2) / 2
            corners = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], -1)
            sign = torch.randint_like(boxes, low=0, high=2, dtype=torch.float32) * 2.0 - 1.0
            magnitude = torch.rand_like(boxes)
            # Group g holds the positives [2g * total, (2g + 1) * total), then its negatives.
            negative = (torch.arange(len(boxes), device=device) // total) % 2 == 1 if total else None
            if negative is not None:
                magnitude = magnitude + negative[:, None].to(magnitude.dtype)
            corners = (corners + magnitude * sign * half_size * self.box_noise_scale).clamp(min=0.0, max=1.0)
            boxes = torch.cat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], -1)

        num_dn = 2 * max_gt * num_group
        content = weight.new_zeros(batch, num_dn, weight.shape[1])
        boxes_unact = boxes.new_zeros(batch, num_dn, 4)
        image = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(num_gts)])
        slot = torch.cat([torch.arange(n, device=device) for n in num_gts])
        copies = torch.arange(2 * num_group, device=device).repeat_interleave(total)
        image, slot = image.repeat(2 * num_group), slot.repeat(2 * num_group) + copies * max_gt
        content[image, slot] = self.label_enc(labels)
        boxes_unact[image, slot] = inverse_sigmoid(boxes, self.eps)
        attn_mask = denoising_attention_mask(num_dn, 2 * max_gt, num_queries, device)
        group_start = 2 * max_gt * torch.arange(num_group, device=device)[:, None]
        positive_idx = [(torch.arange(n, device=device)[None] + group_start).flatten() for n in num_gts]
        return DenoisingQueries(content, boxes_unact, attn_mask, positive_idx, num_group)


class DnDetrDenoising(nn.Module):
    """DN-DETR's denoising queries: ``num_groups`` noised copies of the ground truth, positives only.

    Layout. With ``P = max_gt`` (the most boxes of an image of the batch), the ``T = P * G`` denoising
    queries come before the matching ones; group ``g`` holds the queries ``[g * P, (g + 1) * P)``, in
    which image ``i`` puts its ``n_i`` ground truths first, in order; the slots of an image with fewer
    boxes are padding (zero content, zero box logit). The self-attention mask keeps the matching
    queries from seeing any denoising query and each group from seeing the other groups
    (:func:`denoising_attention_mask`); the denoising queries do see the matching ones.

    Noise, per copy: the label flips with probability ``label_noise_ratio`` to a uniform class in
    ``[0, num_classes)``; the centre moves by ``U(-1, 1) * size / 2 * box_noise_scale`` and the width
    and height by ``U(-1, 1) * size * box_noise_scale``, then the box is clamped to [0, 1] and its
    logit (clipped at ``eps``) is the query's reference. The draws (one uniform per copy for the
    flip, one class per flipped copy, one uniform per coordinate) are made in the official order and
    shapes over the batch's ground truths, group after group, so a seeded run gives the official
    queries.

    Content. ``label_enc`` has ``hidden_dim - 1`` columns (the official ``label_enc``, which the
    matching queries share for their "no class" row, see
    :class:`~.query_selection.LearnedAnchors`); a denoising query's content is its label's embedding
    followed by an indicator 1 (the matching queries have 0). The embedding is handed in by the
    decoder at every call, since the query selection owns it.

    A batch without ground truth has no denoising query (``T = 0``): its denoising losses are zero,
    as the official ones.

    Args:
        num_classes: ``K``.
        num_groups: ``G`` (the official ``--scalar``, 5).
        label_noise_ratio: the label-flip probability (``--label_noise_scale``, 0.2).
        box_noise_scale: ``--box_noise_scale``, 0.4.
        eps: clipping of the boxes' logits (1e-3, the official ``inverse_sigmoid``).
    """

    def __init__(self, num_classes: int, num_groups: int = 5, label_noise_ratio: float = 0.2,
                 box_noise_scale: float = 0.4, eps: float = 1e-3):
        super().__init__()
        if num_groups < 1:
            raise ValueError(f"num_groups must be at least 1, got {num_groups}; turn denoising off with "
                             "decoder.denoising=None")
        self.num_classes = num_classes
        self.num_groups = num_groups
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.eps = eps

    def forward(self, targets: List[Dict[str, torch.Tensor]], num_queries: int,
                label_enc: nn.Embedding) -> DenoisingQueries:
        """The queries for ``targets`` before ``num_queries`` matching queries, the content from
        ``label_enc`` (``[num_classes + 1, hidden_dim - 1]``)."""
        if targets is None:
            raise ValueError("Training with denoising needs the targets")
        weight = label_enc.weight
        device = weight.device
        num_gts = [len(t["labels"]) for t in targets]
        groups, batch, max_gt = self.num_groups, len(targets), max(num_gts, default=0)
        labels = torch.cat([t["labels"] for t in targets]).repeat(groups)
        boxes = torch.cat([t["boxes"] for t in targets]).repeat(groups, 1)
        if self.label_noise_ratio > 0:
            flip = torch.nonzero(torch.rand_like(labels.float()) < self.label_noise_ratio).view(-1)
            labels = labels.scatter(0, flip, torch.randint_like(flip, 0, self.num_classes))
        if self.box_noise_scale > 0:
            spread = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:]], -1)
            boxes = (boxes + (torch.rand_like(boxes) * 2 - 1.0) * spread * self.box_noise_scale).clamp(min=0.0,
                                                                                                      max=1.0)
        num_dn = max_gt * groups
        content = weight.new_zeros(batch, num_dn, weight.shape[1] + 1)
        boxes_unact = boxes.new_zeros(batch, num_dn, 4)
        image = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(num_gts)])
        slot = torch.cat([torch.arange(n, device=device) for n in num_gts])
        copies = torch.arange(groups, device=device).repeat_interleave(len(slot))
        image, slot = image.repeat(groups), slot.repeat(groups) + copies * max_gt
        embedded = label_enc(labels)
        content[image, slot] = torch.cat([embedded, embedded.new_ones(len(labels), 1)], -1)
        boxes_unact[image, slot] = inverse_sigmoid(boxes, self.eps)
        attn_mask = denoising_attention_mask(num_dn, max_gt, num_queries, device)
        group_start = max_gt * torch.arange(groups, device=device)[:, None]
        positive_idx = [(torch.arange(n, device=device)[None] + group_start).flatten() for n in num_gts]
        return DenoisingQueries(content, boxes_unact, attn_mask, positive_idx, groups)
