"""Turning decoder outputs into detections, as the official post-processors do."""
import torch

__all__ = ["topk_detections"]


def topk_detections(pred_logits: torch.Tensor, pred_boxes: torch.Tensor, num_top_queries: int = 300):
    """Top-k (query, class) pairs over sigmoid scores, without NMS.

    One query may yield several detections with different classes, exactly like the official
    RT-DETR / D-FINE / DEIM post-processors in focal-loss mode.

    Args:
        pred_logits: ``[B, Q, C]`` class logits.
        pred_boxes: ``[B, Q, 4]`` normalized cxcywh boxes.
        num_top_queries: k; clipped to ``Q * C``.

    Returns:
        scores ``[B, k]``, labels ``[B, k]`` (int64), boxes ``[B, k, 4]`` (normalized cxcywh),
        sorted by decreasing score.
    """
    num_classes = pred_logits.shape[-1]
    k = min(num_top_queries, pred_logits.shape[1] * num_classes)
    scores, index = torch.sigmoid(pred_logits).flatten(1).topk(k, dim=-1)
    labels = index % num_classes
    query = index // num_classes
    boxes = pred_boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, pred_boxes.shape[-1]))
    return scores, labels, boxes
