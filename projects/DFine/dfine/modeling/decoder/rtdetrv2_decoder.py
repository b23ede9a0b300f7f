"""RT-DETRv2 decoder (Lv et al. 2024): top-K query selection from the encoder memory, then iterative
box refinement with multi-scale deformable cross-attention, trained with contrastive denoising queries.

Parameter and buffer names follow the official ``RTDETRTransformerv2`` so that official checkpoints
load unchanged. Boxes are normalized cxcywh throughout; "unact" tensors are their logits.
"""
import copy
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.common import MLP, RMSNorm, SwiGLUFFN, bias_init_with_prob, get_activation, inverse_sigmoid
from .denoising import contrastive_denoising_group
from .msda import MSDeformableAttention

__all__ = ["RTDETRv2Decoder", "generate_anchors"]


def _norm_layer(norm_type: str, dim: int) -> nn.Module:
    """``"layer"``: LayerNorm (RT-DETRv2, D-FINE); ``"rms"``: RMSNorm (DEIMv2)."""
    if norm_type == "layer":
        return nn.LayerNorm(dim)
    if norm_type == "rms":
        return RMSNorm(dim)
    raise ValueError(f"Unknown norm_type {norm_type!r}; choose 'layer' or 'rms'")


def generate_anchors(spatial_shapes, grid_size=0.05, eps=1e-2, dtype=torch.float32, device="cpu"):
    """One anchor box per memory token: the cell centre, side ``grid_size * 2**level``.

    Args:
        spatial_shapes: ``[(H_l, W_l)]`` per level, finest first.

    Returns:
        ``(anchors [1, sum(H_l*W_l), 4], valid_mask [1, sum(H_l*W_l), 1])``. Anchors are logits of
        normalized cxcywh; an anchor with any coordinate outside ``(eps, 1 - eps)`` is invalid and
        its logits are ``+inf`` (the official convention).
    """
    anchors = []
    for level, (h, w) in enumerate(spatial_shapes):
        grid_y, grid_x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        xy = (torch.stack([grid_x, grid_y], -1).to(dtype) + 0.5) / torch.tensor([w, h], dtype=dtype)
        wh = torch.full_like(xy, grid_size * 2.0 ** level)
        anchors.append(torch.cat([xy, wh], -1).reshape(1, h * w, 4))
    anchors = torch.cat(anchors, 1).to(device)
    valid_mask = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    return torch.where(valid_mask, anchors, torch.inf), valid_mask


class Gate(nn.Module):
    """Target gating (D-FINE): ``LayerNorm(g1 * x1 + g2 * x2)`` with per-channel gates
    ``g1, g2 = sigmoid(Linear([x1, x2]))``, in place of the residual ``LayerNorm(x1 + x2)``.

    The gates start at 0.5 (zero weight and bias), i.e. half the plain residual. ``norm_type``
    ``"rms"`` normalises with RMSNorm instead (DEIMv2).
    """

    def __init__(self, d_model, norm_type="layer"):
        super().__init__()
        self.gate = nn.Linear(2 * d_model, 2 * d_model)
        nn.init.constant_(self.gate.weight, 0)
        nn.init.constant_(self.gate.bias, bias_init_with_prob(0.5))
        self.norm = _norm_layer(norm_type, d_model)

    def forward(self, x1, x2):
        gate1, gate2 = self.gate(torch.cat([x1, x2], -1)).sigmoid().chunk(2, dim=-1)
        return self.norm(gate1 * x1 + gate2 * x2)


