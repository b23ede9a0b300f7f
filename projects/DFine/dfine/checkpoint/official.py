"""Conversion of checkpoints of the official repositories into checkpoints of our models.

Our modules use the official state-dict names, so the conversion is a strict check: every key
of our model must come from the official state dict with the same shape, and every official
key must be used. The only exceptions are listed in ``DERIVED_BUFFERS``: buffers that a model
rebuilds from its constructor arguments, which may be absent on either side.
"""
import logging
from typing import Dict, List, Mapping, Optional, Pattern, Tuple

import torch
from torch import nn

__all__ = [
    "extract_official_state_dict",
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
