"""Box conversions and IoU variants.

Conventions: ``cxcywh`` is (centre x, centre y, width, height); ``xyxy`` is (x1, y1, x2, y2).
All functions work on any floating dtype and device and on any leading batch shape
unless stated otherwise. The IoU variants compute in float32 under AMP (:func:`~.common.in_float32`).
"""
import torch

from .common import in_float32

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_cxcywh_to_pixel_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "elementwise_box_iou",
]


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_cxcywh_to_pixel_xyxy(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised cxcywh ``[..., 4]`` -> absolute XYXY pixels of a ``height x width`` image."""
    return box_cxcywh_to_xyxy(boxes) * boxes.new_tensor([width, height, width, height])


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of xyxy boxes, ``[..., 4] -> [...]``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


@in_float32
def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 0.0):
    """Pairwise IoU of xyxy boxes ``[N, 4] x [M, 4] -> ([N, M] iou, [N, M] union)``, the union
    plus ``eps`` in the denominator (DETR's and DINO's 1e-6; none in the RT-DETR family)."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / (union + eps) if eps else inter / union, union


@in_float32
def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Pairwise GIoU of xyxy boxes ``[N, 4] x [M, 4] -> [N, M]`` (Rezatofighi et al., 2019); ``eps``
    is added to the union and the enclosing area in the denominators (DETR, DINO: 1e-6).

    Degenerate boxes (x2 < x1) are not rejected here: they give a finite, low GIoU, so one
    bad prediction cannot abort a training run (the official code asserts instead).
    """
    iou, union = box_iou(boxes1, boxes2, eps)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / (enclosing + eps if eps else enclosing)


@in_float32
def elementwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of matched pairs of xyxy boxes, ``[N, 4] x [N, 4] -> [N]`` (the diagonal of ``box_iou``)."""
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (box_area(boxes1) + box_area(boxes2) - inter)
