"""Optimizer parameter groups chosen by regular expressions over parameter names.

This is the official ``optimizer.params`` mechanism (``YAMLConfig.get_optim_params``) as a
function for LazyConfigs::

    optimizer = L(torch.optim.AdamW)(
        params=L(param_groups)(rules=[{"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-5}]),
        lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4,
    )

with ``optimizer.params.model`` set to the model at run time (the detectron2/detrex convention).
"""
import logging
import re
from typing import Dict, List, Mapping, Sequence

from torch import nn

__all__ = ["param_groups"]

logger = logging.getLogger(__name__)

# The per-group options a rule may set; anything else is most likely a typo that torch would ignore.
_GROUP_OPTIONS = ("lr", "weight_decay")


def param_groups(model: nn.Module, rules: Sequence[Mapping] = ()) -> List[Dict]:
    """Torch optimizer parameter groups: one per rule, in rule order, then a default group.

    A trainable parameter belongs to a rule when ``re.search(rule["pattern"], name)`` matches
    (the official test is ``len(re.findall(pattern, name)) > 0``, which is the same). Rule ``i``
    becomes group ``i`` with the rule's ``lr`` / ``weight_decay`` (absolute values; unset ones fall
    back to the optimizer's); the trainable parameters no rule matches form the last group, with
    the optimizer's defaults. Frozen parameters (``requires_grad=False``) are left out. Parameters
    keep the order of ``model.named_parameters()``.

    The patterns are used verbatim, so the official quirks carry over. For example
    ``(?!.*norm|bn)`` parses as ``(?!(.*norm)|(bn))``: it excludes names containing "norm" but
    "bn" only at the start of the name (official-implementations.md §6.2). A rule that matches no
    parameter still makes an (empty) group, as officially, so group ``i`` is always rule ``i``.

    Args:
        model: the model whose ``named_parameters()`` are grouped.
        rules: mappings with a ``"pattern"`` and optionally ``"lr"`` and ``"weight_decay"``.

    Raises:
        ValueError: a parameter matches two rules (the official code would put it in two groups
            and torch would refuse), or a rule has another key.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    owner: Dict[str, int] = {}
    groups = []
    for index, rule in enumerate(rules):
        unknown = sorted(set(rule.keys()) - {"pattern", *_GROUP_OPTIONS})
        if unknown or "pattern" not in rule:
            raise ValueError(
                f"Optimizer rule {index} must have a 'pattern' and may set {list(_GROUP_OPTIONS)}; got keys {sorted(rule.keys())}"
            )
        pattern = re.compile(rule["pattern"])
        params = []
        for name, p in named:
            if pattern.search(name) is None:
                continue
            if name in owner:
                raise ValueError(
                    f"Parameter {name!r} matches optimizer rule {owner[name]} ({rules[owner[name]]['pattern']!r}) "
                    f"and rule {index} ({rule['pattern']!r}); a parameter may belong to one group only."
                )
            owner[name] = index
            params.append(p)
        if not params:
            logger.info("Optimizer rule %d (%r) matches no trainable parameter; its group is empty.", index, rule["pattern"])
        groups.append({"params": params, **{k: float(rule[k]) for k in _GROUP_OPTIONS if k in rule}})
    default = [p for name, p in named if name not in owner]
    if default:
        groups.append({"params": default})
    return groups
