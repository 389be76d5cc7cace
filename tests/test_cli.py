"""The ``apoptosis`` command line: user errors are one line on stderr and exit code 2 (never a
traceback), and a tiny ``train`` -> ``sample`` -> ``ages`` round trip works.

The main cases run ``python -m apoptosis.cli`` as a real process; further variations call
``apoptosis.cli.main.main`` in this process, which saves an interpreter and torch start-up each."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from rich.console import Console

CLI = [sys.executable, "-m", "apoptosis.cli"]


def run_cli(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["COLUMNS"] = "120"  # a pipe has no terminal width; fix it so tables render the same everywhere
    env.pop("FORCE_COLOR", None)
    env.setdefault("OMP_NUM_THREADS", "1")  # a tiny model on a small shared machine: threads only contend
    return subprocess.run(CLI + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def write_corpus(path: Path) -> str:
    """A few KB of varied sentences, so every window of the val split is usable."""
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while seven wise kings sing of rivers and stone".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))).capitalize() + "." for _ in range(120)]
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return text


TINY = [
    "--steps", "40",
    "--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2",
    "--set", "model.d_ff=64", "--set", "model.block_size=16",
    "--set", "trainer.batch_size=4", "--set", "trainer.eval_interval=10", "--set", "trainer.eval_batches=2",
    "--set", "strategy.interval=10", "--set", "strategy.maturity=5",
]  # fmt: skip


# --- user errors ------------------------------------------------------------------------------

# id -> (arguments, fragments the one-line message must contain); each runs as its own process
ERROR_CASES: dict[str, tuple[list[str], list[str]]] = {
    "unknown-key": (["train", "--set", "model.nope=1"], ["'model.nope'", "n_layer"]),
    "wrong-type": (["train", "--set", "trainer.steps=abc"], ["trainer.steps", "an integer", "'abc'"]),
    "unknown-strategy": (["train", "--strategy", "nosuch"], ["'nosuch'", "none", "standard"]),
    "missing-data": (["train", "--data", "missing.txt"], ["not found", "missing.txt"]),
    "empty-data": (["train", "--data", "empty.txt"], ["empty", "empty.txt"]),
    "bad-utf8": (["train", "--data", "bad-utf8.bin"], ["not valid UTF-8", "offset 6", "line 2"]),
    "param-range": (["train", "--set", "strategy.prune_rate=0.9"], ["prune_rate", "0.0 <= prune_rate <= 0.5"]),
    "sample-no-run": (["sample", "runs/nosuch"], ["no checkpoint", "nosuch"]),
    "ages-no-run": (["ages", "runs/nosuch"], ["not a run folder", "nosuch"]),
    "resume-no-name": (["train", "--resume"], ["--resume needs --name"]),
}

# more of the same, run in this process through apoptosis.cli.main (no interpreter start-up each)
MORE_ERROR_CASES: dict[str, tuple[list[str], list[str]]] = {
    "unknown-section": (["train", "--set", "nope.x=1"], ["'nope.x'", "trainer"]),
    "set-without-equals": (["train", "--set", "model.n_layer"], ["expected key=value"]),
    "data-is-folder": (["train", "--data", "folder"], ["not a file"]),
    "short-data": (["train", "--data", "short.txt", "--set", "model.block_size=64"], ["block_size + 1 = 65"]),
    "param-unknown": (["train", "--set", "strategy.prune=0.1"], ["'prune'", "prune_rate", "interval"]),
    "param-type": (["train", "--set", "strategy.interval=fast"], ["interval", "an integer"]),
    "invalid-config": (["train", "--set", "model.d_model=30"], ["divisible"]),
    "bad-device": (["train", "--device", "tpu"], ["trainer.device", "'tpu'"]),
    "config-missing": (["train", "--config", "nope.toml"], ["config file not found"]),
    "sample-chars": (["sample", "runs/nosuch", "--chars", "0"], ["--chars must be >= 1"]),
    "sample-temperature": (["sample", "runs/nosuch", "--temperature", "0"], ["--temperature must be > 0"]),
    "resume-with-options": (["train", "--resume", "--name", "x", "--steps", "5"], ["nothing to resume"]),
    "resume-nothing": (["train", "--resume", "--name", "x"], ["nothing to resume"]),
}


def make_inputs(cwd: Path) -> None:
    (cwd / "empty.txt").write_bytes(b"")
    (cwd / "bad-utf8.bin").write_bytes(b"hello\n\xc3\x28 world\n")
    (cwd / "short.txt").write_text("just a few characters\n" * 3, encoding="utf-8")
    (cwd / "folder").mkdir()


def with_run_folder(case: str, args: list[str], cwd: Path) -> list[str]:
    if args[0] != "train":
        return args
    args = [*args, "--runs-dir", str(cwd / "runs")]
    return args if "--name" in args or "--resume" in args else [*args, "--name", case]


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``apoptosis ARGS`` in this process: (exit code, stdout, stderr)."""
    from apoptosis.cli.main import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["apoptosis", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """Every error case, run concurrently (each is mostly interpreter and torch start-up)."""
    cwd = tmp_path_factory.mktemp("errors")
    make_inputs(cwd)

    def one(case: str) -> subprocess.CompletedProcess:
        return run_cli(with_run_folder(case, ERROR_CASES[case][0], cwd), cwd)

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        results = dict(zip(ERROR_CASES, pool.map(one, ERROR_CASES), strict=True))
    return cwd, results


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_error_is_one_line_and_exit_2(case: str, error_runs) -> None:
    cwd, results = error_runs
    result = results[case]
    _, fragments = ERROR_CASES[case]
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    # a run that failed before training starts leaves no run folder behind
    assert not (cwd / "runs" / case).exists()


def test_known_strategies_are_listed_sorted(error_runs) -> None:
    _, results = error_runs
    message = results["unknown-strategy"].stderr.strip()
    strategies, followers = message.split("strategies: ", 1)[1].split("; followers (--then, or A+B in compare): ")
    strategies, followers = strategies.split(", "), followers.split(", ")
    assert strategies == sorted(strategies) and {"none", "standard", "cbp"} <= set(strategies)
    assert followers == sorted(followers) and {"lazarus", "replay"} <= set(followers)
    assert not set(followers) & set(strategies)


@pytest.mark.parametrize("case", list(MORE_ERROR_CASES))
def test_more_user_errors_in_process(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    args, fragments = MORE_ERROR_CASES[case]
    code, _, err = run_main(with_run_folder(case, args, tmp_path), monkeypatch, capsys)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "runs" / case).exists()


def test_typer_usage_error_is_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    """Not ours to word, but the exit code is the same: an unknown option."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["train", "--nope"], monkeypatch, capsys)
    assert code == 2 and "--nope" in err and "Traceback" not in err


def test_malformed_cuda_device_is_a_user_error(tmp_path: Path, monkeypatch, capsys) -> None:
    write_corpus(tmp_path / "tiny.txt")
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", "tiny.txt", "--device", "cudax", "--runs-dir", str(tmp_path / "runs"), "--name", "d"]
    code, _, err = run_main(args, monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and "trainer.device" in err


# --- strategies --json ------------------------------------------------------------------------


def test_strategies_json(tmp_path: Path) -> None:
    result = run_cli(["strategies", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    by_name = {item["name"]: item for item in listing}
    assert [item["name"] for item in listing] == sorted(by_name)
    assert {"none", "standard"} <= set(by_name)
    assert by_name["none"]["parameters"] == []
    assert by_name["standard"]["description"]
    params = {p["name"]: p for p in by_name["standard"]["parameters"]}
    prune = params["prune_rate"]
    assert prune["default"] == 0.1
    assert prune["type"] == "a number"
    assert prune["low"] == 0.0 and prune["high"] == 0.5
    low, high = prune["search"]
    assert prune["low"] <= low < high <= prune["high"]
    assert params["outgoing"]["choices"] == ["zero", "split", "copy"]
    assert {"interval", "maturity", "mutation_strength", "parent_pool"} <= set(params)


def test_strategies_pattern_filters(monkeypatch, capsys) -> None:
    code, out, err = run_main(["strategies", "--json", "st*"], monkeypatch, capsys)
    assert code == 0, err
    assert [item["name"] for item in json.loads(out)] == ["stability_first", "standard"]
    code, out, err = run_main(["strategies", "--json", "stan*"], monkeypatch, capsys)
    assert [item["name"] for item in json.loads(out)] == ["standard"]
    code, out, _ = run_main(["strategies", "--json", "zzz*"], monkeypatch, capsys)
    assert code == 0 and json.loads(out) == []


# --- end to end -------------------------------------------------------------------------------

RUN_FILES = (
    "config.toml", "vocab.json", "metrics.csv", "events.jsonl", "lineage.csv", "summary.json",
    "checkpoints/last.pt", "loss.png", "ages.png",
)  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """One tiny run: (cwd, run folder, corpus text, the train process)."""
    cwd = tmp_path_factory.mktemp("e2e")
    text = write_corpus(cwd / "tiny.txt")
    result = run_cli(["train", "--data", "tiny.txt", *TINY, "--name", "t", "--runs-dir", str(cwd / "runs")], cwd)
    return cwd, cwd / "runs" / "t", text, result


def test_train_end_to_end(trained) -> None:
    cwd, run, text, result = trained
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    out = result.stdout
    assert "Run t" in out
    assert "final val loss" in out and "neurons replaced" in out
    assert "Neuron ages" in out
    assert "Largest living lineages" in out
    for name in RUN_FILES:
        assert (run / name).is_file(), name
        assert (run / name).stat().st_size > 0 or name == "events.jsonl", name
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "ages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 40 and summary["strategy"] == "standard"
    assert summary["events"] == 3  # steps 10, 20, 30; never at the last step
    assert summary["neurons_replaced"] == 18  # round(0.1 * 64) per event
    assert summary["neurons"] == 64
    assert f"{summary['final_val_loss']:.4f}" in out

    metrics = (run / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert metrics[0] == "step,train_loss,val_loss,lr,tokens_per_s,neurons,events"
    assert [int(line.split(",")[0]) for line in metrics[1:]] == [10, 20, 30, 40]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["step"] for e in events] == [10, 20, 30]

    vocab = json.loads((run / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == sorted(set(text))


def test_train_saves_the_full_config(trained) -> None:
    from apoptosis.core.config import RunConfig

    _, run, text, result = trained
    assert result.returncode == 0
    config = RunConfig.from_toml_file(run / "config.toml")
    assert config.model.n_layer == 1 and config.model.d_model == 32 and config.model.d_ff == 64
    assert config.model.vocab_size == len(set(text))
    assert config.trainer.steps == 40 and config.trainer.batch_size == 4
    # the strategy's defaults are filled in beside what was set
    assert config.strategy.params["interval"] == 10 and config.strategy.params["maturity"] == 5
    assert config.strategy.params["prune_rate"] == 0.1 and config.strategy.params["outgoing"] == "zero"


def test_sample(trained, monkeypatch, capsys) -> None:
    cwd, run, text, result = trained
    assert result.returncode == 0
    sample = run_cli(["sample", str(run), "--chars", "50"], cwd)
    assert sample.returncode == 0, sample.stderr
    generated = sample.stdout
    assert generated.startswith("\n")  # the default prompt
    assert len(generated) >= 51  # the prompt and 50 characters (and print's newline)
    assert set(generated) <= set(text)
    # seeded: the same command in this process gives the same text; another seed and prompt differ
    code, out, err = run_main(["sample", str(run), "--chars", "50"], monkeypatch, capsys)
    assert code == 0 and out == generated, err
    code, other, err = run_main(
        ["sample", str(run), "--chars", "20", "--seed", "1", "--prompt", "The"], monkeypatch, capsys
    )
    assert code == 0, err
    assert other.startswith("The") and len(other) == len("The") + 20 + 1
    assert other != generated


def test_sample_unknown_prompt_character(trained, monkeypatch, capsys) -> None:
    _, run, _, result = trained
    assert result.returncode == 0
    code, _, err = run_main(["sample", str(run), "--chars", "5", "--prompt", "~"], monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error: ") and "'~'" in err and len(err.splitlines()) == 1


def test_ages(trained) -> None:
    cwd, run, _, result = trained
    assert result.returncode == 0
    ages = run_cli(["ages", str(run)], cwd)
    assert ages.returncode == 0, ages.stderr
    assert "Neuron ages at step 40" in ages.stdout
    assert "Largest living lineages" in ages.stdout
    rows = [line for line in ages.stdout.splitlines() if line.startswith("│")]
    labels = [row.split("│")[1].strip() for row in rows]
    assert labels[:2] == ["0", "all"]  # one layer, then the total
    assert "18" in rows[1]  # deaths


def test_ages_table_readable_at_80_columns(trained) -> None:
    from apoptosis.analysis.report import print_ages

    _, run, _, result = trained
    assert result.returncode == 0
    buffer = io.StringIO()
    print_ages(run, Console(file=buffer, width=80))
    rows = [line for line in buffer.getvalue().splitlines() if line.startswith("│")]
    assert [row.split("│")[1].strip() for row in rows[:2]] == ["0", "all"]


def test_train_again_same_name_is_refused(trained) -> None:
    cwd, run, _, result = trained
    assert result.returncode == 0
    before = snapshot(run)
    summary_bytes = (run / "summary.json").read_bytes()
    again = run_cli(["train", "--data", "tiny.txt", *TINY, "--name", "t", "--runs-dir", str(cwd / "runs")], cwd)
    assert again.returncode == 2
    lines = again.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "already holds a run" in lines[0] and "--resume" in lines[0]
    assert (run / "summary.json").read_bytes() == summary_bytes
    assert snapshot(run) == before


def test_resume_from_another_directory(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    _, run, _, result = trained
    assert result.returncode == 0
    runs = tmp_path / "runs"
    shutil.copytree(run, runs / "t")  # resume a copy: the shared run stays as it is
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run_main(
        ["train", "--resume", "--name", "t", "--runs-dir", str(runs), "--quiet"], monkeypatch, capsys
    )
    assert code == 0, err
