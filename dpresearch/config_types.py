"""Every value has the type its target takes, checked before anything is built.

A string where a number belongs (``trainer.max_epochs=two``), a fraction where a count belongs
(``trainer.max_epochs=2.5``) would otherwise end deep inside a constructor as a bare
TypeError, or inside ``fit``. The types come from the ``_target_``'s own annotations (our
dataclasses, torch's optimizers, Lightning's Trainer), so the check needs no second schema to
keep in step. Values whose annotation is not a plain scalar, list or mapping are left to the
target. Range checks (a positive learning rate, delta below 1/N) stay with the classes.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

GROUPS = ("dataset", "model", "clipping", "finetune", "sampler", "privacy", "optimizer", "trainer")


def check_config_types(cfg: DictConfig) -> None:
    """Refuse the first value whose type its target does not take, naming key and value."""
    for key, kind in (("seed", int),):
        _check(key, cfg.get(key), kind)
    for group in GROUPS:
        node = cfg.get(group)
        if isinstance(node, DictConfig) and "_target_" in node:
            check_node(group, OmegaConf.to_container(node, resolve=True))


def check_node(path: str, node: Mapping[str, Any]) -> None:
    hints = _hints(node.get("_target_"))
    for key, value in node.items():
        if not key.startswith("_") and key in hints:
            _check(f"{path}.{key}", value, hints[key])


def _hints(target: str | None) -> dict[str, Any]:
    """The annotated constructor parameters of the target, its base classes' included (they
    take what a subclass passes on through ``**kwargs``); {} when none can be read."""
    obj = _locate(target) if isinstance(target, str) else None
    if obj is None:
        return {}
    if inspect.isclass(obj):
        functions = [c.__dict__["__init__"] for c in reversed(obj.__mro__)
                     if "__init__" in c.__dict__]  # fmt: skip
    else:
        functions = [obj]
    hints: dict[str, Any] = {}
    for function in functions:
        try:
            found = typing.get_type_hints(function)
            params = inspect.signature(function).parameters
        except Exception:  # noqa: BLE001 - unreadable annotations: nothing to check against
            continue
        hints.update({k: v for k, v in found.items() if k in params})
    return hints


def _locate(path: str) -> Any:
    """The object at a dotted path, or None (the build that follows reports a bad path)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def _check(key: str, value: Any, expected: Any) -> None:
    if not _matches(value, expected):
        raise ValueError(
            f"{key}={value!r} is a {type(value).__name__}, but {key} takes {_describe(expected)}"
        )


def _matches(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or expected in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping) or expected is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know (a tensor, a callable): the target decides


def _describe(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        arms = [_describe(a) for a in typing.get_args(expected)]
        return " or ".join(dict.fromkeys(arms))
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
             type(None): "null"}  # fmt: skip
    if expected in names:
        return names[expected]
    if origin in (list, tuple, Sequence) or expected in (list, tuple):
        return "a list"
    if origin in (dict, Mapping) or expected is dict:
        return "a mapping"
    return getattr(expected, "__name__", str(expected))
