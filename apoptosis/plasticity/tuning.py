"""Each method's tuned parameters for the benchmark, read from the folders of search studies.

``apoptosis search optuna --objective plasticity`` tunes one method per study and writes the
study's trials to ``trials.csv``; its best complete trial's strategy settings are what the
benchmark then runs that method with (``apoptosis plasticity --tuned DIR``). Only the settings
the trial itself had are taken, so the saved arguments name exactly what tuning chose.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from apoptosis.core.errors import ApoptosisError

TRIALS_FILE = "trials.csv"
Tuned = tuple[tuple[str, str, object], ...]  # (method, parameter, value), sorted


def study_folders(path: Path) -> list[Path]:
    """``path`` itself when it is a study folder, else every study folder directly under it."""
    if (path / TRIALS_FILE).exists():
        return [path]
    found = sorted(p.parent for p in path.glob(f"*/{TRIALS_FILE}")) if path.is_dir() else []
    if not found:
        raise ApoptosisError(f"--tuned {path}: no search study there (a folder with {TRIALS_FILE}, or folders of them)")
    return found


def searched_strategy(study: Path) -> str | None:
    """The strategy a study searched (None for a study of several, or of none)."""
    frame = pd.read_csv(study / TRIALS_FILE)
    names = frame["params_strategy.name"].dropna().unique() if "params_strategy.name" in frame else []
    return str(names[0]) if len(names) == 1 else None


def best_settings(study: Path) -> tuple[str, dict[str, object]]:
    """The strategy of a study's best complete trial and the parameters that trial had."""
    frame = pd.read_csv(study / TRIALS_FILE)
    complete = frame[frame["state"] == "COMPLETE"].sort_values("value") if "state" in frame else frame.iloc[:0]
    if "params_strategy.name" not in frame or complete.empty:
        raise ApoptosisError(f"--tuned {study}: the study has no complete trial of a strategy search")
    best = complete.iloc[0]
    params = {
        column.removeprefix("params_strategy."): _plain(value)
        for column, value in best.items()
        if column.startswith("params_strategy.") and column != "params_strategy.name" and not _missing(value)
    }
    return str(best["params_strategy.name"]), params


def read_tuned(paths: list[Path], methods: tuple[str, ...]) -> Tuned:
    """The best parameters of every study under ``paths`` whose strategy is one of ``methods``
    (a method ``A+B`` takes A's study); a method tuned by two studies is an error."""
    wanted = {method.partition("+")[0] for method in methods}
    chosen: dict[str, tuple[Path, dict[str, object]]] = {}
    for study in (s for path in paths for s in study_folders(path)):
        if searched_strategy(study) not in wanted:  # another method's study, or not a one-method search
            continue
        strategy, params = best_settings(study)
        if strategy in chosen:
            raise ApoptosisError(f"--tuned: {strategy} is tuned by two studies, {chosen[strategy][0]} and {study}")
        chosen[strategy] = (study, params)
    return tuple(sorted((s, k, v) for s, (_, params) in chosen.items() for k, v in params.items()))


def tuned_params(tuned: Tuned, strategy: str) -> dict[str, object]:
    return {key: value for name, key, value in tuned if name == strategy}


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: object) -> object:
    """numpy scalars from pandas as Python values (for JSON and the config); a whole float as an
    int, since a column with gaps turns an integer parameter into floats (a float parameter
    takes an int back as a float)."""
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value
