"""Seaborn plots of a study: optimisation history, parameter importances, slices."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pandas as pd


def plot_study(study: optuna.Study, frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """history.png always; importances.png and slices.png when there is something to show.
    Returns the files written."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from apoptosis.training.run_plots import save_figure  # first: it selects the file-only backend

    complete = frame[frame["state"] == "COMPLETE"].sort_values("number")
    if complete.empty:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.scatterplot(data=complete, x="number", y="value", ax=ax, label="trial")
    ax.plot(complete["number"], complete["value"].cummin(), color="C1", drawstyle="steps-post", label="best so far")
    ax.set(xlabel="trial", ylabel="objective (lower is better)", title=f"{study.study_name}: optimisation history")
    ax.legend()
    save_figure(fig, out_dir / "history.png")
    written.append(out_dir / "history.png")

    importances = _importances(study)
    if importances:
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(importances) + 1.5))
        data = pd.DataFrame({"parameter": list(importances), "importance": list(importances.values())})
        sns.barplot(data=data, x="importance", y="parameter", ax=ax, color="C0")
        ax.set_title("parameter importances (fANOVA, completed trials)")
        save_figure(fig, out_dir / "importances.png")
        written.append(out_dir / "importances.png")

    params = [c for c in complete.columns if c.startswith("params_") and complete[c].nunique(dropna=True) > 1]
    if params:
        long = complete.melt(id_vars=["number", "value"], value_vars=params, var_name="parameter", value_name="setting")
        long = long.dropna(subset=["setting"])
        long["parameter"] = long["parameter"].str.removeprefix("params_")
        long["setting"] = long["setting"].map(lambda v: v if isinstance(v, int | float) else str(v))
        grid = sns.FacetGrid(long, col="parameter", col_wrap=min(3, len(params)), sharex=False, height=2.6)
        grid.map_dataframe(_slice_panel)
        grid.set_titles("{col_name}")
        grid.figure.suptitle("slices: objective against each parameter", y=1.02)
        save_figure(grid.figure, out_dir / "slices.png")
        written.append(out_dir / "slices.png")
    return written


def _slice_panel(data: pd.DataFrame, **kwargs) -> None:
    import matplotlib.pyplot as plt
    import seaborn as sns

    numeric = pd.to_numeric(data["setting"], errors="coerce")
    if numeric.notna().all():
        sns.scatterplot(x=numeric, y=data["value"], hue=data["number"], palette="viridis", legend=False, ax=plt.gca())
    else:
        sns.stripplot(x=data["setting"].astype(str), y=data["value"], ax=plt.gca())
    plt.gca().set(xlabel="", ylabel="objective")


def _importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances over the parameters every completed trial has; empty when there are
    too few trials to say anything."""
    if len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) < 3:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. no parameter shared by all trials, or one value only
        return {}
