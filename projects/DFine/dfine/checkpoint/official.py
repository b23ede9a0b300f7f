"""Conversion of checkpoints of the official repositories into checkpoints of our models.

Our RT-DETR-family modules use the official state-dict names, so the conversion is a strict check:
every key of our model must come from the official state dict with the same shape, and every
official key must be used. The only exceptions are listed in ``DERIVED_BUFFERS``: buffers that a
model rebuilds from its constructor arguments, which may be absent on either side. Official DINO
DN-DETR (DN-DAB-DETR, (DN-)DAB-Deformable-DETR) and Deformable-DETR checkpoints are first renamed into our layout
(:func:`official_to_ours` with their :class:`OfficialLayout`), then checked the same way.
"""
import re
import logging
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Pattern, Tuple

import torch
from torch import nn

__all__ = [
    "extract_official_state_dict",
    "OfficialLayout",
    "DINO_LAYOUT",
    "DN_DAB_DETR_LAYOUT",
    "DAB_DEFORMABLE_DETR_LAYOUT",
    "DEFORMABLE_DETR_LAYOUT",
    "official_layout",
    "official_to_ours",
    "convert_renamed_state_dict",
    "coco_category_ids",
    "convert_official_state_dict",
    "convert_backbone_state_dict",
    "fit_state_dict",
    "CheckpointMismatchError",
]

logger = logging.getLogger(__name__)

