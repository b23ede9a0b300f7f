"""Reading a checkpoint's weights, the EMA weights first, as the official evaluation and fine-tuning
pick them."""
from typing import Callable, Dict, Mapping, Optional

from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _strip_prefix_if_present
from torch import nn

from .files import CheckedLoading
from .official import CheckpointMismatchError, convert_official_state_dict

__all__ = ["EMAFirstCheckpointer", "has_ema_weights", "load_ema_or_model_weights"]


class EMAFirstCheckpointer(CheckedLoading, DetectionCheckpointer):
    """Reads ``checkpoint["ema"]["module"]`` as the model weights when the file has an EMA. A file
    that is not a readable checkpoint is refused with its path (:class:`CheckedLoading`).

    With ``fit``, the weights (as detectron2 prepares them: arrays of .pkl files as tensors, DDP's
    "module." prefix removed) go through ``fit(state_dict)``, which returns the whole state dict
    to load or raises; without, detectron2's lenient loading reports what does not fit.
    """

    def __init__(self, model, *args, fit: Optional[Callable[[Dict], Dict]] = None, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.fit = fit

    def _load_file(self, filename):
        checkpoint = super()._load_file(filename)
        if has_ema_weights(checkpoint):
            checkpoint["model"] = checkpoint["ema"]["module"]
        return checkpoint

    def _load_model(self, checkpoint):
        if self.fit is not None:
            state = checkpoint["model"]
            self._convert_ndarray_to_tensor(state)
            _strip_prefix_if_present(state, "module.")
            checkpoint["model"] = self.fit(state)
        return super()._load_model(checkpoint)


def has_ema_weights(checkpoint: Mapping) -> bool:
    """Whether a loaded checkpoint holds EMA weights (``checkpoint["ema"]["module"]``)."""
    ema = checkpoint.get("ema")
    return isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping)


def load_ema_or_model_weights(model: nn.Module, path: str) -> str:
    """Load the weights of the checkpoint at ``path`` into ``model``, the EMA weights first.

    Those are ``checkpoint["ema"]["module"]`` when the checkpoint has them (our training
    checkpoints), else ``checkpoint["model"]`` (e.g. official checkpoints converted by
    tools/convert_official.py), as the official evaluation and fine-tuning (``-t``) pick them. Loading goes
    through ``DetectionCheckpointer`` (any file format it reads), but strictly: a checkpoint of
    another model is refused rather than half loaded, which would evaluate a partly random model.
    An empty ``path`` loads nothing. To start a training,
    :func:`dfine.checkpoint.load_finetune_weights` also accepts another number of classes.

    Returns:
        ``"ema"`` or ``"model"``: which weights were loaded.

    Raises:
        CheckpointMismatchError: naming ``path`` and listing every missing, unexpected or
            mis-shaped key; the model is unchanged.
    """
    try:
        extra = EMAFirstCheckpointer(model, fit=lambda state: convert_official_state_dict(state, model)).load(path)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{path} does not fit the model:\n{e}") from None
    return "ema" if has_ema_weights(extra) else "model"
