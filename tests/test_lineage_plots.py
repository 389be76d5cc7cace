"""lineage.png: clade counts of a hand-built lineage are exact, a run without births draws, every
run writes the picture, and ``apoptosis lineage`` draws a finished or killed run and names a bad
folder in one line."""

from __future__ import annotations

import io
import shutil
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from apoptosis.cli.main import main
from apoptosis.core.lineage import Lineage
from apoptosis.training import Trainer
from apoptosis.training.lineage_plots import LONE, SMALLER, clade_counts, founders, largest_clades, plot_lineage
from tests.conftest import tiny_run_config

PNG = b"\x89PNG\r\n\x1a\n"
STEPS = [0, 5, 10, 15, 20, 30]


def hand_built() -> pd.DataFrame:
    """Four founders (ids 1-4) in one layer. Step 10: 2 dies, 5 is born of 1. Step 20: 1 dies,
    6 is born of 5; 3 dies, 7 is born of 4 and 5 (crossover: clade of 4). Step 30: 4 dies, 8 is
    born of 7."""
    lineage = Lineage.founders([4])
    for step, dead, slot, parents in [(10, 2, 1, (1,)), (20, 1, 0, (5,)), (20, 3, 2, (4, 5)), (30, 4, 3, (7,))]:
        lineage.death(dead, step, "low_fitness", 0.0)
        lineage.birth(0, slot, step, parents, 1.0)
    return lineage.to_frame()


def counts_table(frame: pd.DataFrame, top: int) -> dict[int, list[int]]:
    table = clade_counts(frame, STEPS, top).pivot(index="step", columns="clade", values="count")
    assert list(table.index) == STEPS
    return {int(clade): table[clade].tolist() for clade in table.columns}


def test_clade_counts_of_a_hand_built_lineage_are_exact() -> None:
    frame = hand_built()
    assert founders(frame).tolist() == [1, 2, 3, 4, 1, 1, 4, 4]  # 7 follows its first parent
    assert counts_table(frame, top=8) == {
        SMALLER: [0, 0, 0, 0, 0, 0],
        LONE: [2, 2, 1, 1, 0, 0],  # 2 and 3 never had a child
        1: [1, 1, 2, 2, 2, 2],
        4: [1, 1, 1, 1, 2, 2],
    }
    assert counts_table(frame, top=1) == {  # ties go to the lower founder id
        SMALLER: [1, 1, 1, 1, 2, 2],
        LONE: [2, 2, 1, 1, 0, 0],
        1: [1, 1, 2, 2, 2, 2],
    }
    # lineage.csv reads its empty parents as NaN: the same counts
    from_csv = pd.read_csv(io.StringIO(frame.to_csv(index=False)))
    assert counts_table(from_csv, top=8) == counts_table(frame, top=8)
    clades = largest_clades(frame, 30)
    assert clades.to_dict("list") == {
        "layer": [0, 0], "founder": [1, 4], "living": [2, 2], "share": [0.5, 0.5], "generations": [2, 3],
    }  # fmt: skip
    assert largest_clades(frame, 10).to_dict("list")["founder"] == [1]


def test_a_run_without_births_is_one_band_per_layer_and_no_tree() -> None:
    frame = Lineage.founders([6, 3]).to_frame()
    counts = clade_counts(frame, [0, 50])
    assert set(counts["clade"]) == {LONE, SMALLER}
    assert counts[counts["clade"] == LONE].groupby("layer")["count"].agg(list).to_dict() == {0: [6, 6], 1: [3, 3]}
    assert largest_clades(frame, 50).empty
    fig = plot_lineage(frame, 50, [], "none")
    assert len(fig.axes) == 2  # one Muller row per layer, no family tree


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lineage")
    run = tmp / "run"
    Trainer(tiny_run_config(tmp, steps=30, interval=10, maturity=5), run, show_progress=False).fit()
    return run


def lineage_command(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main replaces it
    monkeypatch.setattr(sys, "argv", ["apoptosis", "lineage", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_every_run_writes_lineage_png(run_dir: Path) -> None:
    assert (run_dir / "lineage.png").read_bytes()[:8] == PNG
    assert (pd.read_csv(run_dir / "lineage.csv")["birth_step"] > 0).any()  # the picture has births to show


def test_lineage_command_draws_a_finished_run_and_a_killed_one(run_dir: Path, tmp_path: Path, monkeypatch, capsys):
    out = tmp_path / "finished.png"
    code, printed, err = lineage_command([str(run_dir), "--clades", "3", "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    assert out.read_bytes()[:8] == PNG
    assert "finished.png" in printed and "Largest clades at step 30" in printed
    killed = tmp_path / "killed"  # a run stopped after its last checkpoint: no lineage.csv, no summary
    shutil.copytree(run_dir, killed, ignore=shutil.ignore_patterns("lineage.*", "summary.json"))
    code, printed, err = lineage_command([str(killed)], monkeypatch, capsys)
    assert code == 0, err
    assert (killed / "lineage.png").read_bytes()[:8] == PNG
    assert "Largest clades at step 30" in printed


def test_lineage_command_on_a_bad_folder_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = lineage_command([str(tmp_path / "nothing")], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "not a run folder" in lines[0], err
