"""Settings declared once: each config field carries its constraints, and `check` enforces them all.

`steps: int = positive(250)` is an ordinary dataclass field (OmegaConf reads its default as usual) whose
metadata holds a `Rule`. `check` walks a config's dataclass tree and names the first field whose value has the
wrong type, is not finite, breaks its bounds or choices, or is empty where it may not be; then a dataclass's
own cross-field `rules()`, if it has them. No dependencies, so every module that declares a config imports it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import typing
from dataclasses import dataclass
from typing import Any

INT64 = 2**63  # torch and numpy hold ints in 64 bits: a larger one cannot reach them


class ConfigError(ValueError):
    """A bad setting, in one line that starts with its dotted field (`key`)."""

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Rule:
    """What a field's value (each element, for a list) must satisfy, besides its type."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple = ()
    nonempty: bool = False

    def problem(self, value: Any) -> str | None:
        if self.nonempty and not (value.strip() if isinstance(value, str) else value):
            return "must not be empty"
        for v in value if isinstance(value, list | tuple) else [value]:
            if self.choices and v not in self.choices:
                return f"must be one of {', '.join(map(str, self.choices))}; got {v!r}"
            for bound, sign, holds in (
                (self.gt, ">", operator.gt),
                (self.ge, ">=", operator.ge),
                (self.lt, "<", operator.lt),
                (self.le, "<=", operator.le),
            ):
                if bound is not None and not holds(v, bound):
                    return f"must be {sign} {bound}; got {v!r}"
        return None


def setting(default: Any = dataclasses.MISSING, *, factory: Any = None, **rule: Any) -> Any:
    """A dataclass field defaulting to `default` (or `factory()`, for a list) whose value must satisfy `rule`."""
    meta = {"rule": Rule(**rule)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def positive(default: float) -> Any:
    return setting(default, gt=0)


def non_negative(default: float) -> Any:
    return setting(default, ge=0)


def choice(default: str, *others: str) -> Any:
    return setting(default, choices=(default, *others))


def nonempty(default: str) -> Any:
    return setting(default, nonempty=True)


def check(cfg: Any, prefix: str = "") -> None:
    """Raise a ConfigError naming the first field of `cfg`'s dataclass tree (dotted, after `prefix`) that breaks
    its type or rule, else the first cross-field rule broken. A section's fields come before its rules, so a rule
    can rely on each field being valid on its own."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key, value = prefix + f.name, getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check(value, key + ".")
            continue
        rule = f.metadata.get("rule")
        problem = _type_problem(value, hints[f.name]) or (rule.problem(value) if rule else None)
        if problem:
            raise ConfigError(f"{key}: {problem}", key)
    rules = getattr(cfg, "rules", None)
    for key, problem in rules() if rules else ():
        raise ConfigError(f"{prefix}{key}: {problem}", prefix + key)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why `value` is not a `hint` (int, float, str, bool, list[...], tuple[...], dict[...], Any), or None.

    OmegaConf already converts YAML and override values; this catches configs built in Python, and the
    values OmegaConf lets through: NaN, infinity and ints too big for 64 bits."""
    kind = typing.get_origin(hint) or hint
    if kind in (list, tuple):
        if not isinstance(value, list | tuple):
            return f"must be a list; got {value!r}"
        args = typing.get_args(hint)
        if kind is tuple and args and args[-1] is not Ellipsis and len(value) != len(args):
            return f"must hold {len(args)} values; got {list(value)!r}"
        elem = (args or (Any,))[0]
        return next(filter(None, (_type_problem(v, elem) for v in value)), None)
    if kind is dict:
        return None if isinstance(value, dict) else f"must be a mapping; got {value!r}"
    if kind is bool or kind is str:
        return None if isinstance(value, kind) else f"must be a {kind.__name__}; got {value!r}"
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be an integer; got {value!r}"
        return None if -INT64 <= value < INT64 else f"must fit in 64 bits; got {value}"
    if kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"must be a number; got {value!r}"
        return None if math.isfinite(value) else f"must be a finite number; got {value!r}"
    return None
