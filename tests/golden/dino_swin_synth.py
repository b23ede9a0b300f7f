"""Synthetic weights and inputs of the DINO Swin golden values (tests/golden/dino_swin_l.pt), shared by
``tools/golden/make_dino_swin_golden.py`` and ``tests/test_dino_swin.py``. Nothing here depends on the
official code or on ``dfine``: the weights are a function of the state-dict keys and shapes only, so both
sides draw identical tensors without storing them.

``SWIN_CASES`` are the reduced-size official ``SwinTransformer`` configurations whose float64 outputs the
golden holds (the official constructor's argument names and meanings); Swin-L itself is checked by its
state-dict layout and parameter count.
"""
import numpy as np
import torch

from .synth import _rng, _uniform, synth_state_dict

__all__ = ["SWIN_CASES", "swin_input", "synth_swin_state_dict"]

# name -> official SwinTransformer kwargs, input shape, input seed.
# * "w7": window 7, DINO 4-scale outputs, batch 2 (the shift mask broadcast over images), 58 x 93 pixels:
#   the image pads to 60 x 96 (patch 4), grids 15 x 24, 8 x 12, 4 x 6, 2 x 3 (odd grid before merging; each
#   grid padded to a multiple of 7, the last two smaller than one window).
# * "w12_ape": window 12 (swin_L_384_22k's), DINO 5-scale outputs, the absolute position embedding resized
#   bicubically from 16 x 16, 61 x 83 pixels: grids 16 x 21, 8 x 11, 4 x 6, 2 x 3.
SWIN_CASES = {
    "w7": dict(kwargs=dict(pretrain_img_size=224, embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24],
                           window_size=7, out_indices=(1, 2, 3)),
               input_shape=(2, 3, 58, 93), input_seed=1),
    "w12_ape": dict(kwargs=dict(pretrain_img_size=64, embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24],
                                window_size=12, out_indices=(0, 1, 2, 3), ape=True),
                    input_shape=(1, 3, 61, 83), input_seed=2),
}

# Computed by the model's constructor (an index table), so the model keeps its own.
COMPUTED_BUFFERS = frozenset({"relative_position_index"})


def synth_swin_state_dict(key_shapes: dict, seed: int = 0) -> dict:
    """``synth_state_dict`` (linear / conv weights ~ U(+-sqrt(3 / fan_in)), biases ~ U(+-0.1), LayerNorm scales
    ~ U(0.9, 1.1); one generator per (seed, key)) extended to the Swin tensors it does not know:
    ``relative_position_bias_table`` ~ U(-1, 1) (large enough that a wrong offset index shows),
    ``absolute_pos_embed`` ~ U(-0.5, 0.5). ``relative_position_index`` is left out (the model keeps its own).
    Float32 tensors (exactly widened by ``.double()``)."""
    standard, extra = {}, {}
    for key, shape in key_shapes.items():
        leaf = key.rpartition(".")[2]
        shape = tuple(int(s) for s in shape)
        if leaf == "relative_position_bias_table":
            extra[key] = _uniform(_rng(seed, key), -1.0, 1.0, shape)
        elif leaf == "absolute_pos_embed":
            extra[key] = _uniform(_rng(seed, key), -0.5, 0.5, shape)
        elif leaf not in COMPUTED_BUFFERS:
            standard[key] = shape
    out = synth_state_dict(standard, seed=seed)
    out.update({k: torch.from_numpy(v.astype(np.float32)) for k, v in extra.items()})
    return out


def swin_input(shape, seed: int) -> torch.Tensor:
    """A float64 image batch ~ N(0, 1) per pixel (a normalised image's scale) from NumPy's PCG64."""
    return torch.from_numpy(_rng("dino_swin_input", seed).standard_normal(tuple(shape)))
