"""D-FINE's two ideas as a plug-in for any DETR config (D-FINE Table 2: FDR and GO-LSD on
Deformable-DETR, DAB-DETR, DN-DETR and DINO), applied by the configs of configs/ablations/.

* FDR (Fine-grained Distribution Refinement): the box head predicts, per edge, logits over
  ``reg_max + 1`` bins placed by ``W(n)`` (``up`` 0.5, ``reg_scale`` 4), which every layer adds to
  the previous layer's and which move the edges of the first layer's initial box (D-FINE's
  ``pre_bbox_head``), with the localization quality estimator on the class logits
  (:class:`dfine.modeling.decoder.BoxHead` with ``reg_max``); the criterion adds FGL
  (:class:`dfine.modeling.criterion.DistributionLoss`, weight 0.15) and keeps L1 and GIoU, as D-FINE.
* GO-LSD: the box terms use the union of every layer's matches and the earlier layers (and the
  denoising layers) distil the last layer's distributions (DDF, weight 1.5, temperature 5): the
  criterion's ``go_lsd``.

Ablations, one override each on a config that applies :func:`use_fdr_golsd`:
``model.criterion.go_lsd=False`` (FDR alone: FGL on each output's own matches, no DDF); with
``model.decoder.box_head.reg_max=null`` too, the base model exactly (no output carries
distributions, so the FGL/DDF term applies to none).
"""
from detectron2.config import LazyCall as L

from dfine.modeling.criterion import DistributionLoss

# D-FINE's bins, loss weights and distillation temperature (every official D-FINE config).
REG_MAX = 32
FGL_WEIGHT = 0.15
DDF_WEIGHT = 1.5
DDF_TEMPERATURE = 5.0


def use_fdr_golsd(model):
    """FDR + GO-LSD on ``model``'s decoder and criterion (see the module docstring); the base's
    classification and box terms stay as they are, ``local`` (FGL, DDF) comes last."""
    model.decoder.box_head.reg_max = REG_MAX
    criterion = model.criterion
    criterion.terms.append(L(DistributionLoss)(temperature=DDF_TEMPERATURE))
    criterion.weight_dict.update(loss_fgl=FGL_WEIGHT, loss_ddf=DDF_WEIGHT)
    criterion.update(losses=[*criterion.losses, "local"], go_lsd=True)
