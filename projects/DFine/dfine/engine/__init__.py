"""Training engine: the trainer (AMP, gradient clipping, resumable data stream) and the EMA."""
from .ema import ModelEMA, load_ema_or_model_weights, unwrap_model
from .hooks import EMAHook
from .trainer import Trainer

__all__ = ["ModelEMA", "load_ema_or_model_weights", "unwrap_model", "EMAHook", "Trainer"]
