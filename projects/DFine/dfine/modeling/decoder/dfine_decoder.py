"""D-FINE decoder (Peng et al., 2024): the RT-DETRv2 decoder regressing edge distributions (FDR).

Every layer predicts, for each edge of a box, logits over ``reg_max + 1`` bins (the "corners").
Layer ``i`` adds its prediction to layer ``i - 1``'s corners, and all layers move the edges of the
same box, the first layer's ``pre_bbox_head`` proposal, by the expected offsets of their
distributions (:mod:`.fdr`). A localization quality estimator (:class:`LQE`) adds the confidence of
the distributions to the class logits. The lighter layer of D-FINE (target gating, no projections
in the cross-attention, bounded query position embedding) is an option of the shared layer.

Parameter and buffer names follow the official ``DFINETransformer``, so official checkpoints load
unchanged. DEIMv2's ``DEIMTransformer`` is this decoder with the options listed in
:class:`DFINEDecoder` (RMSNorm + SwiGLU layers, one query position embedding for all layers,
optional gating, shared heads, no encoder output projection).
"""
import copy
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.common import MLP, inverse_sigmoid
from .fdr import distance2bbox, integral, weighting_function
from .rtdetrv2_decoder import RTDETRv2Decoder, TransformerDecoder

__all__ = ["DFINEDecoder", "LQE"]


class LQE(nn.Module):
    """Localization Quality Estimation: a logit offset from the sharpness of the edge distributions.

    The statistics are, per edge, the ``k`` largest bin probabilities and their mean; a small MLP
    (zero-initialised last layer, so it starts as a no-op) maps the ``4 * (k + 1)`` numbers to one
    value added to every class logit of the query.
    """

    def __init__(self, reg_max: int, k: int = 4, hidden_dim: int = 64, num_layers: int = 2, act: str = "relu"):
        super().__init__()
        self.k = k
        self.reg_max = reg_max
        self.reg_conf = MLP(4 * (k + 1), hidden_dim, 1, num_layers, act=act)
        nn.init.constant_(self.reg_conf.layers[-1].weight, 0)
        nn.init.constant_(self.reg_conf.layers[-1].bias, 0)

    def forward(self, logits: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        """``logits [B, Q, K]``, ``corners [B, Q, 4 * (reg_max + 1)]`` -> ``[B, Q, K]``."""
        probs = F.softmax(corners.reshape(*corners.shape[:-1], 4, self.reg_max + 1), dim=-1)
        top = probs.topk(self.k, dim=-1).values
        stats = torch.cat([top, top.mean(-1, keepdim=True)], -1).flatten(-2)
        return logits + self.reg_conf(stats)


class FDRTransformerDecoder(TransformerDecoder):
    """The layer stack with Fine-grained Distribution Refinement instead of box deltas.

    ``up`` and ``reg_scale`` are the owner's frozen parameters, held here too (as in the official
    module, whose state dict lists them twice).
    """

    def __init__(self, num_layers, eval_idx, up: nn.Parameter, reg_scale: nn.Parameter, reg_max: int,
                 lqe_act: str = "relu", query_pos_clamp=None, share_query_pos=False, **layer_kwargs):
        super().__init__(num_layers, eval_idx, query_pos_clamp, share_query_pos, **layer_kwargs)
        self.up, self.reg_scale, self.reg_max = up, reg_scale, reg_max
        self.lqe_layers = nn.ModuleList(LQE(reg_max, act=lqe_act) for _ in range(num_layers))

    def convert_to_deploy(self):
        """Keep the layers up to ``eval_idx`` and only that layer's quality head."""
        self.layers = self.layers[: self.eval_idx + 1]
        self.lqe_layers = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.lqe_layers[self.eval_idx]])

    def forward(self, target, ref_unact, memory, spatial_shapes, bbox_head, score_head, query_pos_head,
                pre_bbox_head, attn_mask=None, memory_mask=None):
        """
        Args:
            target, ref_unact, memory, spatial_shapes, attn_mask, memory_mask: as
                :meth:`TransformerDecoder.forward`.
            bbox_head: one ``MLP(C, C, 4 * (reg_max + 1))`` per layer; ``score_head`` one linear per
                layer; ``pre_bbox_head`` the first layer's box-delta head.

        Returns:
            ``(boxes [N, B, Q, 4], logits [N, B, Q, K], corners [N, B, Q, 4 * (reg_max + 1)],
            ref_boxes [B, Q, 4], pre_boxes [B, Q, 4], pre_logits [B, Q, K] or None)``: every layer in
            training (N = num_layers), only layer ``eval_idx`` in eval (N = 1, no pre logits).
            ``ref_boxes`` is the detached ``pre_boxes`` that every layer's corners refine.
        """
        project = weighting_function(self.reg_max, self.up, self.reg_scale)
        boxes, logits, corners = [], [], []
        ref_detach = ref_unact.sigmoid()
        prev_corners = prev_target = 0
        pre_logits = None
        shared_pos = self.initial_query_pos(query_pos_head, ref_detach)
        for i, layer in enumerate(self.layers):
            query_pos = self.layer_query_pos(query_pos_head, ref_detach, shared_pos)
            target = layer(target, ref_detach.unsqueeze(2), memory, spatial_shapes, attn_mask, memory_mask, query_pos)
            if i == 0:
                pre_boxes = (pre_bbox_head(target) + inverse_sigmoid(ref_detach)).sigmoid()
                if self.training:
                    pre_logits = score_head[0](target)
                ref_boxes = pre_boxes.detach()
            # The residual on the previous corners keeps its gradient; the previous layer's content
            # enters detached.
            layer_corners = bbox_head[i](target + prev_target) + prev_corners
            refined = distance2bbox(ref_boxes, integral(layer_corners, project), self.reg_scale)
            if self.training or i == self.eval_idx:
                logits.append(self.lqe_layers[i](score_head[i](target), layer_corners))
                boxes.append(refined)
                corners.append(layer_corners)
                if not self.training:
                    break
            prev_corners = layer_corners
            prev_target = target.detach()
            ref_detach = refined.detach()
        return torch.stack(boxes), torch.stack(logits), torch.stack(corners), ref_boxes, pre_boxes, pre_logits


