from .criterion import RTDETRCriterion  # noqa: F401
from .losses import focal_loss, giou_box_loss, l1_box_loss, varifocal_loss  # noqa: F401
from .matcher import HungarianMatcher  # noqa: F401