# Buffers computed from the configuration (anchors and the valid mask for eval_spatial_size,
# the per-level point scale of deformable attention) and BatchNorm's step counter. A checkpoint
# that lacks them is still complete; where both sides have them, the shapes must agree.
DERIVED_BUFFERS = ("anchors", "valid_mask", "num_points_scale", "num_batches_tracked")
# The most differences an error message lists per kind.
MAX_LISTED = 20


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model built from the config."""


def extract_official_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """The model weights of an official checkpoint: ``ema.module`` first (what the official
    tools evaluate and export), then ``model``, else the mapping itself if it is a state dict."""
    ema = checkpoint.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
        return dict(ema["module"])
    if isinstance(checkpoint.get("model"), Mapping):
        return dict(checkpoint["model"])
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise CheckpointMismatchError(
        "Not an official checkpoint: expected a state dict under 'ema.module' or 'model'; "
        f"found top-level keys {sorted(checkpoint)[:10]}"
    )


@dataclass(frozen=True)
class OfficialLayout:
    """How the state dict of an official model of the DETR lineage maps onto ours.

    Attributes:
        name: the official model, for messages.
        keys: official key regex -> our key (first match wins; ``re.sub`` replacement). ``{layer}`` in a
            replacement gives the tensor to every decoder layer's key (a head shared by all layers);
            ``{num_layers}`` in a regex is the official model's number of decoder layers (the index of
            two-stage Deformable-DETR's encoder heads, after the layers' own).
        alias: ``(regex, replacement)``: official keys that hold a tensor a second time and the key of
            its owner; they must equal the owner and are dropped.
        class_rows: our key prefixes whose rows are classes -> whether a last extra row (the "no class"
            label embedding) follows them.
        class_key: an official key whose first dimension is the number of classes.
        markers: official keys that only this model's state dict has.
        denoising_only: our key prefixes of tensors every official build has but only its denoising
            uses (dropped for our model without denoising).
    """

    name: str
    keys: Tuple[Tuple[str, str], ...]
    alias: Tuple[str, str]
    class_rows: Dict[str, bool]
    class_key: str
    markers: Tuple[str, ...]
    denoising_only: Tuple[str, ...] = ()

    def matches(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        return all(key in state_dict for key in self.markers)


# The deformable models' shared names (DINO, DAB-Deformable-DETR, Deformable-DETR): the backbone, the input
# projections, the level embedding, the encoder layers and the decoder layers, whose norms swap names
# (officially norm2 follows the self-attention and norm1 the cross-attention, ours the reverse).
_DEFORMABLE_TRUNK = (
    (r"^backbone\.0\.body\.", "backbone.body."),
    (r"^input_proj\.", "encoder.input_proj."),
    (r"^transformer\.level_embed$", "encoder.level_embed"),
    (r"^transformer\.encoder\.layers\.", "encoder.layers."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"decoder.decoder.layers.\1.norm2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"decoder.decoder.layers.\1.norm1."),
    (r"^transformer\.decoder\.layers\.", "decoder.decoder.layers."),
)
# Two-stage proposals: the memory's Linear + LayerNorm (DINO, Deformable-DETR).
_ENC_OUTPUT = (
    (r"^transformer\.enc_output\.", "decoder.enc_output.proj."),
    (r"^transformer\.enc_output_norm\.", "decoder.enc_output.norm."),
)
# One class head and one box head per decoder layer, ``{class,bbox}_embed.{l}``.
_LAYER_HEADS = (
    (r"^class_embed\.", "decoder.dec_score_head."),
    (r"^bbox_embed\.", "decoder.dec_bbox_head."),
)

# Official IDEA-Research/DINO. The shared heads are saved under every layer's key by both.
DINO_LAYOUT = OfficialLayout(
    name="DINO",
    keys=_DEFORMABLE_TRUNK + (
        (r"^backbone\.0\.", "backbone."),  # Swin
        (r"^transformer\.decoder\.norm\.", "decoder.decoder.norm."),
        (r"^transformer\.decoder\.ref_point_head\.", "decoder.query_pos_head."),
        (r"^transformer\.tgt_embed\.", "decoder.tgt_embed."),
    ) + _ENC_OUTPUT + (
        (r"^transformer\.enc_out_class_embed\.", "decoder.enc_score_head."),
        (r"^transformer\.enc_out_bbox_embed\.", "decoder.enc_bbox_head."),
        (r"^label_enc\.", "decoder.label_enc."),
    ) + _LAYER_HEADS,
    alias=(r"^transformer\.decoder\.(class_embed|bbox_embed)\.", r"\1."),
    class_rows={"decoder.enc_score_head.": False, "decoder.dec_score_head.": False, "decoder.label_enc.": True},
    class_key="class_embed.0.bias",
    markers=("transformer.tgt_embed.weight", "label_enc.weight"),
)

# Official IDEA-Research/DN-DETR, DN-DAB-DETR: one class head and one box head, given to every
# layer's key of our shared heads; the box head saved again for the decoder's refinement.
DN_DAB_DETR_LAYOUT = OfficialLayout(
    name="DN-DAB-DETR",
    keys=(
        (r"^backbone\.0\.body\.", "backbone.body."),
        (r"^input_proj\.", "encoder.input_proj."),
        (r"^transformer\.encoder\.", "encoder."),
        (r"^transformer\.decoder\.layers\.", "decoder.decoder.layers."),
        (r"^transformer\.decoder\.norm\.", "decoder.decoder.norm."),
        (r"^transformer\.decoder\.ref_point_head\.", "decoder.query_pos_head."),
        (r"^transformer\.decoder\.query_scale\.", "decoder.query_scale."),
        (r"^transformer\.decoder\.ref_anchor_head\.", "decoder.ref_anchor_head."),
        (r"^transformer\.patterns\.", "decoder.patterns."),
        (r"^refpoint_embed\.", "decoder.refpoint_embed."),
        (r"^label_enc\.", "decoder.label_enc."),
        (r"^class_embed\.", "decoder.dec_score_head.{layer}."),
        (r"^bbox_embed\.", "decoder.dec_bbox_head.{layer}."),
    ),
    alias=(r"^transformer\.decoder\.bbox_embed\.", "bbox_embed."),
    class_rows={"decoder.dec_score_head.": False, "decoder.label_enc.": True},
    class_key="class_embed.bias",
    markers=("refpoint_embed.weight", "transformer.encoder.query_scale.layers.0.weight"),
)

# Official IDEA-Research/DN-DETR, (DN-)DAB-Deformable-DETR (models/dn_dab_deformable_detr): DINO's
# backbone, encoder and decoder-layer names; the query position head holds DAB's query_scale; learned
# anchors and content; per-layer heads, saved again for the refinement.
DAB_DEFORMABLE_DETR_LAYOUT = OfficialLayout(
    name="DAB-Deformable-DETR",
    keys=_DEFORMABLE_TRUNK + (
        (r"^transformer\.decoder\.ref_point_head\.", "decoder.query_pos_head."),
        (r"^transformer\.decoder\.query_scale\.", "decoder.query_pos_head.query_scale."),
        (r"^tgt_embed\.", "decoder.tgt_embed."),
        (r"^refpoint_embed\.", "decoder.refpoint_embed."),
        (r"^label_enc\.", "decoder.label_enc."),
    ) + _LAYER_HEADS,
    alias=(r"^transformer\.decoder\.bbox_embed\.", "bbox_embed."),
    class_rows={"decoder.dec_score_head.": False, "decoder.label_enc.": True},
    class_key="class_embed.0.bias",
    markers=("refpoint_embed.weight", "transformer.level_embed"),
    denoising_only=("decoder.label_enc.",),
)

# Official fundamentalvision/Deformable-DETR, two-stage with iterative box refinement: DINO's backbone,
# encoder and decoder-layer names; per-layer heads whose last clone (index num_layers) is the encoder's,
# each saved again under the decoder for the refinement and the proposals.
DEFORMABLE_DETR_LAYOUT = OfficialLayout(
    name="Deformable-DETR",
    keys=_DEFORMABLE_TRUNK + _ENC_OUTPUT + (
        (r"^transformer\.pos_trans\.", "decoder.pos_trans."),
        (r"^transformer\.pos_trans_norm\.", "decoder.pos_trans_norm."),
        (r"^class_embed\.{num_layers}\.", "decoder.enc_score_head."),
        (r"^bbox_embed\.{num_layers}\.", "decoder.enc_bbox_head."),
    ) + _LAYER_HEADS,
    alias=(r"^transformer\.decoder\.(class_embed|bbox_embed)\.", r"\1."),
    class_rows={"decoder.enc_score_head.": False, "decoder.dec_score_head.": False},
    class_key="class_embed.0.bias",
    markers=("transformer.pos_trans.weight", "transformer.level_embed"),
)

OFFICIAL_LAYOUTS = (DINO_LAYOUT, DN_DAB_DETR_LAYOUT, DAB_DEFORMABLE_DETR_LAYOUT, DEFORMABLE_DETR_LAYOUT)


def official_layout(state_dict: Mapping[str, torch.Tensor]) -> Optional[OfficialLayout]:
    """The layout of :data:`OFFICIAL_LAYOUTS` whose marker keys ``state_dict`` has, or None (the RT-DETR
    family, whose names are ours)."""
    return next((layout for layout in OFFICIAL_LAYOUTS if layout.matches(state_dict)), None)


def official_to_ours(official: Mapping[str, torch.Tensor], layout: OfficialLayout,
                     class_ids: Optional[List[int]] = None, denoising: bool = True) -> Dict[str, torch.Tensor]:
    """An official state dict in our layout (``layout.keys``).

    The alias keys must hold the same values as their owners and are dropped. With ``class_ids`` (our
    class ``k`` is the official class ``class_ids[k]``: for COCO, the official models index the 91
    category ids and Detectron2 the 80 contiguous ones), the class rows of ``layout.class_rows`` are
    taken in that order (a "no class" last row is kept last). Without ``denoising`` (our model without
    the official denoising), the tensors of ``layout.denoising_only`` are dropped.

    Raises:
        CheckpointMismatchError: an alias that differs from its owner, or a key of no known part.
    """
    alias_pattern, alias_owner = layout.alias
    layers = {int(m.group(1)) for key in official for m in [re.match(r"^transformer\.decoder\.layers\.(\d+)\.", key)]
              if m}
    out, unknown = {}, []
    for key, value in official.items():
        if re.match(alias_pattern, key):
            owner = re.sub(alias_pattern, alias_owner, key)
            if owner not in official or not torch.equal(official[owner], value):
                raise CheckpointMismatchError(f"{key} is not the shared head {owner} of an official {layout.name} "
                                              "model")
            continue
        for pattern, replacement in layout.keys:
            pattern = pattern.replace("{num_layers}", str(len(layers)))
            if re.match(pattern, key):
                targets = [replacement.format(layer=i) for i in sorted(layers)] if "{layer}" in replacement \
                    else [replacement]
                out.update({re.sub(pattern, target, key): value for target in targets})
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(f"Keys of no {layout.name} part: {unknown[:MAX_LISTED]}")
    if class_ids is not None:
        for key, value in out.items():
            for prefix, extra_row in layout.class_rows.items():
                if key.startswith(prefix):
                    out[key] = value[list(class_ids) + ([value.shape[0] - 1] if extra_row else [])]
    if not denoising:
        out = {k: v for k, v in out.items() if not k.startswith(layout.denoising_only)}
    return out


def coco_category_ids() -> List[int]:
    """COCO's 80 category ids in the order of Detectron2's contiguous classes 0..79 (ids 1..90 with
    gaps: the rows the official 91-class heads use)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["id"] for c in COCO_CATEGORIES if c["isthing"]]


