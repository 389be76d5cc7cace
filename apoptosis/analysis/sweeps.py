"""Sweeps inside a comparison: labels ``A@X=v`` that differ in one numeric setting of A, drawn as
the final validation loss against that setting, beside the baseline's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from scipy import stats

from apoptosis.core.config import split_variant


def sweep_points(frame: pd.DataFrame) -> pd.DataFrame:
    """The runs of labels ``A@X=v`` with one numeric setting of their own, as rows (strategy A,
    setting X, value v, seed, final_val_loss): the sweeps a comparison holds."""
    rows = []
    for row in frame.itertuples():
        base, own = split_variant(row.strategy)
        if len(own) == 1:
            ((key, value),) = own.items()
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append({"sweep": f"{base}: {key}", "value": value, "seed": row.seed,
                             "final_val_loss": row.final_val_loss})  # fmt: skip
    return pd.DataFrame(rows, columns=["sweep", "value", "seed", "final_val_loss"])


def plot_sweeps(frame: pd.DataFrame, path: Path, baseline: str = "none") -> bool:
    """sweep.png: final validation loss against each swept setting (mean and 95% interval over
    seeds), the ``baseline`` strategy's mean and 95% interval as a band; False when the comparison holds no sweep
    (two values or more of one setting of one strategy)."""
    points = sweep_points(frame)
    points = points[points.groupby("sweep")["value"].transform("nunique") >= 2]
    if points.empty:
        return False
    import matplotlib.pyplot as plt
    import seaborn as sns

    from apoptosis.training.run_plots import save_figure

    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.lineplot(data=points, x="value", y="final_val_loss", hue="sweep", errorbar=("ci", 95), marker="o", ax=ax)
    baseline = frame[frame["strategy"] == baseline]["final_val_loss"]
    if len(baseline):
        ax.axhline(baseline.mean(), color="black", linewidth=1, label=baseline)
        if len(baseline) > 1:
            low, high = stats.t.interval(0.95, len(baseline) - 1, loc=baseline.mean(), scale=stats.sem(baseline))
            ax.axhspan(low, high, color="grey", alpha=0.2)
        ax.legend()
    ax.set_xlabel("setting")
    ax.set_title(f"final validation loss (mean, 95% interval over seeds); {baseline}: line and band")
    save_figure(fig, path)
    return True
