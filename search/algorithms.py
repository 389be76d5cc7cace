"""Optuna's samplers and pruners by name, always built with an explicit seed or budget."""

from __future__ import annotations

import warnings

import optuna

from apoptosis.core.errors import ApoptosisError

SAMPLERS = ("tpe", "random", "cmaes", "gp", "qmc", "grid")
PRUNERS = ("median", "hyperband", "none")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler; several workers pass different seeds so they do not draw the same points."""
    if name not in SAMPLERS:
        raise ApoptosisError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    with warnings.catch_warnings():  # some samplers are marked experimental; the choice is the user's
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "cmaes":
            # CMA-ES handles the numeric settings; a categorical (e.g. the strategy) falls back to random.
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=5, warn_independent_sampling=False)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=5)
        if name == "grid":  # the study enqueues every point of the grid itself (search.space.grid_points)
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)


def make_pruner(name: str, max_resource: int, min_resource: int) -> optuna.pruners.BasePruner:
    """``median``: stop a trial whose intermediate loss is worse than the median of earlier
    trials at the same step (after 5 trials and ``min_resource`` steps); ``hyperband`` with
    the given resource range (steps); ``none`` runs every trial to the end."""
    if name not in PRUNERS:
        raise ApoptosisError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=min_resource)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource)
    return optuna.pruners.NopPruner()
