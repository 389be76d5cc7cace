"""The ``apoptosis`` entry point: imports every command module (each registers its commands on the
one app) and turns user errors into one line on stderr and exit code 2."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from apoptosis.cli import compare, compress, lazarus, measure, plasticity, runs, search, train  # noqa: F401  (they register commands)
from apoptosis.cli.app import app, deferred_figures
from apoptosis.core.errors import ApoptosisError


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """A warning as the user should see it: one line, without the Python source line under it."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(figures_in_new_process: bool = False) -> None:
    """The ``apoptosis`` command in this process (tests call it so). ``figures_in_new_process``
    (the installed command, :func:`entry`): a finished ``train`` leaves its figures to a process
    that replaces this one, instead of drawing them here."""
    warnings.showwarning = _one_line_warning
    deferred_figures.run_dirs = [] if figures_in_new_process else None
    try:
        app()
    except SystemExit as done:  # how a finished command returns
        if done.code not in (0, None) or not deferred_figures.run_dirs:
            raise
    except ApoptosisError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        run_dirs, deferred_figures.run_dirs = deferred_figures.run_dirs, None
    if run_dirs:
        draw_figures_in_place(run_dirs)


def entry() -> None:
    """The installed ``apoptosis`` command and ``python -m apoptosis.cli``."""
    main(figures_in_new_process=True)


def draw_figures_in_place(run_dirs: list[Path]) -> None:
    """Replace this process by one that draws the runs' figures: the peak memory of
    ``apoptosis train`` is then that of training, not training plus the figure libraries.
    (POSIX ``exec``; the run folder's lock already makes the package POSIX-only.)"""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # e.g. ``apoptosis train | head``: nobody reads the rest; draw anyway
        pass
    command = [sys.executable, "-m", "apoptosis.training.run_plots", *map(str, run_dirs)]
    os.execv(sys.executable, command)
