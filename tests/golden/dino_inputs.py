"""The synthetic weights and batch of the DINO goldens (``tools/golden/make_dino_golden.py``), rebuilt
here for the parity tests without the official code."""
import torch

from .synth import synth_image, synth_state_dict, synth_targets

__all__ = ["official_weights", "synth_batch"]


def official_weights(key_shapes: dict, aliases: dict, seed: int = 0) -> dict:
    """The synthetic official state dict: ``synth_state_dict`` over the keys that own a tensor, and
    for each alias key (``aliases``: key -> the key it shares its tensor with) its owner's values."""
    drawn = synth_state_dict({k: s for k, s in key_shapes.items() if k not in aliases}, seed=seed)
    return {**drawn, **{k: drawn[owner] for k, owner in aliases.items()}}


def synth_batch(image_sizes, image_seeds, num_targets, num_classes: int, target_seed: int):
    """``(images, targets)``: HxWx3 uint8 RGB arrays of the given ``(height, width)`` sizes, and per
    image ``{"labels": int64 [n], "boxes": float64 [n, 4]}`` with cxcywh boxes normalised by that
    image's size."""
    images = [synth_image(h, w, seed) for (h, w), seed in zip(image_sizes, image_seeds)]
    targets = [{"labels": t["labels"], "boxes": t["boxes"].to(torch.float64)}
               for t in synth_targets(list(num_targets), num_classes, target_seed)]
    return images, targets
