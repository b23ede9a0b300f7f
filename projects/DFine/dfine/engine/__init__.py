"""Training engine: the trainer (AMP, gradient clipping, resumable data stream), the EMA and the stage switch."""
from .ema import ModelEMA, load_ema_or_model_weights, unwrap_model
from .hooks import EMAHook, StageSwitchHook
from .predictor import Predictor
from .trainer import Trainer, resolve_device

__all__ = ["ModelEMA", "load_ema_or_model_weights", "unwrap_model", "EMAHook", "StageSwitchHook", "Predictor", "Trainer", "resolve_device"]
