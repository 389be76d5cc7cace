"""apoptosis compare: plans, runs in parallel, and reports differences with honest intervals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from apoptosis.analysis.compare import plan_runs
from apoptosis.analysis.intervals import paired_interval, welch_interval
from apoptosis.analysis.report import events_frame
from apoptosis.core.config import RunConfig
from apoptosis.core.errors import ApoptosisError
from tests.conftest import TINY_TEXT


def test_welch_interval_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, 5), rng.normal(1.2, 0.3, 4)
    diff, low, high = welch_interval(a, b)
    result = stats.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(0.95)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert (low, high) == pytest.approx((ci.low, ci.high))
    assert np.isnan(welch_interval(a[:1], b)[1])


def test_paired_interval_matches_scipy_over_common_seeds() -> None:
    a = pd.Series([1.0, 1.2, 0.9, 5.0], index=[1, 2, 3, 9])  # seed 9 has no partner: left out
    b = pd.Series([1.1, 1.25, 1.0], index=[1, 2, 3])
    diff, low, high = paired_interval(a, b)
    ci = stats.ttest_rel([1.0, 1.2, 0.9], [1.1, 1.25, 1.0]).confidence_interval(0.95)
    assert diff == pytest.approx(-0.25 / 3) and (low, high) == pytest.approx((ci.low, ci.high))
    assert np.isnan(paired_interval(a.iloc[:1], b)[1])


def test_plan_sends_strategy_settings_only_where_they_exist(tmp_path: Path) -> None:
    runs = plan_runs(
        RunConfig(), ["none", "standard", "hybrid"], [1, 2], {"prune_rate": 0.05, "interval": 50}, tmp_path
    )
    assert [(r.strategy, r.seed) for r in runs] == [(s, k) for s in ("none", "standard", "hybrid") for k in (1, 2)]
    params = {r.strategy: r.config.strategy.params for r in runs}
    assert params == {"none": {}, "standard": {"prune_rate": 0.05, "interval": 50}, "hybrid": {"interval": 50}}
    assert {r.config.trainer.seed for r in runs} == {1, 2}
    with pytest.raises(ApoptosisError, match="no compared strategy has parameter 'nope'"):
        plan_runs(RunConfig(), ["none", "standard"], [1], {"nope": 1}, tmp_path)
    with pytest.raises(ApoptosisError, match="prune_rate"):
        plan_runs(RunConfig(), ["standard"], [1], {"prune_rate": 0.9}, tmp_path)


def test_a_label_with_its_own_settings_is_a_sweep_point(tmp_path: Path) -> None:
    labels = ["none", "standard@prune_rate=0.05", "standard@prune_rate=0.2@interval=30", "standard+lazarus@steps=7"]
    runs = plan_runs(RunConfig(), labels, [1], {"interval": 50}, tmp_path, {"lr": 1e-3})
    config = {r.strategy: r.config for r in runs}
    assert config["standard@prune_rate=0.05"].strategy.params == {"interval": 50, "prune_rate": 0.05}
    assert config["standard@prune_rate=0.2@interval=30"].strategy.params == {"interval": 30, "prune_rate": 0.2}
    followed = config["standard+lazarus@steps=7"]  # a setting only the follower has goes to it
    assert followed.strategy.name == "standard" and followed.then.params == {"lr": 1e-3, "steps": 7}
    assert runs[1].run_dir == tmp_path / "standard@prune_rate=0.05-s1"
    for label, message in [("standard@nope=1", "standard has no parameter 'nope'"),
                           ("standard@prune_rate", "expected STRATEGY@PARAM=VALUE"),
                           ("standard@prune_rate=0.9", "prune_rate"),
                           ("standard@prune_rate=0.05+lazarus", "a follower comes before the settings"),
                           ("standard@interval=5@interval=6", "interval is set twice")]:  # fmt: skip
        with pytest.raises(ApoptosisError, match=message):
            plan_runs(RunConfig(), [label], [1], {}, tmp_path)


def test_the_sweep_plot_draws_one_line_per_swept_setting(tmp_path: Path) -> None:
    from apoptosis.analysis.sweeps import plot_sweeps, sweep_points

    frame = pd.DataFrame(
        [
            {"strategy": s, "seed": k, "final_val_loss": 2.0 + 0.1 * k}
            for s in ("none", "standard@prune_rate=0.05", "standard@prune_rate=0.1", "hybrid@mode=x", "orthogonal")
            for k in (1, 2, 3)
        ]  # fmt: skip
    )
    points = sweep_points(frame)
    assert set(points["sweep"]) == {"standard: prune_rate"} and sorted(set(points["value"])) == [0.05, 0.1]
    assert plot_sweeps(frame, tmp_path / "sweep.png") and (tmp_path / "sweep.png").stat().st_size > 0
    one_value = frame[frame["strategy"] != "standard@prune_rate=0.1"]
    assert not plot_sweeps(one_value, tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_compare_cli_runs_every_strategy_and_seed_in_parallel(tmp_path: Path) -> None:
    data = tmp_path / "tiny.txt"
    data.write_text(TINY_TEXT, encoding="utf-8")
    sets = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.d_ff=64", "model.block_size=16",
            "trainer.batch_size=4", "trainer.eval_interval=10", "trainer.eval_batches=2",
            "strategy.interval=10", "strategy.maturity=5"]  # fmt: skip
    sweep = "none,standard@prune_rate=0.05,standard@prune_rate=0.2"
    cmd = [sys.executable, "-m", "apoptosis.cli", "compare", "--strategies", sweep,
           "--seeds", "2", "--steps", "30", "--data", str(data), "--name", "cmp", "--runs-dir", str(tmp_path),
           "--workers", "2"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    low, high = "standard@prune_rate=0.05", "standard@prune_rate=0.2"  # a sweep: labels with their own settings
    assert list(frame.strategy) == ["none", "none", low, low, high, high]
    assert list(frame.seed) == [1, 2] * 3
    assert (frame[frame.strategy == "none"].events == 0).all()
    assert (frame[frame.strategy != "none"].events == 2).all()
    for name in ("val_loss.png", "ages.png", "sweep.png", f"{low}-s2/summary.json"):
        assert (tmp_path / "cmp" / name).is_file()
    assert "prune_rate = 0.2" in (tmp_path / "cmp" / f"{high}-s1" / "config.toml").read_text()
    assert json.loads((tmp_path / "cmp" / f"{high}-s1" / "summary.json").read_text())["strategy"] == high
    events = events_frame([tmp_path / "cmp" / f"{label}-s1" for label in (low, high)])
    assert set(events["group"]) == {f"cmp/{low}", f"cmp/{high}"}  # each sweep point is its own group
    assert "mean difference to none" in done.stdout and high in done.stdout
    assert "paired 95% CI" in done.stdout
    # stopped comparisons continue: a finished run is read back, a killed one resumes, one killed
    # before its first checkpoint starts again; all end as the uninterrupted runs did
    finished = (tmp_path / "cmp" / "none-s1" / "metrics.csv").stat().st_mtime_ns
    (tmp_path / "cmp" / f"{low}-s1" / "summary.json").unlink()
    for name in ("summary.json", "checkpoints/last.pt"):
        (tmp_path / "cmp" / f"{high}-s2" / name).unlink()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "cmp" / "none-s1" / "metrics.csv").stat().st_mtime_ns == finished
    columns = ["strategy", "seed", "final_val_loss", "events"]
    assert pd.read_csv(tmp_path / "cmp" / "compare.csv")[columns].equals(frame[columns])
    assert json.loads((tmp_path / "cmp" / f"{low}-s1" / "summary.json").read_text())["strategy"] == low  # resumed
    changed = [*cmd, "--set", "strategy.interval=5"]  # the later --set wins
    refused = subprocess.run(changed, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and "holds another run (strategy.interval = 10" in refused.stderr
