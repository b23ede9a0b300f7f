from .criterion import GROUPS, SetCriterion  # noqa: F401
from .losses import (  # noqa: F401
    ddf_balance_weights,
    fgl_and_ddf_losses,
    focal_loss,
    giou_box_loss,
    l1_box_loss,
    matchability_aware_loss,
    unimodal_distribution_focal_loss,
    varifocal_loss,
)
from .matcher import HungarianMatcher, union_matched_indices  # noqa: F401
from .terms import BoxLoss, DistributionLoss, FocalLoss, LossTerm, MatchabilityAwareLoss, VarifocalLoss  # noqa: F401
