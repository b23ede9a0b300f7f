"""Hybrid encoder of RT-DETR: AIFI (intra-scale attention on the coarsest level) + CCFF (cross-scale fusion).

The CCFF blocks differ between the papers; ``version`` selects them, so every paper shares this
one encoder. DEIMv2's changes are switches too: ``version="deim"``, ``csp_type="csp2"``,
``fuse_op="sum"`` and ``identity_input_proj``. Parameter names follow the official modules so
official checkpoints load unchanged.
"""
from collections import OrderedDict
from functools import partial
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.common import ConvNormLayer, fuse_conv_and_norm, get_activation

__all__ = [
    "HybridEncoder",
    "TransformerEncoderLayer",
    "RepVggBlock",
    "CSPRepLayer",
    "CSPRepLayer2",
    "CCFFBlocks",
    "CCFF_VERSIONS",
    "rt_detrv2_ccff_blocks",
    "dfine_ccff_blocks",
    "deim_ccff_blocks",
    "CSP_TYPES",
    "FUSE_OPS",
    "input_projection",
    "convert_submodules_to_deploy",
    "SCDown",
    "RepNCSPELAN4",
    "build_2d_sincos_position_embedding",
]


class RepVggBlock(nn.Module):
    """``act(BN(conv3x3(x)) + BN(conv1x1(x)))``; ``convert_to_deploy`` folds it into one 3x3 conv."""

    def __init__(self, ch_in, ch_out, act="relu"):
        super().__init__()
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3, 1, padding=1)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1, 1, padding=0)
        self.act = get_activation(act)

    def forward(self, x):
        if hasattr(self, "conv"):
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def convert_to_deploy(self):
        """Fold both branches and their BatchNorms into one biased 3x3 ``conv`` and delete ``conv1`` /
        ``conv2``, as D-FINE / DEIM do (the RT-DETRv2 code keeps them, so its deploy model is larger)."""
        if hasattr(self, "conv"):
            return
        kernel3, bias3 = fuse_conv_and_norm(self.conv1.conv, self.conv1.norm)
        kernel1, bias1 = fuse_conv_and_norm(self.conv2.conv, self.conv2.norm)
        self.conv = nn.Conv2d(kernel3.shape[1], kernel3.shape[0], 3, 1, padding=1).to(kernel3)
        self.conv.weight.copy_(kernel3 + F.pad(kernel1, [1, 1, 1, 1]))
        self.conv.bias.copy_(bias3 + bias1)
        del self.conv1, self.conv2


class CSPRepLayer(nn.Module):
    """CSP block of RT-DETR's CCFF: ``conv3(RepVGG^n(conv1(x)) + conv2(x))``.

    ``[B, in_channels, H, W] -> [B, out_channels, H, W]``; the branches have
    ``int(out_channels * expansion)`` channels, and ``conv3`` is the identity when that is ``out_channels``.
    """

    def __init__(self, in_channels, out_channels, num_blocks=3, expansion=1.0, act="silu"):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden, 1, 1, act=act)
        self.conv2 = ConvNormLayer(in_channels, hidden, 1, 1, act=act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden, act=act) for _ in range(num_blocks)])
        self.conv3 = ConvNormLayer(hidden, out_channels, 1, 1, act=act) if hidden != out_channels else nn.Identity()

    def forward(self, x):
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class CSPRepLayer2(nn.Module):
    """DEIMv2's cheaper CSP block (official ``CSPLayer2``, YOLO's RepC3): one 1x1 conv makes both
    branches, ``a, b = conv1(x).chunk(2)``, and the output is ``conv3(a + RepVGG^n(b))``.

    ``[B, in_channels, H, W] -> [B, out_channels, H, W]``; the branches have
    ``int(out_channels * expansion)`` channels, and ``conv3`` is the identity when that is ``out_channels``.
    """

    def __init__(self, in_channels, out_channels, num_blocks=3, expansion=1.0, act="silu"):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, 2 * hidden, 1, 1, act=act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden, act=act) for _ in range(num_blocks)])
        self.conv3 = ConvNormLayer(hidden, out_channels, 1, 1, act=act) if hidden != out_channels else nn.Identity()

    def forward(self, x):
        shortcut, branch = self.conv1(x).chunk(2, dim=1)
        return self.conv3(shortcut + self.bottlenecks(branch))


