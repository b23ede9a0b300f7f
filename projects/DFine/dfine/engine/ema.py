"""Exponential moving average of the model weights, as the official RT-DETR family keeps it
(``ModelEMA`` in RT-DETRv2 / D-FINE / DEIM ``optim/ema.py``), and loading a checkpoint's EMA
weights to evaluate or fine-tune."""
import copy
import math
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _strip_prefix_if_present

from ..checkpoint.files import CheckedLoading

__all__ = ["ModelEMA", "unwrap_model", "load_ema_or_model_weights", "EMAFirstCheckpointer", "has_ema_weights"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, else ``model`` itself."""
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


class ModelEMA:
    """EMA of every floating-point entry of a model's ``state_dict()``: parameters and buffers
    (BatchNorm running statistics included). Integer entries (``num_batches_tracked``) keep the
    values of the copy.

    Update number ``u`` (1-based, one per optimizer step) sets, for each entry,
    ``ema = d(u) * ema + (1 - d(u)) * model`` with the official warm-up
    ``d(u) = decay * (1 - exp(-u / warmups))`` (``d = decay`` when ``warmups == 0``), so the first
    updates follow the model closely instead of averaging in its initialisation.

    ``module`` is a copy of the model in eval mode without gradients, on the model's device (build
    the EMA after moving the model). It is what the official code evaluates and saves as
    ``ema.module``; :meth:`state_dict` is ``{"module": ..., "updates": ...}`` like the official
    one, tensors and an int only, so checkpoints load with ``torch.load(weights_only=True)``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmups: int = 2000):
        """
        Args:
            model: the model to average (a DDP wrapper is unwrapped).
            decay: the decay the warm-up ramps up to; 0.9999 in all official configs.
            warmups: warm-up time constant in updates: 2000 for RT-DETRv2, 1000 for
                D-FINE/DEIM/DEIMv2, 0 (no warm-up) in the official obj2coco configs.
        """
        if not 0.0 <= decay <= 1.0 or warmups < 0:
            raise ValueError(f"Need 0 <= decay <= 1 and warmups >= 0, got decay={decay}, warmups={warmups}")
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)
        self.decay = decay
        self.warmups = warmups
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay ``d(u)`` used by update number ``updates``."""
        if self.warmups == 0:
            return self.decay
        return self.decay * (1 - math.exp(-updates / self.warmups))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (possibly DDP-wrapped) into the average."""
        self.updates += 1
        d = self.decay_at(self.updates)
        for ema_values, model_values in self._update_passes(unwrap_model(model).state_dict()):
            # The official per-entry `v *= d; v += (1 - d) * m`, batched; same rounding.
            torch._foreach_mul_(ema_values, d)
            torch._foreach_add_(ema_values, torch._foreach_mul(model_values, 1 - d))

    def _update_passes(self, model_state: Mapping[str, torch.Tensor]) -> List[Tuple[List, List]]:
        """The floating-point (ema, model) tensor pairs, split into passes of distinct tensors.

        A tensor registered under two names (D-FINE shares ``decoder.up`` with
        ``decoder.decoder.up``) is averaged once per name, one after the other, as the official
        loop over ``state_dict()`` does; a batched op over a list holding it twice would not.
        """
        passes: List[Tuple[List, List]] = []
        seen: Dict[int, int] = {}
        for name, ema_value in self.module.state_dict().items():
            if not ema_value.dtype.is_floating_point:
                continue
            index = seen.get(ema_value.data_ptr(), 0)
            seen[ema_value.data_ptr()] = index + 1
            if index == len(passes):
                passes.append(([], []))
            passes[index][0].append(ema_value)
            passes[index][1].append(model_state[name].detach())
        return passes

    def reset(self, model: nn.Module) -> None:
        """Restart the average at the current weights of ``model``, with no update counted."""
        self.module.load_state_dict(unwrap_model(model).state_dict())
        self.updates = 0

    def state_dict(self) -> Dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


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
    from ..checkpoint.official import CheckpointMismatchError, convert_official_state_dict  # (imports this module)

    try:
        extra = EMAFirstCheckpointer(model, fit=lambda state: convert_official_state_dict(state, model)).load(path)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"{path} does not fit the model:\n{e}") from None
    return "ema" if has_ema_weights(extra) else "model"