class TransformerDecoderLayer(nn.Module):
    """Post-norm layer: self-attention among queries, deformable cross-attention to the memory, FFN.

    ``target_gate`` (D-FINE) merges the cross-attention into the queries with a :class:`Gate`
    (``gateway``) instead of the residual and ``norm2``; ``attn_projections=False`` (D-FINE) drops
    the value and output projections of the cross-attention. DEIMv2's layer is
    ``norm_type="rms"`` (RMSNorm for ``norm1``, ``norm2`` or the gate's norm, and ``norm3``) and
    ``ffn_type="swiglu"`` (a :class:`SwiGLUFFN` ``swish_ffn`` of hidden width
    ``dim_feedforward // 2``, always SiLU-gated: ``activation`` is not used).
    """

    def __init__(self, d_model=256, n_head=8, dim_feedforward=1024, dropout=0.0, activation="relu",
                 n_levels=4, n_points=4, cross_attn_method="default", target_gate=False, attn_projections=True,
                 norm_type="layer", ffn_type="mlp"):
        super().__init__()
        if ffn_type not in ("mlp", "swiglu"):
            raise ValueError(f"Unknown ffn_type {ffn_type!r}; choose 'mlp' or 'swiglu'")
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = _norm_layer(norm_type, d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points, method=cross_attn_method,
                                                projections=attn_projections)
        self.dropout2 = nn.Dropout(dropout)
        if target_gate:
            self.gateway = Gate(d_model, norm_type)
        else:
            self.norm2 = _norm_layer(norm_type, d_model)
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
        self.norm3 = _norm_layer(norm_type, d_model)

    def _ffn(self, target):
        if hasattr(self, "swish_ffn"):
            return self.swish_ffn(target)
        return self.linear2(self.dropout3(self.activation(self.linear1(target))))

    def forward(self, target, reference_points, memory, spatial_shapes, attn_mask=None, memory_mask=None,
                query_pos=None):
        """
        Args:
            target: ``[B, Q, C]`` query content.
            reference_points: ``[B, Q, 1, 4]`` normalized cxcywh.
            memory: ``[B, sum(H_l*W_l), C]``.
            spatial_shapes: ``[(H_l, W_l)]``.
            attn_mask: optional ``[Q, Q]`` bool, True = query may not attend.
            memory_mask: optional ``[B, sum(H_l*W_l)]``, True where the memory is valid.
            query_pos: ``[B, Q, C]`` position embedding of the reference boxes.
        """
        q = k = target + query_pos
        attn = self.self_attn(q, k, value=target, attn_mask=attn_mask, need_weights=False)[0]
        target = self.norm1(target + self.dropout1(attn))
        cross = self.dropout2(self.cross_attn(target + query_pos, reference_points, memory, spatial_shapes, memory_mask))
        target = self.gateway(target, cross) if hasattr(self, "gateway") else self.norm2(target + cross)
        ffn = self._ffn(target)
        # Clamped to the float16 range (as D-FINE does), so that an overflow under AMP reaches the
        # norm as a large finite value rather than inf; values inside the range are unchanged.
        return self.norm3((target + self.dropout4(ffn)).clamp(-65504, 65504))


class TransformerDecoder(nn.Module):
    """The layer stack with iterative box refinement; the heads are owned by the caller."""

    def __init__(self, num_layers, eval_idx=-1, query_pos_clamp=None, share_query_pos=False, **layer_kwargs):
        """
        Args:
            query_pos_clamp: bound of the query position embedding (D-FINE: 10), or None.
            share_query_pos: embed the initial reference boxes once and give that embedding to
                every layer (DEIMv2), instead of embedding each layer's own reference boxes.
            layer_kwargs: :class:`TransformerDecoderLayer` arguments.
        """
        super().__init__()
        if not -num_layers <= eval_idx < num_layers:
            raise ValueError(f"eval_idx {eval_idx} is not a layer of a {num_layers}-layer decoder")
        # Clones of one layer, so every layer starts from the same weights, as in the official code.
        layer = TransformerDecoderLayer(**layer_kwargs)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.eval_idx = eval_idx % num_layers
        self.query_pos_clamp = query_pos_clamp
        self.share_query_pos = share_query_pos

    def query_pos(self, query_pos_head, boxes):
        """Position embedding ``[B, Q, C]`` of the (detached) reference boxes."""
        pos = query_pos_head(boxes)
        return pos if self.query_pos_clamp is None else pos.clamp(-self.query_pos_clamp, self.query_pos_clamp)

    def layer_query_pos(self, query_pos_head, boxes, shared_pos):
        """The embedding a layer gets: ``shared_pos`` (computed once, before the first layer) when
        ``share_query_pos``, else that of the layer's own reference ``boxes``."""
        return shared_pos if self.share_query_pos else self.query_pos(query_pos_head, boxes)

    def initial_query_pos(self, query_pos_head, boxes):
        """The shared embedding of the initial reference boxes, or None without ``share_query_pos``."""
        return self.query_pos(query_pos_head, boxes) if self.share_query_pos else None

    def forward(self, target, ref_unact, memory, spatial_shapes, bbox_head, score_head, query_pos_head,
                attn_mask=None, memory_mask=None):
        """
        Args:
            target: ``[B, Q, C]`` initial query content.
            ref_unact: ``[B, Q, 4]`` logits of the initial reference boxes.
            bbox_head, score_head: one head per layer; ``query_pos_head`` maps a box to ``[C]``.

        Returns:
            ``(boxes [N, B, Q, 4], logits [N, B, Q, num_classes])``: every layer in training
            (N = num_layers), only layer ``eval_idx`` in eval (N = 1).
        """
        boxes, logits = [], []
        ref_detach = ref_unact.sigmoid()
        ref = None
        shared_pos = self.initial_query_pos(query_pos_head, ref_detach)
        for i, layer in enumerate(self.layers):
            # Each layer refines the previous layer's box, with the gradient stopped between layers.
            query_pos = self.layer_query_pos(query_pos_head, ref_detach, shared_pos)
            target = layer(target, ref_detach.unsqueeze(2), memory, spatial_shapes, attn_mask, memory_mask, query_pos)
            refined = (bbox_head[i](target) + inverse_sigmoid(ref_detach)).sigmoid()
            if self.training:
                logits.append(score_head[i](target))
                # "Look forward twice" (DINO): the supervised box of layer i > 0 is built on the
                # previous layer's undetached box, so its loss also trains that layer. The head runs a
                # second time instead of reusing its output, as in the official graph: summing the two
                # branches' gradients before the head would round differently.
                boxes.append(refined if i == 0 else (bbox_head[i](target) + inverse_sigmoid(ref)).sigmoid())
            elif i == self.eval_idx:
                logits.append(score_head[i](target))
                boxes.append(refined)
                break
            ref = refined
            ref_detach = refined.detach()
        return torch.stack(boxes), torch.stack(logits)


