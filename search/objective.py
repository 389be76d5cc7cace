"""What a search minimises: a real training run, the plasticity benchmark's excess loss, or a cheap
analytic function with a known optimum.

Both take a trial's settings and its seeds, record each seed's value on the trial (Taguchi's
signal-to-noise ratio needs the replicates) and report intermediate values, so a pruner can stop
a weak trial early.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from apoptosis.analysis.compare import PlannedRun
from apoptosis.core.config import RunConfig
from apoptosis.plasticity.benchmark import TASKS_FILE, CellRun, Settings
from apoptosis.search.space import apply_settings, setting_distribution, unit_position


class Objective(ABC):
    """One method: the value of a trial's settings, mean over ``seeds`` (smaller is better)."""

    @abstractmethod
    def __call__(self, trial: optuna.Trial, settings: dict[str, Any], seeds: list[int]) -> float: ...


@dataclass
class TrainingObjective(Objective):
    """Final validation loss of a run per seed; each run's folder is kept under ``trials_dir``.
    Intermediate validation losses are reported at ``seed_index * steps + step``, so every
    trial reports the same step numbers and the pruner compares like with like."""

    base: RunConfig
    steps: int
    trials_dir: Path

    def __call__(self, trial: optuna.Trial, settings: dict[str, Any], seeds: list[int]) -> float:
        from apoptosis.training import Trainer

        config = apply_settings(self.base, settings)
        config.trainer.steps = self.steps
        values = []
        for i, seed in enumerate(seeds):
            config.trainer.seed = seed
            run_dir = self.trials_dir / f"{trial.number:04d}-s{seed}"
            trial.set_user_attr("run_dir", str(run_dir.parent / f"{trial.number:04d}-s*"))

            def report(step: int, val_loss: float, offset: int = i * self.steps) -> None:
                trial.report(val_loss, offset + step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {offset + step} with val loss {val_loss:.4f}")

            summary = Trainer(config, run_dir, show_progress=False, on_evaluate=report).fit()
            values.append(summary["final_val_loss"])
            trial.set_user_attr("seed_values", values)
        return float(np.mean(values))


@dataclass
class PlasticityObjective(Objective):
    """How well a method keeps learning: one cell of the plasticity benchmark per seed (its tasks
    in sequence on the same weights), valued by the mean excess loss over the last quarter of the
    tasks, each measured on the task just trained, the measure of Continual Backprop's figures.
    The tasks are drawn from seed ``TASK_SEED_OFFSET + seed``, so tuning never sees the tasks of
    a benchmark run with seeds 1..K. The excess loss of every task is reported, for the pruner."""

    benchmark: Settings
    trials_dir: Path

    TASK_SEED_OFFSET = 1000

    def __call__(self, trial: optuna.Trial, settings: dict[str, Any], seeds: list[int]) -> float:
        config = apply_settings(self.benchmark.base_config(), settings)
        config.trainer.min_lr = config.trainer.lr  # the benchmark's learning rate is constant, tuned or not
        tasks, last = self.benchmark.tasks, max(1, self.benchmark.tasks // 4)
        values = []
        for i, seed in enumerate(seeds):
            task_seed = self.TASK_SEED_OFFSET + seed
            config.trainer.seed = task_seed
            run_dir = self.trials_dir / f"{trial.number:04d}-s{task_seed}"
            trial.set_user_attr("run_dir", str(run_dir.parent / f"{trial.number:04d}-s*"))
            rows = run_dir / TASKS_FILE

            def report(rows: Path = rows, offset: int = i * tasks, task_seed: int = task_seed) -> None:
                frame = pd.read_csv(rows)
                trial.report(float(frame["excess_loss"].iloc[-1]), offset + len(frame))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at task {len(frame)} of seed {task_seed}")

            cell = PlannedRun(config.strategy.name, task_seed, run_dir, config)
            CellRun(cell, self.benchmark, self.trials_dir, on_row=report).run()
            values.append(float(pd.read_csv(rows)["excess_loss"].tail(last).mean()))
            trial.set_user_attr("seed_values", values)
        return float(np.mean(values))


@dataclass
class SyntheticObjective(Objective):
    """An analytic stand-in for a training run, for tests and for measuring search efficiency.

    value = 1 + sum over numeric settings of (u - 0.3)^2, where u is the setting's position in
    its search range (log scale where the range is log), + 0.25 for each categorical setting
    not at its first choice, + 0.25 unless the strategy is ``standard``; plus Gaussian noise of
    sd ``noise`` per seed. Known optimum: 1.0 at ``standard`` with every number 30% into its
    range and every categorical at its first choice. ``seconds`` sleeps that long per trial,
    spread over its intermediate reports, to stand in for training time.
    """

    noise: float = 0.02
    seconds: float = 0.0
    reports: int = 10

    OPTIMUM_POSITION = 0.3

    def clean_value(self, settings: dict[str, Any]) -> float:
        strategy = settings.get("strategy.name", "standard")
        value = 1.0 + (0.0 if strategy == "standard" else 0.25)
        for key, setting in settings.items():
            if key == "strategy.name":
                continue
            dist = setting_distribution(key, strategy)
            u = unit_position(setting, dist)
            is_categorical = isinstance(dist, optuna.distributions.CategoricalDistribution)
            value += 0.25 * u if is_categorical else (u - self.OPTIMUM_POSITION) ** 2
        return value

    def __call__(self, trial: optuna.Trial, settings: dict[str, Any], seeds: list[int]) -> float:
        clean = self.clean_value(settings)
        for r in range(1, self.reports + 1):
            time.sleep(self.seconds / self.reports)
            trial.report(clean + 0.5 / r, r)  # a learning curve that settles on the value
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at report {r}")
        values = [clean + self.noise * float(np.random.default_rng([seed, trial.number]).normal()) for seed in seeds]
        trial.set_user_attr("seed_values", values)
        return float(np.mean(values))