def convert_renamed_state_dict(official: Mapping[str, torch.Tensor], model: nn.Module,
                               layout: OfficialLayout) -> Dict[str, torch.Tensor]:
    """An official state dict of ``layout`` for ``model`` (:func:`official_to_ours`, then the strict check
    of :func:`convert_official_state_dict`). A 91-row checkpoint (COCO category ids, as every official
    COCO model) loads into an 80-class model (Detectron2's contiguous COCO classes) by taking the rows
    of :func:`coco_category_ids`; other class counts must be equal. The denoising-only tensors are kept
    exactly when ``model`` has them."""
    rows = official[layout.class_key].shape[0] if layout.class_key in official else None
    classes = getattr(getattr(model, "decoder", None), "num_classes", rows)
    class_ids = None
    if rows != classes:
        if (rows, classes) != (91, 80):
            raise CheckpointMismatchError(f"The checkpoint has {rows} classes, the model {classes}: only the official "
                                          "91 COCO category ids map onto Detectron2's 80 COCO classes")
        class_ids = coco_category_ids()
    denoising = not layout.denoising_only or any(k.startswith(layout.denoising_only) for k in model.state_dict())
    return convert_official_state_dict(official_to_ours(official, layout, class_ids, denoising), model)


def _is_derived(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in DERIVED_BUFFERS


def fit_state_dict(
    checkpoint: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    header: str,
    reinitialisable: Optional[Pattern] = None,
    rebuild_mismatched_buffers: bool = False,
) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """Check a checkpoint's state dict against a model's, key for key and shape for shape.

    Args:
        header: first line of the error message.
        reinitialisable: keys that may differ in their first dimension (the number of classes); the
            model keeps its own tensors for them.
        rebuild_mismatched_buffers: whether ``DERIVED_BUFFERS`` present on both sides may also
            differ in shape (they are always allowed to be absent on either side).

    Returns:
        ``(the checkpoint's tensors to load, re-initialised keys, buffers not taken from the
        checkpoint)``, the last two as ``"key: checkpoint (80, 256) -> model (3, 256)"``-style
        descriptions.

    Raises:
        CheckpointMismatchError: ``header``, then every missing, unexpected and mis-shaped key, so
            that a checkpoint of another architecture or size is reported at once and in full.
    """
    load, reinitialised, rebuilt, missing, mismatched = {}, [], [], [], []
    for key, value in model_state.items():
        ours = tuple(value.shape)
        theirs = tuple(checkpoint[key].shape) if key in checkpoint else None
        if ours == theirs:
            load[key] = checkpoint[key]
        elif _is_derived(key) and (theirs is None or rebuild_mismatched_buffers):
            rebuilt.append(
                f"{key}: " + ("not in the checkpoint" if theirs is None else f"checkpoint {theirs} -> model {ours}")
            )
        elif theirs is None:
            missing.append(key)
        elif reinitialisable is not None and reinitialisable.search(key) and ours[1:] == theirs[1:]:
            reinitialised.append(f"{key}: checkpoint {theirs} -> model {ours}")
        else:
            mismatched.append(f"{key}: checkpoint {theirs} vs model {ours}")
    extra = [key for key in checkpoint if key not in model_state]
    rebuilt += [f"{key}: not in the model" for key in extra if _is_derived(key)]
    unexpected = [key for key in extra if not _is_derived(key)]
    if missing or unexpected or mismatched:
        lines = [header]
        for title, keys in (("missing in the checkpoint", missing), ("not in the model", unexpected),
                            ("shape mismatch", mismatched)):
            if keys:
                more = f"\n    ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
                lines.append(f"  {len(keys)} key(s) {title}:\n    " + "\n    ".join(keys[:MAX_LISTED]) + more)
        raise CheckpointMismatchError("\n".join(lines))
    return load, reinitialised, rebuilt


def convert_official_state_dict(official: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Check ``official`` against ``model`` strictly (:func:`fit_state_dict`; only absent
    ``DERIVED_BUFFERS`` are rebuilt) and return the whole state dict to load into it.

    Raises:
        CheckpointMismatchError: listing every missing, unexpected and mis-shaped key.
    """
    ours = model.state_dict()
    load, _, rebuilt = fit_state_dict(official, ours, "The checkpoint does not match the model built from the config.")
    if rebuilt:
        logger.info("Buffers rebuilt from the config, not taken from the checkpoint: %s", ", ".join(rebuilt))
    return {**ours, **load}


def _backbone_prefix(official: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> str:
    """The submodule of ``backbone`` that the pretrained file is for: of ``backbone.`` and its
    nested trunks (``backbone.dinov3.``, ``backbone.dinov3._model.``, the DEIMv2 ViT layouts), the
    prefix under which most of the file's keys exist in the model."""
    candidates = sorted({key[: i + 1] for key in model_state if key.startswith("backbone.")
                         for i, ch in enumerate(key) if ch == "."})
    hits = {prefix: sum(prefix + key in model_state for key in official) for prefix in candidates}
    best = max(hits, key=lambda prefix: (hits[prefix], -len(prefix)))
    if hits[best] == 0:
        raise CheckpointMismatchError(
            f"None of the file's keys (e.g. {sorted(official)[:5]}) is a key of the model's backbone or of its trunk.")
    return best


def convert_backbone_state_dict(
    official: Mapping[str, torch.Tensor], model: nn.Module, partial: bool = False
) -> Tuple[Dict[str, torch.Tensor], str, List[str]]:
    """Pretrained backbone weights (official HGNetv2 ``PPHGNetV2_*_stage1.pth``, DINOv3
    ``dinov3_vits16*_pretrain_*.pth``, DEIMv2's ``vitt*_distill.pt``) placed into a whole-model state
    dict: the backbone part comes from ``official``, everything else keeps the model's initialisation.

    The keys are matched under the backbone prefix where most of them exist
    (:func:`_backbone_prefix`). Without ``partial`` every key of that submodule must come from the
    file with its shape, and every key of the file must be used (as the official code loads these
    files with ``strict=True``). With ``partial`` the tensors of equal key and shape are taken and the
    rest is reported: the official way to start the pruned HGNetv2 Atto / Femto / Pico from B0.

    Returns:
        ``(whole state dict, prefix, descriptions of what was not taken)``.
    """
    ours = model.state_dict()
    prefix = _backbone_prefix(official, ours)
    sub = {key[len(prefix):]: value for key, value in ours.items() if key.startswith(prefix)}
    if partial:
        load = {
            key: value for key, value in official.items() if key in sub and tuple(value.shape) == tuple(sub[key].shape)
        }
        skipped = [f"{key}: not in the model" if key not in sub else
                   f"{key}: file {tuple(value.shape)} vs model {tuple(sub[key].shape)}"
                   for key, value in official.items() if key not in load]
        skipped += [f"{key}: not in the file, keeps its initialisation" for key in sub if key not in official]
    else:
        load, _, rebuilt = fit_state_dict(
            official, sub, f"The file does not match the model's {prefix.rstrip('.')} (use partial loading for a "
                           "pruned backbone).")
        skipped = rebuilt
    return {**ours, **{prefix + key: value for key, value in load.items()}}, prefix, skipped