class RTDETRv2Decoder(nn.Module):
    """The official ``RTDETRTransformerv2``, plus the options of DEIM's copy of it.

    Args (as the official ones):
        num_classes: foreground classes (no background slot; sigmoid scores).
        hidden_dim: decoder width ``C``.
        num_queries: ``K`` queries selected from the memory.
        feat_channels, feat_strides: channels and strides of the input maps, finest first.
        num_levels: memory levels; levels beyond the inputs come from stride-2 3x3 convs.
        num_points: deformable points per head and level (int or per-level list).
        nhead, num_layers, dim_feedforward, dropout, activation: decoder layers.
        num_denoising, label_noise_ratio, box_noise_scale: contrastive denoising (0 disables it).
        learn_query_content: learned query content instead of the selected memory.
        eval_spatial_size: ``(H, W)`` of the eval input; anchors for it are precomputed as buffers.
        eval_idx: the layer whose prediction is returned in eval (negative counts from the end).
        eps: anchors closer than ``eps`` to the image border are invalid.
        aux_loss: return the auxiliary outputs in training.
        cross_attn_method: ``"default"`` (bilinear) or ``"discrete"`` deformable sampling.
        query_select_method: ``"default"`` (top-K of max class logit), ``"one2many"`` (top-K over
            all (token, class) pairs) or ``"agnostic"`` (single-logit encoder score head).
        query_pos_method: ``"default"``, ``MLP(4, 2C, C, 2)``; or DEIM's ``"as_reg"``,
            ``MLP(4, C, C, 3)``.
        mlp_act: activation of the query-position and box MLPs (DEIM; the official one is ReLU).
        dn_abs_box_size: the DEIM denoising variant (see ``abs_box_size`` of
            ``contrastive_denoising_group``); DEIM-RT-DETRv2 and the D-FINE family set it.
        target_gate, attn_projections: D-FINE's decoder layer (see ``TransformerDecoderLayer``).
        query_pos_clamp: D-FINE bounds the query position embedding to ``[-10, 10]``.
        norm_type, ffn_type: DEIMv2's decoder layer, ``"rms"`` and ``"swiglu"`` (see
            ``TransformerDecoderLayer``); the defaults ``"layer"`` / ``"mlp"`` are RT-DETRv2's and D-FINE's.
        share_query_pos: DEIMv2 embeds the initial reference boxes once for all layers.
        encoder_output_proj: the ``enc_output`` Linear + LayerNorm on the memory before the encoder
            heads and the query selection; DEIMv2 has none (``False``) and selects raw memory.
        query_pos_xavier_last: Xavier-initialise the last layer of the query-position MLP too
            (DEIMv2; RT-DETRv2 and DEIM initialise its first two layers).
        identity_input_proj: an input map that already has ``hidden_dim`` channels is used as it is
            instead of through a 1x1 conv + BN (D-FINE; its encoder outputs ``hidden_dim`` channels).

    ``forward(feats, targets)``: ``feats`` is a list of ``[B, feat_channels[l], H_l, W_l]``;
    ``targets`` (training with denoising only) a list of ``{"labels": int64 [n], "boxes": [n, 4]
    normalized cxcywh}``. Returns a dict:

    * eval: ``pred_logits [B, K, num_classes]``, ``pred_boxes [B, K, 4]`` of layer ``eval_idx``;
    * training: the same from the last layer, and when ``aux_loss``: ``aux_outputs`` (layers
      0..L-2), ``enc_aux_outputs`` (one entry: the selected encoder proposals, undetached),
      ``enc_meta`` (``{"class_agnostic": bool}``) and, with denoising, ``dn_aux_outputs`` (all L
      layers on the ``T`` denoising queries) and ``dn_meta`` (see ``contrastive_denoising_group``).
      Every list entry is a ``{"pred_logits", "pred_boxes"}`` dict.
    """

    def __init__(self, num_classes=80, hidden_dim=256, num_queries=300, feat_channels=(512, 1024, 2048),
                 feat_strides=(8, 16, 32), num_levels=3, num_points=4, nhead=8, num_layers=6, dim_feedforward=1024,
                 dropout=0.0, activation="relu", num_denoising=100, label_noise_ratio=0.5, box_noise_scale=1.0,
                 learn_query_content=False, eval_spatial_size=None, eval_idx=-1, eps=1e-2, aux_loss=True,
                 cross_attn_method="default", query_select_method="default", query_pos_method="default",
                 mlp_act="relu", dn_abs_box_size=False, target_gate=False, attn_projections=True,
                 query_pos_clamp=None, identity_input_proj=False, norm_type="layer", ffn_type="mlp",
                 share_query_pos=False, encoder_output_proj=True, query_pos_xavier_last=False):
        super().__init__()
        if len(feat_channels) > num_levels or len(feat_strides) != len(feat_channels):
            raise ValueError("feat_channels and feat_strides need one entry per input map, at most num_levels")
        if query_select_method not in ("default", "one2many", "agnostic"):
            raise ValueError(f"Unknown query_select_method {query_select_method!r}")
        if query_pos_method not in ("default", "as_reg"):
            raise ValueError(f"Unknown query_pos_method {query_pos_method!r}")
        # Each extra level halves the previous one.
        feat_strides = list(feat_strides)
        feat_strides += [feat_strides[-1] * 2 ** (i + 1) for i in range(num_levels - len(feat_strides))]
        self.hidden_dim = hidden_dim
        self.feat_strides = feat_strides
        self.num_levels = num_levels
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.eps = eps
        self.num_layers = num_layers
        self.eval_spatial_size = eval_spatial_size
        self.aux_loss = aux_loss
        self.query_select_method = query_select_method
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.dn_abs_box_size = dn_abs_box_size
        self.learn_query_content = learn_query_content
        self.query_pos_xavier_last = query_pos_xavier_last

        self.input_proj = nn.ModuleList()
        for level in range(num_levels):
            if level < len(feat_channels):
                if identity_input_proj and feat_channels[level] == hidden_dim:
                    self.input_proj.append(nn.Identity())
                    continue
                conv = nn.Conv2d(feat_channels[level], hidden_dim, 1, bias=False)
            else:
                c_in = feat_channels[-1] if level == len(feat_channels) else hidden_dim
                conv = nn.Conv2d(c_in, hidden_dim, 3, 2, padding=1, bias=False)
            self.input_proj.append(nn.Sequential(OrderedDict([("conv", conv), ("norm", nn.BatchNorm2d(hidden_dim))])))
        self.decoder_layer_kwargs = dict(
            d_model=hidden_dim, n_head=nhead, dim_feedforward=dim_feedforward, dropout=dropout, activation=activation,
            n_levels=num_levels, n_points=num_points, cross_attn_method=cross_attn_method, target_gate=target_gate,
            attn_projections=attn_projections, norm_type=norm_type, ffn_type=ffn_type)
        self.share_query_pos = share_query_pos
        self.decoder = TransformerDecoder(num_layers, eval_idx, query_pos_clamp, share_query_pos,
                                          **self.decoder_layer_kwargs)

        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
            nn.init.normal_(self.denoising_class_embed.weight[:-1])
        if learn_query_content:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
        if query_pos_method == "default":
            self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2, act=mlp_act)
        else:
            self.query_pos_head = MLP(4, hidden_dim, hidden_dim, 3, act=mlp_act)
        if encoder_output_proj:
            self.enc_output = nn.Sequential(OrderedDict([("proj", nn.Linear(hidden_dim, hidden_dim)),
                                                         ("norm", nn.LayerNorm(hidden_dim))]))
        self.enc_score_head = nn.Linear(hidden_dim, 1 if query_select_method == "agnostic" else num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, act=mlp_act)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, 3, act=mlp_act) for _ in range(num_layers))

        if eval_spatial_size:
            anchors, valid_mask = generate_anchors(self._eval_spatial_shapes(), eps=eps)
            self.register_buffer("anchors", anchors)
            self.register_buffer("valid_mask", valid_mask)
        self._reset_parameters()

    def _eval_spatial_shapes(self):
        h, w = self.eval_spatial_size
        return [[int(h / s), int(w / s)] for s in self.feat_strides]

    def _reset_parameters(self):
        prior_bias = bias_init_with_prob(0.01)
        nn.init.constant_(self.enc_score_head.bias, prior_bias)
        for head in self.dec_score_head:
            nn.init.constant_(head.bias, prior_bias)
        # Box heads start as the identity on their reference box.
        for head in [self.enc_bbox_head, *self.dec_bbox_head]:
            nn.init.constant_(head.layers[-1].weight, 0)
            nn.init.constant_(head.layers[-1].bias, 0)
        if hasattr(self, "enc_output"):
            nn.init.xavier_uniform_(self.enc_output.proj.weight)
        if self.learn_query_content:
            nn.init.xavier_uniform_(self.tgt_embed.weight)
        # The first two layers only, also for the 3-layer "as_reg" head (as DEIM does), unless
        # query_pos_xavier_last (DEIMv2).
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)
        if self.query_pos_xavier_last:
            nn.init.xavier_uniform_(self.query_pos_head.layers[-1].weight)
        for proj in self.input_proj:
            if not isinstance(proj, nn.Identity):
                nn.init.xavier_uniform_(proj.conv.weight)

    def convert_to_deploy(self):
        """Inference form of the decoder: the eval-mode module itself.

        Nothing is fused or dropped. The official RT-DETRv2 decoder has no deploy conversion, and its
        deploy model (and parameter count) keeps every layer and head; the layers after ``eval_idx``
        cost nothing at inference because eval stops at ``eval_idx``. With ``eval_spatial_size``
        the anchors are already buffers, so no anchor is generated at run time for that size.
        """
        return self.eval()

    def _flatten_memory(self, feats):
        """Project the input maps; returns ``memory [B, sum(H_l*W_l), C]`` and ``[(H_l, W_l)]``."""
        maps = [proj(feat) for proj, feat in zip(self.input_proj, feats)]
        for level in range(len(feats), self.num_levels):
            maps.append(self.input_proj[level](feats[-1] if level == len(feats) else maps[-1]))
        spatial_shapes = [list(m.shape[2:]) for m in maps]
        return torch.cat([m.flatten(2).permute(0, 2, 1) for m in maps], 1), spatial_shapes

    def _select_topk(self, memory, logits, coords_unact):
        if self.query_select_method == "default":
            index = logits.max(-1).values.topk(self.num_queries, dim=-1).indices
        elif self.query_select_method == "one2many":
            index = logits.flatten(1).topk(self.num_queries, dim=-1).indices // self.num_classes
        else:
            index = logits.squeeze(-1).topk(self.num_queries, dim=-1).indices

        def gather(x):
            return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

        return gather(memory), gather(logits), gather(coords_unact)

    @staticmethod
    def _memory_valid(padding_mask, spatial_shapes):
        """``[B, sum(H_l*W_l)]``, True where a memory token lies on the image rather than on the
        zero padding of a smaller image in the batch; None when nothing is padded."""
        if padding_mask is None:
            return None
        padded = padding_mask[:, None].float()
        levels = [F.interpolate(padded, size=(h, w), mode="nearest")[:, 0] < 0.5 for h, w in spatial_shapes]
        return torch.cat([level.flatten(1) for level in levels], 1)

    def _encoder_proposals(self, memory, spatial_shapes, memory_valid=None):
        """Score every memory token as a box and keep the top K.

        Returns ``(content [B, K, C], boxes_unact [B, K, 4], logits [B, K, num_classes])``; boxes and
        logits keep their gradient (they are supervised as the encoder output).
        """
        if self.training or not self.eval_spatial_size or spatial_shapes != self._eval_spatial_shapes():
            anchors, valid_mask = generate_anchors(spatial_shapes, eps=self.eps, device=memory.device)
        else:
            anchors, valid_mask = self.anchors, self.valid_mask
        # Tokens of invalid anchors are zeroed (their boxes stay +inf and are rarely selected).
        if memory_valid is not None:
            valid_mask = valid_mask & memory_valid.unsqueeze(-1)
        memory = valid_mask.to(memory.dtype) * memory
        output_memory = self.enc_output(memory) if hasattr(self, "enc_output") else memory
        enc_logits = self.enc_score_head(output_memory)
        if memory_valid is not None:
            # Padding is never proposed (unless the images have fewer tokens than queries).
            enc_logits = enc_logits.masked_fill(~memory_valid.unsqueeze(-1), torch.finfo(enc_logits.dtype).min)
        enc_coords_unact = self.enc_bbox_head(output_memory) + anchors
        topk_memory, topk_logits, topk_coords_unact = self._select_topk(output_memory, enc_logits, enc_coords_unact)
        if self.learn_query_content:
            content = self.tgt_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        else:
            content = topk_memory.detach()
        return content, topk_coords_unact, topk_logits

    def _queries(self, feats, targets, padding_mask):
        """Everything the decoder layers start from.

        Returns a dict: ``memory``, ``spatial_shapes``, ``memory_valid`` (see ``_memory_valid``),
        ``content [B, T + K, C]`` and ``ref_unact [B, T + K, 4]`` (denoising queries first, then the
        K selected proposals, detached), ``attn_mask`` and ``dn_meta`` (None without denoising),
        ``enc_logits [B, K, classes]`` and ``enc_boxes [B, K, 4]`` of the proposals (with gradient).
        """
        memory, spatial_shapes = self._flatten_memory(feats)
        memory_valid = self._memory_valid(padding_mask, spatial_shapes)
        attn_mask, dn_meta = None, None
        if self.training and self.num_denoising > 0:
            if targets is None:
                raise ValueError("Training with denoising needs the targets")
            dn_content, dn_boxes_unact, attn_mask, dn_meta = contrastive_denoising_group(
                targets, self.num_classes, self.num_queries, self.denoising_class_embed,
                self.num_denoising, self.label_noise_ratio, self.box_noise_scale, self.dn_abs_box_size)

        content, topk_coords_unact, topk_logits = self._encoder_proposals(memory, spatial_shapes, memory_valid)
        ref_unact = topk_coords_unact.detach()
        if dn_meta is not None:
            # Denoising queries go first, as dn_positive_idx and dn_num_split assume.
            content = torch.cat([dn_content, content], 1)
            ref_unact = torch.cat([dn_boxes_unact, ref_unact], 1)
        return dict(memory=memory, spatial_shapes=spatial_shapes, memory_valid=memory_valid, content=content,
                    ref_unact=ref_unact, attn_mask=attn_mask, dn_meta=dn_meta, enc_logits=topk_logits,
                    enc_boxes=topk_coords_unact.sigmoid())

    def _encoder_outputs(self, queries, out):
        """Add the supervised encoder proposals to the training output ``out``."""
        out["enc_aux_outputs"] = _per_layer([queries["enc_logits"]], [queries["enc_boxes"]])
        out["enc_meta"] = {"class_agnostic": self.query_select_method == "agnostic"}

    def forward(self, feats: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None,
                padding_mask: Optional[torch.Tensor] = None) -> Dict:
        """``padding_mask``: optional ``[B, H, W]`` bool at input resolution, True on the zero padding
        of images smaller than the batch; padded memory is neither proposed nor attended to."""
        q = self._queries(feats, targets, padding_mask)
        dn_meta = q["dn_meta"]
        boxes, logits = self.decoder(q["content"], q["ref_unact"], q["memory"], q["spatial_shapes"],
                                     self.dec_bbox_head, self.dec_score_head, self.query_pos_head,
                                     attn_mask=q["attn_mask"], memory_mask=q["memory_valid"])
        if dn_meta is not None:
            dn_boxes, boxes = boxes.split(dn_meta["dn_num_split"], dim=2)
            dn_logits, logits = logits.split(dn_meta["dn_num_split"], dim=2)

        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.training and self.aux_loss:
            out["aux_outputs"] = _per_layer(logits[:-1], boxes[:-1])
            self._encoder_outputs(q, out)
            if dn_meta is not None:
                out["dn_aux_outputs"] = _per_layer(dn_logits, dn_boxes)
                out["dn_meta"] = dn_meta
        return out


def _per_layer(logits, boxes):
    return [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits, boxes)]
