from .ema import EMAWeightsLoader, ModelEMA  # noqa: F401
from .trainer import DetrTrainer, unwrap_model  # noqa: F401
