"""The figures of docs/seed-claims.md, read from a finished `apoptosis compare --name seed-claims`
and its `apoptosis events ... --csv` file (see that page for both commands).

Usage, from the repository root:  python docs/results/seed-claims/claims.py runs/seed-claims

Prints, per strategy, over its seeds: final validation loss and its difference to `none` (paired
by seed, 95% interval); the log's "variance" as this engine measures it (the training loss's
variance around its trend over the last 20% of steps, x 1e4) with its 95% interval and its
difference to hybrid at 5% (paired by seed); the generalisation gap (final validation minus training loss); the
differences of validation loss and gap to standard at 10% (mutation only, the crossover and
orthogonal claims' reference), paired by seed; the mean and largest loss spike per event and the
steps until the training loss is back (and, as the noise floor of that measure, the same steps
read at the event steps of `none`, where nothing happened); the MLP neurons and parameter count
at the end. Last, the standard deviation over seeds of each strategy's paired difference to
`none`, pooled, and the seeds a 95% interval of half width 0.0012 (the log's functional
preservation margin) would need at that spread.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from apoptosis.analysis.intervals import half_width, paired_interval
from apoptosis.analysis.report import recovery_steps

BASELINE, MOST_STABLE, MUTATION_ONLY = "none", "hybrid@turnover_rate=0.05", "standard@prune_rate=0.1"


def _interval(diff: float, low: float, high: float) -> str:
    return f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"


def _paired(group: pd.DataFrame, reference: pd.DataFrame, column: str, same: bool) -> str:
    return "-" if same else _interval(*paired_interval(group[column], reference[column]))


def steps_back_without_events(folder: Path, runs: pd.DataFrame, event_steps: list[int]) -> str:
    """Mean steps until the training loss of ``none`` is back at its level before each of
    ``event_steps``: what the measure reads when nothing happened (batch noise alone)."""
    from apoptosis.training import read_metrics

    names = runs.loc[runs["strategy"] == BASELINE, "seed"].map(lambda seed: f"{BASELINE}-s{seed}")
    steps = [recovery_steps(read_metrics(folder / name), step) for name in names for step in event_steps]
    finite = [s for s in steps if math.isfinite(s)]
    return f"{sum(finite) / len(finite):.0f} ({len(finite)}/{len(steps)})" if finite else f"- (0/{len(steps)})"


def claims_table(runs: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    runs = runs.assign(
        variance=runs["train_loss_detrended_variance"] * 1e4, gap=runs["final_val_loss"] - runs["final_train_loss"]
    )
    by_seed = {name: group.set_index("seed") for name, group in runs.groupby("strategy", sort=False)}
    events = events.assign(strategy=events["group"].str.split("/", n=1).str[1])
    rows = []
    for name, group in by_seed.items():
        spikes = events[events["strategy"] == name]
        back = spikes["recovery_steps"].replace(float("inf"), float("nan")).dropna()
        rows.append(
            {
                "strategy": name,
                "seeds": len(group),
                "val_loss": f"{group['final_val_loss'].mean():.4f} ± {half_width(group['final_val_loss']):.4f}",
                "vs_none": _interval(*paired_interval(group["final_val_loss"], by_seed[BASELINE]["final_val_loss"]))
                if name != BASELINE
                else "-",
                "variance_x1e4": f"{group['variance'].mean():.2f} ± {half_width(group['variance']):.2f}",
                "variance_vs_hybrid5": _paired(group, by_seed[MOST_STABLE], "variance", name == MOST_STABLE),
                "gap": f"{group['gap'].mean():.4f} ± {half_width(group['gap']):.4f}",
                "vs_standard10": _paired(group, by_seed[MUTATION_ONLY], "final_val_loss", name == MUTATION_ONLY),
                "gap_vs_standard10": _paired(group, by_seed[MUTATION_ONLY], "gap", name == MUTATION_ONLY),
                "events": int(group["events"].mean()),
                "spike": f"{spikes['surgery'].mean():+.4f}" if len(spikes) else "-",
                "max_spike": f"{spikes['surgery'].max():+.4f}" if len(spikes) else "-",
                "steps_back": f"{back.mean():.0f} ({len(back)}/{len(spikes)})" if len(spikes) else "-",
                "neurons": int(group["neurons"].mean()),
                "parameters": int(group["parameters"].mean()),
            }
        )
    return pd.DataFrame(rows)


def main(folder: Path) -> None:
    runs = pd.read_csv(folder / "compare.csv")
    events = pd.read_csv(folder / "events.csv")
    table = claims_table(runs, events)
    floor = steps_back_without_events(folder, runs, sorted(events["step"].unique()))
    table.loc[table["strategy"] == BASELINE, "steps_back"] = f"{floor} (no event)"
    val = runs.pivot(index="seed", columns="strategy", values="final_val_loss")
    paired_sd = val.drop(columns=BASELINE).sub(val[BASELINE], axis=0).std()
    pooled = math.sqrt((paired_sd**2).mean())
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 40):
        print(table.to_string(index=False))
    print("\nsd over seeds of the paired difference to none:", paired_sd.round(4).to_dict())
    for name, sd in (("functional_preservation", paired_sd["functional_preservation"]), ("pooled", pooled)):
        print(f"{name}: sd {sd:.4f} -> seeds for a ±0.0012 interval: {(1.96 * sd / 0.0012) ** 2:.0f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/seed-claims"))
