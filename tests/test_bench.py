"""``apoptosis bench --json``: the figures a release check reads are written, each measured."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

from apoptosis.cli.main import main
from tests.conftest import TINY_TEXT
from tests.test_run_safety import TINY


def test_bench_writes_every_figure_to_json(tmp_path: Path, monkeypatch) -> None:
    out, data = tmp_path / "bench.json", tmp_path / "tiny.txt"
    data.write_text(TINY_TEXT, encoding="utf-8")
    args = ["apoptosis", "bench", "--steps", "20", "--repeats", "1", "--json", str(out), *TINY,
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
    assert figures["compile_seconds"] > 0  # the first compiled step compiles, and is left out of tokens/s
    assert figures["events"]["standard compiled"] == figures["events"]["standard"] >= 1
    speedup = figures["compiled_none_tokens_per_s"] / figures["eager_none_tokens_per_s"]
    assert figures["compile_speedup"] == pytest.approx(speedup)
    assert figures["mfu"] == pytest.approx(figures["hardware_share"])