class DFINEDecoder(RTDETRv2Decoder):
    """The official ``DFINETransformer`` (and DEIM's copy of it).

    Args (beyond :class:`RTDETRv2Decoder`'s, whose D-FINE options default to D-FINE here:
    target gating, no cross-attention projections, query position embedding clamped to 10,
    identity input projections, DEIM's denoising boxes):
        fdr: Fine-grained Distribution Refinement. ``False`` keeps D-FINE's layer but regresses box
            deltas layer by layer as RT-DETRv2 does (the FDR ablation; no corners, LQE or pre head).
        reg_max: ``R``, bins per edge minus one.
        reg_scale: curvature of ``W(n)`` (4, or 8 for D-FINE-X), a frozen parameter as officially.
        lqe_act: activation of the LQE MLP (ReLU in D-FINE, the decoder's activation in DEIM).
        share_bbox_head, share_score_head: one box (score) head module serves every layer up to
            ``eval_idx`` (DEIMv2 Atto/Femto/Pico share the box head). The ``ModuleList`` holds that
            module once per layer, so the state dict lists its tensors under every layer's key, as
            the official one does; layers after ``eval_idx`` keep their own heads.
        clone_layer_heads: unshared per-layer heads start as copies of one head (DEIMv2) rather
            than as independent draws (D-FINE). Initialisation only.

    DEIMv2 (``DEIMTransformer``) is ``norm_type="rms"``, ``ffn_type="swiglu"``,
    ``share_query_pos=True``, ``query_pos_method="as_reg"``, ``query_pos_xavier_last=True``,
    ``encoder_output_proj=False``, ``clone_layer_heads=True``, ``lqe_act`` = ``activation`` =
    ``mlp_act`` = ``"silu"``, ``target_gate`` = its ``use_gateway`` (True but for Atto/Femto/Pico).

    Training output with FDR, beyond :class:`RTDETRv2Decoder`'s: ``pred_corners`` and
    ``ref_points`` in the main output and in every ``aux_outputs`` / ``dn_aux_outputs`` entry,
    which also carry ``teacher_corners`` / ``teacher_logits`` (those of the last layer of their
    branch, the GO-LSD teacher); ``pre_outputs`` / ``dn_pre_outputs`` (the first layer's
    ``pre_bbox_head`` boxes with its logits); ``up`` and ``reg_scale``.
    """

    def __init__(self, *args, fdr: bool = True, reg_max: int = 32, reg_scale: float = 4.0, lqe_act: str = "relu",
                 target_gate: bool = True, attn_projections: bool = False, query_pos_clamp: Optional[float] = 10.0,
                 identity_input_proj: bool = True, dn_abs_box_size: bool = True, share_bbox_head: bool = False,
                 share_score_head: bool = False, clone_layer_heads: bool = False, **kwargs):
        super().__init__(*args, target_gate=target_gate, attn_projections=attn_projections,
                         query_pos_clamp=query_pos_clamp, identity_input_proj=identity_input_proj,
                         dn_abs_box_size=dn_abs_box_size, **kwargs)
        self.fdr = fdr
        self.reg_max = reg_max
        eval_idx = self.decoder.eval_idx
        mlp_act = kwargs.get("mlp_act", "relu")
        box_outputs = 4 * (reg_max + 1) if fdr else 4
        if fdr:
            self.up = nn.Parameter(torch.tensor([0.5]), requires_grad=False)
            self.reg_scale = nn.Parameter(torch.tensor([float(reg_scale)]), requires_grad=False)
            self.decoder = FDRTransformerDecoder(self.num_layers, eval_idx, self.up, self.reg_scale, reg_max, lqe_act,
                                                 query_pos_clamp, self.share_query_pos, **self.decoder_layer_kwargs)
            self.pre_bbox_head = MLP(self.hidden_dim, self.hidden_dim, 4, 3, act=mlp_act)
        if share_score_head or clone_layer_heads:
            self.dec_score_head = _layer_heads(lambda: nn.Linear(self.hidden_dim, self.num_classes), self.num_layers,
                                               eval_idx, share_score_head, clone_layer_heads)
        if fdr or share_bbox_head or clone_layer_heads:
            self.dec_bbox_head = _layer_heads(
                lambda: MLP(self.hidden_dim, self.hidden_dim, box_outputs, 3, act=mlp_act), self.num_layers, eval_idx,
                share_bbox_head, clone_layer_heads)
        if fdr or share_bbox_head or share_score_head or clone_layer_heads:
            self._reset_parameters()

    def _reset_parameters(self):
        super()._reset_parameters()
        if getattr(self, "fdr", False):
            nn.init.constant_(self.pre_bbox_head.layers[-1].weight, 0)
            nn.init.constant_(self.pre_bbox_head.layers[-1].bias, 0)

    def convert_to_deploy(self):
        """The official deploy form: layers and heads after ``eval_idx`` are dropped, score and
        quality heads before it become identities (they are unused in eval)."""
        if self.fdr:
            eval_idx = self.decoder.eval_idx
            self.decoder.convert_to_deploy()
            self.dec_score_head = nn.ModuleList([nn.Identity()] * eval_idx + [self.dec_score_head[eval_idx]])
            self.dec_bbox_head = nn.ModuleList(
                head if i <= eval_idx else nn.Identity() for i, head in enumerate(self.dec_bbox_head))
        return self.eval()

    def forward(self, feats: List[torch.Tensor], targets: Optional[List[Dict[str, torch.Tensor]]] = None,
                padding_mask: Optional[torch.Tensor] = None) -> Dict:
        if not self.fdr:
            return super().forward(feats, targets, padding_mask)
        q = self._queries(feats, targets, padding_mask)
        dn_meta = q["dn_meta"]
        boxes, logits, corners, ref_boxes, pre_boxes, pre_logits = self.decoder(
            q["content"], q["ref_unact"], q["memory"], q["spatial_shapes"], self.dec_bbox_head, self.dec_score_head,
            self.query_pos_head, self.pre_bbox_head, attn_mask=q["attn_mask"], memory_mask=q["memory_valid"])
        if not self.training:
            return {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}

        outputs, dn = (boxes, logits, corners, ref_boxes, pre_boxes, pre_logits), None
        if dn_meta is not None:
            # Denoising queries first along the query dimension of every tensor.
            dn, outputs = zip(*(x.split(dn_meta["dn_num_split"], dim=x.dim() - 2) for x in outputs))
        boxes, logits, corners, ref_boxes, pre_boxes, pre_logits = outputs
        layers = _fdr_layer_outputs(boxes, logits, corners, ref_boxes)
        out = {k: v for k, v in layers[-1].items() if not k.startswith("teacher")}
        out["up"], out["reg_scale"] = self.up, self.reg_scale
        if not self.aux_loss:
            return out
        out["aux_outputs"] = layers[:-1]
        out["pre_outputs"] = {"pred_logits": pre_logits, "pred_boxes": pre_boxes}
        if dn is not None:
            boxes, logits, corners, ref_boxes, pre_boxes, pre_logits = dn
            out["dn_aux_outputs"] = _fdr_layer_outputs(boxes, logits, corners, ref_boxes)
            out["dn_pre_outputs"] = {"pred_logits": pre_logits, "pred_boxes": pre_boxes}
            out["dn_meta"] = dn_meta
        self._encoder_outputs(q, out)
        return out


def _layer_heads(make_head, num_layers: int, eval_idx: int, share: bool, clone: bool) -> nn.ModuleList:
    """One head per layer. ``share``: the same module for layers ``0..eval_idx``; ``clone``: the
    other heads are copies of the first one (else each ``make_head()`` draws its own)."""
    first = make_head()
    heads = [first]
    for i in range(1, num_layers):
        if share and i <= eval_idx:
            heads.append(first)
        else:
            heads.append(copy.deepcopy(first) if clone else make_head())
    return nn.ModuleList(heads)


def _fdr_layer_outputs(boxes, logits, corners, ref_boxes) -> List[Dict]:
    """One output dict per layer; the GO-LSD teacher of every layer is the branch's last layer."""
    return [
        {"pred_logits": lg, "pred_boxes": bx, "pred_corners": cr, "ref_points": ref_boxes,
         "teacher_corners": corners[-1], "teacher_logits": logits[-1]}
        for lg, bx, cr in zip(logits, boxes, corners)
    ]
