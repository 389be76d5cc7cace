"""``apoptosis bench --json``: the figures a release check reads are written, each measured."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

from apoptosis.analysis.bench import paired_ratio, round_ratios, verdict
from apoptosis.analysis.intervals import median_interval
from apoptosis.cli.main import main
from tests.conftest import TINY_TEXT
from tests.test_run_safety import TINY


def test_bench_writes_every_figure_to_json(tmp_path: Path, monkeypatch) -> None:
    out, data = tmp_path / "bench.json", tmp_path / "tiny.txt"
    data.write_text(TINY_TEXT, encoding="utf-8")
    args = ["apoptosis", "bench", "--rounds", "2", "--segment", "10", "--json", str(out), *TINY,
            "--set", f"data.path={data}"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", args)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main replaces it
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code in (0, None)
    figures = json.loads(out.read_text())
    keys = ("eager_none_tokens_per_s", "compiled_none_tokens_per_s", "compiled_standard_tokens_per_s",
            "sample_chars_per_s", "sample_chars_per_s_uncached", "peak_rss_mb", "mfu")  # fmt: skip
    for key in keys:
        assert figures[key] > 0, key
    assert figures["compile_seconds"] > 0  # the first compiled round compiles, and is left out of tokens/s
    first_growth, second_growth = figures["growth_recompile_seconds"]
    assert first_growth > 0.1 and first_growth > second_growth  # a new width recompiles once
    # three segments of 10 steps with an event every 10 (none at the run's last step)
    assert figures["events"]["standard compiled"] == figures["events"]["standard"] == 2
    assert figures["events"]["none"] == figures["events"]["none compiled"] == 0
    runs = figures["tokens_per_s"]  # one value per measured round, the first round left out
    assert all(len(speeds) == 2 for speeds in runs.values())
    assert figures["compile_speedup"] == pytest.approx(paired_ratio(runs, "none compiled", "none"))
    assert figures["throughput_ratio"] == pytest.approx(paired_ratio(runs, "standard", "none"))
    for key in ("throughput_ratio", "compile_speedup", "compiled_throughput_ratio"):
        assert figures["ratio_intervals"][key] is None  # two rounds are too few for the median's interval


@pytest.mark.parametrize(
    "args, message",
    [(["--rounds", "0"], "--rounds and --segment must be >= 1, got 0 and 100"),
     (["--strategy", "none"], "--strategy must name a strategy other than none")],
)  # fmt: skip
def test_bench_refuses_what_it_cannot_measure(args, message, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["apoptosis", "bench", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_ratios_are_paired_by_round_so_a_drifting_machine_cancels() -> None:
    """The machine was twice as fast in round 2 and one compiled run caught a burst: the ratios
    of the rounds are 1.1, 1.1 and 2.5, so the paired ratio is 1.1, while the medians over
    rounds (12 and 22, taken from different rounds) would read 1.83."""
    runs = {"none": [10.0, 20.0, 12.0], "none compiled": [11.0, 22.0, 30.0]}
    assert paired_ratio(runs, "none compiled", "none") == pytest.approx(1.1)


def test_a_goal_is_judged_by_the_whole_interval_of_the_rounds_median_ratio() -> None:
    """Rounds whose ratio is always 1.1 leave no doubt; eight rounds spread around 1.0, one of them
    disturbed, leave a goal of 0.98 undecided, one of 1.2 missed and one of 0.8 met; five rounds
    give no interval."""
    steady = {"a": [11.0, 22.0, 16.5, 11.0, 22.0, 16.5], "b": [10.0, 20.0, 15.0, 10.0, 20.0, 15.0]}
    assert median_interval(round_ratios(steady, "a", "b")) == pytest.approx((1.1, 1.1))
    spread = {"a": [9.5, 10.5, 9.8, 10.3, 10.1, 9.9, 10.2, 3.0], "b": [10.0] * 8}  # the last round disturbed
    low, high = median_interval(round_ratios(spread, "a", "b"))
    assert 0.9 < low < 0.98 < 1.0 < high < 1.1  # the disturbed round does not drag it down
    assert "cannot tell" in verdict((low, high), 0.98)
    assert "misses" in verdict((low, high), 1.2) and "meets" in verdict((low, high), 0.8)
    short = {"a": spread["a"][:5], "b": spread["b"][:5]}
    assert median_interval(round_ratios(short, "a", "b")) is None and "cannot tell" in verdict(None, 0.8)
