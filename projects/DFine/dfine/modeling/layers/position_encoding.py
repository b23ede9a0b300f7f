"""Sine position encodings of image maps, as DETR and its descendants compute them."""
import math
from typing import Optional

import torch
from torch import nn

__all__ = ["SinePositionEncoding", "sine_box_embedding"]


class SinePositionEncoding(nn.Module):
    """The 2-d sine encoding of DETR: for each pixel, its row and column position within the valid
    (unpadded) part of its image, each encoded by ``num_pos_feats`` interleaved sines and cosines.

    Positions are the cumulative counts of valid pixels along y and x (1 for the first pixel), shifted
    by ``offset``, and with ``normalize`` divided by the last count (plus 1e-6) and scaled to
    ``[0, scale]``. Feature ``2k`` of an axis is ``sin(pos / T ** (2k / num_pos_feats))``, feature
    ``2k + 1`` the cosine. The output is ``[y features, x features]``.

    The variants: DINO and DN-DAB-DETR ``temperature_h = temperature_w = 20``, no offset; Deformable-DETR
    (and DN-DAB-Deformable-DETR) ``temperature 10000``, ``offset -0.5``. The official code computes in
    float32 whatever the model's dtype; so does this module by default. ``forward``'s ``dtype`` picks
    another compute dtype: float64 models pass float64 (the golden scripts patch the official encoding
    to do the same, see ``tools/golden/float64_patches.py``).

    Args:
        num_pos_feats: features per axis (half the model width).
        temperature_h, temperature_w: ``T`` of the y and x features.
        normalize, scale, offset: see above.
    """

    def __init__(self, num_pos_feats: int = 128, temperature_h: float = 10000, temperature_w: float = 10000,
                 normalize: bool = True, scale: Optional[float] = None, offset: float = 0.0):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("SinePositionEncoding: scale needs normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature_h = temperature_h
        self.temperature_w = temperature_w
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.offset = offset

    def _axis(self, embed: torch.Tensor, temperature: float) -> torch.Tensor:
        dim_t = torch.arange(self.num_pos_feats, dtype=embed.dtype, device=embed.device)
        dim_t = temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos = embed[..., None] / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(3)

    def forward(self, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``mask [B, H, W]`` bool, True on the padding -> ``[B, 2 * num_pos_feats, H, W]`` computed in
        (and of) ``dtype``, float32 unless given."""
        valid = ~mask
        y_embed = valid.cumsum(1, dtype=dtype)
        x_embed = valid.cumsum(2, dtype=dtype)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale
        pos = torch.cat((self._axis(y_embed, self.temperature_h), self._axis(x_embed, self.temperature_w)), dim=3)
        return pos.permute(0, 3, 1, 2)


def sine_box_embedding(boxes: torch.Tensor, num_pos_feats: int = 128, temperature: float = 10000,
                       y_first: bool = True) -> torch.Tensor:
    """The sine embedding of normalised points or boxes (Conditional/DAB-DETR, DINO, Deformable-DETR's
    proposals): every coordinate times 2*pi, encoded like :class:`SinePositionEncoding`'s axes by
    ``num_pos_feats`` interleaved sines and cosines; ``[..., 2]`` (x, y) gives ``[y, x]`` features and
    ``[..., 4]`` (cx, cy, w, h) gives ``[y, x, w, h]`` features, ``[..., 2 * num_pos_feats]`` or
    ``[..., 4 * num_pos_feats]``. ``y_first=False`` keeps the coordinates' own order, ``[x, y, w, h]``
    (two-stage Deformable-DETR's ``get_proposal_pos_embed``).

    The frequencies are float32 whatever the dtype of ``boxes``, as the official functions make them."""
    if boxes.shape[-1] not in (2, 4):
        raise ValueError(f"sine_box_embedding takes points (x, y) or boxes (cx, cy, w, h), got {boxes.shape[-1]} "
                         "values")
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos = boxes[..., None] * (2 * math.pi) / dim_t
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    if not y_first:
        return pos.flatten(-2)
    order = [1, 0, 2, 3][: boxes.shape[-1]]
    return torch.cat([pos[..., i, :] for i in order], dim=-1)