# RepNCSPELAN4(csp_type=...) -> CSP block of its two branches.
CSP_TYPES: Dict[str, Callable[..., nn.Module]] = {"csp": CSPRepLayer, "csp2": CSPRepLayer2}


class SCDown(nn.Module):
    """Spatial-channel decoupled down-sampling of D-FINE: a 1x1 conv, then a depth-wise
    ``kernel_size`` conv with ``stride``, both conv + BN without activation."""

    def __init__(self, ch_in, ch_out, kernel_size, stride):
        super().__init__()
        self.cv1 = ConvNormLayer(ch_in, ch_out, 1, 1)
        self.cv2 = ConvNormLayer(ch_out, ch_out, kernel_size, stride, groups=ch_out)

    def forward(self, x):
        return self.cv2(self.cv1(x))


class RepNCSPELAN4(nn.Module):
    """GELAN fusion block of D-FINE's and DEIMv2's CCFF.

    ``cv1`` (1x1, ``c3`` channels) is split in two halves; the second half goes through two
    branches in a chain, each a CSP layer (``num_blocks`` RepVGG blocks, ``c4`` channels) and,
    with ``branch_conv``, a 3x3 conv; the two halves and both branch outputs are concatenated and
    ``cv4`` (1x1) maps them to ``c2``. ``[B, c1, H, W] -> [B, c2, H, W]``.

    ``csp_type`` picks the CSP layer: "csp" (:class:`CSPRepLayer`, D-FINE) or "csp2"
    (:class:`CSPRepLayer2`, DEIMv2). ``csp_type="csp2", branch_conv=False`` is the official
    DEIMv2 ``RepNCSPELAN5`` (same parameter names).
    """

    def __init__(self, c1, c2, c3, c4, num_blocks=3, act="silu", csp_type="csp", branch_conv=True):
        super().__init__()
        if csp_type not in CSP_TYPES:
            raise ValueError(f"Unknown csp_type {csp_type!r}; available: {sorted(CSP_TYPES)}")
        csp_layer = CSP_TYPES[csp_type]

        def branch(in_channels):
            layers = [csp_layer(in_channels, c4, num_blocks, expansion=1.0, act=act)]
            if branch_conv:
                layers.append(ConvNormLayer(c4, c4, 3, 1, act=act))
            return nn.Sequential(*layers)

        self.half = c3 // 2
        self.cv1 = ConvNormLayer(c1, c3, 1, 1, act=act)
        self.cv2 = branch(c3 // 2)
        self.cv3 = branch(c4)
        self.cv4 = ConvNormLayer(c3 + 2 * c4, c2, 1, 1, act=act)

    def forward(self, x):
        parts = list(self.cv1(x).split((self.half, self.half), dim=1))
        parts.append(self.cv2(parts[-1]))
        parts.append(self.cv3(parts[-1]))
        return self.cv4(torch.cat(parts, dim=1))


class TransformerEncoderLayer(nn.Module):
    """Post-norm transformer encoder layer (AIFI); the position embedding is added to queries and keys."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = get_activation(activation)

    def forward(self, src, pos_embed=None):
        q = k = src if pos_embed is None else src + pos_embed
        attn = self.self_attn(q, k, value=src, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class TransformerEncoder(nn.Module):
    """``num_layers`` AIFI layers on tokens ``[B, N, C]``, all given the same position embedding ``[1, N, C]``."""

    def __init__(self, num_layers, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, src, pos_embed=None):
        for layer in self.layers:
            src = layer(src, pos_embed=pos_embed)
        return src


def build_2d_sincos_position_embedding(w: int, h: int, embed_dim: int = 256, temperature: float = 10000.0,
                                       dtype: torch.dtype = torch.float32):
    """2-D sin-cos embedding ``[1, w*h, embed_dim]`` in the official layout, computed in ``dtype``
    (the official models always use float32; :class:`HybridEncoder` asks for float64 in a float64 model).

    Rows are ordered w-major (row ``= x * h + y``) while the flattened feature map is h-major
    (``y * w + x``): on square maps the "x" channels therefore encode the row. The official
    weights were trained with this layout, so it is kept as is.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for the 2-D sin-cos embedding, got {embed_dim}")
    grid_w, grid_h = torch.meshgrid(torch.arange(int(w), dtype=dtype),
                                    torch.arange(int(h), dtype=dtype), indexing="ij")
    pos_dim = embed_dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=dtype) / pos_dim)
    out_w = grid_w.flatten()[:, None] @ omega[None]
    out_h = grid_h.flatten()[:, None] @ omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


