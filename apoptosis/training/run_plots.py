"""Seaborn figures of a run, written next to its data (``loss.png``, ``ages.png``, ``lineage.png``)."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from apoptosis.core.io import atomic_write  # noqa: E402
from apoptosis.training.lineage_plots import plot_lineage  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def plot_losses(
    metrics: pd.DataFrame, event_steps: list[int], title: str, phase_steps: list[int] | None = None
) -> plt.Figure:
    """Training loss (per logged window) and validation loss, with a dotted line at each event;
    in continual training the validation loss of every corpus, and a solid line at each phase end."""
    curves = ["train_loss", "val_loss"] if not phase_steps else ["train_loss"]
    curves += [c for c in metrics.columns if c.startswith("val_") and c != "val_loss"]
    long = metrics.melt(id_vars="step", value_vars=curves, var_name="curve", value_name="loss")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.lineplot(data=long.dropna(), x="step", y="loss", hue="curve", marker=None, ax=ax)
    for step in sorted(set(event_steps)):
        ax.axvline(step, color="grey", linestyle=":", linewidth=1)
    for step in sorted(set(phase_steps or [])):
        ax.axvline(step, color="black", linestyle="-", linewidth=1)
    ax.set_title(title)
    return fig


def plot_ages(lineage: pd.DataFrame, step: int, title: str) -> plt.Figure:
    """Ages of the living neurons at ``step``, one histogram per layer."""
    living = lineage[lineage["death_step"].isna()].copy()
    living["age"] = step - living["birth_step"]
    living["layer"] = living["layer"].astype(str)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.histplot(data=living, x="age", hue="layer", multiple="stack", bins=20, binrange=(0, max(step, 1)), ax=ax)
    ax.set_title(title)
    return fig


def plot_run(run_dir: str | Path) -> None:
    from apoptosis.training.run_folder import read_events, read_metrics

    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    events = read_events(run_dir)
    name = run_dir.name
    surgery = [e["step"] for e in events if e["kind"] != "phase"]
    phases = [e["step"] for e in events if e["kind"] == "phase"]
    title = f"{name}: loss" + ("; solid lines: phase ends" if phases else "")
    save_figure(plot_losses(metrics, surgery, title, phases), run_dir / "loss.png")
    lineage = pd.read_csv(run_dir / "lineage.csv")
    step = int(metrics["step"].max()) if len(metrics) else 0
    save_figure(plot_ages(lineage, step, f"{name}: neuron ages at step {step}"), run_dir / "ages.png")
    lineage_title = f"{name}: neuron lineages to step {step}"
    save_figure(plot_lineage(lineage, step, surgery, lineage_title, phases), run_dir / "lineage.png")


def main(run_dirs: list[str]) -> int:
    """``python -m apoptosis.training.run_plots RUN_DIR...``: what ``apoptosis train`` runs last."""
    for run_dir in run_dirs:
        try:
            plot_run(run_dir)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001  (the run itself is complete: say so, in one line)
            print(f"error: {run_dir} is complete, but its figures failed: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
