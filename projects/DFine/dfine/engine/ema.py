"""Exponential moving average of the model weights, as the official RT-DETR family keeps it."""
import copy
import math

import torch
from torch import nn

__all__ = ["ModelEMA", "EMAWeightsLoader"]


class ModelEMA:
    """EMA of every floating-point entry of a model's state dict (parameters and BN statistics).

    The decay ramps up as ``decay * (1 - exp(-updates / warmups))`` (constant ``decay`` when
    ``warmups == 0``), so early weights are not averaged with the random initialisation.
    ``module`` is an eval-mode copy on the model's device; evaluation and the official
    ``ema.module`` checkpoint entry use it.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmups: int = 2000):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmups = warmups
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        if self.warmups <= 0:
            return self.decay
        return self.decay * (1 - math.exp(-updates / self.warmups))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        current = model.state_dict()
        for key, ema_value in self.module.state_dict().items():
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(d).add_(current[key].detach(), alpha=1 - d)

    def state_dict(self):
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


class EMAWeightsLoader:
    """Checkpointable that loads a checkpoint's ``ema`` entry into a model (for evaluation).

    Passed as ``DetectionCheckpointer(model, ema=EMAWeightsLoader(model))``: after the raw
    weights, the EMA weights (if the file has them) replace them.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["module"])
