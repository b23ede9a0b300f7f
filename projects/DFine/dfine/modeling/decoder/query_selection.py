"""Query selection: where the decoder's queries start.

:class:`EncoderTopK` is two-stage selection (Deformable-DETR, RT-DETR): every memory token proposes a
box around its anchor, the ``K`` best-scoring proposals become the reference boxes of the queries, and
the proposals are supervised as the encoder output. The query content is the selected memory
(RT-DETR) or learned (``learn_content``: DINO's mixed query selection).

:class:`LearnedAnchors` is one-stage selection (DAB-DETR, DAB-Deformable-DETR): the queries start from
learned anchor boxes and learned content, the same for every image, trained through the decoder.
"""
from collections import OrderedDict
from typing import NamedTuple, Optional

import torch
from torch import nn

from ..layers.common import MLP, bias_init_with_prob
from .input_projection import Memory, level_strides
from .outputs import Proposals

__all__ = ["EncoderTopK", "LearnedAnchors", "QuerySelection", "generate_anchors"]


def generate_anchors(spatial_shapes, grid_size=0.05, eps=1e-2, dtype=torch.float32, device="cpu", valid=None):
    """One anchor box per memory token: the cell centre, side ``grid_size * 2**level``.

    Args:
        spatial_shapes: ``[(H_l, W_l)]`` per level, finest first.
        valid: optional ``[B, sum(H_l*W_l)]`` validity of the tokens (:attr:`Memory.valid`): the
            anchors are then per image, relative to the image's valid part of each level (its valid
            rows and columns), as DINO proposes boxes in the frame of each unpadded image.
        dtype: of the computation (float32 in every official model, whatever the model's dtype).

    Returns:
        ``(anchors [1 or B, sum(H_l*W_l), 4], valid_mask [1 or B, sum(H_l*W_l), 1])``. Anchors are
        logits of normalized cxcywh; an anchor with any coordinate outside ``(eps, 1 - eps)`` is
        invalid and its logits are ``+inf`` (the official convention).
    """
    anchors, start = [], 0
    for level, (h, w) in enumerate(spatial_shapes):
        grid_y, grid_x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        size = torch.tensor([[w, h]], device=device)
        if valid is not None:
            level_valid = valid[:, start:start + h * w].reshape(-1, h, w)
            size = torch.stack([level_valid[:, 0, :].sum(1), level_valid[:, :, 0].sum(1)], -1)
        xy = (torch.stack([grid_x, grid_y], -1).to(dtype) + 0.5) / size.to(dtype)[:, None, None]
        wh = torch.full_like(xy, grid_size * 2.0 ** level)
        anchors.append(torch.cat([xy, wh], -1).reshape(len(size), h * w, 4))
        start += h * w
    anchors = torch.cat(anchors, 1)
    valid_mask = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    return torch.where(valid_mask, anchors, torch.inf), valid_mask


class QuerySelection(NamedTuple):
    """What a query selection gives the decoder layers.

    Attributes:
        content: ``[B, K, C]`` initial query content.
        reference_unact: ``[B, K, 4]`` logits of the initial reference boxes: detached when they come
            from the encoder; learned anchors keep their gradient.
        proposals: the selected proposals with their gradient, supervised as the encoder output
            (None for selections without proposals).
    """

    content: torch.Tensor
    reference_unact: torch.Tensor
    proposals: Optional[Proposals]