def input_projection(in_channels: int, hidden_dim: int) -> nn.Sequential:
    """1x1 conv (no bias) + BatchNorm from a backbone map to ``hidden_dim`` channels (not folded by
    ``convert_to_deploy``, like the official one)."""
    return nn.Sequential(OrderedDict([("conv", nn.Conv2d(in_channels, hidden_dim, 1, bias=False)),
                                      ("norm", nn.BatchNorm2d(hidden_dim))]))


class CCFFBlocks(NamedTuple):
    """Builders of one paper's CCFF parts; every call returns a new module. ``h`` is ``hidden_dim``."""

    lateral: Callable[[], nn.Module]  # [B, h, H, W] -> [B, h, H, W], before the top-down upsampling
    downsample: Callable[[], nn.Module]  # [B, h, H, W] -> [B, h, H/2, W/2], bottom-up
    fusion: Callable[[int], nn.Module]  # in channels c -> module [B, c, H, W] -> [B, h, H, W]


def _check_csp_type(version: str, csp_type: str, supported: str):
    if csp_type != supported:
        raise ValueError(f"HybridEncoder version {version!r} only builds csp_type={supported!r}, got {csp_type!r}")


def rt_detrv2_ccff_blocks(hidden_dim: int, expansion: float, depth_mult: float, act: str,
                          csp_type: str = "csp") -> CCFFBlocks:
    """RT-DETR / RT-DETRv2: activated 1x1 lateral and 3x3 stride-2 convs, CSPRep fusion blocks."""
    _check_csp_type("rt_detrv2", csp_type, "csp")
    return CCFFBlocks(
        lateral=partial(ConvNormLayer, hidden_dim, hidden_dim, 1, 1, act=act),
        downsample=partial(ConvNormLayer, hidden_dim, hidden_dim, 3, 2, act=act),
        fusion=lambda in_channels: CSPRepLayer(
            in_channels, hidden_dim, round(3 * depth_mult), expansion=expansion, act=act),
    )


def dfine_ccff_blocks(hidden_dim: int, expansion: float, depth_mult: float, act: str, csp_type: str = "csp",
                      branch_conv: bool = True) -> CCFFBlocks:
    """D-FINE / DEIM-D-FINE: 1x1 lateral convs without activation, SCDown down-sampling and GELAN
    (RepNCSPELAN4) fusion with ``round(expansion * hidden_dim // 2)`` branch channels. (The
    official D-FINE encoder builds the GELAN blocks with SiLU whatever ``act`` says; DEIM and
    DEIMv2 pass ``act``; every official config uses SiLU.) DEIMv2's N and S use this version with
    ``csp_type="csp2"``; "csp" is D-FINE's block (DEIMv2's own code fails to build that combination)."""
    return CCFFBlocks(
        lateral=partial(ConvNormLayer, hidden_dim, hidden_dim, 1, 1),
        downsample=lambda: nn.Sequential(SCDown(hidden_dim, hidden_dim, 3, 2)),
        fusion=lambda in_channels: RepNCSPELAN4(
            in_channels, hidden_dim, 2 * hidden_dim, round(expansion * hidden_dim // 2), round(3 * depth_mult), act=act,
            csp_type=csp_type, branch_conv=branch_conv),
    )


def deim_ccff_blocks(hidden_dim: int, expansion: float, depth_mult: float, act: str,
                     csp_type: str = "csp2") -> CCFFBlocks:
    """DEIMv2 (``version="deim"``, its M/L/X and DINOv3 sizes): D-FINE's lateral convs and SCDown,
    GELAN fusion with :class:`CSPRepLayer2` branches and no 3x3 conv after them (official
    ``RepNCSPELAN5``)."""
    _check_csp_type("deim", csp_type, "csp2")
    return dfine_ccff_blocks(hidden_dim, expansion, depth_mult, act, csp_type="csp2", branch_conv=False)


# ``HybridEncoder(version=...)`` -> builder of that paper's CCFF blocks, called with
# (hidden_dim, expansion, depth_mult, act) and ``csp_type`` when the encoder is given one.
CCFF_VERSIONS: Dict[str, Callable[..., CCFFBlocks]] = {
    "rt_detrv2": rt_detrv2_ccff_blocks,
    "dfine": dfine_ccff_blocks,
    "deim": deim_ccff_blocks,
}


def concat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([a, b], dim=1)


# ``HybridEncoder(fuse_op=...)``: how a fusion block's two inputs (same shape) are combined, and
# its input channels as a multiple of hidden_dim.
FUSE_OPS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"cat": concat_channels, "sum": torch.add}
_FUSE_WIDTH = {"cat": 2, "sum": 1}


