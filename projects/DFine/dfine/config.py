"""Loading LazyConfig files with command-line overrides, checked before anything is built.

A misspelt key, a value of the wrong type or a value outside its domain is an error that names the
key, instead of a silently ignored value or a ``TypeError`` from deep inside ``instantiate``, the
sampler or the optimizer:

* :func:`load_config` / :func:`apply_overrides`: every override key must exist (or be an argument
  of the ``LazyCall`` node it is added to), and its value must have the type of the value it
  replaces, or of the argument's annotation in the target's signature;
* :func:`check_training_values`: the values a training reads with a hard domain (batch size,
  learning rates, weight decay, lengths in epochs and iterations).
"""
import copy
import enum
import inspect
import math
import numbers
import os
import types
import typing
from collections import abc
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["ConfigError", "apply_overrides", "check_training_values", "load_config", "eval_input_size"]


class ConfigError(ValueError):
    """A config file, override or value that cannot be used; the message names the file or key."""


def load_config(config_file: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The LazyConfig of ``config_file`` with the command-line ``overrides`` (``key=value``)
    applied and checked (:func:`apply_overrides`).

    Raises:
        ConfigError: naming the file when it is missing or does not load (with the original error,
            e.g. the line of a syntax error), or listing every unknown key and mistyped value.
    """
    if not os.path.isfile(config_file):
        what = "is a folder, not a config file" if os.path.isdir(config_file) else "does not exist"
        raise ConfigError(f"Config file {config_file} {what}.")
    try:
        cfg = LazyConfig.load(config_file)
    except Exception as e:
        cause = e.__cause__ if isinstance(e.__cause__, SyntaxError) else e  # detectron2 re-raises syntax errors
        where = f" (line {cause.lineno})" if isinstance(cause, SyntaxError) and cause.lineno else ""
        raise ConfigError(
            f"Config file {config_file} cannot be loaded: {type(cause).__name__}{where}: {cause}"
        ) from e
    return apply_overrides(cfg, overrides, config_file)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], source: str = "the config") -> DictConfig:
    """``cfg`` with ``overrides`` applied in order, each checked against the config it changes:

    * an override may only add a key to a ``LazyCall`` node (an argument the config leaves at its
      default, e.g. ``dataloader.evaluator.output_dir``), not to a plain dict such as ``train``;
    * every key of every ``LazyCall`` node, from the file or an override, must be a parameter of
      its target (unless the target takes ``**kwargs``);
    * a value must have the type of the value it replaces or of the argument's annotation in the
      target's signature (:func:`_type_problem`). Interpolations (``${..decoder.num_classes}``) are
      accepted wherever a value is.

    ``cfg`` is modified in place (pass a copy to keep it) and returned.

    Raises:
        ConfigError: listing every unknown key and every mistyped value, with its override.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise ConfigError(f"Cannot parse the overrides of {source}: {e}") from e
    unknown, mistyped = [], []
    for override in parsed:
        problem = _unknown_key(cfg, override)
        if problem:
            unknown.append(problem)
        else:
            problem = _type_problem(cfg, override.key_or_group, override.value())
            if problem:
                mistyped.append(f"{override.input_line!r}: {problem}")
        try:
            cfg = LazyConfig.apply_overrides(cfg, [override.input_line])
        except KeyError as e:  # a key below a value that is not a config node
            unknown.append(f"{override.input_line!r}: {e.args[0]}")
    unknown += _unknown_arguments(OmegaConf.to_container(cfg, resolve=False), "")
    sections = []
    if unknown:
        sections.append(f"Unknown config key(s) in {source}:\n  " + "\n  ".join(unknown))
    if mistyped:
        sections.append(f"Override value(s) of the wrong type for {source}:\n  " + "\n  ".join(mistyped))
    if sections:
        raise ConfigError("\n".join(sections))
    return cfg


def eval_input_size(cfg: DictConfig) -> Tuple[int, int]:
    """``(height, width)`` a config evaluates at, for tools that need one fixed size (export,
    benchmarks): the test mapper's ``image_size``; for a mapper that keeps the aspect ratio
    (``image_size=None``, the DETR / DINO resize to a shorter side ``size``), the square of that side."""
    mapper = cfg.dataloader.test.mapper
    size = mapper.image_size
    if size is None:
        augmentations = mapper.get("augmentations")
        size = augmentations.get("size") if augmentations is not None and hasattr(augmentations, "get") else None
        if size is None:
            raise ConfigError("dataloader.test.mapper has no image_size and no resize size: give the input size "
                              "explicitly (e.g. --size 800)")
    return (size, size) if isinstance(size, int) else tuple(size)


def check_training_values(cfg: DictConfig, world_size: int = 1) -> None:
    """Check the values a training reads that have a hard domain, before anything is built: the
    total batch size (positive, divisible by the number of processes ``world_size``), every
    ``lr`` and ``weight_decay`` under ``optimizer`` (finite, not negative), the lengths in epochs
    and iterations (positive; ``train.eval_period=0`` disables evaluation), the EMA decay and the
    number of loader workers. Keys a config does not have are skipped.

    Raises:
        ConfigError: listing every value outside its domain with its key.
    """
    problems = []

    def require(key: str, valid: Callable[[Any], bool], domain: str, optional: bool = True) -> None:
        value = OmegaConf.select(cfg, key, default=None)
        if (value is not None or not optional) and not valid(value):
            problems.append(f"{key}={value!r}: must be {domain}")

    def positive_int(v):
        return _is_int(v) and v > 0

    require("dataloader.train.total_batch_size", lambda v: positive_int(v) and v % world_size == 0,
            f"a positive integer divisible by the number of processes ({world_size})")
    for split in ("train", "test"):
        require(f"dataloader.{split}.num_workers", lambda v: _is_int(v) and v >= 0, "a non-negative integer")
    for key, rate in _optimizer_rates(cfg):
        if not _is_interpolation(rate) and not (_is_number(rate) and 0 <= rate < math.inf):
            problems.append(f"{key}={rate!r}: must be a finite number, not negative")
    if "train" in cfg:
        # With train.epochs the length is computed from it (train_net.convert_epochs), unless the
        # command line gives train.max_iter, which then wins: it must be valid either way.
        require("train.max_iter", positive_int, "a positive integer (or set train.epochs)", optional=False)
        for key in ("train.epochs", "train.eval_epochs", "train.checkpoint_epochs"):
            require(key, lambda v: _is_number(v) and 0 < v < math.inf, "a positive number, or null")
        require("train.eval_period", lambda v: _is_int(v) and v >= 0, "a non-negative integer (0: no evaluation)")
        require("train.checkpointer.period", positive_int, "a positive integer")
        require("train.log_period", positive_int, "a positive integer")
        require("train.ema.decay", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
    if problems:
        raise ConfigError("Config value(s) outside their domain:\n  " + "\n  ".join(problems))


def _unknown_key(cfg: DictConfig, override) -> Optional[str]:
    """The problem with an override that adds a key to a plain dict, or ``None``."""
    parts = override.key_or_group.split(".")
    missing = object()
    new = next((d for d in range(len(parts))
                if OmegaConf.select(cfg, ".".join(parts[: d + 1]), default=missing) is missing), None)
    if new is None:
        return None
    parent = ".".join(parts[:new])
    node = OmegaConf.select(cfg, parent) if parent else cfg
    # A new argument of a LazyCall node is checked against its target by _unknown_arguments.
    if OmegaConf.is_dict(node) and "_target_" not in node:
        return f"{override.input_line!r}: '{parent or '<root>'}' has no key '{parts[new]}'; its keys are {sorted(node)}"
    return None


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


def _type_problem(cfg: DictConfig, key: str, value: Any) -> Optional[str]:
    """Why ``value`` cannot replace ``key`` of ``cfg``, or ``None`` when it can.

    The value may have the type of the current value (its resolved value for an interpolation;
    the signature's default for an argument the config does not set) or the type the target of
    the enclosing ``LazyCall`` node declares for the argument. Ints are taken for floats; floats
    for ints only in plain dicts (``train.epochs=0.5`` where a config says ``epochs = 60``), not
    for an argument of code whose value is an int. ``None`` is taken unless the argument is
    annotated without ``None`` and defaults to something else (plain keys such as
    ``train.epochs=null`` take it). A key that is ``None`` and has no annotation takes anything, and
    a value that is itself an interpolation is always taken.
    """
    if _is_interpolation(value):
        return None
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    current = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    if isinstance(current, (DictConfig, ListConfig)):
        current = OmegaConf.to_container(current, resolve=False)
    annotation, default, owner = _argument_annotation(parent, name)
    if current is None and default is not inspect.Parameter.empty:
        current = default
    fits_annotation, fits_current = _fits(value, annotation), _fits_like(value, current, exact_ints=bool(owner))
    if value is None:
        if fits_annotation is False and default is not None:
            return f"expected {_describe(annotation)} ({owner}), got None"
        return None
    if fits_annotation or fits_current or (fits_annotation is None and fits_current is None):
        return None
    if fits_annotation is False:
        expected = f"{_describe(annotation)} ({owner})"
    else:
        expected = f"{_describe_like(current, exact_ints=bool(owner))}, like the config's value {current!r}"
    takes_text = _fits("text", annotation) or _fits_like("text", current)
    hint = f" (quote it to pass it as text: {key}='\"{value}\"')" if takes_text else ""
    return f"expected {expected}, got {type(value).__name__} {value!r}{hint}"


def _argument_annotation(parent: Any, name: str) -> Tuple[Any, Any, str]:
    """``(annotation, default, description)`` of the argument ``name`` of the target of the
    ``LazyCall`` node ``parent``; ``(None, empty, "")`` where there is none."""
    none = (None, inspect.Parameter.empty, "")
    if not isinstance(parent, DictConfig) or "_target_" not in parent:
        return none
    target = parent._target_
    target = locate(target) if isinstance(target, str) else target
    try:
        parameter = inspect.signature(target).parameters.get(name)
    except (TypeError, ValueError):  # no signature (a builtin)
        return none
    if parameter is None:
        return none
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # annotations that do not resolve (forward references): use the raw ones
        hints = {}
    annotation = hints.get(name, parameter.annotation)
    annotation = None if annotation is inspect.Parameter.empty else annotation
    return annotation, parameter.default, f"the type of {getattr(target, '__qualname__', target)}'s argument {name}"


def _fits(value: Any, annotation: Any) -> Optional[bool]:
    """Whether a command-line value (bool, int, float, str, None, list or dict) fits
    ``annotation``: True, False, or None where the annotation says nothing checkable (absent,
    ``Any``, a callable, a type variable, an enum)."""
    if annotation is None or annotation is Any or isinstance(annotation, (str, typing.TypeVar, typing.ForwardRef)):
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        verdicts = [_fits(value, arm) for arm in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is not None:
        if _is_sequence_type(origin):  # Sequence[X], List[X], Tuple[X, Y], Iterable[X]
            if not isinstance(value, list):
                return False
            arms = [arm for arm in args if arm is not Ellipsis]
            return not any(arms and all(_fits(item, arm) is False for arm in arms) for item in value)
        if inspect.isclass(origin) and issubclass(origin, abc.Mapping):
            return isinstance(value, dict)
        return None  # Callable[...], Literal[...], ...
    if not inspect.isclass(annotation) or issubclass(annotation, enum.Enum):
        return None
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_int(value)
    if annotation is float:
        return _is_number(value)
    if annotation is str or issubclass(annotation, os.PathLike):
        return isinstance(value, str)
    if _is_sequence_type(annotation):
        return isinstance(value, list)
    if issubclass(annotation, abc.Mapping):
        return isinstance(value, dict)
    return isinstance(value, dict)  # any other class: a config node that instantiates it


def _fits_like(value: Any, current: Any, exact_ints: bool = False) -> Optional[bool]:
    """Whether ``value`` has the kind of ``current`` (a plain value or container); None when
    ``current`` says nothing (None, an interpolation, an object). Numbers are one kind, unless
    ``exact_ints``: then an int takes ints only."""
    if current is None or _is_interpolation(current):
        return None
    if isinstance(current, bool):
        return isinstance(value, bool)
    if exact_ints and _is_int(current):
        return _is_int(value)
    if _is_number(current):
        return _is_number(value)
    if isinstance(current, str):
        return isinstance(value, str)
    if isinstance(current, (list, tuple)):
        if not isinstance(value, list):
            return False
        # Items are checked where the current ones are all of one plain kind, e.g. a list of sizes.
        kinds = {_describe_like(item) for item in current}
        if len(kinds) != 1 or not kinds <= {"bool", "a number", "str"}:
            return True
        return all(_fits_like(item, current[0], exact_ints) for item in value)
    if isinstance(current, dict):
        return isinstance(value, dict)
    return None


def _describe(annotation: Any) -> str:
    """An annotation in words: ``int``, ``a list of int``, ``int, a list of int or None``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        names = [_describe(arm) for arm in args if arm is not type(None)] + (["None"] if type(None) in args else [])
        return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
    if _is_sequence_type(origin or annotation):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if inspect.isclass(origin or annotation) and issubclass(origin or annotation, abc.Mapping):
        return "a dict"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _describe_like(current: Any, exact_ints: bool = False) -> str:
    """The kind of a config value in words, as :func:`_fits_like` compares it."""
    if isinstance(current, bool):
        return "bool"
    if exact_ints and _is_int(current):
        return "int"
    if _is_number(current):
        return "a number"
    if isinstance(current, str):
        return "str"
    if isinstance(current, (list, tuple)):
        return "a list"
    return "a dict" if isinstance(current, dict) else type(current).__name__


def _optimizer_rates(cfg: DictConfig) -> Iterator[Tuple[str, Any]]:
    """``(key, value)`` of every ``lr`` and ``weight_decay`` under ``cfg.optimizer`` (its parameter
    group rules included), resolved where they are interpolations."""
    if "optimizer" not in cfg:
        return
    try:
        tree = OmegaConf.to_container(copy.deepcopy(cfg.optimizer), resolve=True)
    except Exception:  # an interpolation that only resolves later: check the literal values
        tree = OmegaConf.to_container(cfg.optimizer, resolve=False)

    def walk(node: Any, path: str) -> Iterator[Tuple[str, Any]]:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in ("lr", "weight_decay"):
                    yield f"{path}.{key}", item
                else:
                    yield from walk(item, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                yield from walk(item, f"{path}[{i}]")

    yield from walk(tree, "optimizer")


def _is_sequence_type(cls: Any) -> bool:
    """Whether a class is a sequence that a command-line list stands for: ``list``, ``tuple``,
    ``Sequence``, ``Iterable`` (not a str, nor a class that merely iterates, such as a tensor)."""
    if not inspect.isclass(cls) or issubclass(cls, (str, bytes)):
        return False
    return issubclass(cls, abc.Sequence) or cls in (abc.Iterable, abc.Collection)


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
