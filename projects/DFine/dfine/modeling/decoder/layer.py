"""Decoder layers: self-attention among the queries, cross-attention to the memory, FFN.

:class:`DeformableDecoderLayer` is the post-norm layer of RT-DETRv2, D-FINE and DEIMv2 (and of
Deformable-DETR and DINO): its cross-attention is a module given to it (multi-scale deformable
attention, :class:`~.msda.MSDeformableAttention`), so that the same layer runs with D-FINE's
projection-free attention or another sampler. Parameter names follow the official models.
"""
import torch
from torch import nn

from ..layers.common import RMSNorm, SwiGLUFFN, bias_init_with_prob, get_activation

__all__ = ["DeformableDecoderLayer", "Gate", "make_norm"]

# The float16 range: the FFN residual is clamped to it (as D-FINE does), so that an overflow under
# AMP reaches the norm as a large finite value rather than inf; values inside the range are unchanged.
FLOAT16_MAX = 65504


def make_norm(norm_type: str, dim: int) -> nn.Module:
    """``"layer"``: LayerNorm (RT-DETRv2, D-FINE, DINO); ``"rms"``: RMSNorm (DEIMv2)."""
    if norm_type == "layer":
        return nn.LayerNorm(dim)
    if norm_type == "rms":
        return RMSNorm(dim)
    raise ValueError(f"Unknown norm_type {norm_type!r}; choose 'layer' or 'rms'")


class Gate(nn.Module):
    """Target gating (D-FINE): ``norm(g1 * x1 + g2 * x2)`` with per-channel gates
    ``g1, g2 = sigmoid(Linear([x1, x2]))``, in place of the residual ``norm(x1 + x2)``.

    The gates start at 0.5 (zero weight and bias), i.e. half the plain residual.
    """

    def __init__(self, d_model: int, norm_type: str = "layer"):
        super().__init__()
        self.gate = nn.Linear(2 * d_model, 2 * d_model)
        nn.init.constant_(self.gate.weight, 0)
        nn.init.constant_(self.gate.bias, bias_init_with_prob(0.5))
        self.norm = make_norm(norm_type, d_model)

    def forward(self, x1, x2):
        gate1, gate2 = self.gate(torch.cat([x1, x2], -1)).sigmoid().chunk(2, dim=-1)
        return self.norm(gate1 * x1 + gate2 * x2)


class DeformableDecoderLayer(nn.Module):
    """Post-norm decoder layer with a given cross-attention module.

    Args:
        d_model: query width ``C``.
        n_head: self-attention heads.
        cross_attn: attends from the queries to the memory, ``(query [B, Q, C], reference boxes
            [B, Q, 1, 4], memory [B, N, C], spatial_shapes, memory_valid [B, N] or None) -> [B, Q, C]``.
        dim_feedforward, dropout, activation: the FFN.
        target_gate: merge the cross-attention into the queries with a :class:`Gate` (``gateway``,
            D-FINE) instead of the residual and ``norm2``.
        norm_type: ``"layer"`` or ``"rms"`` (DEIMv2) for every norm of the layer.
        ffn_type: ``"mlp"`` (``linear1 -> activation -> linear2``) or ``"swiglu"`` (DEIMv2: a
            :class:`SwiGLUFFN` ``swish_ffn`` of hidden width ``dim_feedforward // 2``; ``activation``
            is then unused).
    """

    def __init__(self, d_model: int = 256, n_head: int = 8, cross_attn: nn.Module = None, dim_feedforward: int = 1024,
                 dropout: float = 0.0, activation: str = "relu", target_gate: bool = False, norm_type: str = "layer",
                 ffn_type: str = "mlp"):
        super().__init__()
        if cross_attn is None:
            raise ValueError("DeformableDecoderLayer needs a cross_attn module")
        if ffn_type not in ("mlp", "swiglu"):
            raise ValueError(f"Unknown ffn_type {ffn_type!r}; choose 'mlp' or 'swiglu'")
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = make_norm(norm_type, d_model)
        self.cross_attn = cross_attn
        self.dropout2 = nn.Dropout(dropout)
        if target_gate:
            self.gateway = Gate(d_model, norm_type)
        else:
            self.norm2 = make_norm(norm_type, d_model)
        if ffn_type == "swiglu":
            self.swish_ffn = SwiGLUFFN(d_model, dim_feedforward // 2, d_model)
        else:
            self.linear1 = nn.Linear(d_model, dim_feedforward)
            self.activation = get_activation(activation)
            self.dropout3 = nn.Dropout(dropout)
            self.linear2 = nn.Linear(dim_feedforward, d_model)
            nn.init.xavier_uniform_(self.linear1.weight)
            nn.init.xavier_uniform_(self.linear2.weight)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = make_norm(norm_type, d_model)
        self.target_gate = target_gate
        self.ffn_type = ffn_type

    def _ffn(self, target):
        if self.ffn_type == "swiglu":
            return self.swish_ffn(target)
        return self.linear2(self.dropout3(self.activation(self.linear1(target))))

    def forward(self, target, reference, memory, spatial_shapes, attn_mask=None, memory_valid=None, query_pos=None):
        """
        Args:
            target: ``[B, Q, C]`` query content.
            reference: ``[B, Q, 4]`` normalized cxcywh reference boxes (detached), or ``[B, Q, L, 4]``
                one per memory level.
            memory: ``[B, sum(H_l*W_l), C]``.
            spatial_shapes: ``[(H_l, W_l)]``.
            attn_mask: optional ``[Q, Q]`` bool, True = query may not attend.
            memory_valid: optional ``[B, sum(H_l*W_l)]``, True where the memory is valid.
            query_pos: ``[B, Q, C]`` position embedding of the reference boxes.
        """
        q = k = target + query_pos
        attn = self.self_attn(q, k, value=target, attn_mask=attn_mask, need_weights=False)[0]
        target = self.norm1(target + self.dropout1(attn))
        if reference.dim() == 3:
            reference = reference.unsqueeze(2)
        cross = self.cross_attn(target + query_pos, reference, memory, spatial_shapes, memory_valid)
        cross = self.dropout2(cross)
        target = self.gateway(target, cross) if self.target_gate else self.norm2(target + cross)
        ffn = self._ffn(target)
        return self.norm3((target + self.dropout4(ffn)).clamp(-FLOAT16_MAX, FLOAT16_MAX))
