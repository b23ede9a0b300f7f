"""Training engine: the trainer (AMP, gradient clipping, resumable data stream), the EMA, the stage switch,
the RNG states an exact resume needs, and the predictor. Checkpoint files are :mod:`dfine.checkpoint`'s."""
from .ema import ModelEMA, unwrap_model
from .hooks import EMAHook, RNGStateHook, StageSwitchHook
from .predictor import Predictor
from .trainer import Trainer, resolve_device
from .writers import LossGroupPrinter, training_writers

__all__ = ["ModelEMA", "unwrap_model", "EMAHook", "RNGStateHook", "StageSwitchHook", "Predictor", "Trainer",
           "resolve_device", "LossGroupPrinter", "training_writers"]
