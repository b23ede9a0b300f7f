"""The DETR decoder as a composition of parts.

:class:`DetrDecoder` runs, in order: the input projection (memory), the query selection, the
denoising queries (training), and the decoder layers, each followed by the class head and the box
head with its refinement rule. Every part is a module given to it by the config; a family is a
choice of parts (see projects/DFine/README.md). It returns a typed
:class:`~.outputs.DecoderOutput`.

State-dict layout. The parts group the modules by role (``decoder.query_selection.enc_score_head``),
while checkpoints use the official RT-DETR layout (``decoder.enc_score_head``), so that official
checkpoints and their regex parameter groups apply unchanged. The decoder saves and loads its
tensors under the official keys (:data:`OFFICIAL_LAYOUT`); ``named_parameters()`` keeps the module
paths.
"""
import copy
import itertools
from typing import Dict, List, Optional

import torch
from torch import nn

from .denoising import DenoisingQueries, DnDetrDenoising
from .input_projection import valid_ratios
from .outputs import Branch, DecoderOutput, DenoisingPart, Predictions

__all__ = ["DetrDecoder", "OFFICIAL_LAYOUT"]

# Module path prefix -> state-dict key prefix (first match wins).
OFFICIAL_LAYOUT = (
    ("layers.", "decoder.layers."),
    ("norm.", "decoder.norm."),
    ("box_head.lqe_layers.", "decoder.lqe_layers."),
    ("query_selection.", ""),
    ("class_head.", ""),
    ("box_head.", ""),
    ("denoising.", ""),
)
# The official D-FINE decoder holds W(n)'s parameters twice: saved under both keys, loaded from one.
OFFICIAL_ALIASES = {"decoder.up": "up", "decoder.reg_scale": "reg_scale"}
# The order of the official modules' tensors in a state dict (the official registration order).
OFFICIAL_ORDER = ("up", "reg_scale", "anchors", "valid_mask", "input_proj", "decoder.up", "decoder.reg_scale",
                  "decoder.layers", "decoder.norm", "decoder.lqe_layers", "denoising_class_embed", "tgt_embed",
                  "query_pos_head", "enc_output", "pos_trans", "pos_trans_norm", "enc_score_head", "enc_bbox_head",
                  "dec_score_head", "dec_bbox_head", "pre_bbox_head")


def _official_key(path: str) -> str:
    for ours, official in OFFICIAL_LAYOUT:
        if path.startswith(ours):
            return official + path[len(ours):]
    return path


def _order(key: str) -> int:
    for rank, name in enumerate(OFFICIAL_ORDER):
        if key == name or key.startswith(name + "."):
            return rank
    return len(OFFICIAL_ORDER)


def _save_in_official_layout(module, state_dict, prefix, local_metadata):
    # The decoder's entries are the last ones of `state_dict` here: re-inserted renamed and in the
    # official order, they stay together after those of the modules saved before it.
    ours = {key[len(prefix):]: state_dict.pop(key) for key in [k for k in state_dict if k.startswith(prefix)]}
    official = {_official_key(path): value for path, value in ours.items()}
    for alias, source in OFFICIAL_ALIASES.items():
        if source in official:
            official[alias] = official[source]
    for key in sorted(official, key=_order):  # stable: modules keep their own order
        state_dict[prefix + key] = official[key]


def _load_from_official_layout(module, state_dict, prefix, *args):
    paths = itertools.chain(
        module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)
    )
    ours = {_official_key(path): path for path, _ in paths}
    for alias in OFFICIAL_ALIASES:
        state_dict.pop(prefix + alias, None)
    for key in [k for k in state_dict if k.startswith(prefix)]:
        path = ours.get(key[len(prefix):])
        if path is not None and prefix + path != key:
            state_dict[prefix + path] = state_dict.pop(key)


