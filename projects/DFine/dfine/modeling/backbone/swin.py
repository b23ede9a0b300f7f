"""Swin Transformer, the backbone of DINO's Swin models (official IDEA-Research/DINO
``models/dino/swin_transformer.py``, built by ``build_swin_transformer``; DINO uses ``swin_L_384_22k``).

Parameter and buffer names are the official ones: the official DINO checkpoints' ``backbone.0.*`` entries
load with ``strict=True`` once that prefix is stripped. (The ImageNet-22k Swin checkpoints, which the official
builder loads with ``strict=False`` minus ``head.*``, lack the output norms ``norm{i}`` and hold extras.) The
``relative_position_index`` buffers are in the state dict (persistent, as in the official module); the
shifted-window attention masks are computed per forward and stored nowhere.

Numerics follow the official module step by step (q scaled before ``q @ k^T``, relative position bias
then mask added to the logits, masked logits set to -100 rather than -inf). Quirks kept on purpose:

* Zero padding (of the image to a multiple of the patch size, of the token grid to a multiple of the
  window, of odd grids before patch merging) is not masked: a window that holds padding attends to
  the padded tokens, which after the block's LayerNorm are zeros (so their keys and values are the
  qkv bias). Only the regions that the cyclic shift brings together are masked.
* The shifted-window mask is built for the padded grid, with the slices ``[0, -window)``,
  ``[-window, -shift)``, ``[-shift, end)`` per axis, as the official code.

What DINO does not use is left out: the official ``dilation`` (no stride in the last stage),
``frozen_stages`` (DINO passes -1), dropout and attention dropout (DINO keeps both at 0), ``qk_scale``
(None: ``head_dim ** -0.5``), a qkv without bias, and a patch embedding without its LayerNorm.

Tensor layout: tokens are ``[B, H * W, C]`` in row-major (y, x) order; windows
``[B * num_windows, window ** 2, C]``, the windows of one image consecutive, in row-major order.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from .vit import Mlp

__all__ = [
    "SWIN_PRESETS",
    "DropPath",
    "PatchEmbed",
    "PatchMerging",
    "SwinBlock",
    "SwinStage",
    "SwinTransformer",
    "WindowAttention",
    "relative_position_index",
    "shifted_window_mask",
    "window_merge",
    "window_partition",
]

# The official ``build_swin_transformer`` presets: name -> (embed_dim, depths, num_heads, window_size).
# ``pretrain_img_size`` is the number in the name (it only matters with ``ape=True``, which none uses).
SWIN_PRESETS = {
    "swin_T_224_1k": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                          pretrain_img_size=224),
    "swin_B_224_22k": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7,
                           pretrain_img_size=224),
    "swin_B_384_22k": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12,
                           pretrain_img_size=384),
    "swin_L_224_22k": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=7,
                           pretrain_img_size=224),
    "swin_L_384_22k": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12,
                           pretrain_img_size=384),
}

# Logit added where the shifted windows join regions that are not neighbours in the image (the official value).
MASKED_LOGIT = -100.0


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the whole sample with probability ``p`` and scale the kept
    ones by ``1 / (1 - p)`` (one ``bernoulli_`` draw per sample, as timm's ``DropPath``); identity in eval."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        sample_mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * sample_mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def window_partition(x: Tensor, window: int) -> Tensor:
    """``[B, Hp, Wp, C]`` (Hp, Wp multiples of ``window``) -> ``[B * num_windows, window ** 2, C]``."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def window_merge(windows: Tensor, window: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B * num_windows, window ** 2, C]`` -> ``[B, H, W, C]``."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def relative_position_index(window: int) -> Tensor:
    """``[window ** 2, window ** 2]`` int64: for tokens i, j of a window (row-major), the row of the bias
    table for their offset, ``(dy + window - 1) * (2 * window - 1) + (dx + window - 1)`` with
    ``(dy, dx) = pos(i) - pos(j)``."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def shifted_window_mask(Hp: int, Wp: int, window: int, shift: int, device=None,
                        dtype=torch.float32) -> Tensor:
    """Additive mask ``[num_windows, window ** 2, window ** 2]`` of the shifted windows of a padded
    ``Hp x Wp`` grid: 0 between tokens of the same region, ``MASKED_LOGIT`` across regions. The grid is cut
    into 3 x 3 regions by ``[0, -window)``, ``[-window, -shift)``, ``[-shift, end)`` on each axis."""
    labels = torch.zeros((1, Hp, Wp, 1), device=device, dtype=dtype)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, ys in enumerate(cuts):
        for j, xs in enumerate(cuts):
            labels[:, ys, xs, :] = 3 * i + j
    labels = window_partition(labels, window).squeeze(-1)  # [num_windows, window ** 2]
    differs = labels[:, None, :] != labels[:, :, None]
    return torch.zeros_like(differs, dtype=dtype).masked_fill(differs, MASKED_LOGIT)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned bias per head and relative offset.

    Parameters: ``relative_position_bias_table`` ``[(2 * window - 1) ** 2, num_heads]``, ``qkv``, ``proj``;
    buffer ``relative_position_index`` ``[window ** 2, window ** 2]`` (see :func:`relative_position_index`).

    ``forward(x [B * nW, N, C], mask [nW, N, N] or None) -> [B * nW, N, C]``, N = window ** 2.
    """

    def __init__(self, dim: int, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, mask: Tensor = None) -> Tensor:
        Bw, N, C = x.shape
        q, k, v = self.qkv(x).view(Bw, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # [Bw, heads, N, N]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        logits = logits + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nW = mask.shape[0]
            logits = (logits.view(Bw // nW, nW, self.num_heads, N, N) + mask[None, :, None]).view(Bw, -1, N, N)
        out = logits.softmax(dim=-1) @ v  # [Bw, heads, N, C / heads]
        return self.proj(out.transpose(1, 2).reshape(Bw, N, C))


class SwinBlock(nn.Module):
    """Pre-norm transformer block on (shifted) windows: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``,
    each branch through :class:`DropPath`. ``shift`` > 0 rolls the grid by ``-shift`` before the windows are
    cut (and back after), and uses the mask of :func:`shifted_window_mask`.

    ``forward(x [B, H * W, C], H, W, mask [nW, N, N]) -> [B, H * W, C]``; ``mask`` is ignored when ``shift`` is 0.
    """

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, window), got {shift} for window {window}")
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, H: int, W: int, mask: Tensor) -> Tensor:
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f"{L} tokens do not form a {H} x {W} grid")
        window, shift = self.window, self.shift
        y = F.pad(self.norm1(x).view(B, H, W, C), (0, 0, 0, -W % window, 0, -H % window))
        Hp, Wp = y.shape[1:3]
        if shift > 0:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = window_merge(self.attn(window_partition(y, window), mask if shift > 0 else None), window, Hp, Wp)
        if shift > 0:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :H, :W].reshape(B, H * W, C)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halve the grid: zero-pad it to even sizes, concatenate each 2 x 2 neighbourhood's tokens in the order
    (0, 0), (1, 0), (0, 1), (1, 1) (dy, dx), LayerNorm, then ``reduction`` (4C -> 2C, no bias).

    ``forward(x [B, H * W, C], H, W) -> [B, ceil(H / 2) * ceil(W / 2), 2C]``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        B, L, C = x.shape
        x = F.pad(x.view(B, H, W, C), (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class SwinStage(nn.Module):
    """``depth`` blocks, alternately unshifted and shifted by ``window // 2`` (blocks 1, 3, ...), then an
    optional :class:`PatchMerging` (``downsample``; every stage but the last).

    ``forward(x [B, H * W, C], H, W)`` returns ``(out [B, H * W, C], x_next, H_next, W_next)``: the stage's
    own output and the next stage's input (``out`` itself when there is no downsampling).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 drop_path: Sequence[float], downsample: bool, use_checkpoint: bool = False):
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else self.shift, mlp_ratio, drop_path[i])
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor, H: int, W: int) -> Tuple[Tensor, Tensor, int, int]:
        window = self.window
        mask = shifted_window_mask(H + -H % window, W + -W % window, window, self.shift, x.device, x.dtype)
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, H, W, mask, use_reentrant=False)
            else:
                x = block(x, H, W, mask)
        if self.downsample is None:
            return x, x, H, W
        return x, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    """Zero-pad the image (right, bottom) to a multiple of ``patch_size``, then ``proj`` (a stride-
    ``patch_size`` convolution) and ``norm`` (LayerNorm over channels).

    ``forward(x [B, in_chans, H, W]) -> [B, embed_dim, ceil(H / patch_size), ceil(W / patch_size)]``.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        p = self.patch_size
        x = self.proj(F.pad(x, (0, -W % p, 0, -H % p)))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SwinTransformer(nn.Module):
    """Swin Transformer returning the LayerNorm-ed maps of the chosen stages (the official DINO backbone).

    Args:
        embed_dim: channels of stage 0; stage i has ``embed_dim * 2 ** i``.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: side of the attention windows (swin_L_384_22k: 12), in tokens.
        pretrain_img_size: image side the absolute position embedding was trained for (``ape`` only).
        mlp_ratio: hidden width of the block MLPs over their input width.
        drop_path_rate: stochastic depth of the last block; block k of all ``sum(depths)`` gets
            ``linspace(0, drop_path_rate, sum(depths))[k]`` (float32, as the official). DINO: 0.2 (the
            official default; its build passes none).
        out_indices: stages whose maps are returned, increasing: DINO 4-scale ``(1, 2, 3)``, 5-scale
            ``(0, 1, 2, 3)`` (its ``return_interm_indices``). Each gets its own LayerNorm ``norm{i}``.
        use_checkpoint: recompute each block in the backward pass instead of keeping its activations
            (``torch.utils.checkpoint``, non-reentrant; only while autograd records). DINO's Swin config
            sets it.
        ape: add an absolute position embedding ``absolute_pos_embed`` ``[1, embed_dim, S, S]``,
            ``S = pretrain_img_size // 4``, bicubically resized to the token grid (no DINO model uses it).
        in_chans: image channels.

    ``forward(x [B, in_chans, H, W])`` returns, for each stage i in ``out_indices``, a map
    ``[B, embed_dim * 2 ** i, ceil(H / 2 ** (i + 2)), ceil(W / 2 ** (i + 2))]`` (``out_channels``,
    ``out_strides`` list them); any H, W (the input is padded to a multiple of 4, each grid to a multiple
    of the window, odd grids to even before merging).
    """

    patch_size = 4

    def __init__(self, embed_dim: int = 192, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (6, 12, 24, 48), window_size: int = 12, pretrain_img_size: int = 384,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.2, out_indices: Sequence[int] = (1, 2, 3),
                 use_checkpoint: bool = False, ape: bool = False, in_chans: int = 3):
        super().__init__()
        num_stages = len(depths)
        if len(num_heads) != num_stages:
            raise ValueError(f"depths and num_heads differ in length: {list(depths)} vs {list(num_heads)}")
        out_indices = list(out_indices)
        if not out_indices or out_indices != sorted(set(out_indices)) or not set(out_indices) <= set(range(num_stages)):
            raise ValueError(f"out_indices must be increasing stage indices below {num_stages}, got {out_indices}")
        self.out_indices = out_indices
        self.num_features = [embed_dim * 2 ** i for i in range(num_stages)]
        self.out_channels = [self.num_features[i] for i in out_indices]
        self.out_strides = [self.patch_size * 2 ** i for i in out_indices]
        self.ape = ape

        self.patch_embed = PatchEmbed(self.patch_size, in_chans, embed_dim)
        if ape:
            side = pretrain_img_size // self.patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, side, side))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        rates = torch.linspace(0, drop_path_rate, sum(depths), dtype=torch.float32, device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(num_stages)]
        self.layers = nn.ModuleList(
            SwinStage(self.num_features[i], depths[i], num_heads[i], window_size, mlp_ratio,
                      rates[starts[i]:starts[i] + depths[i]], downsample=i < num_stages - 1,
                      use_checkpoint=use_checkpoint)
            for i in range(num_stages))
        for i in out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    @property
    def use_checkpoint(self) -> bool:
        return all(stage.use_checkpoint for stage in self.layers)

    @use_checkpoint.setter
    def use_checkpoint(self, value: bool):
        for stage in self.layers:
            stage.use_checkpoint = bool(value)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.patch_embed(x)
        H, W = x.shape[-2:]
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(H, W), mode="bicubic")
        x = x.flatten(2).transpose(1, 2)
        outs = []
        for i, stage in enumerate(self.layers):
            out, x, H_next, W_next = stage(x, H, W)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.view(-1, H, W, self.num_features[i]).permute(0, 3, 1, 2).contiguous())
            H, W = H_next, W_next
        return outs
