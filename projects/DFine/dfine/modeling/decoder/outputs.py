"""The typed contract between a decoder and the set criterion.

A decoder returns a :class:`DecoderOutput`: the predictions of its matching queries layer by layer
(:class:`Branch`), the encoder proposals the queries were selected from (:class:`Proposals`) and, in
training with denoising, the denoising queries' predictions with the bookkeeping that pairs them with
the ground truth (:class:`DenoisingPart`). The criterion reads fields, never keys: which predictions
exist, and what each carries (edge distributions or not), is visible in the types.

Boxes are normalised cxcywh in the frame of the padded batch; logits are per class, sigmoid scores.
"""
from dataclasses import dataclass, field
from typing import List, Optional

import torch

__all__ = ["Predictions", "Proposals", "DistributionGeometry", "Branch", "DenoisingPart", "DecoderOutput"]


@dataclass
class Predictions:
    """One prediction per query.

    Attributes:
        logits: ``[B, Q, K]`` class logits.
        boxes: ``[B, Q, 4]`` normalised cxcywh.
        corners: ``[B, Q, 4 * (R + 1)]`` logits of the edge distributions (FDR), or None for a box
            head that regresses deltas.
        reference: ``[B, Q, 4]`` the detached boxes whose edges ``corners`` move (FDR), or None.
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    corners: Optional[torch.Tensor] = None
    reference: Optional[torch.Tensor] = None


@dataclass
class Proposals(Predictions):
    """The encoder proposals the decoder queries start from (two-stage query selection: the selected
    ones, or every token's in Deformable-DETR), supervised like a decoder layer. ``class_agnostic``:
    matched and supervised as if every ground truth were class 0 (the logits are one objectness
    column, or, in Deformable-DETR, all classes' with the first as the objectness)."""

    class_agnostic: bool = False


@dataclass
class DistributionGeometry:
    """What turns edge distributions into boxes (:mod:`~dfine.modeling.decoder.fdr`): ``R`` =
    ``reg_max`` and the weighting function's ``up`` and ``reg_scale`` (0-dim tensors)."""

    reg_max: int
    up: torch.Tensor
    reg_scale: torch.Tensor


@dataclass
class Branch:
    """The predictions of one set of queries through the decoder.

    Attributes:
        layers: one :class:`Predictions` per decoder layer, first to last, in training; in eval only
            the layer the decoder is evaluated at.
        pre: the first layer's initial boxes before its distributions refine them (D-FINE's
            ``pre_bbox_head``), with the first layer's logits; None for other box heads and in eval.
    """

    layers: List[Predictions]
    pre: Optional[Predictions] = None

    @property
    def final(self) -> Predictions:
        return self.layers[-1]


@dataclass
class DenoisingPart:
    """The denoising queries' predictions and how they pair with the ground truth.

    Attributes:
        branch: predictions of the ``T`` denoising queries (every layer, and ``pre`` like the
            matching branch).
        positive_idx: per image, the query indices of its positive (reconstruction) queries, group
            after group: group ``g`` holds one positive per ground truth, in ground-truth order.
        num_groups: the number of denoising groups ``G``.
    """

    branch: Branch
    positive_idx: List[torch.Tensor]
    num_groups: int


@dataclass
class DecoderOutput:
    """Everything a decoder returns.

    Attributes:
        matching: the matching queries, supervised through the Hungarian matcher.
        proposals: the selected encoder proposals (training only), or None.
        denoising: the denoising queries (training with denoising only), or None.
        geometry: how ``corners`` decode into boxes when the box head predicts distributions.
    """

    matching: Branch
    proposals: Optional[Proposals] = None
    denoising: Optional[DenoisingPart] = None
    geometry: Optional[DistributionGeometry] = field(default=None)

    @property
    def final(self) -> Predictions:
        """The predictions the detector outputs: the matching queries' last (eval: evaluated) layer."""
        return self.matching.final

