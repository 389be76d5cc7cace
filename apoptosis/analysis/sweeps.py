"""Sweeps inside a comparison: labels ``A@X=v`` that differ in one numeric setting of A, drawn as
the final validation loss against that setting, beside the baseline's."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from apoptosis.analysis.intervals import half_width
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
    """sweep.png: per swept setting, one panel of the final validation loss against its values
    (mean and 95% interval over seeds), the ``baseline`` strategy's mean and 95% interval as a
    line and band. Without a sweep (two values or more of one setting of one strategy) no
    figure is drawn, a stale one is removed, and the answer is False."""
    points = sweep_points(frame)
    points = points[points.groupby("sweep")["value"].transform("nunique") >= 2]
    if points.empty:
        path.unlink(missing_ok=True)
        return False
    import matplotlib.pyplot as plt
    import seaborn as sns

    from apoptosis.training.run_plots import save_figure

    sweeps = list(dict.fromkeys(points["sweep"]))
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4.5), squeeze=False)
    base_loss = frame[frame["strategy"] == baseline]["final_val_loss"]
    for ax, sweep in zip(axes[0], sweeps, strict=True):
        sns.lineplot(data=points[points["sweep"] == sweep], x="value", y="final_val_loss", errorbar=("ci", 95),
                     marker="o", ax=ax, label=sweep.split(": ")[0])  # fmt: skip
        if len(base_loss):
            ax.axhline(base_loss.mean(), color="black", linewidth=1, label=baseline)
            spread = half_width(base_loss)
            if not math.isnan(spread):  # one seed: no band
                ax.axhspan(base_loss.mean() - spread, base_loss.mean() + spread, color="grey", alpha=0.2)
        ax.set_xlabel(sweep.split(": ")[1])
        ax.legend()
    fig.suptitle(f"final validation loss (mean, 95% interval over seeds); {baseline}: line and band")
    save_figure(fig, path)
    return True
