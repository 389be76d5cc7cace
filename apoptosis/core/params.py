"""Validated plugin parameters: each one carries its allowed range and a search range.

A strategy declares ``class Params(StrategyParams)`` as a dataclass whose fields are made with
``param(...)``; building it checks every value at once (like Optuna's pruners validate their
arguments), and the search code reads the search ranges from the same declaration.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from apoptosis.core.errors import ApoptosisError


@dataclass(frozen=True)
class ParamSpec:
    """Allowed values (``low``/``high`` inclusive, or ``choices``) and the range a search explores."""

    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    search: tuple[float, float] | None = None  # numeric search range; choices search all choices
    log: bool = False  # search on a log scale
    help: str = ""

    def allowed(self, name: str) -> str:
        if self.choices is not None:
            return f"{name} in {{{', '.join(map(str, self.choices))}}}"
        low = "" if self.low is None else f"{self.low} <= "
        high = "" if self.high is None else f" <= {self.high}"
        return f"{low}{name}{high}" if (low or high) else f"any {name}"

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return value in self.choices
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


def param(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[Any, ...] | None = None,
    search: tuple[float, float] | None = None,
    log: bool = False,
    searched: bool = True,
    help: str = "",
) -> Any:
    """A dataclass field with a ``ParamSpec``; the search range defaults to the allowed range
    (``searched=False``: a setting no search should vary)."""
    if searched and search is None and choices is None and low is not None and high is not None:
        search = (low, high)
    spec = ParamSpec(low=low, high=high, choices=choices, search=search, log=log, help=help)
    return field(default=default, metadata={"spec": spec})


@dataclass
class StrategyParams:
    """Base of every parameter dataclass; subclasses add ``param(...)`` fields."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            hint = hints[f.name]
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if not _is_type(value, hint):
                raise ApoptosisError(f"parameter {f.name} must be {type_word(hint)}, got {value!r}")
            spec = f.metadata.get("spec")
            if spec is not None and not spec.contains(value):
                raise ApoptosisError(f"parameter {f.name}={value!r} is out of range: allowed {spec.allowed(f.name)}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any], owner: str) -> StrategyParams:
        """Build from a plain mapping; unknown names are errors that list the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            listing = ", ".join(sorted(known)) or "no parameters"
            raise ApoptosisError(f"{owner} has no parameter {unknown[0]!r}; it has: {listing}")
        try:
            return cls(**values)
        except ApoptosisError as e:
            raise ApoptosisError(f"{owner}: {e}") from None

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Name, type, default, allowed range, search range and help of every parameter."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            spec: ParamSpec = f.metadata.get("spec", ParamSpec())
            rows.append(
                {
                    "name": f.name,
                    "type": type_word(hints[f.name]),
                    "default": f.default,
                    "allowed": spec.allowed(f.name),
                    "low": spec.low,
                    "high": spec.high,
                    "choices": list(spec.choices) if spec.choices is not None else None,
                    "search": list(spec.search) if spec.search is not None else None,
                    "log": spec.log,
                    "help": spec.help,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_type(value: Any, hint: Any) -> bool:
    if hint is float:
        return isinstance(value, float)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def type_word(hint: Any) -> str:
    """How an error message names a type: "an integer", "a number", ..."""
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))
