"""The plain answers of docs/lazarus.md ("Compression against the pruning field"), read from the
grid's `table.csv` (what `apoptosis compress-table` wrote).

Usage, from the repository root:  python docs/results/compress-table/answers.py docs/results/compress-table

Prints the table as docs/lazarus.md shows it (markdown), then, at sparsity 0.5 with the
unstructured pattern, the bits per character of each method after each recovery; where Lazarus
(data-free) lands between magnitude pruning with no recovery and the calibrated one-shot methods
(Wanda, SparseGPT), as the share of the damage it removes; how close it comes to fine-tuning on
real data, and Lazarus minus fine-tuning for every pruned model; and the speed each pattern
buys on the CPU (mean, lowest and highest over the cells). On a folder without recoveries (the
idle speed grid, `speed-idle/`) it prints the table and the speeds only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd


def bpc(table: pd.DataFrame, method: str, pattern: str, prune: float, recover: str) -> float:
    row = table[
        (table.method == method) & (table.pattern == pattern) & (table.prune == prune) & (table.recover == recover)
    ]
    return float(row["bpc_mean"].iloc[0]) if len(row) else float("nan")


def markdown(table: pd.DataFrame) -> str:
    """One line per method x pattern x share x recovery: bits/char (mean ± sd over seeds), kept
    parameters, file size, speed against the dense model."""
    lines = ["| method | pattern | share | recovery | bits/char | kept | kB | speed |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in table.itertuples():
        dense = row.method == "dense"
        bits = f"{row.bpc_mean:.4f}" if dense or pd.isna(row.bpc_std) else f"{row.bpc_mean:.4f} ± {row.bpc_std:.4f}"
        share = "-" if dense else f"{row.prune:g}"
        size = f"{row.model_bytes_mean / 1000:,.0f}"
        lines.append(f"| {row.method} | {row.pattern} | {share} | {row.recover} | {bits} | "
                     f"{100 * row.kept_mean:.1f}% | {size} | {row.speedup_mean:.2f}x |")  # fmt: skip
    return "\n".join(lines)


def recovery_answers(table: pd.DataFrame) -> None:
    """Where Lazarus lands at 0.5 unstructured, and how close it comes to fine-tuning."""
    dense = float(table.loc[table.method == "dense", "bpc_mean"].iloc[0])
    print(f"dense model: {dense:.4f} bits/char")
    at_half = table[(table.prune == 0.5) & (table.pattern == "unstructured")]
    print("\nsparsity 0.5, unstructured: bits/char by method (rows) and recovery (columns)")
    print(at_half.pivot(index="method", columns="recover", values="bpc_mean").round(4).to_string())

    magnitude = bpc(table, "magnitude", "unstructured", 0.5, "none")
    damage = magnitude - dense
    print(f"\nmagnitude, no recovery: {magnitude:.4f} (+{damage:.4f} over dense)")
    for method in ("magnitude", "wanda", "sparsegpt"):
        for recover in ("none", "lazarus", "finetune"):
            value = bpc(table, method, "unstructured", 0.5, recover)
            removed = 100 * (magnitude - value) / damage if damage else float("nan")
            print(f"  {method:9} + {recover:8}: {value:.4f}  removes {removed:5.1f}% of it")
    for method in ("magnitude", "wanda", "sparsegpt"):
        lazarus, finetune = (bpc(table, method, "unstructured", 0.5, r) for r in ("lazarus", "finetune"))
        pruned = bpc(table, method, "unstructured", 0.5, "none")
        share = (pruned - lazarus) / (pruned - finetune) if pruned != finetune else float("nan")
        print(f"{method}: Lazarus recovers {100 * share:.0f}% of what fine-tuning on real data recovers")
    cells = table[table.method != "dense"].pivot_table(index=["method", "pattern", "prune"], columns="recover",
                                                       values="bpc_mean")  # fmt: skip
    gap = (cells["lazarus"] - cells["finetune"]).sort_values()
    print("\nLazarus minus fine-tuning, bits/char, every pruned model of the grid:")
    print(gap.round(4).to_string())


def main(folder: Path) -> None:
    table = pd.read_csv(folder / "table.csv")
    print(markdown(table), end="\n\n")
    if {"lazarus", "finetune", "none"} <= set(table.recover):
        recovery_answers(table)
    cells = pd.read_csv(folder / "cells.csv")
    print("\nspeed against the dense model (tokens/s of inference, side by side), over methods and seeds")
    speed = cells.groupby(["pattern", "prune"]).agg(
        speedup=("speedup", "mean"), low=("speedup", "min"), high=("speedup", "max"), kept=("kept", "mean")
    )
    print(speed.round(3).to_string())


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/compress-table"))
