"""Prediction heads of the decoder layers: query position embedding, class head, box head.

The box head turns each layer's query content into that layer's boxes and decides how boxes flow
from layer to layer (the refinement rule):

* **deltas** (RT-DETR, Deformable-DETR, DINO): ``box_i = sigmoid(delta_i + logit(box_{i-1}))``; the
  next layer starts from the detached box.
* **edge distributions** (``reg_max`` set; D-FINE's Fine-grained Distribution Refinement, FDR): a
  ``pre_bbox_head`` gives the first layer an initial box; every layer predicts, per edge, logits
  over ``reg_max + 1`` bins that it adds to the previous layer's, and moves the edges of that same
  initial box by the expected offsets (:mod:`.fdr`). A localization quality estimator (:class:`LQE`)
  adds the distributions' confidence to the class logits. Plugged into DINO or a DAB-DETR decoder,
  the reference box each layer attends from (DAB-DETR: its anchor, embedded as positional query
  and width/height modulation) is the previous layer's refined box, detached, as in D-FINE, while
  the edges every layer's distributions move stay those of the initial box: the logits a layer
  adds to the previous layer's are over the same edges. The offsets are in units of that box's
  width and height, so boxes relative to each image of a padded batch need no other scale.

The refinement rule says whether the loss of layer ``i``'s box also trains layer ``i - 1``:
``"look_forward_twice"`` (DINO, RT-DETR, D-FINE) yes, ``"detached"`` (Deformable-DETR's iterative
refinement) no. For deltas, layer ``i``'s supervised box is built on the previous layer's undetached
or detached box; for distributions, on the previous layer's undetached (D-FINE) or detached corners.

Parameter names follow the official models (``dec_bbox_head``, ``pre_bbox_head``, ``up``,
``reg_scale``, ``lqe_layers``, ``dec_score_head``, ``query_pos_head``).
"""
import copy
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.common import MLP, bias_init_with_prob, inverse_sigmoid
from ..layers.position_encoding import sine_box_embedding
from .fdr import distance2bbox, integral, weighting_function
from .outputs import DistributionGeometry

__all__ = ["BoxPositionEmbedding", "SineBoxPositionEmbedding", "ClassHead", "BoxHead", "LQE", "LayerBoxes",
           "REFINEMENTS"]

# How the supervised box of a delta head builds on the previous layer (see the module docstring).
REFINEMENTS = ("look_forward_twice", "detached")


def layer_heads(make_head: Callable[[], nn.Module], num_layers: int, eval_idx: int, share: bool,
                clone: bool) -> nn.ModuleList:
    """One head per decoder layer. ``share``: the same module for layers ``0..eval_idx`` (the state
    dict then lists its tensors under every layer's key, as the official one does); ``clone``: the
    other heads start as copies of the first one (DEIMv2), else each ``make_head()`` draws its own."""
    first = make_head()
    heads = [first]
    for i in range(1, num_layers):
        if share and i <= eval_idx:
            heads.append(first)
        else:
            heads.append(copy.deepcopy(first) if clone else make_head())
    return nn.ModuleList(heads)


def _eval_index(eval_idx: int, num_layers: int) -> int:
    if not -num_layers <= eval_idx < num_layers:
        raise ValueError(f"eval_idx {eval_idx} is not a layer of a {num_layers}-layer decoder")
    return eval_idx % num_layers


