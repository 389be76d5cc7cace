"""What a search may change in a run, read from the strategy registry.

A *setting* is a dotted config key (``strategy.name``, ``strategy.prune_rate``, ``trainer.lr``).
Every search turns one trial into a dict of settings applied to a base config, so the best trial
of any search becomes a ``best.toml`` that ``apoptosis train --config`` accepts. Optuna searches
ranges (``SearchSpace``); Taguchi tries listed levels (``LevelSpace``). A plugin strategy is
searchable with no extra code: its ``param(...)`` declarations carry the ranges.
"""

from __future__ import annotations

import copy
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from apoptosis.core.config import RunConfig
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.params import ParamSpec

# Run settings outside the strategy that a search may tune (``--tune trainer.lr,...``), with the
# range it explores. Strategy parameters take their ranges from their own declarations.
TUNABLE_SETTINGS: dict[str, BaseDistribution] = {
    "trainer.lr": FloatDistribution(1e-4, 3e-3, log=True),
    "trainer.min_lr": FloatDistribution(1e-5, 3e-4, log=True),
    "trainer.weight_decay": FloatDistribution(0.0, 0.3),
    "trainer.warmup_steps": IntDistribution(0, 300),
    "trainer.batch_size": IntDistribution(8, 32, log=True),
    "trainer.grad_clip": FloatDistribution(0.25, 2.0, log=True),
    "model.dropout": FloatDistribution(0.0, 0.3),
    "fitness.ema_decay": FloatDistribution(0.9, 0.999),
}


def fitness_metric_distribution() -> CategoricalDistribution:
    from apoptosis.core.registry import FITNESS_METRICS

    return CategoricalDistribution(FITNESS_METRICS.names())


def tunable_distribution(key: str) -> BaseDistribution:
    """The search range of a non-strategy setting; an unknown one lists those that are known."""
    if key == "fitness.metric":
        return fitness_metric_distribution()
    if key not in TUNABLE_SETTINGS:
        known = ", ".join([*TUNABLE_SETTINGS, "fitness.metric"])
        raise ApoptosisError(f"--tune {key!r} is not a tunable setting; tunable: {known}")
    return TUNABLE_SETTINGS[key]


def strategy_distributions(strategy: str) -> dict[str, BaseDistribution]:
    """Each searchable parameter of a strategy with the range its declaration gives."""
    from apoptosis.core.strategy import build_strategy

    params_cls = type(build_strategy(strategy).params)
    hints = typing.get_type_hints(params_cls)
    out: dict[str, BaseDistribution] = {}
    for f in params_cls.__dataclass_fields__.values():
        dist = spec_distribution(f.metadata.get("spec"), hints[f.name])
        if dist is not None:
            out[f.name] = dist
    return out


def spec_distribution(spec: ParamSpec | None, hint: Any) -> BaseDistribution | None:
    """An Optuna distribution for a declared parameter, or None when it is not searched."""
    if spec is None:
        return CategoricalDistribution([True, False]) if hint is bool else None
    if spec.choices is not None:
        return CategoricalDistribution(list(spec.choices))
    if hint is bool:
        return CategoricalDistribution([True, False])
    if spec.search is None:
        return None
    low, high = spec.search
    if hint is int:
        return IntDistribution(int(low), int(high), log=spec.log)
    return FloatDistribution(float(low), float(high), log=spec.log)


def setting_distribution(key: str, strategy: str) -> BaseDistribution:
    """The range of any setting a search may change (a strategy's parameter or a tunable)."""
    if key.startswith("strategy."):
        name = key.removeprefix("strategy.")
        dists = strategy_distributions(strategy)
        if name not in dists:
            raise ApoptosisError(
                f"strategy {strategy!r} has no searchable parameter {name!r}; it has: {', '.join(dists) or 'none'}"
            )
        return dists[name]
    return tunable_distribution(key)


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask the trial for one value of ``dist`` through Optuna's public suggest API."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    raise TypeError(f"unsupported distribution {dist!r}")


def apply_settings(base: RunConfig, settings: dict[str, Any]) -> RunConfig:
    """A copy of ``base`` with every setting applied and checked (a strategy change drops the
    old strategy's parameters)."""
    from apoptosis.core.strategy import build_strategy

    config = copy.deepcopy(base)
    name = settings.get("strategy.name", config.strategy.name)
    if name != config.strategy.name:
        config.strategy.name, config.strategy.params = name, {}
    for key, value in settings.items():
        if key != "strategy.name":
            config.set(key, value, source="search")
    config.validate()
    build_strategy(config.strategy.name, config.strategy.params)
    return config


