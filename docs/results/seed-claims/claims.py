"""The figures of docs/seed-claims.md, read from a finished `apoptosis compare --name seed-claims`
and its `apoptosis events ... --csv` file (see that page for both commands).

Usage, from the repository root:  python docs/results/seed-claims/claims.py runs/seed-claims

Prints, per strategy, over its seeds: final validation loss and its difference to `none` (paired
by seed, 95% interval); the log's "variance" as this engine measures it (the training loss's
variance around its trend over the last 20% of steps, x 1e4) with its 95% interval and its
difference to hybrid at 5%; the generalisation gap (final validation minus training loss); the
mean loss spike per event and the steps until the training loss is back; the parameter count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from apoptosis.analysis.intervals import half_width, paired_interval, welch_interval

BASELINE, MOST_STABLE = "none", "hybrid@turnover_rate=0.05"


def _interval(diff: float, low: float, high: float) -> str:
    return f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"


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
                "variance_vs_hybrid5": _interval(
                    *welch_interval(group["variance"].to_numpy(), by_seed[MOST_STABLE]["variance"].to_numpy())
                )
                if name != MOST_STABLE
                else "-",
                "gap": f"{group['gap'].mean():.4f} ± {half_width(group['gap']):.4f}",
                "events": int(group["events"].mean()),
                "spike": f"{spikes['surgery'].mean():+.4f}" if len(spikes) else "-",
                "max_spike": f"{spikes['surgery'].max():+.4f}" if len(spikes) else "-",
                "steps_back": f"{back.mean():.0f} ({len(back)}/{len(spikes)})" if len(spikes) else "-",
                "parameters": int(group["parameters"].mean()),
            }
        )
    return pd.DataFrame(rows)


def main(folder: Path) -> None:
    runs = pd.read_csv(folder / "compare.csv")
    events = pd.read_csv(folder / "events.csv")
    table = claims_table(runs, events)
    with pd.option_context("display.width", 250, "display.max_columns", None, "display.max_colwidth", 40):
        print(table.to_string(index=False))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/seed-claims"))
