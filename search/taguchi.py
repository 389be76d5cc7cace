"""``apoptosis search taguchi``: an orthogonal array's rows as trials of one Optuna study, then the
Taguchi analysis (S/N, response table, ANOVA, predicted optimum) and a confirmation run.

The coordinator enqueues each row once with its factor levels as fixed parameters; workers take
rows exactly as they take Optuna trials, so a Taguchi design runs on the same storages, several
processes or machines, and resumes the same way. The seeds are the noise replicates of each row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write_json, atomic_write_text
from apoptosis.search import taguchi_analysis as ta
from apoptosis.search import taguchi_anova
from apoptosis.search.arrays import OrthogonalArray, design
from apoptosis.search.space import apply_settings
from apoptosis.search.study import StudySpec, coordinate, enqueue, trials_frame, work

ACTIVE = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)


@dataclass
class TaguchiResult:
    array: OrthogonalArray
    rows: pd.DataFrame  # per design row: levels, mean, std, n, sn
    response: pd.DataFrame
    anova: pd.DataFrame
    predicted_sn: dict[str, Any]
    predicted_mean: dict[str, Any]
    confirmation: dict[str, Any] | None


def row_params(levels: dict[str, list[Any]], table: np.ndarray, row: int) -> dict[str, Any]:
    return {factor: values[int(table[row, j])] for j, (factor, values) in enumerate(levels.items())}


def run_taguchi(
    spec: StudySpec, array_name: str | None, workers: int, console: Console, confirm: bool = True
) -> TaguchiResult | None:
    """Run every row (rows already done are kept), analyse, confirm at the predicted optimum."""
    levels: dict[str, list[Any]] = spec.space.levels
    array, table = design([len(v) for v in levels.values()], array_name)

    def plan(study: optuna.Study) -> None:
        stored = study.user_attrs.get("array")
        if stored is None:
            study.set_user_attr("array", array.name)
        elif stored != array.name:
            raise ApoptosisError(f"study {spec.name!r} runs array {stored}, not {array.name}: use --array {stored}")
        active = {t.user_attrs.get("row") for t in study.get_trials(deepcopy=False, states=ACTIVE)}
        for row in range(array.runs):
            if row not in active:
                enqueue(study, row_params(levels, table, row), row=row)

    console.print(f"{array.notation}: {array.runs} rows x {len(spec.seeds)} seeds, factors: {', '.join(levels)}")
    study = coordinate(spec, plan, workers, console)
    if workers == 0:
        return None
    results = replicate_frame(study, levels, array.runs)
    rows = ta.per_row(results, levels)
    anova_sn = taguchi_anova.anova(rows, levels)
    result = TaguchiResult(
        array=array,
        rows=rows,
        response=ta.response_table(rows, levels),
        anova=anova_sn,
        predicted_sn=taguchi_anova.predict_optimum(rows, levels, anova_table=anova_sn),
        predicted_mean=taguchi_anova.predict_optimum(
            rows, levels, column="mean", anova_table=taguchi_anova.anova(rows, levels, "mean")
        ),
        confirmation=None,
    )
    best = result.predicted_sn["best_levels"]
    config = apply_settings(spec.base, best)
    config.trainer.steps = spec.steps
    atomic_write_text(spec.study_dir / "best.toml", config.to_toml())
    if confirm:
        result.confirmation = confirmation_run(study, spec, best, console)
    atomic_write_text(spec.study_dir / "trials.csv", trials_frame(study).to_csv(index=False))
    write_results(result, spec)
    print_results(result, console)
    console.print(
        f"Study folder: {spec.study_dir} (taguchi.csv, analysis.json, main_effects.png, best.toml, trials.csv)"
    )
    return result


def replicate_frame(study: optuna.Study, levels: dict[str, list[Any]], runs: int) -> pd.DataFrame:
    """One line per (row, seed) of the completed rows; every row must be there."""
    lines, done = [], set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        row = t.user_attrs.get("row")
        if row is None or row in done:
            continue
        done.add(row)
        for value in t.user_attrs["seed_values"]:
            lines.append({"row": row, **{f: t.params[f] for f in levels}, "value": value})
    missing = sorted(set(range(runs)) - done)
    if missing:
        raise ApoptosisError(
            f"rows {', '.join(map(str, missing))} of the array have no result (see trials.csv for why): "
            "run the same command again to retry them"
        )
    return pd.DataFrame(lines)


def confirmation_run(study: optuna.Study, spec: StudySpec, best: dict[str, Any], console: Console) -> dict[str, Any]:
    """Run the predicted optimum (once per study) with the same seeds, in this process."""

    def matches(t: optuna.trial.FrozenTrial) -> bool:
        return t.user_attrs.get("confirmation") and t.params == best

    if not any(matches(t) for t in study.get_trials(deepcopy=False, states=ACTIVE)):
        enqueue(study, best, confirmation=True)
    console.print("confirmation run at the predicted optimum: " + ", ".join(f"{k}={v}" for k, v in best.items()))
    work(spec, 0)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if matches(t)]
    if not done:
        return {"levels": best, "failed": True}
    values = done[-1].user_attrs["seed_values"]
    return {
        "levels": best,
        "trial": done[-1].number,
        "seed_values": values,
        "mean": float(np.mean(values)),
        "sn": ta.signal_to_noise(values),
    }


def write_results(result: TaguchiResult, spec: StudySpec) -> None:
    """taguchi.csv (the design's rows with their results), analysis.json, main_effects.png."""
    levels = spec.space.levels
    atomic_write_text(spec.study_dir / "taguchi.csv", result.rows.to_csv(index=False))
    analysis = {
        "array": result.array.notation,
        "seeds": spec.seeds,
        "response": json.loads(result.response.reset_index().to_json(orient="records")),
        "anova": json.loads(result.anova.to_json(orient="records")),
        "predicted_sn": result.predicted_sn,
        "predicted_mean": result.predicted_mean,
        "confirmation": result.confirmation,
    }
    atomic_write_json(spec.study_dir / "analysis.json", json.loads(json.dumps(analysis, default=_jsonable)))
    ta.main_effects_plot(result.rows, levels, spec.study_dir / "main_effects.png")


def _jsonable(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


def print_results(result: TaguchiResult, console: Console) -> None:
    console.print(ta.response_rich_table(result.response, "Response table: mean S/N (dB) per level"))
    console.print(taguchi_anova.anova_rich_table(result.anova, "ANOVA of S/N (smaller-the-better)"))
    console.print(prediction_table(result))


def prediction_table(result: TaguchiResult) -> Table:
    """Predicted optimum (S/N and loss, with intervals) against the confirmation run."""
    sn, mean = result.predicted_sn, result.predicted_mean
    table = Table(title="Predicted optimum and confirmation", title_justify="left")
    for header in ("", "S/N (dB)", "interval", "loss", "interval"):
        table.add_column(header, justify="left" if not header else "right")

    def interval(p: dict[str, Any]) -> str:
        return "-" if np.isnan(p["low"]) else f"{p['low']:.3f}..{p['high']:.3f}"

    table.add_row("predicted", f"{sn['predicted']:.3f}", interval(sn), f"{mean['predicted']:.4f}", interval(mean))
    best_row = result.rows.loc[result.rows["sn"].idxmax()]
    table.add_row(f"best row ({int(best_row['row'])})", f"{best_row['sn']:.3f}", "", f"{best_row['mean']:.4f}", "")
    c = result.confirmation
    if c and not c.get("failed"):
        inside = "" if np.isnan(sn["low"]) else " (inside)" if sn["low"] <= c["sn"] <= sn["high"] else " (outside)"
        table.add_row("confirmation", f"{c['sn']:.3f}{inside}", "", f"{c['mean']:.4f}", "")
    table.caption = "levels: " + ", ".join(f"{k}={v}" for k, v in sn["best_levels"].items())
    return table