@dataclass
class SearchSpace:
    """Ranges for Optuna: the strategy (a categorical when there are several), each strategy's
    own parameters (conditional on it, named ``<strategy>.<param>``) and shared settings."""

    strategies: list[str]
    strategy_dims: dict[str, dict[str, BaseDistribution]]
    shared_dims: dict[str, BaseDistribution] = field(default_factory=dict)
    strategy_fixed: dict[str, dict[str, Any]] = field(default_factory=dict)  # not searched, per strategy

    @classmethod
    def from_registry(
        cls, strategies: list[str], tune: list[str], fixed: dict[str, Any], only: list[str] | None = None
    ) -> SearchSpace:
        """Every searchable parameter of each strategy (or only those named in ``only``: the
        others keep their defaults), except those ``fixed`` (``--set``), plus the ``tune`` settings."""
        from apoptosis.core.strategy import build_strategy

        if not strategies:
            raise ApoptosisError("--strategies needs at least one strategy name")
        declared = {s: set(build_strategy(s).params.to_dict()) for s in strategies}
        unused = [k for k in fixed if not any(k in names for names in declared.values())]
        if unused:
            raise ApoptosisError(f"no searched strategy has parameter {unused[0]!r} (--set strategy.{unused[0]})")
        searchable = {s: strategy_distributions(s) for s in strategies}
        unknown = [k for k in only or [] if not any(k in dims for dims in searchable.values())]
        if unknown:
            names = sorted({k for dims in searchable.values() for k in dims})
            raise ApoptosisError(
                f"--params {unknown[0]!r} is not a searchable parameter of {', '.join(strategies)}; "
                f"searchable: {', '.join(names) or '(none)'}"
            )
        dims = {
            s: {k: d for k, d in searchable[s].items() if k not in fixed and (only is None or k in only)}
            for s in strategies
        }
        kept = {s: {k: v for k, v in fixed.items() if k in declared[s]} for s in strategies}
        for s in strategies:
            build_strategy(s, kept[s])  # a fixed value out of range fails now, not in every trial
        return cls(list(strategies), dims, {key: tunable_distribution(key) for key in tune}, kept)

    @classmethod
    def from_levels(cls, levels: dict[str, list[Any]], base: RunConfig) -> SearchSpace:
        """The ranges spanned by a factors file's levels (min..max; categorical for words), so an
        Optuna search and a Taguchi array explore the same region."""
        strategies = [str(s) for s in levels.get("strategy.name", [base.strategy.name])]
        strategy_dims: dict[str, dict[str, BaseDistribution]] = {s: {} for s in strategies}
        shared: dict[str, BaseDistribution] = {}
        for key, values in levels.items():
            if key == "strategy.name":
                continue
            if key.startswith("strategy."):
                for s in strategies:
                    strategy_dims[s][key.removeprefix("strategy.")] = _span(values, setting_distribution(key, s))
            else:
                shared[key] = _span(values, _known_distribution(key))
        return cls(strategies, strategy_dims, shared)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        strategy = self.strategies[0]
        if len(self.strategies) > 1:
            strategy = trial.suggest_categorical("strategy", self.strategies)
        settings: dict[str, Any] = {"strategy.name": strategy}
        settings.update({f"strategy.{k}": v for k, v in self.strategy_fixed.get(strategy, {}).items()})
        for name, dist in self.strategy_dims[strategy].items():
            settings[f"strategy.{name}"] = suggest(trial, f"{strategy}.{name}", dist)
        for key, dist in self.shared_dims.items():
            settings[key] = suggest(trial, key, dist)
        return settings

    def describe(self) -> dict[str, Any]:
        """A JSON-able description, stored with the study so a resumed search can check it."""
        dims = {f"{s}.{k}": repr(d) for s, ds in self.strategy_dims.items() for k, d in ds.items()}
        shared = {k: repr(d) for k, d in self.shared_dims.items()}
        return {"strategies": self.strategies, "dims": dims, "shared": shared, "fixed": self.strategy_fixed}


@dataclass
class LevelSpace:
    """Listed levels for Taguchi: a trial takes one level of each factor (the coordinator
    enqueues the array's rows as fixed parameters, so a trial never picks levels itself)."""

    levels: dict[str, list[Any]]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {key: trial.suggest_categorical(key, values) for key, values in self.levels.items()}

    def describe(self) -> dict[str, Any]:
        return {"levels": self.levels}


