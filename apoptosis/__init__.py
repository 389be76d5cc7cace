"""neural-apoptosis: neuron-level evolution inside a char-level transformer.

The weakest MLP neurons die every few hundred steps and are reborn from fit parents; see
docs/architecture.md for the packages and the data flow.

Modules moved when the code was split into packages; their old names (``apoptosis.strategy``,
``apoptosis.trainer``, ...) still import the same module, so plugins written against them keep
working. New code uses the new names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

MOVED = {
    **{
        f"apoptosis.{name}": f"apoptosis.core.{name}"
        for name in (
            "config",
            "corpora",
            "data",
            "errors",
            "fitness",
            "io",
            "lineage",
            "model",
            "params",
            "population",
            "registry",
            "strategy",
        )
    },  # fmt: skip
    "apoptosis.trainer": "apoptosis.training",
    "apoptosis.damage": "apoptosis.lazarus.damage",
    "apoptosis.recovery": "apoptosis.lazarus.recovery",
    "apoptosis.compare": "apoptosis.analysis.compare",
    "apoptosis.report": "apoptosis.analysis.report",
    "apoptosis.continual_measures": "apoptosis.continual.measures",
    "apoptosis.strategies.lazarus": "apoptosis.strategies.followers.lazarus",
    "apoptosis.strategies.replay": "apoptosis.strategies.followers.replay",
    "apoptosis.strategies.stability_first": "apoptosis.strategies.followers.stability_first",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module that now lives at the new one (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name])
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module) -> None:
        """The module is already executed under its new name."""


sys.meta_path.append(_MovedModules())
