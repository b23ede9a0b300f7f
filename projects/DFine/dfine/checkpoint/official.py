"""Conversion of checkpoints of the official repositories into checkpoints of our models.

Our modules use the official state-dict names, so the conversion is a strict check: every key
of our model must come from the official state dict with the same shape, and every official
key must be used. The only exceptions are listed in ``DERIVED_BUFFERS``: buffers that a model
rebuilds from its constructor arguments, which may be absent on either side.
"""
import logging
from typing import Dict, Mapping

import torch
from torch import nn

__all__ = ["extract_official_state_dict", "convert_official_state_dict", "CheckpointMismatchError"]

logger = logging.getLogger(__name__)

# Buffers computed from the configuration (anchors and the valid mask for eval_spatial_size,
# the per-level point scale of deformable attention) and BatchNorm's step counter. A checkpoint
# that lacks them is still complete; where both sides have them, the shapes must agree.
DERIVED_BUFFERS = ("anchors", "valid_mask", "num_points_scale", "num_batches_tracked")


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


def convert_official_state_dict(official: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Check ``official`` against ``model`` and return the state dict to load into it.

    Raises:
        CheckpointMismatchError: listing every missing, unexpected and mis-shaped key, so that a
            checkpoint of another architecture or size is reported at once and in full.
    """
    ours = model.state_dict()
    missing = [k for k in ours if k not in official and not _is_derived(k)]
    unexpected = [k for k in official if k not in ours and not _is_derived(k)]
    mismatched = [
        f"{k}: checkpoint {tuple(official[k].shape)} vs model {tuple(v.shape)}"
        for k, v in ours.items()
        if k in official and tuple(official[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        lines = ["The checkpoint does not match the model built from the config."]
        for title, keys in (("missing in the checkpoint", missing), ("not in the model", unexpected),
                            ("shape mismatch", mismatched)):
            if keys:
                shown = "\n    ".join(keys[:20]) + (f"\n    ... and {len(keys) - 20} more" if len(keys) > 20 else "")
                lines.append(f"  {len(keys)} key(s) {title}:\n    {shown}")
        raise CheckpointMismatchError("\n".join(lines))
    converted = {k: official[k] if k in official else v for k, v in ours.items()}
    rebuilt = sorted(k for k in ours if k not in official)
    if rebuilt:
        logger.info("Buffers rebuilt from the config (absent in the checkpoint): %s", ", ".join(rebuilt))
    return converted
