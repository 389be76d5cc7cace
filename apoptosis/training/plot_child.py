"""A run's figures drawn off the training process: matplotlib, seaborn and their fonts add ~120 MB
of resident memory, which the process that trained would otherwise hold to its end (its peak is
what a user compares with nanoGPT's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from apoptosis.core.errors import ApoptosisError

PLOTTING = ("matplotlib", "seaborn")


def draw_run_plots(run_dir: Path) -> None:
    """``loss.png``, ``ages.png`` and ``lineage.png`` of ``run_dir``: in this process when the
    plotting libraries are loaded already (nothing to save), else in a child process."""
    if all(name in sys.modules for name in PLOTTING):
        from apoptosis.training.run_plots import plot_run

        plot_run(run_dir)
        return
    done = subprocess.run(
        [sys.executable, "-m", "apoptosis.training.run_plots", str(run_dir)], capture_output=True, text=True
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ApoptosisError(f"drawing the figures of {run_dir} failed: {last}")
