"""Set criterion of the real-time DETR family: which output is supervised with which pairs."""
import itertools
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..decoder.fdr import ddf_balance_weights, fgl_and_ddf_losses, union_matched_indices
from ..layers.box_ops import box_cxcywh_to_xyxy, elementwise_box_iou
from ..layers.common import to_float32
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


class _Supervision(NamedTuple):
    """The pairs an output's loss terms use and their normaliser."""

    pairs: _MatchedPairs
    num_boxes: torch.Tensor


# Loss terms that supervise boxes: with GO-LSD they use the union set.
_BOX_TERMS = ("boxes", "local")


class RTDETRCriterion(nn.Module):
    """Losses of RT-DETRv2, D-FINE and DEIM: a Hungarian match per output, then classification, box
    and (D-FINE) distribution losses.

    Supervised outputs and their pairs / normaliser (official RT-DETRv2 / D-FINE):

    * the last decoder layer (keys ``loss_*``), every ``aux_outputs[i]`` (``loss_*_aux_{i}``) and
      the first layer's ``pre_outputs`` (``loss_*_pre``, D-FINE): their own Hungarian match,
      ``num_boxes``;
    * every ``dn_aux_outputs[i]`` (``loss_*_dn_{i}``) and ``dn_pre_outputs`` (``loss_*_dn_pre``):
      the denoising positives of ``dn_meta``, ``num_boxes * dn_num_group``;
    * every ``enc_aux_outputs[i]`` (``loss_*_enc_{i}``): its own Hungarian match, ``num_boxes``; with
      ``enc_meta["class_agnostic"]`` every ground truth counts as class 0.

    With ``go_lsd`` (D-FINE's Globally Optimal Localization Self-Distillation) the box terms
    (``boxes``, ``local``) of every matching output use instead the union of all these matches
    (:func:`~dfine.modeling.decoder.fdr.union_matched_indices`), normalised by its size, and the
    ``local`` term adds the DDF distillation of every output that names a teacher. Without it,
    ``local`` is FGL alone on each output's own match. DEIM's and DEIMv2's ``use_uni_set`` is
    ``go_lsd`` (``use_uni_set: False``, e.g. DEIMv2 Atto/Femto/Pico with losses ``mal`` + ``boxes``,
    is ``go_lsd=False``).

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
        go_lsd: bool = False,
        ddf_temperature: float = 5.0,
    ):
        """
        Args:
            matcher: returns per-image ``(query_idx, gt_idx)`` pairs, see :class:`HungarianMatcher`.
            weight_dict: weight of every loss key the selected terms produce.
            losses: loss terms, among ``"vfl"`` (loss_vfl), ``"mal"`` (loss_mal, DEIM), ``"focal"``
                (loss_focal), ``"boxes"`` (loss_bbox, loss_giou) and ``"local"`` (loss_fgl and, with
                GO-LSD, loss_ddf; D-FINE; outputs without ``pred_corners`` give none).
            alpha, gamma: focal parameters of the classification loss (MAL uses only ``gamma``,
                1.5 in DEIM).
            mal_alpha: optional weight of MAL's negatives (None in every official config).
            mal_gamma: MAL's gamma when it differs from ``gamma`` (the official criterion has one
                ``gamma`` for every term; a separate one lets a config switch between MAL at 1.5
                and VFL at 2.0 by changing ``losses`` alone).
            num_classes: number of classes K of ``pred_logits`` (no background slot).
            go_lsd: the union-set matching of the box terms and the DDF distillation (D-FINE and
                DEIM-D-FINE; off for RT-DETRv2 and DEIM-RT-DETRv2, and for the GO-LSD ablation).
            ddf_temperature: the distillation temperature ``T`` (5, fixed in the official code).
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
        self.go_lsd = go_lsd
        self.ddf_temperature = ddf_temperature

    def forward(self, outputs: Dict, targets: List[Dict[str, torch.Tensor]],
                epoch: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: the decoder's training output: ``pred_logits`` ``[B, Q, K]`` and ``pred_boxes``
                ``[B, Q, 4]`` (normalised cxcywh), optional lists ``aux_outputs``,
                ``enc_aux_outputs``, ``dn_aux_outputs`` of dicts with the same two keys, optional
                dicts ``pre_outputs`` / ``dn_pre_outputs``, ``dn_meta`` (``dn_positive_idx``: B int64
                tensors, ``dn_num_group``) when ``dn_aux_outputs`` is present, and optional
                ``enc_meta`` (``class_agnostic``). D-FINE outputs also carry ``pred_corners``,
                ``ref_points``, ``teacher_corners`` / ``teacher_logits``, and the top level ``up``
                and ``reg_scale`` (see ``DFINEDecoder``).
            targets: B dicts with ``labels`` ``[G_i]`` int64 and ``boxes`` ``[G_i, 4]`` (normalised
                cxcywh), on the device of the outputs.
            epoch: the training epoch (a Python int), handed to every matcher call as ``epoch=``
                (DEIMv2's matcher switch); None calls the matcher without it.

        Returns:
            Weighted losses, ``{"loss_vfl": ..., "loss_bbox_aux_0": ..., "loss_giou_dn_5": ...}``.
        """
        device = outputs["pred_logits"].device
        # The official engine computes the losses outside autocast; here on float32 outputs too, so
        # that no loss, match or box decoding runs in float16.
        with torch.autocast(device.type, enabled=False):
            outputs = to_float32(outputs)
            sizes = [len(t["labels"]) for t in targets]
            batch_targets = _BatchTargets(
                torch.cat([t["labels"] for t in targets]),
                torch.cat([t["boxes"] for t in targets]),
                sizes,
                self.num_classes,
            )
            num_boxes = self._num_boxes(sum(sizes), device)

            # Every Hungarian match first: the union set needs all of them.
            matching = [("", outputs)]
            matching += [(f"_aux_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", ()))]
            if "pre_outputs" in outputs:
                matching.append(("_pre", outputs["pre_outputs"]))
            encoder = [(f"_enc_{i}", enc) for i, enc in enumerate(outputs.get("enc_aux_outputs", ()))]
            encoder_targets, encoder_batch_targets = targets, batch_targets
            if outputs.get("enc_meta", {}).get("class_agnostic", False):
                # Matched on class 0 too: the official code matches single-class logits against the
                # real labels, which indexes past the logits as soon as a label is not 0.
                encoder_targets = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
                encoder_batch_targets = batch_targets._replace(
                    labels=torch.zeros_like(batch_targets.labels), num_classes=1)
            match_kwargs = {} if epoch is None else {"epoch": epoch}
            indices = [self.matcher(output, targets, **match_kwargs) for _, output in matching]
            indices += [self.matcher(output, encoder_targets, **match_kwargs) for _, output in encoder]

            union, ddf_weights = None, None
            if self.go_lsd:
                union_indices = union_matched_indices(indices[0], indices[1:])
                union = _Supervision(
                    _hungarian_pairs(union_indices, sizes, device),
                    self._num_boxes(sum(len(q) for q, _ in union_indices), device),
                )
                # DDF balances matched and unmatched queries by the union set's counts, for the
                # denoising outputs too (as the official criterion, which keeps the last ones).
                ddf_weights = ddf_balance_weights(
                    union.pairs.batch_idx, union.pairs.query_idx, *outputs["pred_logits"].shape[:2])

            # Key order follows the official dicts (main, aux, pre, dn, dn pre, enc).
            losses = {}
            for (suffix, output), output_indices in zip(matching, indices):
                own = _Supervision(_hungarian_pairs(output_indices, sizes, device), num_boxes)
                losses.update(self._output_losses(output, batch_targets, own, suffix, union, outputs, ddf_weights))

            if "dn_aux_outputs" in outputs:
                dn_meta = outputs["dn_meta"]
                denoising = _Supervision(_denoising_pairs(dn_meta, sizes), num_boxes * dn_meta["dn_num_group"])
                dn_outputs = [(f"_dn_{i}", dn) for i, dn in enumerate(outputs["dn_aux_outputs"])]
                if "dn_pre_outputs" in outputs:
                    dn_outputs.append(("_dn_pre", outputs["dn_pre_outputs"]))
                for suffix, dn in dn_outputs:
                    losses.update(self._output_losses(dn, batch_targets, denoising, suffix, None, outputs, ddf_weights))

            for (suffix, enc), enc_indices in zip(encoder, indices[len(matching):]):
                own = _Supervision(_hungarian_pairs(enc_indices, sizes, device), num_boxes)
                losses.update(self._output_losses(enc, encoder_batch_targets, own, suffix, union, outputs))
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

    def _output_losses(self, output, targets: _BatchTargets, own: _Supervision, suffix: str,
                       union: Optional[_Supervision] = None, top: Optional[Dict] = None, ddf_weights=None):
        """Every selected loss term of one output, weighted and with the output's key suffix.

        ``own`` supervises the classification terms, and the box terms too unless the union set
        ``union`` is given; ``top`` is the decoder's whole output (for ``up`` / ``reg_scale``).
        """
        losses = {}
        for name in self.losses:
            pairs, num_boxes = union if union is not None and name in _BOX_TERMS else own
            term = getattr(self, f"_loss_{name}")
            extra = {"top": top, "ddf_weights": ddf_weights} if name == "local" else {}
            for key, value in term(output, targets, pairs, num_boxes, **extra).items():
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


    def _loss_local(self, output, targets: _BatchTargets, pairs: _MatchedPairs, num_boxes, top=None, ddf_weights=None):
        if "pred_corners" not in output:
            return {}
        distill = self.go_lsd and "teacher_corners" in output
        return fgl_and_ddf_losses(
            output["pred_corners"], output["pred_boxes"], output["ref_points"], pairs.batch_idx, pairs.query_idx,
            targets.boxes[pairs.gt_idx], num_boxes, top["reg_scale"], top["up"],
            teacher_corners=output["teacher_corners"] if distill else None,
            teacher_logits=output["teacher_logits"] if distill else None,
            ddf_weights=ddf_weights, temperature=self.ddf_temperature,
        )


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
