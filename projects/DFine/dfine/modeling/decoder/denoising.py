"""Contrastive denoising (DN-DETR / DINO) queries, as RT-DETRv2 builds them."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from ..layers.common import inverse_sigmoid

__all__ = ["contrastive_denoising_group"]


def contrastive_denoising_group(
    targets: List[Dict[str, torch.Tensor]],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor], Optional[Dict]]:
    """Noised copies of the ground truth that the decoder must denoise.

    Every image's GT is padded to ``max_gt`` and repeated in ``G = num_denoising // max_gt`` groups
    of ``max_gt`` positives (box noise < half the box size) followed by ``max_gt`` negatives
    (noise between one and two halves, to be classified as background). Labels are flipped to a
    random class with probability ``label_noise_ratio / 2``.

    A batch without any GT still gets one group around a centre box (with no positives), so all
    processes of a DDP job run the same graph, as in the current official code.

    Returns:
        ``(content [B, T, C], boxes_unact [B, T, 4], attn_mask [T+K, T+K] (True = blocked),
        dn_meta)`` with ``T = 2 * max_gt * G``; ``dn_meta`` holds ``dn_positive_idx`` (per image,
        positions of its positives in group-major order), ``dn_num_group`` and
        ``dn_num_split = [T, K]``. All ``None`` when ``num_denoising <= 0``.
    """
    if num_denoising <= 0:
        return None, None, None, None
    num_gts = [len(t["labels"]) for t in targets]
    device = targets[0]["labels"].device
    empty_batch = max(num_gts) == 0
    max_gt = max(max(num_gts), 1)
    num_group = 1 if empty_batch else max(num_denoising // max_gt, 1)
    batch = len(targets)

    labels = torch.full([batch, max_gt], num_classes, dtype=torch.int64, device=device)
    boxes = torch.zeros([batch, max_gt, 4], device=device)
    if empty_batch:
        boxes[..., :2], boxes[..., 2:] = 0.5, 0.1
    is_gt = torch.zeros([batch, max_gt], dtype=torch.bool, device=device)
    for i, (t, n) in enumerate(zip(targets, num_gts)):
        labels[i, :n] = t["labels"]
        boxes[i, :n] = t["boxes"]
        is_gt[i, :n] = True

    labels = labels.tile([1, 2 * num_group])
    boxes = boxes.tile([1, 2 * num_group, 1])
    is_gt = is_gt.tile([1, 2 * num_group])
    negative = torch.zeros([batch, 2 * max_gt, 1], device=device)
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
        xyxy = box_cxcywh_to_xyxy(boxes)
        half_size = boxes[..., 2:].tile([1, 1, 2]) * 0.5 * box_noise_scale
        sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
        part = torch.rand_like(boxes)
        part = (part + 1.0) * negative + part * (1 - negative)
        boxes = box_xyxy_to_cxcywh((xyxy + sign * part * half_size).clip(min=0.0, max=1.0))
    boxes_unact = inverse_sigmoid(boxes)
    content = class_embed(labels)

    size = num_dn + num_queries
    attn_mask = torch.zeros([size, size], dtype=torch.bool, device=device)
    attn_mask[num_dn:, :num_dn] = True  # matching queries must not see the answers
    for g in range(num_group):
        rows = slice(2 * max_gt * g, 2 * max_gt * (g + 1))
        attn_mask[rows, 2 * max_gt * (g + 1):num_dn] = True  # nor any group the others
        attn_mask[rows, :2 * max_gt * g] = True
    dn_meta = {"dn_positive_idx": dn_positive_idx, "dn_num_group": num_group, "dn_num_split": [num_dn, num_queries]}
    return content, boxes_unact, attn_mask, dn_meta
