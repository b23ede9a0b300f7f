from .common import freeze_batch_norm  # noqa: F401
from .hgnetv2 import HGNETV2_ARCHS, HGNetv2  # noqa: F401
from .presnet import PResNet  # noqa: F401
