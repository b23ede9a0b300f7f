"""The DAB-DETR decoder (Liu et al. 2022), as DN-DETR's DN-DAB-DETR runs it.

Global multi-head attention over a single-level memory, with queries that are boxes: every layer
embeds its reference boxes ``(cx, cy, w, h)`` with sines (:func:`~..layers.position_encoding.sine_box_embedding`,
temperature 10000) and

* ``query_pos = ref_point_head(sine)`` (``MLP(2C, C, C, 2)``) is the positional query of the
  self-attention (and of the first layer's cross-attention);
* the ``(y, x)`` half of the sines, scaled element-wise by ``query_scale(content)`` (from the second
  layer on; ``query_scale_type`` "cond_elewise") and, with ``modulate_hw_attn``, its x and y parts by
  ``w_ref / w`` and ``h_ref / h`` (``(w_ref, h_ref) = sigmoid(ref_anchor_head(content))``), is the
  spatial query of the conditional cross-attention: per head, the projected content query is
  concatenated with the projected spatial query and the memory key with the projected memory
  position embedding (Conditional DETR), so that content and position are matched separately.

``content`` is the layer's input (the previous layer's output before the output norm). Boxes refine
by deltas on one box head shared by all layers, look-forward-twice (see :mod:`.heads`), and every
layer's output goes through one shared LayerNorm before the heads.

Why a subclass of :class:`~.decoder.DetrDecoder`. The parts that the DETR decoder composes (input
projection, query selection, denoising, class and box heads, output norm, the typed
:class:`~.outputs.DecoderOutput`) all apply. What does not fit its layer contract is that the
positional queries depend on the layer's content and index through modules shared by all layers
(``query_scale``, ``ref_anchor_head``), and that the cross-attention needs the memory's position
embedding. :class:`DabDetrDecoder` overrides only the layer loop (``_decode``), the scaling of the
reference boxes by valid ratios (none: DAB-DETR never scales its boxes, the memory's sine encoding is
relative to each image already), and hands the label embedding to the denoising.

State dict, inside the meta-architecture (``decoder.`` first), next to the official keys:

=============================================  ===================================================
official DN-DAB-DETR key                       ours
=============================================  ===================================================
``transformer.decoder.layers.{i}.X``           ``decoder.decoder.layers.{i}.X`` (same ``X``)
``transformer.decoder.norm``                   ``decoder.decoder.norm``
``transformer.decoder.ref_point_head``         ``decoder.query_pos_head``
``transformer.decoder.query_scale``            ``decoder.query_scale``
``transformer.decoder.ref_anchor_head``        ``decoder.ref_anchor_head``
``transformer.patterns``                       ``decoder.patterns``
``refpoint_embed``, ``label_enc``              ``decoder.refpoint_embed``, ``decoder.label_enc``
``class_embed`` (shared)                       ``decoder.dec_score_head.{0..5}`` (one module)
``bbox_embed`` (= ``transformer.decoder.       ``decoder.dec_bbox_head.{0..5}`` (one module)
bbox_embed``)
=============================================  ===================================================
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.common import MLP, get_activation
from ..layers.position_encoding import SinePositionEncoding, sine_box_embedding
from .decoder import DetrDecoder

__all__ = ["ConditionalAttention", "DabDecoderLayer", "DabDetrDecoder"]

QUERY_SCALE_TYPES = ("cond_elewise", "cond_scalar", "fix_elewise")


class ConditionalAttention(nn.Module):
    """Multi-head attention on queries, keys and values that are projected already (the layer
    projects content and position separately), with only the output projection ``out_proj``.

    Queries and keys have ``embed_dim`` features (``num_heads`` heads of ``embed_dim / num_heads``),
    values ``value_dim`` (default ``embed_dim``); the output has ``value_dim``. The logits are the
    scaled dot products ``(q / sqrt(head_dim)) . k``, minus their row maximum before the softmax, as the
    official DAB-DETR attention computes them.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, value_dim: Optional[int] = None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.value_dim = value_dim or embed_dim
        self.dropout = dropout
        self.out_proj = nn.Linear(self.value_dim, self.value_dim)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``query [B, Lq, E]``, ``key [B, Lk, E]``, ``value [B, Lk, V]``; ``attn_mask`` ``[Lq, Lk]`` and
        ``key_padding_mask`` ``[B, Lk]``, bool, True = not attended. Returns ``[B, Lq, V]``."""
        batch, num_q, _ = query.shape
        num_k = key.shape[1]
        heads = self.num_heads
        head_dim = self.embed_dim // heads
        q = (query * head_dim ** -0.5).view(batch, num_q, heads, head_dim).transpose(1, 2)
        k = key.reshape(batch, num_k, heads, head_dim).transpose(1, 2)
        v = value.reshape(batch, num_k, heads, self.value_dim // heads).transpose(1, 2)
        logits = q @ k.transpose(-1, -2)
        if attn_mask is not None:
            logits = logits.masked_fill(attn_mask, float("-inf"))
        if key_padding_mask is not None:
            logits = logits.masked_fill(key_padding_mask[:, None, None], float("-inf"))
        weights = F.softmax(logits - logits.max(-1, keepdim=True).values, -1)
        weights = F.dropout(weights, self.dropout, self.training)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(batch, num_q, self.value_dim))


class DabDecoderLayer(nn.Module):
    """One post-norm DAB-DETR decoder layer: self-attention, conditional cross-attention, FFN.

    Self-attention: ``q = sa_qcontent_proj(x) + sa_qpos_proj(query_pos)``, ``k`` likewise,
    ``v = sa_v_proj(x)``; ``x = norm1(x + attn)``. Cross-attention: the content query
    ``ca_qcontent_proj(x)`` (plus ``ca_qpos_proj(query_pos)`` in a layer that has it, and then the
    key ``ca_kcontent_proj(memory)`` plus ``ca_kpos_proj(memory_pos)``) is concatenated per head
    with ``ca_qpos_sine_proj(spatial query)``, the key per head with ``ca_kpos_proj(memory_pos)``
    (``2C`` features, ``num_heads`` heads), values ``ca_v_proj(memory)``; ``x = norm2(x + attn)``.
    FFN: ``x = norm3(x + linear2(activation(linear1(x))))``.

    ``ca_qpos_proj``: with ``keep_query_pos`` False (DN-DETR) only the first layer has it; the decoder
    removes it from the others (sets it to None), as the official code.

    Args:
        d_model, n_head, dim_feedforward, dropout: the layer's sizes (DN-DETR: 256, 8, 2048, 0.0).
        activation: of the FFN (DN-DETR: "prelu", one learned slope per layer).
    """

    def __init__(self, d_model: int = 256, n_head: int = 8, dim_feedforward: int = 2048, dropout: float = 0.0,
                 activation: str = "prelu"):
        super().__init__()
        self.sa_qcontent_proj = nn.Linear(d_model, d_model)
        self.sa_qpos_proj = nn.Linear(d_model, d_model)
        self.sa_kcontent_proj = nn.Linear(d_model, d_model)
        self.sa_kpos_proj = nn.Linear(d_model, d_model)
        self.sa_v_proj = nn.Linear(d_model, d_model)
        self.self_attn = ConditionalAttention(d_model, n_head, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.ca_qcontent_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_proj = nn.Linear(d_model, d_model)
        self.ca_kcontent_proj = nn.Linear(d_model, d_model)
        self.ca_kpos_proj = nn.Linear(d_model, d_model)
        self.ca_v_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_sine_proj = nn.Linear(d_model, d_model)
        self.cross_attn = ConditionalAttention(2 * d_model, n_head, dropout, value_dim=d_model)
        self.n_head = n_head
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = get_activation(activation)

    def _per_head(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[B, L, C]`` and ``[B, L, C]`` -> ``[B, L, 2C]``, each head's slice of ``x`` then of ``y``."""
        batch, length, channels = x.shape
        heads = self.n_head
        return torch.cat([x.view(batch, length, heads, channels // heads),
                          y.view(batch, length, heads, channels // heads)], -1).view(batch, length, 2 * channels)

    def forward(self, target: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, query_pos: torch.Tensor,
                query_sine: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                memory_padding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            target: ``[B, Q, C]`` query content.
            memory, memory_pos: ``[B, N, C]`` the memory and its position embedding.
            query_pos: ``[B, Q, C]`` positional query (``ref_point_head`` of the box sines).
            query_sine: ``[B, Q, C]`` spatial query (the scaled, modulated ``(y, x)`` box sines).
            attn_mask: optional ``[Q, Q]`` bool, True = not attended (denoising groups).
            memory_padding: optional ``[B, N]`` bool, True on padding tokens.
        """
        q = self.sa_qcontent_proj(target) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(target) + self.sa_kpos_proj(query_pos)
        attended = self.self_attn(q, k, self.sa_v_proj(target), attn_mask=attn_mask)
        target = self.norm1(target + self.dropout1(attended))

        q = self.ca_qcontent_proj(target)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(memory_pos)
        if self.ca_qpos_proj is not None:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q = self._per_head(q, self.ca_qpos_sine_proj(query_sine))
        k = self._per_head(k, k_pos)
        attended = self.cross_attn(q, k, self.ca_v_proj(memory), key_padding_mask=memory_padding)
        target = self.norm2(target + self.dropout2(attended))

        ffn = self.linear2(self.dropout(self.activation(self.linear1(target))))
        return self.norm3(target + self.dropout3(ffn))


class DabDetrDecoder(DetrDecoder):
    """DAB-DETR's decoder (see the module docstring): :class:`~.decoder.DetrDecoder` with a
    :class:`DabDecoderLayer`, learned anchors (:class:`~.query_selection.LearnedAnchors`) and, for
    DN-DETR, :class:`~.denoising.DnDetrDenoising`.

    Args (beyond :class:`~.decoder.DetrDecoder`'s, whose ``query_pos_head`` is the ``ref_point_head``,
    a :class:`~.heads.SineBoxPositionEmbedding`):
        query_scale_type: ``"cond_elewise"`` (``MLP(C, C, C, 2)`` of the content, DN-DETR's),
            ``"cond_scalar"`` (``MLP(C, C, 1, 2)``) or ``"fix_elewise"`` (a learned vector per layer).
        modulate_hw_attn: scale the spatial query by the predicted over the reference width and
            height (``ref_anchor_head``, ``MLP(C, C, 2, 2)``).
        keep_query_pos: the positional query in every layer's cross-attention, not only the first's.
        pe_temperature_h, pe_temperature_w: of the memory's sine position encoding, which must be the
            encoder's (DN-DETR: 20 and 20).

    The memory is one level; its padding (from ``padding_mask``) is masked in the cross-attention.
    """

    def __init__(self, *, query_scale_type: str = "cond_elewise", modulate_hw_attn: bool = True,
                 keep_query_pos: bool = False, pe_temperature_h: float = 20, pe_temperature_w: float = 20,
                 **kwargs):
        kwargs.setdefault("image_relative_boxes", True)
        kwargs.setdefault("output_norm", True)
        super().__init__(**kwargs)
        if self.num_levels != 1:
            raise ValueError(f"DabDetrDecoder attends to one memory level, got num_levels={self.num_levels}")
        if query_scale_type not in QUERY_SCALE_TYPES:
            raise ValueError(f"Unknown query_scale_type {query_scale_type!r}; choose one of {QUERY_SCALE_TYPES}")
        if self.norm is None:
            raise ValueError("DabDetrDecoder normalises every layer's output (output_norm=True)")
        hidden_dim = self.hidden_dim
        self.query_scale_type = query_scale_type
        if query_scale_type == "fix_elewise":
            self.query_scale = nn.Embedding(self.num_layers, hidden_dim)
        else:
            self.query_scale = MLP(hidden_dim, hidden_dim, hidden_dim if query_scale_type == "cond_elewise" else 1, 2)
        self.ref_anchor_head = MLP(hidden_dim, hidden_dim, 2, 2) if modulate_hw_attn else None
        self.keep_query_pos = keep_query_pos
        if not keep_query_pos:
            for layer in self.layers[1:]:
                layer.ca_qpos_proj = None
        self.position_encoding = SinePositionEncoding(hidden_dim // 2, pe_temperature_h, pe_temperature_w,
                                                      normalize=True)
        # As the official transformer: Xavier-uniform every matrix of the layers and the query MLPs.
        for module in (self.layers, self.query_scale, self.query_pos_head, self.ref_anchor_head):
            for p in module.parameters() if module is not None else ():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def _denoising_queries(self, targets, num_matching: int):
        # The denoising embeds its labels with the query selection's label_enc.
        return self.denoising(targets, num_matching, self.query_selection.label_enc)

    def _level_scale(self, memory):
        return None

    def _memory_position(self, memory):
        """``([B, N, C] position embedding, [B, N] padding or None)`` of the one-level memory."""
        (height, width), = memory.spatial_shapes
        tokens = memory.tokens
        batch = tokens.shape[0]
        if memory.valid is None:
            mask, padding = torch.zeros(batch, height, width, dtype=torch.bool, device=tokens.device), None
        else:
            padding = ~memory.valid
            mask = padding.view(batch, height, width)
        exact_dtype = torch.promote_types(tokens.dtype, torch.float32)  # float32, or float64 for a float64 model
        pos = self.position_encoding(mask, exact_dtype).to(tokens.dtype)
        return pos.flatten(2).transpose(1, 2), padding

    def _spatial_query(self, i: int, sine: torch.Tensor, content: torch.Tensor, reference: torch.Tensor):
        """Layer ``i``'s spatial query: the ``(y, x)`` sines scaled by ``query_scale`` and modulated by
        the reference width and height."""
        half = self.hidden_dim // 2
        sine = sine[..., :self.hidden_dim]
        if self.query_scale_type == "fix_elewise":
            sine = sine * self.query_scale.weight[i]
        elif i > 0:
            sine = sine * self.query_scale(content)
        if self.ref_anchor_head is None:
            return sine
        ref_wh = self.ref_anchor_head(content).sigmoid()
        return torch.cat([sine[..., :half] * (ref_wh[..., 1] / reference[..., 3]).unsqueeze(-1),
                          sine[..., half:] * (ref_wh[..., 0] / reference[..., 2]).unsqueeze(-1)], -1)

    def _decode(self, content, reference_unact, memory, attn_mask, level_scale=None, shared_pos=None):
        memory_pos, padding = self._memory_position(memory)
        head = self.query_pos_head
        flow = self.box_head.begin(reference_unact.sigmoid())
        last = self.num_layers - 1 if self.training else self.eval_idx
        layers, pre = [], None
        for i in range(last + 1):
            reference = flow.reference
            sine = sine_box_embedding(reference, head.num_pos_feats, head.temperature)
            query_pos = MLP.forward(head, sine)
            query_sine = self._spatial_query(i, sine, content, reference)
            content = self.layers[i](content, memory.tokens, memory_pos, query_pos, query_sine, attn_mask, padding)
            output = self.norm(content)
            boxes, flow = self.box_head(i, content, flow, output)
            if self.training or i == last:
                pre = self._predict(i, output, boxes, layers) or pre
        return layers, pre
