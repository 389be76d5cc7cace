"""Console summaries read what the runs wrote."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from apoptosis.analysis.report import ages_table, load_lineage, runs_frame, sparkline, strategies_table
from apoptosis.core.errors import ApoptosisError
from apoptosis.training import Trainer
from tests.conftest import tiny_run_config


def render(table) -> str:
    console = Console(record=True, width=160)
    console.print(table)
    return console.export_text()


def test_summarize_groups_runs_by_strategy_with_spread(tmp_path) -> None:
    runs = []
    for strategy, seed in (("none", 1), ("none", 2), ("standard", 1)):
        config = tiny_run_config(tmp_path, steps=20, strategy=strategy)
        config.trainer.seed = seed
        if strategy == "standard":
            config.strategy.params = {"interval": 10, "maturity": 0}
        run = tmp_path / f"{strategy}-{seed}"
        Trainer(config, run, show_progress=False).fit()
        runs.append(run)
    frame = runs_frame(runs)
    assert list(frame["strategy"]) == ["none", "none", "standard"]
    text = render(strategies_table(frame))
    none_row = next(line for line in text.splitlines() if line.strip("│┃ ").startswith("none"))
    mean = frame[frame.strategy == "none"]["final_val_loss"].mean()
    assert f"{mean:.4f} ±" in none_row and " 2 " in none_row
    with pytest.raises(ApoptosisError, match="no summary.json"):
        runs_frame([tmp_path])


def test_ages_from_a_killed_run_use_the_checkpoint(tmp_path) -> None:
    config = tiny_run_config(tmp_path, steps=20, interval=10, maturity=0)
    run = tmp_path / "run"
    trainer = Trainer(config, run, show_progress=False)
    trainer.fit()
    (run / "summary.json").unlink()  # as if killed before the end: only the checkpoint remains
    lineage, step = load_lineage(run)
    assert step == 20 and len(lineage.records) == len(trainer.lineage.records)
    text = render(ages_table(lineage, step))
    assert "Neuron ages at step 20" in text and "all" in text


def test_sparkline_marks_empty_bins_and_scales_to_the_fullest() -> None:
    import numpy as np

    line = sparkline(np.array([0, 0, 0, 0, 95]), step=100)
    assert len(line) == 10 and line[0] == "█" and line[-1] == "▃" and line[5] == " "


def test_recovery_steps_count_until_the_training_loss_is_back_below_its_level_before_the_event() -> None:
    from apoptosis.analysis.report import recovery_steps

    metrics = pd.DataFrame({"step": [10, 20, 30, 40, 50], "train_loss": [2.0, 1.9, 2.2, 1.95, 1.85]})
    assert recovery_steps(metrics, 20) == 30  # 1.9 before; 2.2 and 1.95 above it; 1.85 at step 50
    assert recovery_steps(metrics, 25) == 25  # between windows: the last window before counts
    assert recovery_steps(metrics.iloc[:4], 20) == np.inf  # never back within the run
    assert np.isnan(recovery_steps(metrics, 5))  # nothing logged before the event
    assert np.isnan(recovery_steps(metrics, 50))  # nor after it: nothing to tell


def test_events_of_a_sweep_keep_each_labels_own_settings_apart(tmp_path) -> None:
    import json

    from apoptosis.analysis.report import events_frame, events_table

    runs = []
    for label, spike in (("standard@prune_rate=0.05", 0.01), ("standard@prune_rate=0.2", 0.05)):
        run = tmp_path / "sweep" / f"{label}-s1"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"strategy": label}))  # as a comparison's trainer writes it
        (run / "metrics.csv").write_text("step,train_loss\n10,2.0\n20,1.9\n30,2.1\n40,1.8\n")
        line = {"event": 1, "step": 20, "kind": "standard", "layer": 0, "probe_loss_before": 2.0,
                "probe_loss_after": 2.0 + spike}  # fmt: skip
        (run / "events.jsonl").write_text(json.dumps(line) + "\n")
        runs.append(run)
    frame = events_frame(runs).set_index("group")
    assert frame.loc["sweep/standard@prune_rate=0.2", "surgery"] == pytest.approx(0.05)
    assert frame.loc["sweep/standard@prune_rate=0.05", "recovery_steps"] == 20
    assert "+0.0500" in render(events_table(frame.reset_index()))
