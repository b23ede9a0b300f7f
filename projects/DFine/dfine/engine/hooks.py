"""Training hooks of the real-time DETR family."""
from detectron2.engine import HookBase

from .ema import ModelEMA

__all__ = ["EMAHook"]


class EMAHook(HookBase):
    """Updates a :class:`ModelEMA` of ``trainer.model`` after every optimizer step.

    Register it before the hooks that read the EMA weights (checkpointing, evaluation). Its state
    is not kept here: register the ``ModelEMA`` itself with the checkpointer,
    ``DetectionCheckpointer(..., ema=ema)``, which saves it as ``checkpoint["ema"] = {"module",
    "updates"}`` (the official layout) and restores it on ``--resume``.
    """

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def before_train(self):
        # A run that did not resume an EMA starts the average at the weights training starts
        # from, i.e. after init_checkpoint was loaded (officially the EMA is built after that).
        if self.ema.updates == 0:
            self.ema.reset(self.trainer.model)

    def after_step(self):
        self.ema.update(self.trainer.model)
