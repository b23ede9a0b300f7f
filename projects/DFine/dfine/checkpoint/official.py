"""Conversion of checkpoints of the official repositories into checkpoints of our models.

Our RT-DETR-family modules use the official state-dict names, so the conversion is a strict check:
every key of our model must come from the official state dict with the same shape, and every
official key must be used. The only exceptions are listed in ``DERIVED_BUFFERS``: buffers that a
model rebuilds from its constructor arguments, which may be absent on either side. Official DINO
checkpoints are first renamed into our layout (:func:`dino_to_ours`), then checked the same way; so are
official DN-DETR DN-DAB-DETR checkpoints (:func:`dn_dab_detr_to_ours`) and (DN-)DAB-Deformable-DETR
checkpoints (:func:`dab_deformable_detr_to_ours`).
"""
import re
import logging
from typing import Dict, List, Mapping, Optional, Pattern, Tuple

import torch
from torch import nn

__all__ = [
    "extract_official_state_dict",
    "dino_to_ours",
    "convert_dino_state_dict",
    "is_dino_state_dict",
    "dn_dab_detr_to_ours",
    "convert_dn_dab_detr_state_dict",
    "is_dn_dab_detr_state_dict",
    "dab_deformable_detr_to_ours",
    "convert_dab_deformable_detr_state_dict",
    "is_dab_deformable_detr_state_dict",
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


# Official DINO key -> ours (first match wins; regex, then the replacement). The decoder layers' norms
# swap names: DINO's norm2 follows the self-attention and norm1 the cross-attention, ours the reverse.
DINO_KEYS = (
    (r"^backbone\.0\.body\.", "backbone.body."),
    (r"^backbone\.0\.", "backbone."),  # Swin
    (r"^input_proj\.", "encoder.input_proj."),
    (r"^transformer\.level_embed$", "encoder.level_embed"),
    (r"^transformer\.encoder\.layers\.", "encoder.layers."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"decoder.decoder.layers.\1.norm2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"decoder.decoder.layers.\1.norm1."),
    (r"^transformer\.decoder\.layers\.", "decoder.decoder.layers."),
    (r"^transformer\.decoder\.norm\.", "decoder.decoder.norm."),
    (r"^transformer\.decoder\.ref_point_head\.", "decoder.query_pos_head."),
    (r"^transformer\.tgt_embed\.", "decoder.tgt_embed."),
    (r"^transformer\.enc_output\.", "decoder.enc_output.proj."),
    (r"^transformer\.enc_output_norm\.", "decoder.enc_output.norm."),
    (r"^transformer\.enc_out_class_embed\.", "decoder.enc_score_head."),
    (r"^transformer\.enc_out_bbox_embed\.", "decoder.enc_bbox_head."),
    (r"^label_enc\.", "decoder.label_enc."),
    (r"^class_embed\.", "decoder.dec_score_head."),
    (r"^bbox_embed\.", "decoder.dec_bbox_head."),
)
# The official DINO model holds its shared decoder heads a second time under these keys.
DINO_ALIASES = re.compile(r"^transformer\.decoder\.(class_embed|bbox_embed)\.")
# Ours whose rows are classes, and whether a last extra row follows them (DINO's label_enc).
DINO_CLASS_ROWS = {"decoder.enc_score_head.": False, "decoder.dec_score_head.": False, "decoder.label_enc.": True}


def is_dino_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is an official DINO model's (``transformer.tgt_embed`` and ``label_enc``)."""
    return "transformer.tgt_embed.weight" in state_dict and "label_enc.weight" in state_dict


def dino_to_ours(official: Mapping[str, torch.Tensor],
                 class_ids: Optional[List[int]] = None) -> Dict[str, torch.Tensor]:
    """An official DINO state dict in our layout (:data:`DINO_KEYS`).

    The alias keys of the shared heads (``transformer.decoder.{class,bbox}_embed.*``) must hold the
    same values as ``class_embed.*`` / ``bbox_embed.*`` and are dropped. With ``class_ids`` (our class
    ``k`` is the official class ``class_ids[k]``: for COCO, official DINO indexes the 91 category ids and
    Detectron2 the 80 contiguous ones), the class rows of the score heads and of the denoising label
    embedding are taken in that order (the embedding keeps its last, "no class" row).

    Raises:
        CheckpointMismatchError: an alias that differs from its head, or a key of no known part.
    """
    out, unknown = {}, []
    for key, value in official.items():
        if DINO_ALIASES.match(key):
            owner = DINO_ALIASES.sub(lambda m: m.group(1) + ".", key)
            if owner not in official or not torch.equal(official[owner], value):
                raise CheckpointMismatchError(f"{key} is not the shared head {owner} of an official DINO model")
            continue
        for pattern, replacement in DINO_KEYS:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(f"Keys of no DINO part: {unknown[:MAX_LISTED]}")
    if class_ids is not None:
        for key, value in out.items():
            for prefix, extra_row in DINO_CLASS_ROWS.items():
                if key.startswith(prefix):
                    rows = list(class_ids) + ([value.shape[0] - 1] if extra_row else [])
                    out[key] = value[rows]
    return out


def coco_category_ids() -> List[int]:
    """COCO's 80 category ids in the order of Detectron2's contiguous classes 0..79 (ids 1..90 with
    gaps: the rows the official 91-class heads use)."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["id"] for c in COCO_CATEGORIES if c["isthing"]]


def convert_dino_state_dict(official: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """An official DINO state dict for ``model`` (:func:`dino_to_ours`, then the strict check of
    :func:`convert_official_state_dict`). A 91-row checkpoint (COCO category ids, as every official
    COCO model) loads into an 80-class model (Detectron2's contiguous COCO classes) by taking the rows
    of :func:`coco_category_ids`; other class counts must be equal."""
    rows = official["class_embed.0.bias"].shape[0] if "class_embed.0.bias" in official else None
    classes = getattr(getattr(model, "decoder", None), "num_classes", rows)
    class_ids = None
    if rows != classes:
        if (rows, classes) != (91, 80):
            raise CheckpointMismatchError(f"The checkpoint has {rows} classes, the model {classes}: only the official "
                                          "91 COCO category ids map onto Detectron2's 80 COCO classes")
        class_ids = coco_category_ids()
    return convert_official_state_dict(dino_to_ours(official, class_ids), model)


# Official DN-DETR DN-DAB-DETR key -> ours (first match wins). The shared heads (one class_embed, one
# bbox_embed) go to every layer's key of our shared heads (``{layer}`` is filled in per layer).
DN_DAB_DETR_KEYS = (
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
)
# The official model holds its box head a second time, for the decoder's refinement.
DN_DAB_DETR_ALIAS = re.compile(r"^transformer\.decoder\.bbox_embed\.")
DN_DAB_DETR_CLASS_ROWS = {"decoder.dec_score_head.": False, "decoder.label_enc.": True}


def is_dn_dab_detr_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is an official DN-DETR DN-DAB-DETR model's (learned anchors and the DAB-DETR
    encoder's ``query_scale``)."""
    return "refpoint_embed.weight" in state_dict and "transformer.encoder.query_scale.layers.0.weight" in state_dict


def dn_dab_detr_to_ours(official: Mapping[str, torch.Tensor],
                        class_ids: Optional[List[int]] = None) -> Dict[str, torch.Tensor]:
    """An official DN-DETR DN-DAB-DETR state dict in our layout (:data:`DN_DAB_DETR_KEYS`).

    The one class head and the one box head are given to every decoder layer (ours list a shared head
    under each layer's key); the alias ``transformer.decoder.bbox_embed.*`` must hold the values of
    ``bbox_embed.*`` and is dropped. ``class_ids`` as in :func:`dino_to_ours` (the class rows of the
    class head, and of ``label_enc``, which keeps its last, "no class" row).

    Raises:
        CheckpointMismatchError: an alias that differs from its head, or a key of no known part.
    """
    layers = {int(m.group(1)) for key in official
              for m in [re.match(r"^transformer\.decoder\.layers\.(\d+)\.", key)] if m}
    num_layers = max(layers) + 1 if layers else 0
    out, unknown = {}, []
    for key, value in official.items():
        if DN_DAB_DETR_ALIAS.match(key):
            owner = DN_DAB_DETR_ALIAS.sub("bbox_embed.", key)
            if owner not in official or not torch.equal(official[owner], value):
                raise CheckpointMismatchError(f"{key} is not the box head {owner} of an official DN-DAB-DETR model")
            continue
        for pattern, replacement in DN_DAB_DETR_KEYS:
            if re.match(pattern, key):
                if "{layer}" in replacement:
                    for layer in range(num_layers):
                        out[re.sub(pattern, replacement.format(layer=layer), key)] = value
                else:
                    out[re.sub(pattern, replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(f"Keys of no DN-DAB-DETR part: {unknown[:MAX_LISTED]}")
    if class_ids is not None:
        for key, value in out.items():
            for prefix, extra_row in DN_DAB_DETR_CLASS_ROWS.items():
                if key.startswith(prefix):
                    out[key] = value[list(class_ids) + ([value.shape[0] - 1] if extra_row else [])]
    return out


def convert_dn_dab_detr_state_dict(official: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """An official DN-DAB-DETR state dict for ``model`` (:func:`dn_dab_detr_to_ours`, then the strict check
    of :func:`convert_official_state_dict`); a 91-row checkpoint loads into an 80-class model as in
    :func:`convert_dino_state_dict`."""
    rows = official["class_embed.bias"].shape[0] if "class_embed.bias" in official else None
    classes = getattr(getattr(model, "decoder", None), "num_classes", rows)
    class_ids = None
    if rows != classes:
        if (rows, classes) != (91, 80):
            raise CheckpointMismatchError(f"The checkpoint has {rows} classes, the model {classes}: only the official "
                                          "91 COCO category ids map onto Detectron2's 80 COCO classes")
        class_ids = coco_category_ids()
    return convert_official_state_dict(dn_dab_detr_to_ours(official, class_ids), model)


# Official (DN-)DAB-Deformable-DETR key (IDEA-Research/DN-DETR, models/dn_dab_deformable_detr) -> ours,
# as DINO_KEYS: the same backbone, encoder and decoder-layer names (norms swapped the same way); the
# query position head holds DAB's query_scale; one-stage learned anchors and content.
DAB_DEFORMABLE_KEYS = (
    (r"^backbone\.0\.body\.", "backbone.body."),
    (r"^input_proj\.", "encoder.input_proj."),
    (r"^transformer\.level_embed$", "encoder.level_embed"),
    (r"^transformer\.encoder\.layers\.", "encoder.layers."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", r"decoder.decoder.layers.\1.norm2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", r"decoder.decoder.layers.\1.norm1."),
    (r"^transformer\.decoder\.layers\.", "decoder.decoder.layers."),
    (r"^transformer\.decoder\.ref_point_head\.", "decoder.query_pos_head."),
    (r"^transformer\.decoder\.query_scale\.", "decoder.query_pos_head.query_scale."),
    (r"^tgt_embed\.", "decoder.tgt_embed."),
    (r"^refpoint_embed\.", "decoder.refpoint_embed."),
    (r"^label_enc\.", "decoder.label_enc."),
    (r"^class_embed\.", "decoder.dec_score_head."),
    (r"^bbox_embed\.", "decoder.dec_bbox_head."),
)
# The official model holds its per-layer box heads a second time under these keys (the decoder's
# handle for the iterative refinement).
DAB_DEFORMABLE_ALIASES = re.compile(r"^transformer\.decoder\.(bbox_embed)\.")
# Ours whose rows are classes, and whether a last extra row follows them (the denoising label_enc).
DAB_DEFORMABLE_CLASS_ROWS = {"decoder.dec_score_head.": False, "decoder.label_enc.": True}
# The denoising label embedding: in every official build, used only by the denoising.
DAB_DEFORMABLE_DENOISING = "decoder.label_enc."


def is_dab_deformable_detr_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is an official (DN-)DAB-Deformable-DETR model's (learned anchors
    ``refpoint_embed`` and the multi-scale ``transformer.level_embed``)."""
    return "refpoint_embed.weight" in state_dict and "transformer.level_embed" in state_dict


def _rename(official: Mapping[str, torch.Tensor], keys, aliases: Pattern, model_name: str,
            class_rows: Mapping[str, bool], class_ids: Optional[List[int]]) -> Dict[str, torch.Tensor]:
    """``official`` renamed by ``keys`` (first match wins), alias keys checked equal to their owner and
    dropped, class rows taken in ``class_ids`` order (see :func:`dino_to_ours`)."""
    out, unknown = {}, []
    for key, value in official.items():
        if aliases.match(key):
            owner = aliases.sub(lambda m: m.group(1) + ".", key)
            if owner not in official or not torch.equal(official[owner], value):
                raise CheckpointMismatchError(f"{key} is not the head {owner} of an official {model_name} model")
            continue
        for pattern, replacement in keys:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(f"Keys of no {model_name} part: {unknown[:MAX_LISTED]}")
    if class_ids is not None:
        for key, value in out.items():
            for prefix, extra_row in class_rows.items():
                if key.startswith(prefix):
                    rows = list(class_ids) + ([value.shape[0] - 1] if extra_row else [])
                    out[key] = value[rows]
    return out


def dab_deformable_detr_to_ours(official: Mapping[str, torch.Tensor], class_ids: Optional[List[int]] = None,
                                denoising: bool = True) -> Dict[str, torch.Tensor]:
    """An official (DN-)DAB-Deformable-DETR state dict in our layout (:data:`DAB_DEFORMABLE_KEYS`).

    The alias keys ``transformer.decoder.bbox_embed.*`` must hold the same values as ``bbox_embed.*``
    and are dropped. ``class_ids`` as in :func:`dino_to_ours`. Without ``denoising`` (our model
    without DN-DETR's denoising), the official label embedding ``label_enc``, which every official
    build has and only the denoising reads, is dropped.

    Raises:
        CheckpointMismatchError: an alias that differs from its head, or a key of no known part.
    """
    out = _rename(official, DAB_DEFORMABLE_KEYS, DAB_DEFORMABLE_ALIASES, "DAB-Deformable-DETR",
                  DAB_DEFORMABLE_CLASS_ROWS, class_ids)
    if not denoising:
        out = {k: v for k, v in out.items() if not k.startswith(DAB_DEFORMABLE_DENOISING)}
    return out


def _class_ids_for(rows: Optional[int], model: nn.Module) -> Optional[List[int]]:
    """The official rows of our classes: None when the counts agree, COCO's 80 of 91 category ids."""
    classes = getattr(getattr(model, "decoder", None), "num_classes", rows)
    if rows == classes:
        return None
    if (rows, classes) != (91, 80):
        raise CheckpointMismatchError(f"The checkpoint has {rows} classes, the model {classes}: only the official "
                                      "91 COCO category ids map onto Detectron2's 80 COCO classes")
    return coco_category_ids()


def convert_dab_deformable_detr_state_dict(official: Mapping[str, torch.Tensor],
                                           model: nn.Module) -> Dict[str, torch.Tensor]:
    """An official (DN-)DAB-Deformable-DETR state dict for ``model``
    (:func:`dab_deformable_detr_to_ours`, then the strict check of :func:`convert_official_state_dict`);
    91 rows map onto 80 classes as in :func:`convert_dino_state_dict`. The label embedding is kept
    exactly when the model has denoising (a ``label_enc``)."""
    rows = official["class_embed.0.bias"].shape[0] if "class_embed.0.bias" in official else None
    denoising = any(k.startswith(DAB_DEFORMABLE_DENOISING) for k in model.state_dict())
    converted = dab_deformable_detr_to_ours(official, _class_ids_for(rows, model), denoising=denoising)
    return convert_official_state_dict(converted, model)


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