class DetrDecoder(nn.Module):
    """Decoder of a DETR built from parts.

    Args:
        num_classes: foreground classes ``K`` (no background slot; sigmoid scores).
        hidden_dim: query width ``C``.
        num_queries: matching queries.
        num_layers: decoder layers.
        num_levels: memory levels.
        eval_idx: the layer whose predictions are returned in eval (negative counts from the end).
        aux_loss: return, in training, every layer, the proposals and the denoising part (else only
            the last layer).
        input_proj: input maps -> :class:`~.input_projection.Memory`
            (:class:`~.input_projection.InputProjection`).
        query_selection: memory -> initial queries and proposals (:class:`~.query_selection.EncoderTopK`).
        layer: one decoder layer (:class:`~.layer.DeformableDecoderLayer`), cloned ``num_layers``
            times so that every layer starts from the same weights, as officially.
        query_pos_head: reference boxes -> query position embedding (:class:`~.heads.BoxPositionEmbedding`);
            one whose ``content_scaled`` is True also takes, after the first layer, the content the
            layer receives (DAB-DETR's ``query_scale``, :class:`~.heads.SineBoxPositionEmbedding`).
            None where the query selection makes the position embedding of every layer (two-stage
            Deformable-DETR, ``EncoderTopK(embed_proposals=True)``).
        class_head: per-layer class logits (:class:`~.heads.ClassHead`).
        box_head: per-layer boxes and the refinement rule (:class:`~.heads.BoxHead`).
        denoising: denoising queries in training (:class:`~.denoising.ContrastiveDenoising`), or None.
        output_norm: a LayerNorm on every layer's output before the class and box heads (DINO's
            ``decoder.norm``; the next layer still gets the output itself), or none.
        image_relative_boxes: boxes in the frame of each unpadded image, as DETR, Deformable-DETR and
            DINO predict them (targets are normalised by each image's size, and reference boxes
            are scaled by each level's valid ratio where the decoder samples the memory and embeds
            their position); else in the frame of the padded batch (the RT-DETR family, which
            officially never pads). The two agree on unpadded batches.
    """

    def __init__(self, *, num_classes: int, hidden_dim: int, num_queries: int, num_layers: int, num_levels: int,
                 input_proj: nn.Module, query_selection: nn.Module, layer: nn.Module,
                 query_pos_head: Optional[nn.Module], class_head: nn.Module, box_head: nn.Module,
                 denoising: Optional[nn.Module] = None, eval_idx: int = -1, aux_loss: bool = True,
                 output_norm: bool = False, image_relative_boxes: bool = False):
        super().__init__()
        if not -num_layers <= eval_idx < num_layers:
            raise ValueError(f"eval_idx {eval_idx} is not a layer of a {num_layers}-layer decoder")
        if len(input_proj) != num_levels:
            raise ValueError(f"The decoder's input_proj makes {len(input_proj)} memory levels, its num_levels is "
                             f"{num_levels}")
        selection_strides = getattr(query_selection, "feat_strides", None)
        if selection_strides is not None and list(selection_strides) != list(input_proj.strides):
            raise ValueError(f"The decoder's query_selection anchors levels of strides {list(selection_strides)}, its "
                             f"input_proj makes levels of strides {list(input_proj.strides)}")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.num_levels = num_levels
        self.eval_idx = eval_idx % num_layers
        self.aux_loss = aux_loss
        self.input_proj = input_proj
        self.layers = nn.ModuleList(layer if i == 0 else copy.deepcopy(layer) for i in range(num_layers))
        self.query_selection = query_selection
        self.query_pos_head = query_pos_head
        self.class_head = class_head
        self.box_head = box_head
        self.denoising = denoising
        self.norm = nn.LayerNorm(hidden_dim) if output_norm else None
        self.image_relative_boxes = image_relative_boxes
        self._register_state_dict_hook(_save_in_official_layout)
        self._register_load_state_dict_pre_hook(_load_from_official_layout, with_module=True)

    @property
    def feat_channels(self) -> List[int]:
        """Channels of the input maps the decoder expects."""
        return self.input_proj.in_channels

    def convert_to_deploy(self):
        """The official deploy forms: with edge distributions (the D-FINE family) the layers after
        ``eval_idx`` and the heads eval never uses are dropped; with deltas (RT-DETRv2, whose official
        decoder has no deploy conversion) nothing changes."""
        if self.box_head.distributions:
            self.layers = self.layers[: self.eval_idx + 1]
            self.class_head.convert_to_deploy()
            self.box_head.convert_to_deploy()
        return self.eval()

    def forward(self, feats: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None,
                padding_mask: Optional[torch.Tensor] = None) -> DecoderOutput:
        """
        Args:
            feats: ``[B, feat_channels[l], H_l, W_l]`` per input map, finest first.
            targets: training only, per image ``{"labels": int64 [n], "boxes": [n, 4] normalised
                cxcywh}`` (for the denoising queries).
            padding_mask: optional ``[B, H, W]`` bool at input resolution, True on the zero padding
                of images smaller than the batch; padded memory is neither proposed nor attended to.
        """
        memory = self.input_proj(feats, padding_mask)
        selection = self.query_selection(memory, image_relative=self.image_relative_boxes)
        content, reference_unact, attn_mask = selection.content, selection.reference_unact, None
        denoising = self._denoising_queries(targets, content.shape[1]) \
            if self.training and self.denoising is not None else None
        if denoising is not None and selection.query_pos is not None:
            raise ValueError("Denoising queries need the decoder's query_pos_head: this query selection makes the "
                             "position embedding of its own queries only")
        if selection.query_pos is None and self.query_pos_head is None:
            raise ValueError("The decoder has no query_pos_head and its query selection makes no query position")
        if denoising is not None:
            # Denoising queries go first, as positive_idx assumes.
            content = torch.cat([denoising.content, content], 1)
            reference_unact = torch.cat([denoising.reference_unact, reference_unact], 1)
            attn_mask = denoising.attn_mask
        layers, pre = self._decode(content, reference_unact, memory, attn_mask, self._level_scale(memory),
                                   selection.query_pos)
        geometry = self.box_head.geometry
        if not self.training:
            return DecoderOutput(Branch(layers), geometry=geometry)
        split = _Splitter(denoising)
        if not self.aux_loss:
            final = layers[-1] if denoising is None else split(layers[-1])[1]
            return DecoderOutput(Branch([final]), geometry=geometry)
        if denoising is None:
            return DecoderOutput(Branch(layers, pre), selection.proposals, geometry=geometry)
        dn_layers, layers = zip(*(split(p) for p in layers))
        dn_pre, pre = split(pre) if pre is not None else (None, None)
        dn = DenoisingPart(Branch(list(dn_layers), dn_pre), denoising.positive_idx, denoising.num_groups)
        return DecoderOutput(Branch(list(layers), pre), selection.proposals, dn, geometry)

    def _denoising_queries(self, targets, num_matching: int) -> Optional[DenoisingQueries]:
        """The denoising queries placed before the ``num_matching`` matching queries."""
        if isinstance(self.denoising, DnDetrDenoising):
            # DN-DETR's denoising embeds its labels with the query selection's label_enc.
            return self.denoising(targets, num_matching, self.query_selection.label_enc)
        return self.denoising(targets, num_matching)

    def _level_scale(self, memory) -> Optional[torch.Tensor]:
        """``[B, 1, L, 4]``: what turns an image-relative box into each level's frame (the valid
        ratios, :func:`~.input_projection.valid_ratios`, in float32 as the official code computes
        them, or float64 for a float64 model), or None where boxes are in the frame of the batch or
        no image is padded."""
        if not self.image_relative_boxes or memory.valid is None:
            return None
        ratios = valid_ratios(memory.valid, memory.spatial_shapes, memory.tokens.shape[0],
                              dtype=torch.promote_types(memory.tokens.dtype, torch.float32),
                              device=memory.tokens.device)
        return torch.cat([ratios, ratios], -1)[:, None]

    def _decode(self, content, reference_unact, memory, attn_mask, level_scale=None, shared_pos=None):
        """Every layer's predictions in training (only layer ``eval_idx``'s in eval), and the first
        layer's initial boxes (distribution heads, training) as ``(layers, pre)``. ``shared_pos``: the
        query position of every layer, when the query selection made it."""
        flow = self.box_head.begin(reference_unact.sigmoid())
        if shared_pos is None and self.query_pos_head.shared:
            shared_pos = self.query_pos_head(flow.reference)
        last = self.num_layers - 1 if self.training else self.eval_idx
        layers, pre = [], None
        for i in range(last + 1):
            reference = flow.reference if level_scale is None else flow.reference[:, :, None] * level_scale
            if shared_pos is not None:
                query_pos = shared_pos
            elif i > 0 and getattr(self.query_pos_head, "content_scaled", False):
                # DAB-DETR: the position embedding scaled by the content this layer receives.
                query_pos = self.query_pos_head(reference if level_scale is None else reference[:, :, 0], content)
            else:
                query_pos = self.query_pos_head(reference if level_scale is None else reference[:, :, 0])
            content = self.layers[i](content, reference, memory.tokens, memory.spatial_shapes, attn_mask,
                                     memory.valid, query_pos)
            output = None if self.norm is None else self.norm(content)
            boxes, flow = self.box_head(i, content, flow, output)
            if self.training or i == last:
                pre = self._predict(i, content if output is None else output, boxes, layers) or pre
        return layers, pre

    def _predict(self, i: int, output: torch.Tensor, boxes, layers: List[Predictions]) -> Optional[Predictions]:
        """Append layer ``i``'s predictions (class logits of ``output`` with the box head's quality
        term, and ``boxes``, a :class:`~.heads.LayerBoxes`) to ``layers``; return the predictions of
        the first layer's initial boxes (distribution heads, training), else None."""
        logits = self.box_head.quality(i, self.class_head(i, output), boxes)
        layers.append(Predictions(logits, boxes.boxes, boxes.corners, boxes.reference))
        if self.training and boxes.pre is not None:
            return Predictions(self.class_head(i, output), boxes.pre)
        return None


class _Splitter:
    """Splits predictions over all queries into ``(denoising part, matching part)`` (denoising
    first); a tensor shared by several layers (the reference boxes of distributions) is split once,
    so that the parts stay shared."""

    def __init__(self, denoising: Optional[DenoisingQueries]):
        self.size = None if denoising is None else denoising.content.shape[1]
        self.parts = {}

    def _tensor(self, x):
        if x is None:
            return None, None
        if id(x) not in self.parts:
            self.parts[id(x)] = (x[:, : self.size], x[:, self.size:])
        return self.parts[id(x)]

    def __call__(self, predictions: Predictions):
        parts = {name: self._tensor(getattr(predictions, name)) for name in ("logits", "boxes", "corners", "reference")}
        return tuple(Predictions(**{name: pair[k] for name, pair in parts.items()}) for k in (0, 1))
