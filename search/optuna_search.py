"""``apoptosis search optuna``: a sampler (TPE, random, CMA-ES, GP, QMC) and a pruner over the
registry's search space, on one machine or many, with the study's results written as files."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write_text
from apoptosis.search.space import apply_settings, grid_points
from apoptosis.search.study import StudySpec, best_trial, coordinate, enqueue, queued, trials_frame


def run_optuna(spec: StudySpec, trials: int, workers: int, console: Console) -> optuna.Study:
    """Queue ``trials`` trials in all (re-running adds only what is missing), run them, write the results."""
    if trials < 1:
        raise ApoptosisError(f"--trials must be >= 1, got {trials}")

    design = grid_points(spec.space, trials) if spec.sampler == "grid" else None

    def plan(study: optuna.Study) -> None:
        planned = [t for t in study.get_trials(deepcopy=False) if queued(t) and "retry_of" not in t.user_attrs]
        if design is not None:  # a fixed design, enqueued once: a rerun adds only the points not yet planned
            saved = study.user_attrs.get("grid_trials")
            if saved is not None and saved != trials:
                raise ApoptosisError(f"study {spec.name!r} is a grid of {saved} trials: rerun it with --trials {saved}")
            study.set_user_attr("grid_trials", trials)
            for params in design[len(planned) :]:
                enqueue(study, params)
            return
        for _ in range(trials - len(planned)):
            enqueue(study, {})

    study = coordinate(spec, plan, workers, console)
    if workers > 0:
        write_results(study, spec, console)
    return study


def write_results(study: optuna.Study, spec: StudySpec, console: Console, top: int = 10) -> None:
    """trials.csv, best.toml, the plots, and a table of the best trials."""
    from apoptosis.search.plots import plot_study

    frame = trials_frame(study)
    atomic_write_text(spec.study_dir / "trials.csv", frame.to_csv(index=False))
    best = best_trial(study)
    if best is not None:
        config = apply_settings(spec.base, best.user_attrs["settings"])
        if spec.objective != "plasticity":  # the plasticity base already holds its tasks' steps
            config.trainer.steps = spec.steps
        atomic_write_text(spec.study_dir / "best.toml", config.to_toml())
    plot_study(study, frame, spec.study_dir)
    console.print(top_trials_table(frame, f"Study {spec.name}: best trials (of {len(frame)})", top))
    counts = frame["state"].value_counts().to_dict() if len(frame) else {}
    console.print(
        "trials: "
        + ", ".join(
            f"{counts.get(s.name, 0)} {s.name.lower()}"
            for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        )  # fmt: skip
    )
    if best is not None:
        console.print(f"best: trial {best.number}, value {best.value:.4f}; config in {spec.study_dir / 'best.toml'}")
    console.print(f"Study folder: {spec.study_dir} (trials.csv, best.toml, history.png, importances.png, slices.png)")


def top_trials_table(frame, title: str, top: int = 10) -> Table:
    """The ``top`` completed trials by value, each with its settings on one wrapped line."""
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    table.add_column("settings")
    complete = frame[frame["state"] == "COMPLETE"].sort_values("value").head(top)
    params = [c for c in frame.columns if c.startswith("params_")]
    for row in complete.to_dict("records"):
        settings = "  ".join(
            f"{c.removeprefix('params_').removeprefix('strategy.')}={_cell(row[c])}" for c in params if _cell(row[c])
        )
        table.add_row(str(row["number"]), f"{row['value']:.4f}", f"{row['seconds']:.1f}", settings)
    return table


def _cell(value) -> str:
    if value is None or value != value:  # missing, or NaN for a parameter of another strategy
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
