"""Optimizer parameter groups chosen by regular expressions over parameter names, as in the
official configs (``optimizer.params`` there)."""
import re
from typing import Dict, List, Sequence

from torch import nn

__all__ = ["param_groups"]


def param_groups(model: nn.Module, rules: Sequence[Dict] = ()) -> List[Dict]:
    """One group per rule, plus a default group for the trainable parameters no rule matches.

    Each rule is ``{"pattern": regex, **overrides}`` (e.g. ``lr``, ``weight_decay``); a parameter
    belongs to a rule when ``re.findall(pattern, name)`` finds anything, the official test. Frozen
    parameters are left out. A parameter matched by two rules is an error: the official code would
    silently put it in two groups.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups, owner = [], {}
    for i, rule in enumerate(rules):
        rule = dict(rule)
        pattern = rule.pop("pattern")
        params = []
        for name, p in named:
            if re.findall(pattern, name):
                if name in owner:
                    raise ValueError(f"Parameter {name!r} matches optimizer rules {owner[name]} and {i} ({pattern!r})")
                owner[name] = i
                params.append(p)
        groups.append({"params": params, **rule})
    groups.append({"params": [p for n, p in named if n not in owner]})
    return [g for g in groups if g["params"]]