@dataclass
class Factors:
    """A factors file: the levels of each factor and fixed settings for every run.

    ``[factors]`` maps a setting to its levels; ``[base]`` (optional) fixes other settings::

        [factors]
        "strategy.prune_rate" = [0.05, 0.1, 0.2]
        "trainer.lr" = [5e-4, 1e-3, 2e-3]
        [base]
        "strategy.name" = "standard"
        "model.n_layer" = 2
    """

    levels: dict[str, list[Any]]
    base: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml_file(cls, path: str | Path) -> Factors:
        path = Path(path)
        if not path.is_file():
            raise ApoptosisError(f"factors file not found: {path}")
        try:
            d = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ApoptosisError(f"factors file {path} is not valid TOML: {e}") from None
        unknown = sorted(set(d) - {"factors", "base"})
        if unknown:
            raise ApoptosisError(f"factors file {path}: unknown table [{unknown[0]}]; allowed: [factors], [base]")
        levels = d.get("factors", {})
        if not levels:
            raise ApoptosisError(f'factors file {path} has no [factors] table, e.g. "trainer.lr" = [5e-4, 1e-3]')
        for key, values in levels.items():
            if not isinstance(values, list) or len(values) < 2 or len(set(map(repr, values))) != len(values):
                raise ApoptosisError(f"factors file {path}: {key} must list 2 or more distinct levels, got {values!r}")
        return cls({k: list(v) for k, v in levels.items()}, dict(d.get("base", {})))

    def base_config(self, base: RunConfig) -> RunConfig:
        """``base`` with the fixed settings applied, every level of every factor checked."""
        config = apply_settings(base, self.base)
        strategies = self.levels.get("strategy.name", [config.strategy.name])
        for strategy in strategies:
            for key, values in self.levels.items():
                for value in values:
                    try:
                        apply_settings(config, {"strategy.name": strategy, key: value})
                    except ApoptosisError as e:
                        raise ApoptosisError(f"factor {key} = {value!r}: {e}") from None
        return config


def _known_distribution(key: str) -> BaseDistribution | None:
    try:
        return tunable_distribution(key)
    except ApoptosisError:
        return None


def _span(values: list[Any], known: BaseDistribution | None) -> BaseDistribution:
    """The range from the smallest to the largest level (on a log scale where the setting's
    declared range is, or where all levels are positive and span 10x or more)."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if not numbers:
        return CategoricalDistribution(values)
    low, high = min(values), max(values)
    log = getattr(known, "log", False) or (low > 0 and high / low >= 10)
    if all(isinstance(v, int) for v in values) and not isinstance(known, FloatDistribution):
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def grid_points(space: SearchSpace, trials: int) -> list[dict[str, Any]]:
    """``trials`` values of the one searched parameter, at the centres of equal bins of its range
    (log bins where the range is log): an even cover for a small budget, where a random first
    point or a quasi-random sequence can leave two of three trials side by side. Integers are
    rounded and repeats dropped."""
    dims = [(f"{s}.{k}", d) for s, ds in space.strategy_dims.items() for k, d in ds.items()]
    dims += list(space.shared_dims.items())
    if len(space.strategies) != 1 or len(dims) != 1 or isinstance(dims[0][1], CategoricalDistribution):
        searched = ", ".join(name for name, _ in dims) or "(none)"
        raise ApoptosisError(
            f"--sampler grid searches one numeric parameter of one strategy (here: {searched}); "
            "choose it with --params, or use another sampler"
        )
    name, dist = dims[0]
    low, high = float(dist.low), float(dist.high)
    points: list[Any] = []
    for j in range(trials):
        u = (j + 0.5) / trials
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if dist.log else low + u * (high - low)
        value = round(value) if isinstance(dist, IntDistribution) else value
        if value not in points:
            points.append(value)
    return [{name: value} for value in points]


def unit_position(value: Any, dist: BaseDistribution) -> float:
    """Where ``value`` lies in ``dist`` on [0, 1] (log scale where the range is log); for a
    categorical, 0 for its first choice and 1 otherwise."""
    if isinstance(dist, CategoricalDistribution):
        return 0.0 if value == dist.choices[0] else 1.0
    low, high = float(dist.low), float(dist.high)
    if high == low:
        return 0.0
    if dist.log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (float(value) - low) / (high - low)
