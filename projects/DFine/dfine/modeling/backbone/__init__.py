from .common import freeze_batch_norm  # noqa: F401
from .hgnetv2 import HGNETV2_ARCHS, HGNETV2_PRUNED_ARCHS, HGNetv2  # noqa: F401
from .presnet import PResNet  # noqa: F401
from .resnet import ResNet  # noqa: F401
from .sta import DINOv3STA  # noqa: F401
from .swin import SWIN_PRESETS, SwinTransformer  # noqa: F401
from .vit import VIT_PRESETS, VisionTransformer  # noqa: F401