class HybridEncoder(nn.Module):
    """AIFI on the levels in ``use_encoder_idx``, then top-down FPN and bottom-up PAN fusion (CCFF).

    Args:
        in_channels, feat_strides: channels and strides of the backbone maps, finest first; each level
            has half the size of the previous one.
        hidden_dim: channels of the projected maps, of AIFI and of every output.
        nhead, dim_feedforward, dropout, enc_act, num_encoder_layers: AIFI transformer layers.
        use_encoder_idx: levels that go through AIFI (one encoder each).
        pe_temperature: temperature of the 2-D sin-cos position embedding.
        expansion, depth_mult, act: width ratio, block count ``round(3 * depth_mult)`` and activation
            of the CCFF blocks.
        eval_spatial_size: ``(h, w)`` of the inference input. The position embedding for that size is
            precomputed (a non-persistent buffer, as in the official model); training and other sizes
            compute it on the fly.
        version: which paper's CCFF blocks to build, a key of ``CCFF_VERSIONS``: "rt_detrv2",
            "dfine" (also DEIM and DEIMv2 N/S) or "deim" (DEIMv2 M/L/X and DINOv3 sizes).
        csp_type: CSP layer inside the GELAN blocks of ``version="dfine"``: "csp" (D-FINE, DEIM)
            or "csp2" (DEIMv2). ``None`` takes the version's own ("csp", or "csp2" for "deim");
            the other versions reject a value they cannot build.
        fuse_op: how the FPN/PAN blocks combine their two inputs: "cat" on channels (blocks take
            ``2 * hidden_dim`` channels) or "sum" (DEIMv2; blocks take ``hidden_dim``).
        identity_input_proj: DEIMv2 skips the input projection (``nn.Identity``, no parameters) of
            the levels whose ``in_channels`` already equal ``hidden_dim``; D-FINE/DEIM/RT-DETRv2
            always project (their S configs have a 256-channel level with a 256 ``hidden_dim``).

    Input: backbone maps ``[B, in_channels[i], H_i, W_i]``. Output: a list of as many maps
    ``[B, hidden_dim, H_i, W_i]`` at the same strides (``out_strides``).
    """

    def __init__(self, in_channels: Sequence[int] = (512, 1024, 2048), feat_strides: Sequence[int] = (8, 16, 32),
                 hidden_dim: int = 256, nhead: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 enc_act: str = "gelu", use_encoder_idx: Sequence[int] = (2,), num_encoder_layers: int = 1,
                 pe_temperature: float = 10000, expansion: float = 1.0, depth_mult: float = 1.0, act: str = "silu",
                 eval_spatial_size=None, version: str = "rt_detrv2", csp_type: Optional[str] = None,
                 fuse_op: str = "cat", identity_input_proj: bool = False):
        super().__init__()
        if version not in CCFF_VERSIONS:
            raise ValueError(f"Unknown HybridEncoder version {version!r}; available: {sorted(CCFF_VERSIONS)}")
        if fuse_op not in FUSE_OPS:
            raise ValueError(f"Unknown HybridEncoder fuse_op {fuse_op!r}; available: {sorted(FUSE_OPS)}")
        self.in_channels = list(in_channels)
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature
        self.eval_spatial_size = eval_spatial_size
        self.out_channels: List[int] = [hidden_dim] * len(in_channels)
        self.out_strides: List[int] = list(feat_strides)
        self.fuse_op = fuse_op

        self.input_proj = nn.ModuleList(
            nn.Identity() if identity_input_proj and c == hidden_dim else input_projection(c, hidden_dim)
            for c in in_channels
        )
        self.encoder = nn.ModuleList(
            TransformerEncoder(num_encoder_layers, d_model=hidden_dim, nhead=nhead, dim_feedforward=dim_feedforward,
                               dropout=dropout, activation=enc_act)
            for _ in self.use_encoder_idx
        )
        blocks = CCFF_VERSIONS[version](hidden_dim, expansion, depth_mult, act,
                                        **({} if csp_type is None else {"csp_type": csp_type}))
        num_fusions = len(in_channels) - 1
        # Top-down fusion blocks see [upsampled coarser map, lateral map]; bottom-up ones see
        # [down-sampled finer map, top-down output]: both combined by ``fuse_op``.
        fusion_channels = _FUSE_WIDTH[fuse_op] * hidden_dim
        self.lateral_convs = nn.ModuleList(blocks.lateral() for _ in range(num_fusions))
        self.fpn_blocks = nn.ModuleList(blocks.fusion(fusion_channels) for _ in range(num_fusions))
        self.downsample_convs = nn.ModuleList(blocks.downsample() for _ in range(num_fusions))
        self.pan_blocks = nn.ModuleList(blocks.fusion(fusion_channels) for _ in range(num_fusions))

        if eval_spatial_size:
            for idx in self.use_encoder_idx:
                h, w = self._eval_grid(idx)
                embed = build_2d_sincos_position_embedding(w, h, hidden_dim, pe_temperature)
                self.register_buffer(f"pos_embed{idx}", embed, persistent=False)

    def _eval_grid(self, idx):
        """(h, w) of level ``idx`` at ``eval_spatial_size``, floored as in the official model."""
        stride = self.feat_strides[idx]
        return self.eval_spatial_size[0] // stride, self.eval_spatial_size[1] // stride

    def _position_embedding(self, idx, h, w, tokens):
        # The precomputed float32 embedding serves eval at eval_spatial_size; any other size (the
        # official model would fail there) and training compute it for the actual grid. A float64
        # model computes it in float64 (the official one adds its float32 embedding whatever the dtype).
        if tokens.dtype == torch.float64:
            return build_2d_sincos_position_embedding(w, h, self.hidden_dim, self.pe_temperature,
                                                      dtype=torch.float64).to(tokens.device)
        if not self.training and self.eval_spatial_size and self._eval_grid(idx) == (h, w):
            return getattr(self, f"pos_embed{idx}")
        return build_2d_sincos_position_embedding(w, h, self.hidden_dim, self.pe_temperature).to(tokens.device)

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"HybridEncoder expects {len(self.in_channels)} feature maps, got {len(feats)}")
        proj = [layer(feat) for layer, feat in zip(self.input_proj, feats)]
        if self.num_encoder_layers > 0:
            for encoder, idx in zip(self.encoder, self.use_encoder_idx):
                h, w = proj[idx].shape[2:]
                tokens = proj[idx].flatten(2).permute(0, 2, 1)  # [B, h*w, C], h-major
                memory = encoder(tokens, pos_embed=self._position_embedding(idx, h, w, tokens))
                proj[idx] = memory.permute(0, 2, 1).reshape(-1, self.hidden_dim, h, w).contiguous()

        fuse = FUSE_OPS[self.fuse_op]
        # Top-down: the lateral conv's output also replaces the stored coarser map (official behaviour).
        inner = [proj[-1]]
        for i, idx in enumerate(range(len(proj) - 1, 0, -1)):
            high = self.lateral_convs[i](inner[0])
            inner[0] = high
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.fpn_blocks[i](fuse(up, proj[idx - 1])))
        # Bottom-up.
        outs = [inner[0]]
        for i in range(len(proj) - 1):
            down = self.downsample_convs[i](outs[-1])
            outs.append(self.pan_blocks[i](fuse(down, inner[i + 1])))
        return outs

    def convert_to_deploy(self):
        """Re-parameterise every block that can be for inference (RepVGG: two conv+BN branches into
        one conv; conv+BN layers of the CCFF: one biased conv, as D-FINE's ``ConvNormLayer_fuse``);
        outputs stay the same. Call it in eval mode: it folds the running statistics."""
        convert_submodules_to_deploy(self)


def convert_submodules_to_deploy(model: nn.Module):
    """Call ``convert_to_deploy`` of every submodule of ``model`` that has one, parents first (a
    RepVGG block folds its conv+BN children itself), as the official ``deploy()`` does."""
    for module in list(model.modules())[1:]:
        if hasattr(module, "convert_to_deploy"):
            module.convert_to_deploy()
