"""What users can break, and must not: two runs with one name, a run folder left by a run that
stopped before its first checkpoint, a byte-order mark or Windows line endings in a corpus,
settings under which no event can happen, a model that does not learn, and --resume with options
that repeat the saved config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from apoptosis.cli.main import main
from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharDataset, read_text_file
from apoptosis.core.errors import ApoptosisError
from apoptosis.training import Trainer
from apoptosis.training.run_folder import RunFolder
from tests.conftest import TINY_TEXT, tiny_run_config

CLI = [sys.executable, "-m", "apoptosis.cli"]
TINY = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2", "--set", "model.d_ff=64",
        "--set", "model.block_size=16", "--set", "trainer.batch_size=4", "--set", "trainer.eval_interval=10",
        "--set", "trainer.eval_batches=2", "--set", "strategy.interval=10", "--set", "strategy.maturity=5"]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}


def test_two_runs_with_one_name_never_share_the_folder(tmp_path: Path) -> None:
    data = tmp_path / "tiny.txt"
    data.write_text(TINY_TEXT, encoding="utf-8")
    cmd = [*CLI, "train", "--quiet", "--steps", "40", "--data", str(data), "--name", "same",
           "--runs-dir", str(tmp_path), *TINY]  # fmt: skip
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for _ in "ab"]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert len(loser.strip().splitlines()) == 1
    assert "in use by another process" in loser or "already holds a run" in loser
    steps = pd.read_csv(tmp_path / "same" / "metrics.csv")["step"]
    assert steps.is_unique and steps.max() == 40  # one run's rows, each step once


def test_a_held_folder_refuses_a_second_run(tmp_path: Path) -> None:
    holder = RunFolder(tmp_path / "run")
    holder.claim()
    with pytest.raises(ApoptosisError, match="in use by another process"):
        Trainer(tiny_run_config(tmp_path, steps=10), tmp_path / "run", show_progress=False)
    holder.release()
    Trainer(tiny_run_config(tmp_path, steps=10), tmp_path / "run", show_progress=False).fit()


def test_a_comparison_folder_in_use_refuses_a_second_comparison(tmp_path: Path) -> None:
    from apoptosis.analysis.compare import compare

    holder = RunFolder(tmp_path / "cmp")
    holder.claim()
    with pytest.raises(ApoptosisError, match="in use by another process"):
        compare(tiny_run_config(tmp_path, steps=10), ["none"], 1, {}, tmp_path / "cmp", 1, Console(quiet=True))
    holder.release()
    assert not (tmp_path / "cmp" / "none-s1").exists()  # nothing was run


def test_a_run_that_stopped_before_its_first_checkpoint_is_replaced(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[trainer]\nsteps = 99\n")
    (run / "metrics.csv").write_text("step,train_loss\n1,3.0\n")
    summary = Trainer(tiny_run_config(tmp_path, steps=20), run, show_progress=False).fit()
    assert "replacing" in capsys.readouterr().err
    assert summary["steps"] == 20 and pd.read_csv(run / "metrics.csv")["step"].tolist()[0] == 5
    with pytest.raises(ApoptosisError, match="already holds a run"):  # this one has a checkpoint
        Trainer(tiny_run_config(tmp_path, steps=20), run, show_progress=False)


def test_byte_order_mark_and_windows_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + TINY_TEXT.replace("\n", "\r\n").encode("utf-8"))
    text = read_text_file(path)
    assert text == TINY_TEXT
    vocab = CharDataset.from_text(text, 8).vocab.chars
    assert "\ufeff" not in vocab and "\r" not in vocab
    kept = read_text_file(path, keep_line_endings=True)
    assert "\r\n" in kept and not kept.startswith("\ufeff")


def test_settings_without_events_are_announced(tmp_path: Path, capsys) -> None:
    config = tiny_run_config(tmp_path, steps=30, interval=10, maturity=250)
    summary = Trainer(config, tmp_path / "run", show_progress=False).fit()
    err = capsys.readouterr().err
    assert "no event can happen" in err and "maturity (250)" in err
    assert summary["events"] == 0 and "maturity" in summary["no_events_reason"]
    config = tiny_run_config(tmp_path, steps=30, interval=10, maturity=5)
    assert "no_events_reason" not in Trainer(config, tmp_path / "run2", show_progress=False).fit()
    assert "no event" not in capsys.readouterr().err


def test_a_model_worse_than_no_context_is_warned_about_once(tmp_path: Path, capsys) -> None:
    trainer = Trainer(tiny_run_config(tmp_path, steps=10, strategy="none"), tmp_path / "run", show_progress=False)
    trainer.step = trainer.config.trainer.warmup_steps + 1
    trainer._check_learning(trainer.data.unigram_loss() - 0.1)
    assert capsys.readouterr().err == ""
    trainer._check_learning(866.0)
    trainer._check_learning(866.0)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "not learning" in err


def test_resume_accepts_options_equal_to_the_saved_config(tmp_path: Path) -> None:
    data = tmp_path / "tiny.txt"
    data.write_text(TINY_TEXT, encoding="utf-8")
    base = [*CLI, "train", "--quiet", "--data", str(data), "--name", "r", "--runs-dir", str(tmp_path), *TINY]
    assert subprocess.run([*base, "--steps", "20"], capture_output=True, text=True, env=_env()).returncode == 0
    same = subprocess.run([*base, "--steps", "20", "--resume"], capture_output=True, text=True, env=_env())
    assert same.returncode == 0, same.stderr
    changed = subprocess.run([*base, "--steps", "30", "--resume"], capture_output=True, text=True, env=_env())
    assert changed.returncode == 2
    assert changed.stderr.strip() == (
        "error: --resume continues a run with its saved config, but trainer.steps would change from 20 to 30: "
        "drop that option, or start a new run with another --name"
    )
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps"] == 20


def test_keep_line_endings_is_a_setting() -> None:
    config = RunConfig()
    config.set("data.keep_line_endings", True)
    assert config.data.keep_line_endings and "keep_line_endings = true" in config.to_toml()


@pytest.mark.parametrize(
    "damage",
    [lambda raw: raw[: len(raw) // 2], lambda raw: b"not a checkpoint" + raw[16:]],
    ids=["truncated", "corrupt"],
)
def test_every_command_that_loads_a_model_names_an_unreadable_checkpoint(
    tmp_path: Path, damage, monkeypatch, capsys
) -> None:
    run = tmp_path / "run"
    Trainer(tiny_run_config(tmp_path, steps=10), run, show_progress=False).fit()
    checkpoint = run / "checkpoints" / "last.pt"
    broken = damage(checkpoint.read_bytes())
    checkpoint.write_bytes(broken)
    commands = [
        ["train", "--resume", "--name", "run", "--runs-dir", str(tmp_path), "--quiet"],
        ["sample", str(run), "--chars", "10"],
        ["damage", str(run), "--noise", "0.1"],
        ["compress", str(run), "--prune", "0.2"],
        ["lazarus-curve", str(run)],
    ]
    capsys.readouterr()
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main replaces it
    for args in commands:
        monkeypatch.setattr(sys, "argv", ["apoptosis", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        err = capsys.readouterr().err
        assert exited.value.code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "last.pt" in lines[0] and "corrupt" in lines[0], (args, err)
        assert checkpoint.read_bytes() == broken  # never overwritten