class BoxPositionEmbedding(MLP):
    """The query position embedding ``query_pos_head``: an MLP of the (detached) reference box.

    Args:
        hidden_dim: output width ``C``.
        method: ``"default"``, ``MLP(4, 2C, C, 2)`` (RT-DETR); or ``"as_reg"``, ``MLP(4, C, C, 3)``
            (DEIM, DEIMv2).
        act: the MLP's activation.
        clamp: bound of the embedding (D-FINE: 10), or None.
        shared: embed the initial reference boxes once for all layers (DEIMv2) instead of each
            layer's own reference.
        xavier_last: Xavier-initialise the last layer too (DEIMv2); RT-DETR and DEIM initialise the
            first two layers only.
    """

    def __init__(self, hidden_dim: int, method: str = "default", act: str = "relu", clamp: Optional[float] = None,
                 shared: bool = False, xavier_last: bool = False):
        if method == "default":
            super().__init__(4, 2 * hidden_dim, hidden_dim, 2, act=act)
        elif method == "as_reg":
            super().__init__(4, hidden_dim, hidden_dim, 3, act=act)
        else:
            raise ValueError(f"Unknown query position method {method!r}; choose 'default' or 'as_reg'")
        self.clamp = clamp
        self.shared = shared
        for layer in self.layers[:2]:
            nn.init.xavier_uniform_(layer.weight)
        if xavier_last:
            nn.init.xavier_uniform_(self.layers[-1].weight)

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        """``[B, Q, 4]`` cxcywh -> ``[B, Q, C]``."""
        pos = super().forward(boxes)
        return pos if self.clamp is None else pos.clamp(-self.clamp, self.clamp)


class SineBoxPositionEmbedding(MLP):
    """The query position embedding of DINO and the DAB-DETR family (``ref_point_head``): the sine
    embedding of the reference box (:func:`~dfine.modeling.layers.position_encoding.sine_box_embedding`,
    ``C / 2`` features per coordinate) through ``MLP(2C, C, C, 2)``.

    The boxes are those of the first memory level's frame (scaled by its valid ratio), as the
    official decoders embed them.

    Args:
        hidden_dim: query width ``C``.
        temperature: of the sine embedding.
        act: the MLPs' activation.
        query_scale: DAB-DETR's conditional scaling (``query_scale``, ``MLP(C, C, C, 2)``): from the
            second layer on, the embedding is multiplied element-wise by ``query_scale`` of the
            query content the layer receives (the previous layer's output); DINO has none.
    """

    shared = False
    clamp = None

    def __init__(self, hidden_dim: int, temperature: float = 10000, act: str = "relu", query_scale: bool = False):
        super().__init__(2 * hidden_dim, hidden_dim, hidden_dim, 2, act=act)
        self.num_pos_feats = hidden_dim // 2
        self.temperature = temperature
        self.query_scale = MLP(hidden_dim, hidden_dim, hidden_dim, 2, act=act) if query_scale else None

    @property
    def content_scaled(self) -> bool:
        """Whether :meth:`forward` takes the query content (after the first layer)."""
        return self.query_scale is not None

    def forward(self, boxes: torch.Tensor, content: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, Q, 4]`` cxcywh -> ``[B, Q, C]``; with ``query_scale``, ``content`` ``[B, Q, C]`` (None
        for the first layer) scales the result."""
        pos = super().forward(sine_box_embedding(boxes, self.num_pos_feats, self.temperature))
        if self.query_scale is not None and content is not None:
            pos = self.query_scale(content) * pos
        return pos


class ClassHead(nn.Module):
    """One linear class head per decoder layer (``dec_score_head``), prior-probability bias 0.01.

    Args:
        share, clone: see :func:`layer_heads` (DINO shares one head; DEIMv2 clones).
    """

    def __init__(self, hidden_dim: int, num_classes: int, num_layers: int, eval_idx: int = -1, share: bool = False,
                 clone: bool = False):
        super().__init__()
        self.eval_idx = _eval_index(eval_idx, num_layers)

        def make_head():
            head = nn.Linear(hidden_dim, num_classes)
            nn.init.constant_(head.bias, bias_init_with_prob(0.01))
            return head

        self.dec_score_head = layer_heads(make_head, num_layers, self.eval_idx, share, clone)

    def forward(self, i: int, target: torch.Tensor) -> torch.Tensor:
        return self.dec_score_head[i](target)

    def convert_to_deploy(self):
        """Only the evaluated layer's head is used in eval: the others become identities."""
        self.dec_score_head = nn.ModuleList(
            head if i == self.eval_idx else nn.Identity() for i, head in enumerate(self.dec_score_head))


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


@dataclass
class LayerBoxes:
    """A box head's output for one layer.

    Attributes:
        boxes: ``[B, Q, 4]`` the supervised (training) or output (eval) boxes.
        corners: ``[B, Q, 4 * (R + 1)]`` edge-distribution logits, or None for deltas.
        reference: ``[B, Q, 4]`` the detached boxes ``corners`` move, or None.
        pre: the first layer's initial boxes (distributions only, layer 0), else None.
    """

    boxes: torch.Tensor
    corners: Optional[torch.Tensor] = None
    reference: Optional[torch.Tensor] = None
    pre: Optional[torch.Tensor] = None


