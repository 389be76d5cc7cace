"""Name -> class registries for plugins (strategies, fitness metrics).

A decorator fills a private dict (as timm's model registry does); entry points in a group fill
it lazily (as pytest/pluggy do), so a third-party package adds a plugin by declaring, in its own
``pyproject.toml``::

    [project.entry-points."apoptosis.strategies"]
    my_strategy = "my_package.module:MyStrategy"

A plugin that fails to import is skipped with a warning naming it; the others still work.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from apoptosis.core.errors import ApoptosisError

T = TypeVar("T")


class PluginWarning(UserWarning):
    """A plugin declared through an entry point could not be loaded."""


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, T] = {}
        self._failed: set[str] = set()  # entry points that failed: warned about once
        self._all_plugins_loaded = False

    def register(self, obj: T | None = None, *, name: str | None = None) -> T | Callable[[T], T]:
        """Decorator: ``@REGISTRY.register`` (uses ``obj.name``) or ``@REGISTRY.register(name=...)``."""

        def add(o: T) -> T:
            key = name or getattr(o, "name", None)
            if not key:
                raise ValueError(f"a {self.kind} needs a name to be registered: {o!r}")
            if key in self._entries and self._entries[key] is not o:
                existing = self._entries[key]
                if getattr(existing, "__qualname__", None) != getattr(o, "__qualname__", None):
                    raise ValueError(f"{self.kind} {key!r} is already registered by {existing!r}")
            self._entries[key] = o
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        """The plugin called ``name``; loads only its entry point if it is not registered yet."""
        if name not in self._entries:
            for ep in self._entry_points():
                if ep.name == name and name not in self._failed:
                    self._load(ep)
        if name not in self._entries:
            self._load_all()
        if name not in self._entries:
            raise ApoptosisError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        self._load_all()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def _entry_points(self) -> list[EntryPoint]:
        return sorted(entry_points(group=self.group), key=lambda ep: ep.name)

    def _load_all(self) -> None:
        if self._all_plugins_loaded:
            return
        self._all_plugins_loaded = True
        for ep in self._entry_points():
            if ep.name not in self._entries and ep.name not in self._failed:
                self._load(ep)

    def _load(self, ep: EntryPoint) -> None:
        try:
            obj = ep.load()
        except Exception as e:  # any failure of third-party code must not break the others
            self._failed.add(ep.name)
            warnings.warn(
                f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to load and is skipped: {type(e).__name__}: {e}",
                PluginWarning,
                stacklevel=3,
            )
            return
        self._entries.setdefault(ep.name, obj)

    def forget_plugins(self) -> None:
        """Look at the entry points again on next use (after installing a plugin at run time)."""
        self._all_plugins_loaded = False
        self._failed.clear()


STRATEGIES: Registry[type] = Registry("strategy", "apoptosis.strategies")
FITNESS_METRICS: Registry[type] = Registry("fitness metric", "apoptosis.fitness_metrics")

register_strategy = STRATEGIES.register
register_fitness_metric = FITNESS_METRICS.register