class EncoderTopK(nn.Module):
    """Two-stage query selection from the encoder memory (the official RT-DETRv2 / D-FINE / DEIMv2).

    Args:
        hidden_dim: memory and query width ``C``.
        num_classes: classes of the score head (one with ``method="agnostic"``).
        num_queries: ``K``.
        in_strides, num_levels: strides of the decoder's input maps and its number of memory levels
            (:func:`~.input_projection.level_strides`), for the anchors of ``eval_spatial_size``.
        method: ``"default"`` (top-K of the max class logit per token), ``"one2many"`` (top-K over all
            (token, class) pairs) or ``"agnostic"`` (a single-logit score head).
        eval_spatial_size: ``(H, W)`` of the eval input; its anchors are precomputed as buffers.
        eps: anchors closer than ``eps`` to the image border are invalid.
        output_proj: the ``enc_output`` Linear + LayerNorm on the memory before the heads (DEIMv2
            has none).
        learn_content: learned query content ``tgt_embed`` instead of the selected memory (DINO's
            mixed query selection).
        mlp_act: activation of the box MLP.
        content_init: initialisation of ``tgt_embed``: ``"xavier"`` (RT-DETR) or ``"normal"`` (DINO).
        propose_padding: let padding tokens compete in the top-K like any other (DINO: their memory
            is zeroed and their boxes are +inf, but their scores are not masked); by default they
            are never proposed.
    """

    def __init__(self, hidden_dim: int, num_classes: int, num_queries: int, in_strides, num_levels: int,
                 method: str = "default", eval_spatial_size=None, eps: float = 1e-2, output_proj: bool = True,
                 learn_content: bool = False, mlp_act: str = "relu", content_init: str = "xavier",
                 propose_padding: bool = False):
        super().__init__()
        if method not in ("default", "one2many", "agnostic"):
            raise ValueError(f"Unknown query selection method {method!r}; choose 'default', 'one2many' or 'agnostic'")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.feat_strides = level_strides(in_strides, num_levels)
        self.method = method
        self.eval_spatial_size = eval_spatial_size
        self.eps = eps
        if content_init not in ("xavier", "normal"):
            raise ValueError(f"Unknown content_init {content_init!r}; choose 'xavier' or 'normal'")
        if learn_content:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
            if content_init == "xavier":
                nn.init.xavier_uniform_(self.tgt_embed.weight)
        if output_proj:
            self.enc_output = nn.Sequential(OrderedDict([("proj", nn.Linear(hidden_dim, hidden_dim)),
                                                         ("norm", nn.LayerNorm(hidden_dim))]))
            nn.init.xavier_uniform_(self.enc_output.proj.weight)
        self.enc_score_head = nn.Linear(hidden_dim, 1 if method == "agnostic" else num_classes)
        nn.init.constant_(self.enc_score_head.bias, bias_init_with_prob(0.01))
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, act=mlp_act)
        # The box head starts as the identity on the anchor.
        nn.init.constant_(self.enc_bbox_head.layers[-1].weight, 0)
        nn.init.constant_(self.enc_bbox_head.layers[-1].bias, 0)
        self.learn_content = learn_content
        self.output_proj = output_proj
        self.propose_padding = propose_padding
        if eval_spatial_size:
            anchors, valid_mask = generate_anchors(self._eval_spatial_shapes(), eps=eps)
            self.register_buffer("anchors", anchors)
            self.register_buffer("valid_mask", valid_mask)

    def _eval_spatial_shapes(self):
        h, w = self.eval_spatial_size
        return [[int(h / s), int(w / s)] for s in self.feat_strides]

    def _anchors(self, memory: Memory, image_relative: bool):
        if image_relative and memory.valid is not None:
            return generate_anchors(memory.spatial_shapes, eps=self.eps, device=memory.tokens.device,
                                    valid=memory.valid)
        if self.training or not self.eval_spatial_size or memory.spatial_shapes != self._eval_spatial_shapes():
            return generate_anchors(memory.spatial_shapes, eps=self.eps, device=memory.tokens.device)
        return self.anchors, self.valid_mask

    def _select_topk(self, logits):
        """``[B, K]`` indices of the selected tokens."""
        if self.method == "default":
            return logits.max(-1).values.topk(self.num_queries, dim=-1).indices
        if self.method == "one2many":
            return logits.flatten(1).topk(self.num_queries, dim=-1).indices // self.num_classes
        return logits.squeeze(-1).topk(self.num_queries, dim=-1).indices

    def forward(self, memory: Memory, image_relative: bool = False) -> QuerySelection:
        """``image_relative``: boxes in the frame of each unpadded image (DINO), else of the padded
        batch."""
        anchors, valid_mask = self._anchors(memory, image_relative)
        # Tokens of invalid anchors (and of the padding) are zeroed; their boxes stay +inf.
        if memory.valid is not None:
            valid_mask = valid_mask & memory.valid.unsqueeze(-1)
        tokens = valid_mask.to(memory.tokens.dtype) * memory.tokens
        if self.output_proj:
            tokens = self.enc_output(tokens)
        logits = self.enc_score_head(tokens)
        if memory.valid is not None and not self.propose_padding:
            # Padding is never proposed (unless the images have fewer tokens than queries).
            logits = logits.masked_fill(~memory.valid.unsqueeze(-1), torch.finfo(logits.dtype).min)
        boxes_unact = self.enc_bbox_head(tokens) + anchors
        index = self._select_topk(logits)

        def gather(x):
            return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

        topk_tokens, topk_logits, topk_boxes_unact = gather(tokens), gather(logits), gather(boxes_unact)
        if self.learn_content:
            content = self.tgt_embed.weight.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        else:
            content = topk_tokens.detach()
        proposals = Proposals(topk_logits, topk_boxes_unact.sigmoid(), class_agnostic=self.method == "agnostic")
        return QuerySelection(content, topk_boxes_unact.detach(), proposals)


class LearnedAnchors(nn.Module):
    """Learned anchor boxes and content as the queries' start (DAB-DETR's dynamic anchor boxes, as the
    official DAB-Deformable-DETR of IDEA-Research/DN-DETR builds them, without two-stage).

    The ``K`` anchors ``refpoint_embed`` (``[K, 4]``, logits of cxcywh) are the first layer's reference
    boxes, the same for every image; they are not detached, so the first layer's attention sampling,
    query position and boxes train them. The content ``tgt_embed`` is ``[K, C - 1]`` with a last
    ``indicator`` channel of zeros (``[K, C]`` without ``indicator``): DN-DETR's denoising queries
    carry a 1 there, so that the decoder tells them from the matching queries. Both start as
    ``nn.Embedding``'s N(0, 1), as officially (``random_refpoints_xy`` off).

    Args:
        hidden_dim: query width ``C``.
        num_queries: ``K``.
        indicator: reserve the last content channel for the denoising indicator (zero here).
    """

    def __init__(self, hidden_dim: int, num_queries: int, indicator: bool = True):
        super().__init__()
        self.num_queries = num_queries
        self.indicator = indicator
        self.tgt_embed = nn.Embedding(num_queries, hidden_dim - 1 if indicator else hidden_dim)
        self.refpoint_embed = nn.Embedding(num_queries, 4)

    def forward(self, memory: Memory, image_relative: bool = False) -> QuerySelection:
        """The same queries for each of the ``B`` images of ``memory`` (only its batch size is read;
        ``image_relative`` changes nothing: anchors are in whatever frame the decoder predicts)."""
        batch = memory.tokens.shape[0]
        content = self.tgt_embed.weight
        if self.indicator:
            content = torch.cat([content, content.new_zeros(content.shape[0], 1)], 1)
        reference_unact = self.refpoint_embed.weight
        return QuerySelection(content.unsqueeze(0).expand(batch, -1, -1),
                              reference_unact.unsqueeze(0).expand(batch, -1, -1), None)
