"""DEIMv2's DINOv3 backbone with the Spatial Tuning Adapter (STA), for DEIMv2 S/M/L/X.

A ViT sees the image only at stride 16 and has no multi-scale maps, but a DETR encoder wants strides
8/16/32 with fine detail. DEIMv2 therefore taps three blocks of the (pre-trained) ViT, resizes their
patch-token maps bilinearly to strides 8, 16 and 32, and concatenates each with the matching output of
a very small strided CNN on the raw image (the STA "detail" branch); a 1x1 convolution + BatchNorm per
level fuses the two into the encoder's width. Mirrors the official ``DINOv3STAs`` and
``SpatialPriorModulev2`` of ``engine/backbone/dinov3_adapter.py``; the trunks are in ``vit.py``.
"""
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vit import build_vit

__all__ = ["DINOv3STA", "SpatialPriorModulev2"]


class SpatialPriorModulev2(nn.Module):
    """The STA detail CNN: four stride-2 3x3 convolutions (and a max-pool) with BatchNorm and GELU.

    Returns the maps at strides 8, 16 and 32 with ``2c``, ``4c`` and ``4c`` channels (``c = inplanes``).
    Module names (``stem``, ``conv2``, ``conv3``, ``conv4`` as Sequentials) follow the official code so
    its checkpoints load unchanged.
    """

    def __init__(self, inplanes: int = 16, norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()

        def conv(cin, cout):
            return nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1, bias=False)

        c = inplanes
        self.stem = nn.Sequential(conv(3, c), norm(c), nn.GELU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = nn.Sequential(conv(c, 2 * c), norm(2 * c))
        self.conv3 = nn.Sequential(nn.GELU(), conv(2 * c, 4 * c), norm(4 * c))
        self.conv4 = nn.Sequential(nn.GELU(), conv(4 * c, 4 * c), norm(4 * c))

    def forward(self, x: Tensor) -> List[Tensor]:
        c2 = self.conv2(self.stem(x))
        c3 = self.conv3(c2)
        return [c2, c3, self.conv4(c3)]


class DINOv3STA(nn.Module):
    """ViT trunk + STA, returning three fused maps at strides 8, 16, 32 (official ``DINOv3STAs``).

    Args:
        name: trunk preset of :data:`dfine.modeling.backbone.vit.VIT_PRESETS`: "vit_tiny" (DEIMv2-S),
            "vit_tinyplus" (M), "dinov3_vits16" (L) or "dinov3_vits16plus" (X).
        embed_dim, num_heads: trunk width and heads; ``None`` takes the preset's. Only the tiny presets
            accept other values (as in the official code, where they only reach the tiny ViT).
        interaction_indexes: 0-based indices of the tapped blocks, increasing: three taps go to strides
            8, 16, 32 in that order; a single tap is used for all three levels.
        conv_inplane: base width ``c`` of the STA CNN (levels get ``2c``, ``4c``, ``4c`` channels).
        hidden_dim: output channels of every level; ``None`` means the trunk's ``embed_dim``.
        finetune: ``False`` freezes the trunk (no gradients) and keeps it in eval mode even under
            ``model.train()``, so its RoPE augmentation is off too.
        norm: norm layer class of the STA CNN and of the fusion (called with the channel count). The
            official code uses ``nn.SyncBatchNorm``, which needs an initialised process group on every
            forward in training; the default plain ``nn.BatchNorm2d`` runs anywhere and has the same
            parameter names, so pass ``nn.SyncBatchNorm`` for multi-GPU parity.

    Input ``[B, 3, H, W]`` with ``H`` and ``W`` multiples of 32 (normalised RGB, as the DINOv3 configs
    feed it). Output: a list of 3 maps ``[B, hidden_dim, H / s, W / s]`` for ``s`` in ``out_strides``.
    """

    def __init__(self, name: str, embed_dim: Optional[int] = None, num_heads: Optional[int] = None,
                 interaction_indexes: Sequence[int] = (5, 8, 11), conv_inplane: int = 16,
                 hidden_dim: Optional[int] = None, finetune: bool = True,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        indexes = list(interaction_indexes)
        if len(indexes) not in (1, 3) or sorted(set(indexes)) != indexes:
            raise ValueError(f"interaction_indexes must be 1 or 3 increasing block indices, got {indexes}")
        self.interaction_indexes = indexes
        # Attribute name as in the official module, for either trunk family.
        self.dinov3 = build_vit(name, embed_dim=embed_dim, num_heads=num_heads)
        embed_dim = self.dinov3.embed_dim
        self.finetune = finetune
        if not finetune:
            self.dinov3.requires_grad_(False)
            self.dinov3.eval()

        self.sta = SpatialPriorModulev2(conv_inplane, norm=norm)
        hidden_dim = embed_dim if hidden_dim is None else hidden_dim
        detail_channels = [2 * conv_inplane, 4 * conv_inplane, 4 * conv_inplane]
        self.convs = nn.ModuleList([nn.Conv2d(embed_dim + c, hidden_dim, kernel_size=1, bias=False)
                                    for c in detail_channels])
        self.norms = nn.ModuleList([norm(hidden_dim) for _ in detail_channels])
        self.out_channels = [hidden_dim] * 3
        self.out_strides = [8, 16, 32]

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.finetune:
            self.dinov3.eval()
        return self

    def forward(self, x: Tensor) -> List[Tensor]:
        semantic = self.dinov3(x, self.interaction_indexes)
        if len(semantic) == 1:
            semantic = semantic * 3
        h, w = semantic[0].shape[-2:]  # stride-16 token grid
        # Level i goes to stride 8 * 2**i: x2 up, unchanged, x0.5 down (floor for odd grids).
        semantic = [F.interpolate(s, size=[int(h * 2.0 ** (1 - i)), int(w * 2.0 ** (1 - i))], mode="bilinear",
                                  align_corners=False) for i, s in enumerate(semantic)]
        detail = self.sta(x)
        return [norm(conv(torch.cat([s, d], dim=1)))
                for s, d, conv, norm in zip(semantic, detail, self.convs, self.norms)]
