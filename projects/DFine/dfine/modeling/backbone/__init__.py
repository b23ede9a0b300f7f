from .hgnetv2 import HGNETV2_ARCHS, HGNetv2  # noqa: F401
from .presnet import PResNet, freeze_batch_norm  # noqa: F401
