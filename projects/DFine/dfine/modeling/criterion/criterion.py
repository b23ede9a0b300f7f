"""The set criterion of the DETR family: which predictions are supervised, with which pairs, by which terms."""
import itertools
from typing import Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.utils.events import get_event_storage
from torch import nn

from ..decoder.outputs import DecoderOutput, DenoisingPart, Predictions
from ..layers.common import to_float32
from .losses import ddf_balance_weights
from .matcher import union_matched_indices
from .terms import BatchTargets, LossContext, LossTerm, MatchedPairs

__all__ = ["SetCriterion", "GROUPS"]

# The named groups of a decoder's predictions, in the order of the loss dict (the official order).
GROUPS = ("final", "aux", "pre", "denoising", "encoder")


class _Supervised(NamedTuple):
    """One supervised output: its group, the key suffix of its losses, its predictions and its
    GO-LSD teacher (the last layer of its branch; None for outputs that distil nothing)."""

    group: str
    suffix: str
    predictions: Predictions
    teacher: Optional[Predictions] = None


class _Supervision(NamedTuple):
    """The pairs an output's loss terms use and their normaliser."""

    pairs: MatchedPairs
    num_boxes: torch.Tensor


def _hungarian_pairs(indices, sizes: List[int], device: torch.device) -> MatchedPairs:
    """Pairs from the matcher's per-image ``(query_idx, gt_idx)`` CPU tensors."""
    offsets = [0, *itertools.accumulate(sizes)]
    batch_idx = torch.cat([torch.full_like(query_idx, i) for i, (query_idx, _) in enumerate(indices)])
    query_idx = torch.cat([query_idx for query_idx, _ in indices])
    gt_idx = torch.cat([gt_idx + offset for (_, gt_idx), offset in zip(indices, offsets)])
    return MatchedPairs(batch_idx.to(device), query_idx.to(device), gt_idx.to(device))


def _denoising_pairs(denoising: DenoisingPart, sizes: List[int]) -> MatchedPairs:
    """Pairs of the denoising queries (built on the device, no host synchronisation).

    Denoising group g of image i holds one positive query per ground truth, in ground-truth order;
    ``positive_idx[i]`` lists these queries group after group, so they pair with ``arange(G_i)``
    repeated ``num_groups`` times.
    """
    batch_idx, gt_idx = [], []
    offset = 0
    for i, (num_gt, queries) in enumerate(zip(sizes, denoising.positive_idx)):
        if len(queries) != num_gt * denoising.num_groups:
            raise ValueError(f"positive_idx[{i}] has {len(queries)} denoising queries, expected {num_gt} ground "
                             f"truths x {denoising.num_groups} denoising groups")
        batch_idx.append(torch.full_like(queries, i))
        gt_idx.append(torch.arange(offset, offset + num_gt, device=queries.device).repeat(denoising.num_groups))
        offset += num_gt
    return MatchedPairs(torch.cat(batch_idx), torch.cat(list(denoising.positive_idx)), torch.cat(gt_idx))


def _positives(predictions: Predictions, supervision: "_Supervision"):
    """The paired queries of ``predictions`` alone, as one image of ``N`` queries (pair ``k`` is
    query ``k``), with the supervision re-indexed to them: the classification terms then see no
    unpaired query (DN-DETR's denoising loss)."""
    pairs = supervision.pairs
    picked = Predictions(**{name: None if value is None else value[pairs.batch_idx, pairs.query_idx][None]
                            for name, value in vars(predictions).items()})
    query_idx = torch.arange(len(pairs.query_idx), device=pairs.query_idx.device)
    return picked, _Supervision(MatchedPairs(torch.zeros_like(query_idx), query_idx, pairs.gt_idx),
                                supervision.num_boxes)


def _log_scalar(name: str, value: float) -> None:
    """Into the training's event storage (metrics.json), when a forward runs inside one."""
    try:
        storage = get_event_storage()
    except (AssertionError, IndexError):  # no EventStorage: a forward outside the trainer
        return
    storage.put_scalar(name, value, smoothing_hint=False)


