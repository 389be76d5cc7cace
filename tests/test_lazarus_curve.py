"""``apoptosis lazarus-curve``: the rows of a sweep, its controls, resuming a stopped sweep, settings
checks, list options, plots and table (a tiny trained run and two recovery steps per row)."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

import apoptosis.lazarus.curve_runner as curve_runner
from apoptosis.cli.main import app
from apoptosis.core.config import RunConfig
from apoptosis.lazarus.curve_grid import KEY, CurveSettings, plan
from apoptosis.lazarus.curve_report import LOSS_PLOT, RECOVERY_PLOT, SETTINGS_FILE, summarize
from apoptosis.lazarus.curve_runner import CSV_FILE, read_curve
from apoptosis.lazarus.damage import DamageSpec, damage_model
from apoptosis.lazarus.recovery import compare_models, evaluation_batches, recovery_fraction
from apoptosis.training import Trainer, load_model
from tests.conftest import tiny_run_config
from tests.test_cli import run_cli, run_main

SMALL = ["--noise", "0.3", "--prune", "0.5", "--losses", "full,consistency", "--seeds", "2"]
FAST = ["--steps", "2", "--batch-size", "2", "--seq-len", "8"]
MEASURES = [c for c in curve_runner.MEASURES if c != "seconds"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curve")
    Trainer(tiny_run_config(tmp, steps=100, strategy="none"), tmp / "run", show_progress=False).fit()
    return tmp / "run"


@pytest.fixture(scope="module")
def cli():
    runner = CliRunner(env={"COLUMNS": "160"})  # wide enough for the table's headers on one line
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def swept(run_dir, cli):
    """The small sweep into the default folder: (folder, its rows, the command's output)."""
    result = cli("lazarus-curve", run_dir, *SMALL, *FAST)
    assert result.exit_code == 0, result.output
    out = run_dir / "lazarus-curve"
    return out, read_curve(out / CSV_FILE), result.output


def _keys(frame: pd.DataFrame) -> list[tuple]:
    return list(frame[KEY].itertuples(index=False, name=None))


def test_plan_runs_each_distinct_recovery_once():
    settings = CurveSettings(noise=(0.2,), prune=(0.5,), losses=("full", "entropy"), seeds=1)
    assert [c.key for _, cells in plan(settings) for c in cells] == [
        ("noise", 0.2, False, 0, "-", "-", "none"),
        ("noise", 0.2, False, 0, "-", "original", "full"),  # no mask after noise: one mode
        ("noise", 0.2, False, 0, "-", "damaged", "full"),
        ("noise", 0.2, False, 0, "-", "-", "entropy"),  # no consistency term: the anchor is never read
        ("prune", 0.5, False, 0, "-", "-", "none"),
        ("prune", 0.5, False, 0, "frozen", "original", "full"),
        ("prune", 0.5, False, 0, "regrow", "original", "full"),
        ("prune", 0.5, False, 0, "frozen", "damaged", "full"),
        ("prune", 0.5, False, 0, "regrow", "damaged", "full"),
        ("prune", 0.5, False, 0, "frozen", "-", "entropy"),
        ("prune", 0.5, False, 0, "regrow", "-", "entropy"),
    ]
    defaults = [c for _, cells in plan(CurveSettings()) for c in cells]
    assert len(defaults) == 3 * (4 * 7 + 4 * 13)  # the count docs/lazarus.md gives
    assert sum(c.loss != "none" for c in defaults) == 3 * (4 * 6 + 4 * 12)


def test_rows_are_exactly_the_plan(swept):
    _, frame, _ = swept
    expected = []
    for seed in (0, 1):
        expected.append(("noise", 0.3, False, seed, "-", "-", "none"))  # no recovery: once per damage and seed
        expected += [
            ("noise", 0.3, False, seed, "-", a, loss)
            for a in ("original", "damaged")
            for loss in ("full", "consistency")
        ]
        expected.append(("prune", 0.5, False, seed, "-", "-", "none"))
        expected += [
            ("prune", 0.5, False, seed, mode, a, loss)
            for a in ("original", "damaged")
            for mode in ("frozen", "regrow")
            for loss in ("full", "consistency")
        ]
    assert _keys(frame) == expected
    assert len(frame) == 28
    recovered = frame[frame["loss"] != "none"]
    assert (recovered["seconds"] > 0).all() and (frame.loc[frame["loss"] == "none", "seconds"] == 0).all()


def test_numbers_agree_with_recovery_fraction_and_compare_models(swept, run_dir):
    _, frame, _ = swept

    def same(a, b):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)

    for r in frame.to_dict("records"):
        assert same(r["loss_recovery"], recovery_fraction(r["clean_loss"], r["damaged_loss"], r["recovered_loss"]))
        assert same(
            r["accuracy_recovery"],
            recovery_fraction(r["clean_accuracy"], r["damaged_accuracy"], r["recovered_accuracy"]),
        )
        assert same(
            r["temperature_scaled_loss_recovery"],
            recovery_fraction(r["clean_loss"], r["damaged_loss"], r["temperature_scaled_loss"]),
        )
    assert frame["clean_loss"].nunique() == 1
    per_damage = frame.groupby(["kind", "amount", "seed"])[["damaged_loss", "temperature", "temperature_scaled_loss"]]
    assert (per_damage.nunique() == 1).all().all()  # measured once per damage, the same in each of its rows
    none = frame[frame["loss"] == "none"]
    assert (none["recovered_loss"] == none["damaged_loss"]).all()
    assert (none["loss_recovery"].fillna(0) == 0).all()
    # the sweep's reuse of clean logits and temperature gives what compare_models gives
    original, vocab, ckpt = load_model(run_dir)
    damaged = copy.deepcopy(original)
    damage_model(damaged, DamageSpec("noise", 0.3, seed=1))
    report, calibration = evaluation_batches(RunConfig.from_dict(ckpt["config"]), vocab)
    figures = compare_models(original, damaged, damaged, report, calibration)["models"]
    row = none[(none["kind"] == "noise") & (none["seed"] == 1)].iloc[0]
    assert row["clean_loss"] == pytest.approx(figures["clean"]["loss"], abs=1e-6)
    assert row["damaged_loss"] == pytest.approx(figures["damaged"]["loss"], abs=1e-6)
    assert row["damaged_agreement"] == pytest.approx(figures["damaged"]["agreement"], abs=1e-6)
    assert row["temperature"] == pytest.approx(figures["temperature_scaled"]["temperature"], rel=1e-4)
    assert row["temperature_scaled_loss"] == pytest.approx(figures["temperature_scaled"]["loss"], abs=1e-5)


