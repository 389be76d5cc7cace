"""``apoptosis search compare``: Taguchi against Optuna's TPE and random search on one objective,
one budget and the same seeds.

Each method's recommendation is re-measured on fresh seeds, because the best of N noisy trials is
an optimistic estimate of itself; on the synthetic objective the true (noise-free) value of the
recommendation is known as well.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from rich.console import Console
from rich.table import Table

from apoptosis.core.config import RunConfig
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write_text
from apoptosis.search.arrays import design
from apoptosis.search.objective import SyntheticObjective
from apoptosis.search.optuna_search import run_optuna
from apoptosis.search.space import Factors, LevelSpace, SearchSpace
from apoptosis.search.study import StudySpec, best_trial, build_objective
from apoptosis.search.taguchi import run_taguchi

METHODS = ("taguchi", "tpe", "random")
FRESH_SEED_OFFSET = 1000  # re-measurement seeds never overlap the search's own seeds


def compare_searches(
    factors: Factors,
    base: RunConfig,
    objective: str,
    steps: int,
    seeds: int,
    array_name: str | None,
    trials: int | None,
    repeats: int,
    out_dir: Path,
    console: Console,
    synthetic: SyntheticObjective | None = None,
) -> pd.DataFrame:
    """One row per (method, repeat): trials used, best value found, re-measured value, wall time."""
    if repeats < 1:
        raise ApoptosisError(f"--repeats must be >= 1, got {repeats}")
    if (out_dir / "search_compare.csv").exists():
        raise ApoptosisError(f"{out_dir} already holds a search comparison: choose another --name")
    synthetic = synthetic or SyntheticObjective()
    array, _ = design([len(v) for v in factors.levels.values()], array_name)
    budget = trials or array.runs + 1  # Taguchi spends its rows plus one confirmation run
    quiet = Console(quiet=True)
    rows = []
    for repeat in range(repeats):
        run_seeds = list(range(repeat * seeds + 1, repeat * seeds + seeds + 1))
        for method in METHODS:
            spec = StudySpec(
                name=f"{method}-r{repeat}",
                study_dir=out_dir / f"{method}-r{repeat}",
                kind="taguchi" if method == "taguchi" else "optuna",
                objective=objective,
                base=base,
                steps=steps,
                seeds=run_seeds,
                space=(
                    LevelSpace(factors.levels) if method == "taguchi" else SearchSpace.from_levels(factors.levels, base)
                ),
                sampler=method if method != "taguchi" else "random",
                sampler_seed=repeat,
                pruner="none",
                synthetic=synthetic,
            )
            started = time.perf_counter()
            if method == "taguchi":
                result = run_taguchi(spec, array.name, 1, quiet)
                confirmation = result.confirmation
                settings, found, used = confirmation["levels"], confirmation["mean"], array.runs + 1
            else:
                study = run_optuna(spec, budget, 1, quiet)
                best = best_trial(study)
                settings, found, used = best.user_attrs["settings"], best.value, budget
            wall = time.perf_counter() - started
            fresh = [FRESH_SEED_OFFSET + s for s in run_seeds]
            row: dict[str, Any] = {
                "method": method,
                "repeat": repeat,
                "trials": used,
                "best_found": found,
                "remeasured": remeasure(spec, settings, fresh),
                "wall_s": wall,
                "settings": settings,
            }
            if objective == "synthetic":
                row["true_value"] = synthetic.clean_value(settings)
            rows.append(row)
            console.log(
                f"{method} repeat {repeat}: best found {found:.4f}, re-measured {row['remeasured']:.4f} "
                f"({used} trials, {wall:.1f} s)"
            )
    frame = pd.DataFrame(rows)
    atomic_write_text(out_dir / "search_compare.csv", frame.to_csv(index=False))
    return frame


def remeasure(spec: StudySpec, settings: dict[str, Any], seeds: list[int]) -> float:
    """The objective at ``settings`` on fresh seeds, in a throwaway in-memory study."""
    objective = build_objective(spec)
    if hasattr(objective, "trials_dir"):
        objective.trials_dir = spec.study_dir / "remeasure"
    study = optuna.create_study(direction="minimize")
    study.optimize(lambda trial: objective(trial, settings, seeds), n_trials=1)
    return study.best_value


def compare_table(frame: pd.DataFrame, title: str) -> Table:
    """Mean ± sd over repeats per method."""
    table = Table(title=title, title_justify="left")
    columns = ["best_found", "remeasured", *(["true_value"] if "true_value" in frame else []), "wall_s"]
    table.add_column("method")
    table.add_column("trials", justify="right")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for method in METHODS:
        group = frame[frame["method"] == method]
        cells = []
        for column in columns:
            values = group[column].to_numpy(dtype=float)
            digits = 1 if column == "wall_s" else 4
            spread = f" ± {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.{digits}f}{spread}")
        table.add_row(method, f"{group['trials'].iloc[0]}", *cells)
    return table
