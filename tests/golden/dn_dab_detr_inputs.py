"""The synthetic weights of the DN-DAB-DETR goldens (``tools/golden/make_dn_dab_detr_golden.py``), rebuilt
here for the parity tests without the official code. Images and targets are those of the DINO goldens
(``dino_inputs.synth_batch``)."""
import math

from .dino_inputs import official_weights

__all__ = ["dn_dab_detr_weights"]

# synth_state_dict draws the weights of modules named ``*embed`` as embedding tables (unit variance).
# DN-DAB-DETR's class head is one Linear named ``class_embed``: with unit-variance weights its logits
# (std ~16) saturate the sigmoid, so that hundreds of scores are exactly 1 and the top-300 order is a
# tie-break. Its weight is scaled to the fan-in variance of the other linear layers.
FAN_IN_SCALED = ("class_embed.weight",)


def dn_dab_detr_weights(key_shapes: dict, aliases: dict, seed: int = 0) -> dict:
    """``official_weights`` with the keys of :data:`FAN_IN_SCALED` divided by the square root of their
    fan-in."""
    weights = official_weights(key_shapes, aliases, seed)
    for key in FAN_IN_SCALED:
        weights[key] = weights[key] / math.sqrt(math.prod(weights[key].shape[1:]))
    return weights
