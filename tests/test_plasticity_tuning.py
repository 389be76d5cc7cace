"""Tuning for the plasticity benchmark: a search whose objective is the benchmark's excess loss on
tasks of its own, and a benchmark that runs each method with its study's best parameters."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from apoptosis.core.errors import ApoptosisError
from apoptosis.plasticity.benchmark import Settings, plan_cells, record_arguments, run_benchmark
from apoptosis.plasticity.tuning import read_tuned
from apoptosis.search.objective import PlasticityObjective
from apoptosis.search.optuna_search import run_optuna
from apoptosis.search.space import SearchSpace
from apoptosis.search.study import StudySpec
from tests.test_cli import run_main
from tests.test_plasticity import tiny

QUIET = Console(quiet=True)


def tuning_study(tmp_path: Path, strategy: str, param: str, trials: int = 2) -> tuple[StudySpec, Settings]:
    benchmark = tiny(methods=(strategy,), tasks=4, probe_every=0)
    spec = StudySpec(
        name=f"tune-{strategy}", study_dir=tmp_path / f"tune-{strategy}", kind="optuna", objective="plasticity",
        base=benchmark.base_config(), steps=benchmark.steps_per_task, seeds=[1],
        space=SearchSpace.from_registry([strategy], [], {}, only=[param]), sampler="qmc", pruner="none",
        plasticity=benchmark,
    )  # fmt: skip
    run_optuna(spec, trials, 1, QUIET)
    return spec, benchmark


def test_the_objective_is_the_excess_loss_of_the_last_quarter_on_tasks_of_its_own(tmp_path: Path) -> None:
    spec, benchmark = tuning_study(tmp_path, "shrink_perturb", "shrink")
    trials = pd.read_csv(spec.study_dir / "trials.csv")
    assert trials["state"].tolist() == ["COMPLETE", "COMPLETE"]
    assert set(trials.filter(like="params_strategy.").columns) == {"params_strategy.name", "params_strategy.shrink"}
    assert trials["params_strategy.shrink"].nunique() == 2  # the one parameter is searched, nothing else
    for trial in trials.itertuples():
        seed = PlasticityObjective.TASK_SEED_OFFSET + 1
        rows = pd.read_csv(spec.study_dir / "trials" / f"{trial.number:04d}-s{seed}" / "tasks.csv")
        assert trial.value == pytest.approx(rows["excess_loss"].tail(1).mean())  # 4 tasks: the last one
        assert rows["probe_loss"].isna().all()  # no probe: tuning reads the trained tasks only
        family = benchmark.family(benchmark.base_config().model.block_size)
        assert rows["entropy_rate"].tolist() == pytest.approx([family.task(seed, i).entropy_rate for i in range(4)])
        assert rows["entropy_rate"].tolist() != pytest.approx([family.task(1, i).entropy_rate for i in range(4)])
    assert not (spec.study_dir / "trials" / "fresh").exists()


def test_the_benchmark_runs_each_method_with_its_studys_best_parameters(tmp_path: Path) -> None:
    spec, _ = tuning_study(tmp_path / "studies", "cbp", "replacement_rate")
    trials = pd.read_csv(spec.study_dir / "trials.csv")
    best = float(trials.sort_values("value").iloc[0]["params_strategy.replacement_rate"])
    tuned = read_tuned([tmp_path / "studies"], ("none", "cbp"))
    assert tuned == (("cbp", "replacement_rate", pytest.approx(best)),)
    assert read_tuned([tmp_path / "studies"], ("none",)) == ()  # a study of a method not compared is unused
    settings = tiny(methods=("none", "cbp"), tuned=tuned)
    cells = {cell.strategy: cell for cell in plan_cells(settings, tmp_path / "bench")}
    assert cells["cbp"].config.strategy.params["replacement_rate"] == pytest.approx(best)
    assert cells["none"].config.strategy.params == {}
    record_arguments(tmp_path / "bench", settings)
    saved = json.loads((tmp_path / "bench" / "arguments.json").read_text())
    assert saved["tuned"] == [["cbp", "replacement_rate", pytest.approx(best)]]
    with pytest.raises(ApoptosisError, match="--tuned"):
        record_arguments(tmp_path / "bench", replace(settings, tuned=()))
    frame, _ = run_benchmark(replace(settings, methods=("cbp",)), tmp_path / "run", QUIET)
    config = (tmp_path / "run" / "cbp-s1" / "config.toml").read_text()
    assert f"replacement_rate = {best!r}" in config and len(frame) == 3


def test_a_method_tuned_twice_or_a_folder_without_studies_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    tuning_study(tmp_path / "a", "redo", "tau", trials=1)
    tuning_study(tmp_path / "b", "redo", "tau", trials=1)
    with pytest.raises(ApoptosisError, match="redo is tuned by two studies"):
        read_tuned([tmp_path / "a", tmp_path / "b"], ("redo",))
    unfinished = tmp_path / "c" / "tune-hybrid"
    unfinished.mkdir(parents=True)
    (unfinished / "trials.csv").write_text("number,state,value,params_strategy.name\n0,FAIL,,hybrid\n")
    assert read_tuned([tmp_path / "a", tmp_path / "c"], ("redo",))[0][0] == "redo"  # another method's: skipped
    with pytest.raises(ApoptosisError, match="no complete trial"):
        read_tuned([tmp_path / "c"], ("hybrid",))
    (tmp_path / "empty").mkdir()
    args = ["plasticity", "--methods", "none", "--tuned", str(tmp_path / "empty"), "--runs-dir", str(tmp_path / "r")]
    code, _, err = run_main(args, monkeypatch, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "no search study there" in err
