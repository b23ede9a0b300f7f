"""Training engine: the trainer (AMP, gradient clipping, resumable data stream), the EMA, the stage switch
and what an exact resume needs (atomic checkpoints, RNG states)."""
from .checkpoint_io import AtomicCheckpointer, atomic_write
from .ema import ModelEMA, load_ema_or_model_weights, unwrap_model
from .hooks import EMAHook, RNGStateHook, StageSwitchHook
from .predictor import Predictor
from .trainer import Trainer, resolve_device

__all__ = [
    "AtomicCheckpointer", "atomic_write", "ModelEMA", "load_ema_or_model_weights", "unwrap_model", "EMAHook",
    "RNGStateHook", "StageSwitchHook", "Predictor", "Trainer", "resolve_device",
]
