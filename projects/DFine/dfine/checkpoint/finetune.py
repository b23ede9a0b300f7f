"""Starting a training from a checkpoint trained with another number of classes.

``train.init_checkpoint`` may be a converted official COCO (80 classes) or Objects365 (366
classes) checkpoint, or one of our own, while the config's ``model.decoder.num_classes`` is that
of a custom data set. The tensors whose first dimension counts the classes (``CLASS_DEPENDENT``:
the decoder's score heads, the encoder output's score head and the denoising label embedding,
which has ``num_classes + 1`` rows) then keep the model's fresh initialisation, as the official
fine-tuning (``-t``) keeps the tensors whose shape differs. Everything else must match key for
key and shape for shape: unlike the official loader, which skips any mismatch with a printout,
a checkpoint of another architecture or size is an error that lists every difference. The only
other tensors that may differ are the buffers a model computes from its config (anchors for
``eval_spatial_size``, see :data:`~dfine.checkpoint.official.DERIVED_BUFFERS`). Every tensor that
is not loaded is logged.
"""
import logging
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .ema_weights import EMAFirstCheckpointer, has_ema_weights
from .official import CheckpointMismatchError, fit_state_dict

__all__ = ["CLASS_DEPENDENT", "FinetuneReport", "finetune_state_dict", "load_finetune_weights"]

logger = logging.getLogger(__name__)

# State-dict keys of the tensors whose first dimension is the number of classes (plus one for the
# denoising embedding), in RT-DETRv2, D-FINE, DEIM and DEIMv2 decoders alike.
CLASS_DEPENDENT = re.compile(
    r"(^|\.)(dec_score_head\.\d+\.(weight|bias)|enc_score_head\.(weight|bias)|denoising_class_embed\.weight)$"
)


@dataclass
class FinetuneReport:
    """What :func:`load_finetune_weights` did not take from the checkpoint.

    Attributes:
        weights: ``"ema"`` or ``"model"``: which weights of the checkpoint were loaded.
        reinitialised: class-dependent keys of another number of classes, as
            ``"key: checkpoint (80, 256) -> model (3, 256)"``; the model keeps its initialisation.
        derived: buffers the model computes from its config that were not taken from the
            checkpoint (absent from it or from the model, or of another shape).
    """

    weights: str
    reinitialised: List[str] = field(default_factory=list)
    derived: List[str] = field(default_factory=list)


def finetune_state_dict(
    checkpoint_state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]
) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """The part of ``checkpoint_state`` to load into a model with ``model_state``:
    :func:`~dfine.checkpoint.official.fit_state_dict` where ``CLASS_DEPENDENT`` tensors may have
    another number of classes and derived buffers another shape.

    Returns:
        ``(state dict to load, re-initialised class-dependent keys, derived buffers not loaded)``,
        the last two as descriptions with the shapes (see :class:`FinetuneReport`).

    Raises:
        CheckpointMismatchError: listing every other missing, unexpected or mis-shaped key.
    """
    return fit_state_dict(
        checkpoint_state, model_state,
        "The checkpoint does not fit the model beyond the number of classes (only the score heads and the "
        "denoising label embedding may have another number of classes).",
        reinitialisable=CLASS_DEPENDENT, rebuild_mismatched_buffers=True,
    )


def load_finetune_weights(model: nn.Module, path: str) -> Optional[FinetuneReport]:
    """Load ``train.init_checkpoint`` at ``path`` into ``model`` to start a training: its EMA
    weights if it has them, else its model weights, with the class-dependent tensors
    re-initialised when the number of classes differs (see the module docstring), and log every
    tensor that was not loaded.

    The checkpoint is checked before anything is loaded: on an error the model is unchanged.

    Returns:
        the :class:`FinetuneReport`, or ``None`` for an empty ``path`` (nothing is loaded).

    Raises:
        CheckpointMismatchError: when the checkpoint differs in more than the number of classes.
    """
    if not path:
        logger.info("No train.init_checkpoint: training starts from the model's initialisation.")
        return None
    fitted = {}

    def fit(state):
        ours = model.state_dict()
        load, fitted["reinitialised"], fitted["derived"] = finetune_state_dict(state, ours)
        fitted["num_loaded"] = len(load)
        return {**ours, **load}

    try:
        extra = EMAFirstCheckpointer(model, fit=fit).load(path)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"train.init_checkpoint={path}: {e}") from e
    weights = "ema" if has_ema_weights(extra) else "model"
    report = FinetuneReport(weights, fitted["reinitialised"], fitted["derived"])
    logger.info(
        f"Loaded the {report.weights} weights of {path} into {fitted['num_loaded']} of the model's "
        f"{len(model.state_dict())} state-dict entries."
    )
    if report.reinitialised:
        logger.warning(
            f"The number of classes differs from the checkpoint's: {len(report.reinitialised)} class-dependent "
            "tensors are re-initialised (not loaded):\n  " + "\n  ".join(report.reinitialised)
        )
    if report.derived:
        logger.info(
            f"{len(report.derived)} buffers are computed from the config, not loaded:\n  " + "\n  ".join(report.derived)
        )
    return report
