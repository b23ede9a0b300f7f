"""Decoders and criteria of a family built from its model config, with dotted overrides (for tests).

``family_decoder("rtdetrv2", {"hidden_dim": 32, "layer.n_head": 4})`` is the decoder of
configs/common/models/rtdetrv2.py with those values set, as a user's config would set them.
"""
from pathlib import Path

from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def family_model_config(family: str, overrides=None):
    """``configs/common/models/{family}.py``'s ``model`` with ``{"decoder.hidden_dim": 32, ...}`` set."""
    model = LazyConfig.load(str(ROOT / "configs" / "common" / "models" / f"{family}.py")).model
    for key, value in (overrides or {}).items():
        OmegaConf.update(model, key, value, merge=False)
    return model


def family_decoder(family: str, overrides=None):
    """The family's decoder with ``overrides`` (keys relative to ``model.decoder``)."""
    model = family_model_config(family, {f"decoder.{k}": v for k, v in (overrides or {}).items()})
    return instantiate(model.decoder)


def family_criterion(family: str, overrides=None, num_classes=None):
    """The family's criterion with ``overrides`` (keys relative to ``model.criterion``)."""
    model = family_model_config(family, {f"criterion.{k}": v for k, v in (overrides or {}).items()})
    if num_classes is not None:
        model.decoder.num_classes = num_classes
    return instantiate(model.criterion)