def _outputs(outputs: DecoderOutput) -> List[_Supervised]:
    """Every supervised output, in the order of the loss dict: the last layer (``""``), the earlier
    layers (``_aux_{i}``), the first layer's initial boxes (``_pre``), the denoising layers
    (``_dn_{i}``, ``_dn_pre``), the encoder proposals (``_enc_0``). GO-LSD teachers, as officially: the
    auxiliary layers and every denoising layer distil from their branch's last layer."""
    matching = outputs.matching
    final = matching.final
    supervised = [_Supervised("final", "", final)]
    supervised += [_Supervised("aux", f"_aux_{i}", p, final) for i, p in enumerate(matching.layers[:-1])]
    if matching.pre is not None:
        supervised.append(_Supervised("pre", "_pre", matching.pre))
    if outputs.denoising is not None:
        branch = outputs.denoising.branch
        supervised += [_Supervised("denoising", f"_dn_{i}", p, branch.final) for i, p in enumerate(branch.layers)]
        if branch.pre is not None:
            supervised.append(_Supervised("denoising", "_dn_pre", branch.pre))
    if outputs.proposals is not None:
        supervised.append(_Supervised("encoder", "_enc_0", outputs.proposals))
    return supervised


class SetCriterion(nn.Module):
    """Losses of a DETR: a matching per output, then every loss term on every output that carries
    what the term reads.

    The outputs of a :class:`~dfine.modeling.decoder.outputs.DecoderOutput` form named groups
    (:data:`GROUPS`), each with its matching rule and normaliser:

    * ``final``, ``aux``, ``pre`` (D-FINE's first-layer boxes) and ``encoder`` (the proposals): their
      own Hungarian match, ``num_boxes``; class-agnostic proposals are matched and supervised as if
      every ground truth were class 0;
    * ``denoising``: the positives of the denoising part by construction, ``num_boxes * num_groups``
      (``denoising_normaliser="global"``, DINO and the RT-DETR family), or this process's ground-truth
      count times ``num_groups``, neither averaged over processes nor clamped (``"local"``, DN-DETR's
      ``num_tgt``; a batch without boxes has no denoising pair, its losses are 0). The other denoising
      queries (DINO's negatives, the padding of images with fewer boxes) are background for the
      classification terms, unless ``denoising_positives_only`` (DN-DETR: its classification loss
      sees the positive queries only, as a set of ``num_tgt`` queries).

    With ``go_lsd`` (D-FINE's Globally Optimal Localization Self-Distillation) the box terms
    (``supervises_boxes``) of every Hungarian-matched output use instead the union of all these
    matches (:func:`~.matcher.union_matched_indices`), normalised by its size, and the distribution
    term adds the DDF distillation of the auxiliary and denoising layers. Proposals of every memory
    token (Deformable-DETR's) are other queries than the decoder's: they keep their own matches and
    stay out of the union. DEIM's and DEIMv2's ``use_uni_set`` is ``go_lsd``.

    ``num_boxes`` is the number of ground-truth boxes averaged over processes, at least 1. It stays a
    tensor on the device: the host waits for the device only where the matcher hands its costs to
    scipy. Every process returns the same keys whatever its ground truth (losses are then 0 but part
    of the graph), so distributed training cannot hang.

    Args:
        matcher: returns per-image ``(query_idx, gt_idx)`` pairs, see :class:`~.matcher.HungarianMatcher`.
        terms: the loss terms a config may use (:mod:`.terms`), each with its own ``name``.
        losses: the names of the terms in use, in the order of their keys in the loss dict (an
            ablation switches a term with one override, e.g. ``model.criterion.losses=[vfl,boxes]``).
        weight_dict: weight of every loss key the terms produce (``loss_vfl``, ``loss_bbox``, ...).
        num_classes: ``K`` of the logits (no background slot).
        go_lsd: the union-set matching of the box terms and the DDF distillation (D-FINE and
            DEIM-D-FINE; off for RT-DETRv2 and DEIM-RT-DETRv2, and for the GO-LSD ablation).
        group_weights: a factor per group of :data:`GROUPS` on every loss of that group (1 if absent).
        denoising_normaliser: ``"global"`` or ``"local"``, see above.
        denoising_positives_only: see above.
    """

    def __init__(self, matcher: nn.Module, terms: Sequence[LossTerm], losses: Sequence[str],
                 weight_dict: Dict[str, float], num_classes: int, go_lsd: bool = False,
                 group_weights: Optional[Dict[str, float]] = None, denoising_normaliser: str = "global",
                 denoising_positives_only: bool = False):
        super().__init__()
        if denoising_normaliser not in ("global", "local"):
            raise ValueError(f"Unknown denoising_normaliser {denoising_normaliser!r}; choose 'global' or 'local'")
        names = [term.name for term in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"Two loss terms have the same name: {names}")
        unknown = [name for name in losses if name not in names]
        if unknown:
            raise ValueError(f"Unknown loss terms {unknown}; the criterion has {names}")
        for term in terms:
            unweighted = [key for key in term.keys if term.name in losses and key not in weight_dict]
            if unweighted:
                raise KeyError(f"weight_dict has no weight for {unweighted} of the loss term {term.name!r}")
        unknown_groups = sorted(set(group_weights or {}) - set(GROUPS))
        if unknown_groups:
            raise ValueError(f"Unknown groups {unknown_groups} in group_weights; the groups are {GROUPS}")
        self.matcher = matcher
        self.terms = nn.ModuleDict({term.name: term for term in terms})
        self.losses = tuple(losses)
        self.weight_dict = dict(weight_dict)
        self.num_classes = num_classes
        self.go_lsd = go_lsd
        self.group_weights = dict(group_weights or {})
        self.denoising_normaliser = denoising_normaliser
        self.denoising_positives_only = denoising_positives_only

    def loss_group(self, key: str) -> str:
        """The group the training log sums loss ``key`` into: "denoising" for every loss of the
        denoising queries, else its term's ``kind`` (classification, boxes, distribution)."""
        if "_dn_" in key:
            return "denoising"
        for term in self.terms.values():
            if any(key == k or key.startswith(k + "_") for k in term.keys):
                return term.kind
        return "other"

    def forward(self, outputs: DecoderOutput, targets: List[Dict[str, torch.Tensor]],
                epoch: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs: the decoder's training output.
            targets: B dicts with ``labels`` ``[G_i]`` int64 and ``boxes`` ``[G_i, 4]`` (normalised
                cxcywh), on the device of the outputs.
            epoch: the training epoch (a Python int), handed to every matcher call as ``epoch=``
                (DEIMv2's matcher switch); None calls the matcher without it.

        Returns:
            Weighted losses, ``{"loss_vfl": ..., "loss_bbox_aux_0": ..., "loss_giou_dn_5": ...}``.
        """
        device = outputs.final.logits.device
        # The official engine computes the losses outside autocast; here on float32 outputs too, so
        # that no loss, match or box decoding runs in float16.
        with torch.autocast(device.type, enabled=False):
            outputs = to_float32(outputs)
            sizes = [len(t["labels"]) for t in targets]
            batch_targets = BatchTargets(torch.cat([t["labels"] for t in targets]),
                                         torch.cat([t["boxes"] for t in targets]), sizes, self.num_classes)
            num_boxes = self._num_boxes(sum(sizes), device)
            supervised = _outputs(outputs)

            # Every Hungarian match first: the union set needs all of them.
            match_kwargs = {} if epoch is None else {"epoch": epoch}
            if epoch is not None and getattr(self.matcher, "change_matcher", False):
                _log_scalar("matcher/iou_order_cost", float(self.matcher.uses_iou_order_cost(epoch)))
            indices = {}
            for output in supervised:
                if output.group != "denoising":
                    output_targets, _ = self._targets(output, targets, batch_targets)
                    indices[output.suffix] = self.matcher(output.predictions, output_targets, **match_kwargs)

            union, ddf_weights = None, None
            # The union set joins the matches of the outputs on the matching queries themselves: every
            # layer, the initial boxes and the selected proposals, not every token's proposal
            # (Deformable-DETR), whose query indices are other queries'.
            num_queries = outputs.final.logits.shape[1]
            in_union = {output.suffix for output in supervised
                        if output.suffix in indices and output.predictions.logits.shape[1] == num_queries}
            if self.go_lsd:
                union_indices = union_matched_indices(indices[""], [v for k, v in indices.items()
                                                                    if k != "" and k in in_union])
                union = _Supervision(_hungarian_pairs(union_indices, sizes, device),
                                     self._num_boxes(sum(len(q) for q, _ in union_indices), device))
                # DDF balances matched and unmatched queries by the union set's counts, for the
                # denoising outputs too (as the official criterion, which keeps the last ones).
                ddf_weights = ddf_balance_weights(union.pairs.batch_idx, union.pairs.query_idx,
                                                  *outputs.final.logits.shape[:2])
            if outputs.denoising is not None:
                groups = outputs.denoising.num_groups
                if self.denoising_normaliser == "local":
                    # Clamped only so that a batch without boxes (no pair, losses 0) does not divide 0 by 0.
                    dn_normaliser = torch.full((), float(sum(sizes) * groups), dtype=torch.float32,
                                               device=device).clamp(min=1)
                else:
                    dn_normaliser = num_boxes * groups
                denoising = _Supervision(_denoising_pairs(outputs.denoising, sizes), dn_normaliser)

            losses = {}
            for output in supervised:
                _, output_targets = self._targets(output, targets, batch_targets)
                predictions, teacher = output.predictions, output.teacher if self.go_lsd else None
                if output.group == "denoising":
                    own, box_supervision = denoising, denoising
                    if self.denoising_positives_only:
                        predictions, own = _positives(predictions, denoising)
                        box_supervision = own
                        # The teacher's queries are the student's: its positives too.
                        teacher = None if teacher is None else _positives(teacher, denoising)[0]
                else:
                    own = _Supervision(_hungarian_pairs(indices[output.suffix], sizes, device), num_boxes)
                    box_supervision = union if union is not None and output.suffix in in_union else own
                context = LossContext(outputs.geometry, teacher, ddf_weights)
                factor = self.group_weights.get(output.group, 1.0)
                for name in self.losses:
                    term = self.terms[name]
                    if not term.applies_to(predictions):
                        continue
                    pairs, normaliser = box_supervision if term.supervises_boxes else own
                    for key, value in term(predictions, output_targets, pairs, normaliser, context).items():
                        weighted = value * self.weight_dict[key]
                        losses[key + output.suffix] = weighted if factor == 1.0 else weighted * factor
        return losses

    @staticmethod
    def _targets(output: _Supervised, targets, batch_targets: BatchTargets):
        """The per-image and concatenated ground truth of ``output``: every ground truth as class 0
        for class-agnostic proposals, whose logits are one objectness column (the official RT-DETR
        code would match them against the real labels, which indexes past the logits as soon as a
        label is not 0) or, in two-stage Deformable-DETR, all classes' (the first one the objectness,
        the others negatives)."""
        if not getattr(output.predictions, "class_agnostic", False):
            return targets, batch_targets
        agnostic = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
        return agnostic, batch_targets._replace(labels=torch.zeros_like(batch_targets.labels),
                                                num_classes=output.predictions.logits.shape[-1])

    @staticmethod
    def _num_boxes(local_count: int, device: torch.device) -> torch.Tensor:
        """Ground-truth boxes per process, averaged over processes, at least 1 (0-dim float tensor)."""
        # Filled on the device, unlike torch.tensor(), which copies from the host and waits.
        num_boxes = torch.full((), float(local_count), dtype=torch.float32, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_boxes)
            num_boxes = num_boxes / dist.get_world_size()
        return num_boxes.clamp(min=1)