@dataclass
class _Flow:
    """What the box head carries from one layer to the next during a forward pass."""

    reference: torch.Tensor  # [B, Q, 4] detached: where the next layer attends and what it refines
    previous: Optional[torch.Tensor] = None  # the previous layer's undetached box (look-forward-twice)
    project: Optional[torch.Tensor] = None  # W(n), distributions only
    anchor: Optional[torch.Tensor] = None  # the detached initial box every layer's edges move
    corners: Union[torch.Tensor, float] = 0.0  # the previous layer's corners (residual)
    content: Union[torch.Tensor, float] = 0.0  # the previous layer's content, detached


class BoxHead(nn.Module):
    """Per-layer box heads with their refinement rule: deltas, or FDR edge distributions with
    ``reg_max`` (see the module docstring).

    Args:
        hidden_dim: query width ``C``.
        num_layers, eval_idx: the decoder's layers and the one evaluated.
        reg_max: ``R``; None regresses deltas.
        reg_scale: curvature of ``W(n)`` (4, or 8 for D-FINE-X), a frozen parameter as officially.
        up: ``W(n)``'s ``up`` (0.5 in every official config), a frozen parameter.
        refinement: ``"look_forward_twice"`` or ``"detached"`` (see the module docstring).
        act: activation of the box MLPs.
        lqe_act: activation of the LQE MLPs (ReLU in D-FINE; DEIM's and DEIMv2's decoder activation).
        share, clone: see :func:`layer_heads` (DEIMv2 Atto/Femto/Pico share; DINO shares; DEIMv2 clones).
        eps: the clipping of ``inverse_sigmoid`` on the reference boxes (1e-5 in the RT-DETR family,
            1e-3 in DINO and the Deformable-DETR family).
        first_size_bias: initial bias of the first layer's width and height deltas (Deformable-DETR's
            and DAB-Deformable-DETR's box refinement: -2.0, boxes start smaller than their anchors),
            else zero like the rest of the last layer; with distributions, of the initial box's
            (``pre_bbox_head``), which plays layer 0's delta there.
    """

    def __init__(self, hidden_dim: int, num_layers: int, eval_idx: int = -1, reg_max: Optional[int] = None,
                 reg_scale: float = 4.0, up: float = 0.5, refinement: str = "look_forward_twice", act: str = "relu",
                 lqe_act: str = "relu", share: bool = False, clone: bool = False, eps: float = 1e-5,
                 first_size_bias: Optional[float] = None):
        super().__init__()
        self.eps = eps
        if refinement not in REFINEMENTS:
            raise ValueError(f"Unknown refinement {refinement!r}; choose one of {REFINEMENTS}")
        self.eval_idx = _eval_index(eval_idx, num_layers)
        self.reg_max = reg_max
        self.refinement = refinement
        outputs = 4 if reg_max is None else 4 * (reg_max + 1)

        def make_head():
            head = MLP(hidden_dim, hidden_dim, outputs, 3, act=act)
            # Deltas start as the identity on their reference box; distributions as uniform bins.
            nn.init.constant_(head.layers[-1].weight, 0)
            nn.init.constant_(head.layers[-1].bias, 0)
            return head

        if reg_max is not None:
            self.up = nn.Parameter(torch.tensor([float(up)]), requires_grad=False)
            self.reg_scale = nn.Parameter(torch.tensor([float(reg_scale)]), requires_grad=False)
        self.dec_bbox_head = layer_heads(make_head, num_layers, self.eval_idx, share, clone)
        if reg_max is not None:
            self.pre_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, act=act)
            nn.init.constant_(self.pre_bbox_head.layers[-1].weight, 0)
            nn.init.constant_(self.pre_bbox_head.layers[-1].bias, 0)
            self.lqe_layers = nn.ModuleList(LQE(reg_max, act=lqe_act) for _ in range(num_layers))
        if first_size_bias is not None:
            # The first box the layers predict starts smaller than its anchor: layer 0's delta, or
            # the initial box that the distributions refine.
            first = self.dec_bbox_head[0] if reg_max is None else self.pre_bbox_head
            nn.init.constant_(first.layers[-1].bias[2:], first_size_bias)

    @property
    def distributions(self) -> bool:
        return self.reg_max is not None

    @property
    def geometry(self) -> Optional[DistributionGeometry]:
        return DistributionGeometry(self.reg_max, self.up, self.reg_scale) if self.distributions else None

    def begin(self, reference: torch.Tensor) -> _Flow:
        """The flow into layer 0 from the detached initial reference boxes ``[B, Q, 4]``."""
        project = weighting_function(self.reg_max, self.up, self.reg_scale) if self.distributions else None
        return _Flow(reference=reference, project=project)

    def forward(self, i: int, content: torch.Tensor, flow: _Flow, output_content: Optional[torch.Tensor] = None):
        """Layer ``i``'s boxes from its output content ``[B, Q, C]``; returns ``(LayerBoxes, flow
        into layer i + 1)``.

        ``output_content``: the content the layer's predictions are read from when it differs from
        what the next layer receives (DINO normalises every layer's output for its heads): the next
        reference box is then refined from ``content`` and the layer's box from ``output_content``,
        on the same reference (the previous layer's undetached box with look-forward-twice).
        Distributions read ``output_content`` where given (the distribution head plugged into DINO
        or DAB-DETR reads the normalised outputs, as their class heads do)."""
        if self.distributions:
            return self._distributions(i, content if output_content is None else output_content, flow)
        refined = (self.dec_bbox_head[i](content) + inverse_sigmoid(flow.reference, self.eps)).sigmoid()
        boxes = refined
        look_forward_twice = self.refinement == "look_forward_twice" and flow.previous is not None
        if output_content is not None:
            base = flow.previous if look_forward_twice else flow.reference
            boxes = (self.dec_bbox_head[i](output_content) + inverse_sigmoid(base, self.eps)).sigmoid()
        elif self.training and look_forward_twice:
            # The head runs a second time instead of reusing its output, as in the official graph:
            # summing the two branches' gradients before the head would round differently.
            boxes = (self.dec_bbox_head[i](content) + inverse_sigmoid(flow.previous, self.eps)).sigmoid()
        return LayerBoxes(boxes), _Flow(reference=refined.detach(), previous=refined)

    def _distributions(self, i: int, content: torch.Tensor, flow: _Flow):
        # `content`: what the heads read (the layer's output, or its normalised form in the decoders
        # with an output norm: DINO, DAB-DETR), as every layer's residual of the previous one's.
        pre = anchor = flow.anchor
        if i == 0:
            pre = (self.pre_bbox_head(content) + inverse_sigmoid(flow.reference, self.eps)).sigmoid()
            anchor = pre.detach()
        previous = flow.corners
        if self.refinement == "detached" and torch.is_tensor(previous):
            previous = previous.detach()
        corners = self.dec_bbox_head[i](content + flow.content) + previous
        refined = distance2bbox(anchor, integral(corners, flow.project), self.reg_scale)
        out = LayerBoxes(refined, corners, anchor, pre if i == 0 else None)
        return out, _Flow(reference=refined.detach(), project=flow.project, anchor=anchor, corners=corners,
                          content=content.detach())

    def quality(self, i: int, logits: torch.Tensor, boxes: LayerBoxes) -> torch.Tensor:
        """Layer ``i``'s class logits adjusted by the box head (the LQE of distributions)."""
        return logits if boxes.corners is None else self.lqe_layers[i](logits, boxes.corners)

    def convert_to_deploy(self):
        """Distributions: the official D-FINE deploy form keeps the heads up to the evaluated layer
        and only that layer's quality head. Deltas: nothing changes (as the official RT-DETRv2)."""
        if not self.distributions:
            return
        self.dec_bbox_head = nn.ModuleList(
            head if i <= self.eval_idx else nn.Identity() for i, head in enumerate(self.dec_bbox_head))
        self.lqe_layers = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.lqe_layers[self.eval_idx]])
