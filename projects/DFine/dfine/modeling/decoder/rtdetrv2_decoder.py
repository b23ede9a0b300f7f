"""RT-DETRv2 decoder: top-K query selection from the encoder memory, then iterative box refinement
with multi-scale deformable cross-attention and contrastive denoising queries.

Parameter and buffer names follow the official ``RTDETRTransformerv2`` so that official
checkpoints load unchanged. Boxes are normalized cxcywh throughout.
"""
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.common import MLP, bias_init_with_prob, get_activation, inverse_sigmoid
from .denoising import contrastive_denoising_group
from .msda import MSDeformableAttention

__all__ = ["RTDETRv2Decoder", "generate_anchors"]


def generate_anchors(spatial_shapes, grid_size=0.05, eps=1e-2, dtype=torch.float32, device="cpu"):
    """One anchor per memory token: the cell centre, size ``grid_size * 2**level``.

    Returns ``(anchors [1, sum(HW), 4], valid_mask [1, sum(HW), 1])``; anchors are logits, and
    ``+inf`` where the anchor is not strictly inside ``(eps, 1 - eps)`` (the official convention).
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


class TransformerDecoderLayer(nn.Module):
    """Post-norm layer: self-attention, deformable cross-attention, FFN."""

    def __init__(self, d_model=256, n_head=8, dim_feedforward=1024, dropout=0.0, activation="relu",
                 n_levels=4, n_points=4, cross_attn_method="default"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, n_levels, n_points, method=cross_attn_method)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = get_activation(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, target, reference_points, memory, spatial_shapes, attn_mask=None, memory_mask=None, query_pos=None):
        q = k = target + query_pos
        attn = self.self_attn(q, k, value=target, attn_mask=attn_mask, need_weights=False)[0]
        target = self.norm1(target + self.dropout1(attn))
        cross = self.cross_attn(target + query_pos, reference_points, memory, spatial_shapes, memory_mask)
        target = self.norm2(target + self.dropout2(cross))
        ffn = self.linear2(self.dropout3(self.activation(self.linear1(target))))
        return self.norm3(target + self.dropout4(ffn))


class TransformerDecoder(nn.Module):
    def __init__(self, num_layers, eval_idx=-1, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(TransformerDecoderLayer(**layer_kwargs) for _ in range(num_layers))
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx

    def forward(self, target, ref_unact, memory, spatial_shapes, bbox_head, score_head, query_pos_head,
                attn_mask=None, memory_mask=None):
        """Returns stacked boxes and logits: every layer in training, only ``eval_idx`` in eval."""
        boxes, logits = [], []
        ref_detach = ref_unact.sigmoid()
        ref = None
        for i, layer in enumerate(self.layers):
            query_pos = query_pos_head(ref_detach)
            target = layer(target, ref_detach.unsqueeze(2), memory, spatial_shapes, attn_mask, memory_mask, query_pos)
            delta = bbox_head[i](target)
            refined = (delta + inverse_sigmoid(ref_detach)).sigmoid()
            if self.training:
                logits.append(score_head[i](target))
                # "Look forward twice": from layer 1 on, the box is trained from the previous
                # layer's undetached prediction so the gradient reaches that layer too.
                boxes.append(refined if i == 0 else (delta + inverse_sigmoid(ref)).sigmoid())
            elif i == self.eval_idx:
                logits.append(score_head[i](target))
                boxes.append(refined)
                break
            ref = refined
            ref_detach = refined.detach()
        return torch.stack(boxes), torch.stack(logits)


class RTDETRv2Decoder(nn.Module):
    """The official ``RTDETRTransformerv2`` (plus DEIM's ``query_pos_method``/``mlp_act`` options).

    Input: encoder maps ``[B, feat_channels[i], H_i, W_i]`` and, in training, targets
    ``[{"labels": int64 [n], "boxes": [n, 4] normalized cxcywh}]``.

    Output (training): ``pred_logits [B, K, C]``, ``pred_boxes [B, K, 4]`` of the last layer,
    ``aux_outputs`` (layers 0..L-2), ``enc_aux_outputs`` (the selected encoder proposals),
    ``enc_meta``, and with denoising ``dn_aux_outputs`` (all layers) and ``dn_meta``.
    Output (eval): ``pred_logits``/``pred_boxes`` of layer ``eval_idx``.
    """

    def __init__(self, num_classes=80, hidden_dim=256, num_queries=300, feat_channels=(512, 1024, 2048),
                 feat_strides=(8, 16, 32), num_levels=3, num_points=4, nhead=8, num_layers=6, dim_feedforward=1024,
                 dropout=0.0, activation="relu", num_denoising=100, label_noise_ratio=0.5, box_noise_scale=1.0,
                 learn_query_content=False, eval_spatial_size=None, eval_idx=-1, eps=1e-2, aux_loss=True,
                 cross_attn_method="default", query_select_method="default", query_pos_method="default",
                 mlp_act="relu"):
        super().__init__()
        if len(feat_channels) > num_levels or len(feat_strides) != len(feat_channels):
            raise ValueError("feat_channels/feat_strides must have one entry per input level (at most num_levels)")
        if query_select_method not in ("default", "one2many", "agnostic"):
            raise ValueError(f"Unknown query_select_method {query_select_method!r}")
        if cross_attn_method not in ("default", "discrete"):
            raise ValueError(f"Unknown cross_attn_method {cross_attn_method!r}")
        feat_strides = list(feat_strides)
        # Extra levels are made by stride-2 convs on the coarsest map.
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
        self.learn_query_content = learn_query_content

        self.input_proj = nn.ModuleList()
        in_channels = list(feat_channels)
        for i in range(num_levels):
            c_in, kernel, stride = (in_channels[i], 1, 1) if i < len(in_channels) else (
                in_channels[-1] if i == len(in_channels) else hidden_dim, 3, 2)
            self.input_proj.append(nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(c_in, hidden_dim, kernel, stride, padding=kernel // 2, bias=False)),
                ("norm", nn.BatchNorm2d(hidden_dim)),
            ])))
        self.decoder = TransformerDecoder(
            num_layers, eval_idx, d_model=hidden_dim, n_head=nhead, dim_feedforward=dim_feedforward, dropout=dropout,
            activation=activation, n_levels=num_levels, n_points=num_points, cross_attn_method=cross_attn_method)

        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
            nn.init.normal_(self.denoising_class_embed.weight[:-1])
        if learn_query_content:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
        if query_pos_method == "default":
            self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2)
        elif query_pos_method == "as_reg":
            self.query_pos_head = MLP(4, hidden_dim, hidden_dim, 3, act=mlp_act)
        else:
            raise ValueError(f"Unknown query_pos_method {query_pos_method!r}")
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
        for head in [self.enc_bbox_head, *self.dec_bbox_head]:
            nn.init.constant_(head.layers[-1].weight, 0)
            nn.init.constant_(head.layers[-1].bias, 0)
        for head in self.dec_score_head:
            nn.init.constant_(head.bias, prior_bias)
        nn.init.xavier_uniform_(self.enc_output.proj.weight)
        if self.learn_query_content:
            nn.init.xavier_uniform_(self.tgt_embed.weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[0].weight)
        nn.init.xavier_uniform_(self.query_pos_head.layers[1].weight)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj.conv.weight)

    def _flatten_memory(self, feats):
        maps = [proj(feat) for proj, feat in zip(self.input_proj, feats)]
        for i in range(len(feats), self.num_levels):
            maps.append(self.input_proj[i](feats[-1] if i == len(feats) else maps[-1]))
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

    def _decoder_input(self, memory, spatial_shapes):
        if self.training or not self.eval_spatial_size or spatial_shapes != self._eval_spatial_shapes():
            anchors, valid_mask = generate_anchors(spatial_shapes, eps=self.eps, device=memory.device)
        else:
            anchors, valid_mask = self.anchors, self.valid_mask
        memory = valid_mask.to(memory.dtype) * memory
        output_memory = self.enc_output(memory)
        enc_logits = self.enc_score_head(output_memory)
        enc_coords_unact = self.enc_bbox_head(output_memory) + anchors
        topk_memory, topk_logits, topk_coords_unact = self._select_topk(output_memory, enc_logits, enc_coords_unact)
        if self.learn_query_content:
            content = self.tgt_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        else:
            content = topk_memory.detach()
        return content, topk_coords_unact, topk_logits

    def forward(self, feats: List[torch.Tensor], targets: Optional[List[Dict]] = None) -> Dict:
        memory, spatial_shapes = self._flatten_memory(feats)
        dn_content, dn_boxes_unact, attn_mask, dn_meta = None, None, None, None
        if self.training and self.num_denoising > 0:
            dn_content, dn_boxes_unact, attn_mask, dn_meta = contrastive_denoising_group(
                targets, self.num_classes, self.num_queries, self.denoising_class_embed,
                self.num_denoising, self.label_noise_ratio, self.box_noise_scale)

        content, topk_coords_unact, topk_logits = self._decoder_input(memory, spatial_shapes)
        ref_unact = topk_coords_unact.detach()
        if dn_meta is not None:
            content = torch.cat([dn_content, content], 1)
            ref_unact = torch.cat([dn_boxes_unact, ref_unact], 1)
        boxes, logits = self.decoder(content, ref_unact, memory, spatial_shapes, self.dec_bbox_head,
                                     self.dec_score_head, self.query_pos_head, attn_mask=attn_mask)
        if dn_meta is not None:
            dn_boxes, boxes = boxes.split(dn_meta["dn_num_split"], dim=2)
            dn_logits, logits = logits.split(dn_meta["dn_num_split"], dim=2)

        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.training and self.aux_loss:
            out["aux_outputs"] = _layer_outputs(logits[:-1], boxes[:-1])
            out["enc_aux_outputs"] = _layer_outputs([topk_logits], [topk_coords_unact.sigmoid()])
            out["enc_meta"] = {"class_agnostic": self.query_select_method == "agnostic"}
            if dn_meta is not None:
                out["dn_aux_outputs"] = _layer_outputs(dn_logits, dn_boxes)
                out["dn_meta"] = dn_meta
        return out


def _layer_outputs(logits, boxes):
    return [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits, boxes)]
