"""Loading LazyConfig files with command-line overrides, checked for unknown keys."""
import inspect
from typing import List

from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

__all__ = ["load_config"]


def load_config(config_file: str, overrides: List[str]):
    """The LazyConfig of ``config_file`` with the command-line ``overrides`` (``key=value``) applied
    and checked, so that a misspelt key is an error naming it rather than a silently ignored value
    or a ``TypeError`` from deep inside ``instantiate``:

    * an override may only add a key to a ``LazyCall`` node (an argument the config leaves at its
      default, e.g. ``dataloader.evaluator.output_dir``), not to a plain dict such as ``train``;
    * every key of every ``LazyCall`` node, from the file or an override, must be a parameter of
      its target (unless the target takes ``**kwargs``).

    Raises:
        ValueError: listing every unknown key with its path.
    """
    cfg = LazyConfig.load(config_file)
    errors = []
    missing = object()
    for override in OverridesParser.create().parse_overrides(overrides):
        parts = override.key_or_group.split(".")
        new = next((d for d in range(len(parts)) if OmegaConf.select(cfg, ".".join(parts[: d + 1]), default=missing)
                    is missing), None)
        if new is None:
            continue
        parent = ".".join(parts[:new])
        node = OmegaConf.select(cfg, parent) if parent else cfg
        # A new argument of a LazyCall node is checked against its target below.
        if OmegaConf.is_dict(node) and "_target_" not in node:
            errors.append(f"{override.input_line!r}: '{parent or '<root>'}' has no key '{parts[new]}'; "
                          f"its keys are {sorted(node)}")
    cfg = LazyConfig.apply_overrides(cfg, overrides)
    errors += _unknown_arguments(OmegaConf.to_container(cfg, resolve=False), "")
    if errors:
        raise ValueError(f"Unknown config key(s) in {config_file}:\n  " + "\n  ".join(errors))
    return cfg


def _unknown_arguments(node, path: str) -> List[str]:
    """The keys of the ``LazyCall`` nodes under ``node`` (a plain container) that their target
    does not take, as ``"path: why"``."""
    if isinstance(node, list):
        return [e for i, item in enumerate(node) for e in _unknown_arguments(item, f"{path}[{i}]")]
    if not isinstance(node, dict):
        return []
    errors = [e for key, value in node.items() for e in _unknown_arguments(value, f"{path}.{key}" if path else key)]
    target = node.get("_target_")
    if target is None:
        return errors
    target = locate(target) if isinstance(target, str) else target
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature to check against (a builtin)
        return errors
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return errors
    name = f"{target.__module__}.{target.__qualname__}"
    for key in node:
        if key != "_target_" and key not in parameters:
            errors.append(f"{path}.{key}: {name} takes no argument '{key}'; it takes {list(parameters)}")
    return errors
