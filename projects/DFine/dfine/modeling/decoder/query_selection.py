"""Query selection: where the decoder's queries start.

:class:`EncoderTopK` is two-stage selection (Deformable-DETR, RT-DETR): every memory token proposes a
box around its anchor, the ``K`` best-scoring proposals become the reference boxes of the queries, and
the proposals are supervised as the encoder output. The query content is the selected memory
(RT-DETR), learned (``learn_content``: DINO's mixed query selection), or, with the query position,
an embedding of the selected boxes (``embed_proposals``: two-stage Deformable-DETR).

:class:`LearnedAnchors` is the query selection of DAB-DETR and DN-DETR: learned anchor boxes, the same
for every image, independent of the memory, with the content of DN-DETR's "no class" label or learned
(DAB-Deformable-DETR).
"""
from collections import OrderedDict
from typing import NamedTuple, Optional

import torch
from torch import nn

from ..layers.common import MLP, bias_init_with_prob, inverse_sigmoid
from ..layers.position_encoding import sine_box_embedding
from .input_projection import Memory, level_strides
from .outputs import Proposals

__all__ = ["EncoderTopK", "LearnedAnchors", "QuerySelection", "SELECTION_METHODS", "generate_anchors"]

# EncoderTopK's ways of scoring the tokens (see its docstring).
SELECTION_METHODS = ("default", "one2many", "agnostic", "first_logit")


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
        proposals: the proposals with their gradient, supervised as the encoder output (None for
            selections without proposals).
        query_pos: ``[B, K, C]`` the query position embedding of every decoder layer, where the
            selection makes it (two-stage Deformable-DETR); None: the decoder's ``query_pos_head``
            embeds each layer's reference boxes.
    """

    content: torch.Tensor
    reference_unact: torch.Tensor
    proposals: Optional[Proposals]
    query_pos: Optional[torch.Tensor] = None


class EncoderTopK(nn.Module):
    """Two-stage query selection from the encoder memory (the official RT-DETRv2 / D-FINE / DEIMv2,
    DINO, two-stage Deformable-DETR).

    Args:
        hidden_dim: memory and query width ``C``.
        num_classes: classes of the score head (one with ``method="agnostic"``).
        num_queries: ``K``.
        in_strides, num_levels: strides of the decoder's input maps and its number of memory levels
            (:func:`~.input_projection.level_strides`), for the anchors of ``eval_spatial_size``.
        method: ``"default"`` (top-K of the max class logit per token), ``"one2many"`` (top-K over all
            (token, class) pairs), ``"agnostic"`` (a single-logit score head) or ``"first_logit"``
            (top-K of each token's first class logit, two-stage Deformable-DETR). The proposals of
            ``"agnostic"`` and ``"first_logit"`` are class-agnostic: supervised as if every ground
            truth were class 0 (Deformable-DETR: its first logit is the objectness, the others are
            trained as negatives).
        eval_spatial_size: ``(H, W)`` of the eval input; its anchors are precomputed as buffers.
        eps: anchors closer than ``eps`` to the image border are invalid.
        output_proj: the ``enc_output`` Linear + LayerNorm on the memory before the heads (DEIMv2
            has none).
        learn_content: learned query content ``tgt_embed`` instead of the selected memory (DINO's
            mixed query selection).
        mlp_act: activation of the box MLP.
        content_init: initialisation of ``tgt_embed``: ``"xavier"`` (RT-DETR) or ``"normal"`` (DINO).
        propose_padding: let padding tokens compete in the top-K like any other (DINO,
            Deformable-DETR: their memory is zeroed and their boxes are +inf, but their scores are
            not masked); by default they are never proposed.
        embed_proposals: the query content and position from the selected boxes (two-stage
            Deformable-DETR): their sine embedding (:func:`~..layers.position_encoding.sine_box_embedding`
            in the order x, y, w, h, ``C / 2`` features each) through ``pos_trans`` (Linear ``2C -> 2C``)
            and ``pos_trans_norm`` (LayerNorm), split into the position (first half), the same for
            every decoder layer, and the content (second half).
        supervise_all: the encoder loss supervises every token's proposal (Deformable-DETR), not only
            the ``K`` selected ones (RT-DETR, DINO).
    """

    def __init__(self, hidden_dim: int, num_classes: int, num_queries: int, in_strides, num_levels: int,
                 method: str = "default", eval_spatial_size=None, eps: float = 1e-2, output_proj: bool = True,
                 learn_content: bool = False, mlp_act: str = "relu", content_init: str = "xavier",
                 propose_padding: bool = False, embed_proposals: bool = False, supervise_all: bool = False):
        super().__init__()
        if method not in SELECTION_METHODS:
            raise ValueError(f"Unknown query selection method {method!r}; choose one of {SELECTION_METHODS}")
        if learn_content and embed_proposals:
            raise ValueError("EncoderTopK: learn_content and embed_proposals both make the query content; "
                             "choose one")
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
        if embed_proposals:
            self.pos_trans = nn.Linear(2 * hidden_dim, 2 * hidden_dim)
            self.pos_trans_norm = nn.LayerNorm(2 * hidden_dim)
            nn.init.xavier_uniform_(self.pos_trans.weight)
        self.hidden_dim = hidden_dim
        self.learn_content = learn_content
        self.output_proj = output_proj
        self.propose_padding = propose_padding
        self.embed_proposals = embed_proposals
        self.supervise_all = supervise_all
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
        return logits[..., 0].topk(self.num_queries, dim=-1).indices

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

        topk_boxes_unact = gather(boxes_unact)
        reference_unact, query_pos = topk_boxes_unact.detach(), None
        if self.learn_content:
            content = self.tgt_embed.weight.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        elif self.embed_proposals:
            sine = sine_box_embedding(reference_unact.sigmoid(), self.hidden_dim // 2, 10000, y_first=False)
            query_pos, content = self.pos_trans_norm(self.pos_trans(sine)).split(self.hidden_dim, -1)
        else:
            content = gather(tokens).detach()
        agnostic = self.method in ("agnostic", "first_logit")
        if self.supervise_all:
            proposals = Proposals(logits, boxes_unact.sigmoid(), class_agnostic=agnostic)
        else:
            proposals = Proposals(gather(logits), topk_boxes_unact.sigmoid(), class_agnostic=agnostic)
        return QuerySelection(content, reference_unact, proposals, query_pos)


class LearnedAnchors(nn.Module):
    """Learned anchor boxes as the queries (DAB-DETR; DN-DETR's DN-DAB-DETR and DAB-Deformable-DETR).

    ``refpoint_embed`` holds ``K = num_queries`` anchors as logits of normalised cxcywh boxes; they are
    the reference boxes of the first decoder layer, with their gradient (the anchors train through
    the first layer's positional queries, attention sampling and boxes). The content of every
    matching query ends with an indicator 0 (DN-DETR's denoising queries,
    :class:`~.denoising.DnDetrDenoising`, embed their labels with ``label_enc`` and carry an indicator
    1); before it:

    * DN-DAB-DETR: the same for every query, the embedding of the "no class" row ``num_classes`` of
      ``label_enc``;
    * ``learned_content`` (DAB-Deformable-DETR): a learned row per query, ``tgt_embed``
      (``[K, C - 1]``, ``nn.Embedding``'s N(0, 1) as officially).

    With ``num_patterns`` ``P > 0`` (Anchor DETR's patterns) the ``K`` anchors are repeated ``P`` times,
    pattern ``p`` taking the queries ``[p * K, (p + 1) * K)``, and its learned embedding
    ``patterns[p]`` is added to their content: ``P * K`` matching queries.

    Args:
        hidden_dim: query width ``C``.
        num_classes: ``label_enc`` has ``num_classes + 1`` rows of ``C - 1`` values.
        num_queries: ``K`` (DN-DETR: 300).
        num_patterns: ``P`` (0: none; the "3 pat" models: 3; not with ``learned_content``, which the
            official DAB-Deformable-DETR does not implement with patterns).
        random_refpoints_xy: draw the anchors' centres uniformly in [0, 1] at initialisation (the
            official ``--random_refpoints_xy``; its attempt to freeze them has no effect, so they
            train here too).
        learned_content: see above.
        label_embedding: hold ``label_enc``; with ``learned_content`` only the denoising reads it, and
            a model without denoising may leave it out (the official model always has it).

    Parameter names are the official ones: ``label_enc``, ``refpoint_embed``, ``tgt_embed``,
    ``patterns`` (``transformer.patterns`` in official checkpoints).
    """

    def __init__(self, hidden_dim: int, num_classes: int, num_queries: int = 300, num_patterns: int = 0,
                 random_refpoints_xy: bool = False, learned_content: bool = False, label_embedding: bool = True):
        super().__init__()
        if not (learned_content or label_embedding):
            raise ValueError("LearnedAnchors without learned_content takes its content from label_enc: "
                             "label_embedding must be True")
        if learned_content and num_patterns > 0:
            raise ValueError("LearnedAnchors: learned_content with num_patterns > 0 is not a model of the official "
                             "code (DAB-Deformable-DETR has no patterns)")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_patterns = num_patterns
        self.learned_content = learned_content
        if label_embedding:
            self.label_enc = nn.Embedding(num_classes + 1, hidden_dim - 1)
        if learned_content:
            self.tgt_embed = nn.Embedding(num_queries, hidden_dim - 1)
        self.refpoint_embed = nn.Embedding(num_queries, 4)
        if random_refpoints_xy:
            with torch.no_grad():
                xy = self.refpoint_embed.weight[:, :2].uniform_(0, 1)
                xy.copy_(inverse_sigmoid(xy, 1e-3))
        if num_patterns > 0:
            self.patterns = nn.Embedding(num_patterns, hidden_dim)

    def forward(self, memory: Memory, image_relative: bool = False) -> QuerySelection:
        """``P * K`` (or ``K``) queries per image of the memory's batch; the memory is not read (nor is
        ``image_relative``: anchors are in whatever frame the decoder predicts)."""
        batch = memory.tokens.shape[0]
        repeats = max(self.num_patterns, 1)
        if self.learned_content:
            learned = self.tgt_embed.weight
            content = torch.cat([learned, learned.new_zeros(len(learned), 1)], 1)
        else:
            no_class = self.label_enc.weight[self.num_classes]
            content = torch.cat([no_class, no_class.new_zeros(1)]).repeat(self.num_queries * repeats, 1)
        if self.num_patterns > 0:
            content = content + self.patterns.weight.repeat_interleave(self.num_queries, 0)
        reference_unact = self.refpoint_embed.weight.repeat(repeats, 1)
        return QuerySelection(content.expand(batch, -1, -1), reference_unact.expand(batch, -1, -1), None)