def test_files_table_and_settings(swept):
    out, frame, output = swept
    for name in (RECOVERY_PLOT, LOSS_PLOT):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / SETTINGS_FILE).read_text())
    assert saved["settings"]["noise"] == [0.3] and saved["settings"]["steps"] == 2 and saved["source_run"] == ".."
    for fragment in ("loss rec.", "acc. rec.", "T-scaled", "none", "consistency", "±", str(out / CSV_FILE)):
        assert fragment in output, fragment
    summary = summarize(frame)
    assert len(summary) == (2 + 4) + (2 + 8)  # per damage: none, T-scaled and its recoveries
    assert (summary["seeds"] == 2).all()


class Killed(Exception):
    """Stands for the process being killed in the middle of a recovery."""


def test_a_stopped_sweep_resumes_without_redoing_rows(swept, run_dir, cli, tmp_path, monkeypatch):
    _, complete, _ = swept
    out = tmp_path / "curve"
    real = curve_runner.recover_copy
    calls = []

    def stop_at_fourth(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 4:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(curve_runner, "recover_copy", stop_at_fourth)
    result = cli("lazarus-curve", run_dir, *SMALL, *FAST, "--out", out, "--quiet")
    assert isinstance(result.exception, Killed)
    first = read_curve(out / CSV_FILE)
    assert len(first) == 4  # the no-recovery row and three recoveries, each written when it finished
    first_text = (out / CSV_FILE).read_text().splitlines()

    calls.clear()
    monkeypatch.setattr(curve_runner, "recover_copy", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    assert cli("lazarus-curve", run_dir, *SMALL, *FAST, "--out", out, "--quiet").exit_code == 0
    assert len(calls) == 24 - 3
    resumed = read_curve(out / CSV_FILE)
    assert (out / CSV_FILE).read_text().splitlines()[: len(first_text)] == first_text  # untouched
    assert _keys(resumed) == _keys(complete)
    pd.testing.assert_frame_equal(resumed[MEASURES], complete[MEASURES], rtol=1e-6)  # same numbers as in one go

    lost = [3, 5, 20]  # two recoveries and a no-recovery row: only they are measured again
    dropped = resumed.drop(index=lost)
    (out / CSV_FILE).write_text(dropped.to_csv(index=False))
    calls.clear()
    assert cli("lazarus-curve", run_dir, *SMALL, *FAST, "--out", out, "--quiet").exit_code == 0
    assert len(calls) == 2
    again = read_curve(out / CSV_FILE)
    pd.testing.assert_frame_equal(again.drop(index=lost), dropped)
    pd.testing.assert_frame_equal(again[MEASURES], complete[MEASURES], rtol=1e-6)

    calls.clear()
    assert cli("lazarus-curve", run_dir, *SMALL, *FAST, "--out", out, "--quiet").exit_code == 0
    assert calls == []  # finished: only the plots and table are made again


def test_resume_with_other_settings_is_refused(swept, run_dir, cli, tmp_path, monkeypatch, capsys):
    out, _, _ = swept
    before = (out / CSV_FILE).read_bytes()
    code, _, err = run_main(["lazarus-curve", str(run_dir), *SMALL, *FAST[:-2], "--seq-len", "6"], monkeypatch, capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "other settings" in err and "seq_len 8 there, 6 here" in err and "--out" in err
    assert (out / CSV_FILE).read_bytes() == before
    # the same lists in another order are the same sweep: nothing to run again
    monkeypatch.setattr(curve_runner, "recover_copy", lambda *a, **k: pytest.fail("a finished row ran again"))
    reordered = ["--noise", "0.3", "--prune", "0.5", "--losses", "consistency,full", "--anchors", "damaged,original"]
    assert cli("lazarus-curve", run_dir, *reordered, "--seeds", "2", *FAST, "--quiet").exit_code == 0
    assert (out / CSV_FILE).read_bytes() == before
    # a folder that is not a sweep's is never written into
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run_main(["lazarus-curve", str(run_dir), *SMALL, *FAST, "--out", str(other)], monkeypatch, capsys)
    assert code == 2 and "not a lazarus-curve folder" in err and len(err.splitlines()) == 1, err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_only_one_kind_structured_regrow(run_dir, cli, tmp_path):
    out = tmp_path / "structured"
    args = ["--noise", "", "--prune", "0.4", "--structured", "--modes", "regrow", "--anchors", "damaged"]
    result = cli("lazarus-curve", run_dir, *args, "--losses", "stability", "--seeds", "1", *FAST, "--out", out)
    assert result.exit_code == 0, result.output
    assert _keys(read_curve(out / CSV_FILE)) == [
        ("prune", 0.4, True, 0, "-", "-", "none"),
        ("prune", 0.4, True, 0, "regrow", "-", "stability"),  # no consistency term: no teacher, no anchor
    ]


BAD_LISTS = [
    (["--noise", "0.1,abc"], "--noise takes comma-separated numbers > 0"),
    (["--noise", "-0.1"], "every --noise level must be > 0"),
    (["--prune", "0.5,1"], "strictly between 0 and 1"),
    (["--prune", "0.3,0.3"], "--prune lists 0.3 twice"),
    (["--losses", "full,magic"], "full, consistency, stability, entropy"),
    (["--losses", "noise"], "no-recovery control is always included"),
    (["--modes", "sideways"], "--modes takes a comma-separated list of frozen, regrow"),
    (["--anchors", ""], "--anchors needs at least one of original, damaged"),
    (["--noise", "", "--prune", ""], "nothing to sweep"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--seq-len", "99"], "--seq-len must be in 2..16"),
    (["--steps", "0"], "--steps must be >= 1"),
]


@pytest.mark.parametrize(("args", "message"), BAD_LISTS)
def test_bad_options_are_one_line_errors(run_dir, tmp_path, monkeypatch, capsys, args, message):
    out = tmp_path / "never"
    code, _, err = run_main(["lazarus-curve", str(run_dir), *args, "--out", str(out)], monkeypatch, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not out.exists()


def test_bad_list_from_a_real_process(run_dir, tmp_path):
    run = shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("lazarus-curve"))
    result = run_cli(["lazarus-curve", str(run), "--losses", "full,bogus"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "error: --losses takes a comma-separated list of full, consistency, stability, entropy "
        "(the no-recovery control is always included, as 'none'), got 'bogus'"
    ]
    assert not (run / "lazarus-curve").exists()
