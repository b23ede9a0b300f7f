"""Optimizer parameter groups chosen by regular expressions over parameter names.

This is the official ``optimizer.params`` mechanism (``YAMLConfig.get_optim_params``) as a
function for LazyConfigs::

    optimizer = L(torch.optim.AdamW)(
        params=L(param_groups)(rules={"backbone": {"pattern": r"^(?=.*backbone)(?!.*norm).*$", "lr": 1e-5}}),
        lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4,
    )

with ``optimizer.params.model`` set to the model at run time (the detectron2/detrex convention). Rules
are named, so that an override names the rule it changes (``optimizer.params.rules.backbone.lr=2e-5``).
"""
import logging
import re
from typing import Dict, List, Mapping

from torch import nn

__all__ = ["param_groups"]

logger = logging.getLogger(__name__)

# The per-group options a rule may set; anything else is most likely a typo that torch would ignore.
_GROUP_OPTIONS = ("lr", "weight_decay")


def param_groups(model: nn.Module, rules: Mapping[str, Mapping] = None) -> List[Dict]:
    """Torch optimizer parameter groups: one per rule, in rule order, then a default group.

    A trainable parameter belongs to a rule when ``re.search(rule["pattern"], name)`` matches its
    state-dict key (the official name, see :func:`parameter_names`)
    (the official test is ``len(re.findall(pattern, name)) > 0``, which is the same). Rule ``i``
    becomes group ``i`` with the rule's ``lr`` / ``weight_decay`` (absolute values; unset ones fall
    back to the optimizer's) and its name as the group's ``"name"``; the trainable parameters no rule
    matches form the last group (``"default"``), with the optimizer's defaults. Frozen parameters
    (``requires_grad=False``) are left out. Parameters keep the order of ``model.named_parameters()``.

    The patterns are used verbatim, so the official quirks carry over. For example
    ``(?!.*norm|bn)`` parses as ``(?!(.*norm)|(bn))``: it excludes names containing "norm" but
    "bn" only at the start of the name (official ``YAMLConfig.get_optim_params``, DEIM
    ``engine/core/yaml_config.py``). A rule that matches no
    parameter still makes an (empty) group, as officially, so group ``i`` is always rule ``i``.

    Args:
        model: the model whose parameters are grouped.
        rules: name -> mapping with a ``"pattern"`` and optionally ``"lr"`` and ``"weight_decay"``.

    Raises:
        ValueError: a parameter matches two rules (the official code would put it in two groups
            and torch would refuse), or a rule has another key.
    """
    if rules is None:
        rules = {}
    if not isinstance(rules, Mapping):
        raise ValueError("Optimizer rules are a mapping from a rule's name to the rule, e.g. "
                         "{'backbone': {'pattern': ..., 'lr': ...}}, so that overrides name the rule they change; "
                         f"got {type(rules).__name__}")
    names = parameter_names(model)
    named = [(names[id(p)], p) for p in model.parameters() if p.requires_grad]
    owner: Dict[str, str] = {}
    groups = []
    for rule_name, rule in rules.items():
        unknown = sorted(set(rule.keys()) - {"pattern", *_GROUP_OPTIONS})
        if unknown or "pattern" not in rule:
            raise ValueError(f"Optimizer rule {rule_name!r} must have a 'pattern' and may set {list(_GROUP_OPTIONS)}; "
                             f"got keys {sorted(rule.keys())}")
        pattern = re.compile(rule["pattern"])
        params = []
        for name, p in named:
            if pattern.search(name) is None:
                continue
            if name in owner:
                raise ValueError(
                    f"Parameter {name!r} matches optimizer rule {owner[name]!r} ({rules[owner[name]]['pattern']!r}) "
                    f"and rule {rule_name!r} ({rule['pattern']!r}); a parameter may belong to one group only."
                )
            owner[name] = rule_name
            params.append(p)
        if not params:
            logger.info("Optimizer rule %r (%r) matches no trainable parameter; its group is empty.", rule_name,
                        rule["pattern"])
        groups.append({"params": params, "name": rule_name, **{k: float(rule[k]) for k in _GROUP_OPTIONS if k in rule}})
    default = [p for name, p in named if name not in owner]
    if default:
        groups.append({"params": default, "name": "default"})
    return groups


def parameter_names(model: nn.Module) -> Dict[int, str]:
    """``id(parameter) -> name``, the name being the parameter's first key in ``model.state_dict()``:
    the official key where a module saves its tensors in the official layout (see
    :class:`~dfine.modeling.decoder.DetrDecoder`), so that the official patterns select the same
    parameters."""
    names: Dict[int, str] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if isinstance(value, nn.Parameter):
            names.setdefault(id(value), key)
    return names
