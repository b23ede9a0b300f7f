"""Plain ViT trunks with 2-D rotary position embeddings, for the DEIMv2 S/M/L/X backbones.

DEIMv2 feeds a ViT's intermediate patch tokens to the Spatial Tuning Adapter (``sta.py``). Two trunk
families are used, and both are built here from the same pieces (patch embedding, RoPE attention,
optional LayerScale, MLP or SwiGLU FFN):

* DINOv3 ``dinov3_vits16`` (L) and ``dinov3_vits16plus`` (X), as in the official
  ``engine/backbone/dinov3/vision_transformer.py`` and ``dinov3/layers/*``: one class token, four
  storage ("register") tokens, LayerScale, LayerNorm eps 1e-5, the key part of the qkv bias masked out,
  a final LayerNorm applied to the tapped blocks, and a train-time random rescaling of the RoPE
  coordinates.
* DEIMv2's own distilled ``vit_tiny`` (S) and ``vit_tinyplus`` (M), as in the official
  ``engine/backbone/vit_tiny.py``: one class token, no storage tokens, no LayerScale, LayerNorm eps
  1e-6, and the tapped blocks returned without a final norm. Its checkpoints keep every weight under
  ``_model.``, hence :class:`NestedTrunk`.

Parameter and buffer names are the official ones, so the official checkpoints load with
``strict=True`` and no renaming (the RoPE ``periods`` and the qkv ``bias_mask`` are persistent buffers,
as in the official state dicts).

Tensor layout: images ``[B, 3, H, W]``; tokens ``[B, N, D]`` with the prefix tokens (class, then
storage) first and the ``h * w`` patch tokens after them in row-major (y, x) order, ``h = H // 16``.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "VIT_PRESETS",
    "Block",
    "LayerScale",
    "LinearKMaskedBias",
    "Mlp",
    "NestedTrunk",
    "PatchEmbed",
    "RopePositionEmbedding",
    "SelfAttention",
    "SwiGLUFFN",
    "VisionTransformer",
    "build_vit",
]


class RopePositionEmbedding(nn.Module):
    """Axial 2-D RoPE: sin/cos of the patch centres' (y, x) coordinates over a geometric period ladder.

    The patch centres are mapped to [-1, 1] per axis ("separate" normalisation: y by the grid height,
    x by the grid width), so the embedding does not depend on the absolute resolution. Each head channel
    pair rotates by ``2 * pi * coord / period``; the first quarter of the periods serve y, the second x.

    Args:
        head_dim: channels per attention head, a multiple of 4.
        base: periods are ``base ** (2 * k / (head_dim // 2))`` for ``k < head_dim // 4``.
        rescale_coords: if set, in training mode the coordinates are multiplied by one factor
            ``exp(U(-ln r, ln r))`` drawn from torch's global generator of the buffer's device, one
            ``uniform_`` call on a 1-element tensor of the compute dtype per forward (DINOv3's scale
            augmentation).

    Compute dtype: float32, as in both official trunks (DINOv3 fixes its RoPE dtype to float32, the
    DEIMv2 ViT-Tiny uses the default dtype), with the ``periods`` buffer as it is (a checkpoint's
    values). When the module has been cast to float64 everything is float64, the period ladder
    included (recomputed: the buffer only holds float32 values cast up).
    """

    def __init__(self, head_dim: int, base: float = 100.0, rescale_coords: Optional[float] = None):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs a head dimension divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self.rescale_coords = rescale_coords
        # Persistent: both official state dicts carry it, and loading must not be strict-incompatible.
        self.register_buffer("periods", self._periods(), persistent=True)

    def _periods(self, dtype: torch.dtype = torch.float32) -> Tensor:
        exponents = 2 * torch.arange(self.head_dim // 4, dtype=dtype) / (self.head_dim // 2)
        return self.base ** exponents

    def forward(self, h: int, w: int) -> Tuple[Tensor, Tensor]:
        """Returns ``(sin, cos)``, each ``[h * w, head_dim]`` in the compute dtype, rows in (y, x)
        row-major order."""
        periods = self.periods
        if periods.dtype == torch.float64:
            periods = self._periods(torch.float64).to(periods.device)
        dd = dict(device=periods.device, dtype=torch.promote_types(periods.dtype, torch.float32))
        coords_y = torch.arange(0.5, h, **dd) / h
        coords_x = torch.arange(0.5, w, **dd) / w
        coords = torch.stack(torch.meshgrid(coords_y, coords_x, indexing="ij"), dim=-1).flatten(0, 1)
        coords = 2.0 * coords - 1.0  # [h*w, 2] in [-1, 1]
        if self.training and self.rescale_coords is not None:
            log_r = math.log(self.rescale_coords)
            coords = coords * torch.empty(1, **dd).uniform_(-log_r, log_r).exp()
        angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]  # [h*w, 2, head_dim/4]
        angles = angles.flatten(1, 2).tile(2)  # [h*w, head_dim]: (y, x) angles, repeated for both halves
        return torch.sin(angles), torch.cos(angles)


def apply_rope(t: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotates the trailing ``sin.shape[0]`` tokens of ``t`` ``[B, heads, N, head_dim]``.

    The leading prefix tokens (class / storage) carry no position and pass unchanged. The rotation is
    computed in the dtype of ``sin`` (float32, or float64 in a float64 model) and cast back, so mixed
    precision keeps accurate angles.
    """
    prefix = t.shape[-2] - sin.shape[-2]
    patches = t[..., prefix:, :].to(sin.dtype)
    first, second = patches.chunk(2, dim=-1)
    rotated = patches * cos + torch.cat([-second, first], dim=-1) * sin
    return torch.cat([t[..., :prefix, :], rotated.to(t.dtype)], dim=-2)


class LinearKMaskedBias(nn.Linear):
    """The qkv projection of DINOv3: the bias is multiplied by the buffer ``bias_mask``.

    DINOv3 trains without a key bias (it cannot change the softmax anyway); its checkpoints store the mask,
    ones for the query and value thirds and zeros for the key third, which is also our initial value.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if out_features % 3:
            raise ValueError(f"a fused qkv projection needs out_features divisible by 3, got {out_features}")
        if bias:
            mask = torch.ones(out_features)
            mask[out_features // 3: 2 * out_features // 3] = 0
            self.register_buffer("bias_mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.bias_mask.to(self.bias.dtype) if self.bias is not None else None
        return F.linear(x, self.weight, bias)


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE on the patch tokens (fused ``qkv`` then ``proj``).

    Args:
        dim: token width; num_heads: heads (``dim // num_heads`` channels each).
        qkv_bias / proj_bias: biases of the two projections.
        mask_k_bias: use :class:`LinearKMaskedBias` for ``qkv`` (DINOv3).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 mask_k_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        qkv_class = LinearKMaskedBias if mask_k_bias else nn.Linear
        self.qkv = qkv_class(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class LayerScale(nn.Module):
    """Per-channel residual-branch scale ``gamma`` (CaiT), initialised to a small constant."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))``."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """``w3(SiLU(w1(x)) * w2(x))``; the hidden width is 2/3 of ``hidden_dim`` rounded up to ``align_to``
    so the three matrices cost about as much as a 2-matrix MLP of width ``hidden_dim``."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True, align_to: int = 8):
        super().__init__()
        width = int(hidden_dim * 2 / 3)
        width += -width % align_to
        self.w1 = nn.Linear(dim, width, bias=bias)
        self.w2 = nn.Linear(dim, width, bias=bias)
        self.w3 = nn.Linear(width, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


FFN_TYPES = {"mlp": Mlp, "swiglu": SwiGLUFFN}


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

    Args:
        dim, num_heads: token width and heads.
        ffn_ratio: FFN hidden width = ``int(dim * ffn_ratio)`` (before the SwiGLU 2/3 rule).
        ffn_type: "mlp" or "swiglu".
        qkv_bias, mask_k_bias: see :class:`SelfAttention`.
        layerscale_init: initial LayerScale value; ``None`` means no LayerScale (``ls1``/``ls2`` are
            identities without parameters).
        norm_eps: epsilon of both LayerNorms.
    """

    def __init__(self, dim: int, num_heads: int, ffn_ratio: float = 4.0, ffn_type: str = "mlp",
                 qkv_bias: bool = True, mask_k_bias: bool = False, layerscale_init: Optional[float] = None,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=qkv_bias, mask_k_bias=mask_k_bias)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = FFN_TYPES[ffn_type](dim, int(dim * ffn_ratio))
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()

    def forward(self, x: Tensor, rope: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope=rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` convolution: ``[B, 3, H, W]`` -> ``[B, D, H // p, W // p]``."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class VisionTransformer(nn.Module):
    """ViT trunk that returns the patch-token maps of selected blocks.

    Args:
        embed_dim, depth, num_heads, patch_size: the usual ViT sizes.
        ffn_ratio, ffn_type, qkv_bias, mask_k_bias, layerscale_init, norm_eps: per block, see :class:`Block`.
        num_storage_tokens: learned register tokens after the class token (``storage_tokens``).
        use_mask_token: keep DINOv3's (unused here) ``mask_token`` parameter. It is added times zero to
            the class token, as in the official forward, so it receives a (zero) gradient and DDP does not
            see an unused parameter.
        final_norm: a final LayerNorm ``norm`` applied to every tapped block output (DINOv3's
            ``get_intermediate_layers(norm=True)``); without it the raw block outputs are returned.
        rope_base, rope_rescale_coords: see :class:`RopePositionEmbedding`.

    ``forward(x, out_indices)``: ``x`` ``[B, 3, H, W]``; ``out_indices`` increasing 0-based block indices.
    Returns one ``[B, embed_dim, H // patch_size, W // patch_size]`` map per index (class and storage
    tokens removed).

    The RoPE table is recomputed before every block: in training with ``rope_rescale_coords`` each block
    draws its own rescale factor, as DINOv3's intermediate-layers path does.
    """

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int = 16, ffn_ratio: float = 4.0,
                 ffn_type: str = "mlp", qkv_bias: bool = True, mask_k_bias: bool = False,
                 layerscale_init: Optional[float] = None, norm_eps: float = 1e-6, num_storage_tokens: int = 0,
                 use_mask_token: bool = False, final_norm: bool = False, rope_base: float = 100.0,
                 rope_rescale_coords: Optional[float] = None):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_prefix_tokens = 1 + num_storage_tokens
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.storage_tokens = (nn.Parameter(torch.zeros(1, num_storage_tokens, embed_dim))
                               if num_storage_tokens else None)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim)) if use_mask_token else None
        self.rope_embed = RopePositionEmbedding(embed_dim // num_heads, base=rope_base,
                                                rescale_coords=rope_rescale_coords)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, ffn_ratio=ffn_ratio, ffn_type=ffn_type, qkv_bias=qkv_bias,
                  mask_k_bias=mask_k_bias, layerscale_init=layerscale_init, norm_eps=norm_eps)
            for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm else None
        self._init_weights()

    def _init_weights(self):
        nn.init.normal_(self.cls_token, std=0.02)
        if self.storage_tokens is not None:
            nn.init.normal_(self.storage_tokens, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _prefix_tokens(self) -> Tensor:
        cls_token = self.cls_token
        if self.mask_token is not None:
            cls_token = cls_token + 0 * self.mask_token
        if self.storage_tokens is None:
            return cls_token
        return torch.cat([cls_token, self.storage_tokens], dim=1)

    def forward(self, x: Tensor, out_indices: Sequence[int]) -> List[Tensor]:
        patches = self.patch_embed(x)
        B, D, h, w = patches.shape
        tokens = torch.cat([self._prefix_tokens().expand(B, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        taps = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens, rope=self.rope_embed(h, w))
            if i in out_indices:
                taps.append(tokens)
        if len(taps) != len(out_indices):
            raise ValueError(f"out_indices {list(out_indices)} must be distinct block indices < {len(self.blocks)}")
        if self.norm is not None:
            taps = [self.norm(t) for t in taps]
        return [t[:, self.num_prefix_tokens:].transpose(1, 2).reshape(B, D, h, w) for t in taps]


class NestedTrunk(nn.Module):
    """A trunk kept under the attribute ``_model``: the layout of DEIMv2's ViT-Tiny checkpoints."""

    def __init__(self, model: VisionTransformer):
        super().__init__()
        self._model = model
        self.embed_dim = model.embed_dim
        self.patch_size = model.patch_size

    def forward(self, x: Tensor, out_indices: Sequence[int]) -> List[Tensor]:
        return self._model(x, out_indices)


_DINOV3_SMALL = dict(embed_dim=384, depth=12, num_heads=6, patch_size=16, qkv_bias=True, mask_k_bias=True,
                     layerscale_init=1e-5, norm_eps=1e-5, num_storage_tokens=4, use_mask_token=True,
                     final_norm=True, rope_base=100.0, rope_rescale_coords=2.0)
_DEIMV2_TINY = dict(depth=12, patch_size=16, ffn_ratio=4.0, ffn_type="mlp", qkv_bias=True, norm_eps=1e-6,
                    rope_base=100.0)

# name -> VisionTransformer arguments (DINOv3: official vision_transformer.py presets; tiny: vit_tiny.py
# defaults with the widths of the DEIMv2 S/M configs).
VIT_PRESETS = {
    "dinov3_vits16": dict(_DINOV3_SMALL, ffn_ratio=4.0, ffn_type="mlp"),
    "dinov3_vits16plus": dict(_DINOV3_SMALL, ffn_ratio=6.0, ffn_type="swiglu"),
    "vit_tiny": dict(_DEIMV2_TINY, embed_dim=192, num_heads=3),
    "vit_tinyplus": dict(_DEIMV2_TINY, embed_dim=256, num_heads=4),
}


def build_vit(name: str, embed_dim: Optional[int] = None, num_heads: Optional[int] = None) -> nn.Module:
    """Builds a preset trunk: a :class:`VisionTransformer` for DINOv3 names, a :class:`NestedTrunk` for
    the DEIMv2 tiny ViTs (whose ``embed_dim`` / ``num_heads`` may be overridden; a DINOv3 preset's sizes
    are fixed by its checkpoint, so a differing value is an error)."""
    if name not in VIT_PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; known: {sorted(VIT_PRESETS)}")
    kwargs = dict(VIT_PRESETS[name])
    for key, value in (("embed_dim", embed_dim), ("num_heads", num_heads)):
        if value is None or value == kwargs[key]:
            continue
        if name.startswith("dinov3"):
            raise ValueError(f"{name} has {key}={kwargs[key]}, got {value}")
        kwargs[key] = value
    model = VisionTransformer(**kwargs)
    return model if name.startswith("dinov3") else NestedTrunk(model)
