"""Search: the space comes from the registry, the synthetic objective has its stated optimum, a
study queues exactly its trials, resumes, records failures, and Taguchi runs each row once and
analyses it. Real training is used with tiny runs; most tests use the synthetic objective."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from rich.console import Console

from apoptosis.core.config import RunConfig
from apoptosis.core.errors import ApoptosisError
from apoptosis.search.compare import compare_searches
from apoptosis.search.objective import SyntheticObjective
from apoptosis.search.optuna_search import run_optuna
from apoptosis.search.space import (
    Factors,
    LevelSpace,
    SearchSpace,
    apply_settings,
    grid_points,
    strategy_distributions,
)
from apoptosis.search.study import StudySpec
from apoptosis.search.taguchi import run_taguchi
from tests.conftest import tiny_run_config
from tests.test_cli import run_cli, run_main

QUIET = Console(quiet=True)


def spec_for(tmp_path, space, kind="optuna", objective="synthetic", base=None, **kw) -> StudySpec:
    return StudySpec(
        name=kw.pop("name", "s"),
        study_dir=tmp_path / kw.pop("folder", "study"),
        kind=kind,
        objective=objective,
        base=base or RunConfig(),
        steps=kw.pop("steps", 20),
        seeds=kw.pop("seeds", [1]),
        space=space,
        **kw,
    )


def write_factors(tmp_path, text: str):
    path = tmp_path / "factors.toml"
    path.write_text(text, encoding="utf-8")
    return path


L9_FACTORS = """
[factors]
"strategy.prune_rate" = [0.05, 0.1, 0.2]
"strategy.interval" = [100, 200, 400]
"strategy.mutation_strength" = [0.1, 0.3, 0.6]
"strategy.maturity" = [0, 250, 500]
"""


# --- the space -------------------------------------------------------------------------------


def test_space_comes_from_the_strategy_declarations():
    dims = strategy_distributions("standard")
    assert dims["prune_rate"] == FloatDistribution(0.01, 0.3)
    assert dims["interval"] == IntDistribution(50, 2000, log=True)
    assert dims["outgoing"] == CategoricalDistribution(["zero", "split", "copy"])
    space = SearchSpace.from_registry(["standard", "hybrid"], ["trainer.lr"], {"interval": 300})
    assert "interval" not in space.strategy_dims["standard"] and "interval" not in space.strategy_dims["hybrid"]
    assert space.strategy_fixed["standard"] == {"interval": 300}
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    settings = space.suggest(trial)
    assert settings["strategy.name"] in ("standard", "hybrid") and settings["strategy.interval"] == 300
    assert 1e-4 <= settings["trainer.lr"] <= 3e-3
    assert set(trial.params) >= {"strategy", "trainer.lr"}
    config = apply_settings(RunConfig(), settings)
    assert config.strategy.name == settings["strategy.name"] and config.trainer.lr == settings["trainer.lr"]


def test_space_errors_name_what_is_allowed():
    with pytest.raises(ApoptosisError, match="tunable: trainer.lr"):
        SearchSpace.from_registry(["standard"], ["trainer.nonsense"], {})
    with pytest.raises(ApoptosisError, match="no searched strategy has parameter 'bogus'"):
        SearchSpace.from_registry(["standard"], [], {"bogus": 1})
    with pytest.raises(ApoptosisError, match="prune_rate"):
        SearchSpace.from_registry(["standard"], [], {"prune_rate": 0.9})


def test_levels_span_ranges_and_factor_files_are_checked(tmp_path):
    factors = Factors.from_toml_file(write_factors(tmp_path, L9_FACTORS + '\n[base]\n"model.n_layer" = 2\n'))
    base = factors.base_config(RunConfig())
    assert base.model.n_layer == 2
    space = SearchSpace.from_levels(factors.levels, base)
    assert space.strategy_dims["standard"]["interval"] == IntDistribution(100, 400, log=True)  # declared log
    assert space.strategy_dims["standard"]["prune_rate"] == FloatDistribution(0.05, 0.2)
    bad = Factors.from_toml_file(write_factors(tmp_path, '[factors]\n"strategy.prune_rate" = [0.1, 0.9]\n'))
    with pytest.raises(ApoptosisError, match="factor strategy.prune_rate = 0.9"):
        bad.base_config(RunConfig())
    with pytest.raises(ApoptosisError, match="2 or more distinct levels"):
        Factors.from_toml_file(write_factors(tmp_path, '[factors]\n"trainer.lr" = [0.001]\n'))
    with pytest.raises(ApoptosisError, match="unknown table"):
        Factors.from_toml_file(write_factors(tmp_path, '[factor]\n"trainer.lr" = [0.001, 0.002]\n'))


def test_synthetic_objective_has_its_stated_optimum():
    objective = SyntheticObjective()
    dims = strategy_distributions("standard")
    at_optimum = {"strategy.name": "standard", "strategy.outgoing": "zero"}
    for name in ("prune_rate", "mutation_strength", "maturity", "parent_pool"):
        low, high = dims[name].low, dims[name].high
        at_optimum[f"strategy.{name}"] = low + 0.3 * (high - low)
    low, high = dims["interval"].low, dims["interval"].high
    at_optimum["strategy.interval"] = low * (high / low) ** 0.3  # a log range: 30% on the log scale
    assert objective.clean_value(at_optimum) == pytest.approx(1.0, abs=1e-3)  # interval rounds to an int
    assert objective.clean_value({**at_optimum, "strategy.outgoing": "copy"}) == pytest.approx(1.25, abs=1e-3)
    hybrid = {"strategy.name": "hybrid", "strategy.interval": at_optimum["strategy.interval"]}
    assert objective.clean_value(hybrid) == pytest.approx(1.25, abs=1e-3)  # only standard is optimal


# --- Optuna studies --------------------------------------------------------------------------


def test_grid_puts_one_parameter_at_the_centres_of_equal_bins(tmp_path):
    cbp = SearchSpace.from_registry(["cbp"], [], {}, only=["replacement_rate"])  # log range 1e-6 .. 1e-2
    values = [point["cbp.replacement_rate"] for point in grid_points(cbp, 3)]
    assert values == pytest.approx([1e-6 * 10 ** (4 / 6), 1e-4, 1e-6 * 10 ** (20 / 6)])
    shrink = SearchSpace.from_registry(["shrink_perturb"], [], {}, only=["shrink"])  # linear 0.1 .. 1.0
    assert [p["shrink_perturb.shrink"] for p in grid_points(shrink, 3)] == pytest.approx([0.25, 0.55, 0.85])
    maturity = SearchSpace.from_registry(["standard"], [], {}, only=["maturity"])  # integers 0 .. 1000
    assert [p["standard.maturity"] for p in grid_points(maturity, 4)] == [125, 375, 625, 875]
    with pytest.raises(ApoptosisError, match="--sampler grid searches one numeric parameter"):
        grid_points(SearchSpace.from_registry(["cbp"], [], {}), 3)
    spec = spec_for(tmp_path, shrink, sampler="grid", pruner="none")
    run_optuna(spec, 3, 1, QUIET)
    study = run_optuna(spec, 3, 1, QUIET)  # a rerun plans nothing more
    ran = sorted(t.user_attrs["settings"]["strategy.shrink"] for t in study.trials)
    assert ran == pytest.approx([0.25, 0.55, 0.85])
    with pytest.raises(ApoptosisError, match="is a grid of 3 trials"):
        run_optuna(spec, 4, 1, QUIET)
    assert "plasticity" not in spec.signature()  # studies of other objectives keep their signature


def test_optuna_study_runs_exactly_its_trials_resumes_and_writes_results(tmp_path):
    space = SearchSpace.from_registry(["standard", "hybrid"], [], {})
    spec = spec_for(tmp_path, space, sampler="tpe", pruner="median")
    study = run_optuna(spec, 12, 1, QUIET)
    assert len(study.trials) == 12
    frame = pd.read_csv(spec.study_dir / "trials.csv")
    assert len(frame) == 12 and set(frame["state"]) <= {"COMPLETE", "PRUNED"}
    best = frame[frame.state == "COMPLETE"].sort_values("value").iloc[0]
    config = RunConfig.from_toml_file(spec.study_dir / "best.toml")  # what `apoptosis train --config` reads
    assert config.strategy.name == best["params_strategy.name"] and config.trainer.steps == spec.steps
    for png in ("history.png", "slices.png"):
        assert (spec.study_dir / png).stat().st_size > 1000
    study = run_optuna(spec, 15, 1, QUIET)  # the same command with more trials resumes the study
    assert len(study.trials) == 15
    run_optuna(spec, 15, 1, QUIET)  # and with as many trials, runs nothing more
    assert len(optuna.load_study(study_name="s", storage=study._storage).trials) == 15


def test_a_resumed_search_does_not_repeat_its_earlier_parameters(tmp_path):
    space = SearchSpace.from_registry(["standard"], [], {})
    spec = spec_for(tmp_path, space, sampler="random", pruner="none")
    run_optuna(spec, 4, 1, QUIET)
    run_optuna(spec, 8, 1, QUIET)  # interrupted after 4, then the same command again
    study = run_optuna(spec, 12, 1, QUIET)
    drawn = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(drawn) == 12 and len(set(drawn)) == 12


def test_tpe_beats_random_on_the_synthetic_objective_over_seeds(tmp_path):
    """A sanity check of the whole loop: with 40 trials, TPE's best is at least as good as
    random search's on most sampler seeds."""
    space = SearchSpace.from_registry(["standard"], [], {})
    wins = 0
    for seed in range(3):
        best = {}
        for sampler in ("tpe", "random"):
            spec = spec_for(tmp_path, space, folder=f"{sampler}{seed}", sampler=sampler, sampler_seed=seed,
                            pruner="none", synthetic=SyntheticObjective(noise=0.0))  # fmt: skip
            best[sampler] = run_optuna(spec, 40, 1, QUIET).best_value
        wins += best["tpe"] <= best["random"]
    assert wins >= 2


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path, monkeypatch):
    original = SyntheticObjective.__call__

    def sometimes_fails(self, trial, settings, seeds):
        if trial.number % 3 == 1:
            raise ApoptosisError("training loss became nan at step 7")
        return original(self, trial, settings, seeds)

    monkeypatch.setattr(SyntheticObjective, "__call__", sometimes_fails)
    spec = spec_for(tmp_path, SearchSpace.from_registry(["standard"], [], {}), pruner="none")
    run_optuna(spec, 6, 1, QUIET)
    frame = pd.read_csv(spec.study_dir / "trials.csv")
    failed = frame[frame.state == "FAIL"]
    assert list(failed["number"]) == [1, 4]
    assert (failed["fail_reason"] == "ApoptosisError: training loss became nan at step 7").all()
    assert (frame[frame.state != "FAIL"]["state"] == "COMPLETE").all() and len(frame) == 6


def test_resuming_with_a_different_search_is_refused(tmp_path):
    spec = spec_for(tmp_path, SearchSpace.from_registry(["standard"], [], {}))
    run_optuna(spec, 2, 1, QUIET)
    other = spec_for(tmp_path, SearchSpace.from_registry(["hybrid"], [], {}))
    with pytest.raises(ApoptosisError, match="started with different space"):
        run_optuna(other, 2, 1, QUIET)


def test_training_objective_reports_and_averages_real_runs(tmp_path):
    base = tiny_run_config(tmp_path, steps=20)
    spec = spec_for(tmp_path, SearchSpace.from_registry(["standard"], [], {"interval": 10, "maturity": 0}),
                    objective="train", base=base, steps=20, seeds=[1, 2], pruner="none")  # fmt: skip
    study = run_optuna(spec, 2, 1, QUIET)
    for trial in study.trials:
        assert trial.state.name == "COMPLETE"
        finals = [json.loads((spec.study_dir / "trials" / f"{trial.number:04d}-s{s}" / "summary.json").read_text())
                  ["final_val_loss"] for s in (1, 2)]  # fmt: skip
        assert trial.user_attrs["seed_values"] == pytest.approx(finals)
        assert trial.value == pytest.approx(sum(finals) / 2)
        assert sorted(trial.intermediate_values) == [10, 20, 30, 40]  # seed 2 reports after seed 1's steps
        assert trial.user_attrs["settings"]["strategy.interval"] == 10


# --- Taguchi ---------------------------------------------------------------------------------


def test_taguchi_runs_each_row_once_analyses_and_confirms(tmp_path):
    factors = Factors.from_toml_file(write_factors(tmp_path, L9_FACTORS))
    spec = spec_for(tmp_path, LevelSpace(factors.levels), kind="taguchi", seeds=[1, 2, 3])
    result = run_taguchi(spec, None, 1, QUIET)
    assert result.array.name == "L9"
    rows = pd.read_csv(spec.study_dir / "taguchi.csv")
    assert sorted(rows["row"]) == list(range(9)) and (rows["n"] == 3).all()
    analysis = json.loads((spec.study_dir / "analysis.json").read_text())
    assert {a["factor"] for a in analysis["anova"]} == {*factors.levels, "error", "total"}
    assert sum(a["percent_contribution"] for a in analysis["anova"] if a["factor"] != "total") == pytest.approx(100)
    best = analysis["predicted_sn"]["best_levels"]
    # the synthetic optimum sits 30% into each declared range: the levels nearest to it win
    assert best["strategy.prune_rate"] == 0.1 and best["strategy.mutation_strength"] == 0.3
    assert analysis["confirmation"]["levels"] == best and len(analysis["confirmation"]["seed_values"]) == 3
    assert RunConfig.from_toml_file(spec.study_dir / "best.toml").strategy.params["prune_rate"] == 0.1
    assert (spec.study_dir / "main_effects.png").stat().st_size > 1000
    n_trials = len(pd.read_csv(spec.study_dir / "trials.csv"))
    assert n_trials == 10  # 9 rows + 1 confirmation
    run_taguchi(spec, None, 1, QUIET)  # resuming a finished design runs nothing again
    assert len(pd.read_csv(spec.study_dir / "trials.csv")) == n_trials


def test_taguchi_on_tiny_real_runs(tmp_path):
    factors = Factors.from_toml_file(write_factors(tmp_path, """
[factors]
"strategy.prune_rate" = [0.05, 0.2]
"strategy.interval" = [5, 10]
"trainer.lr" = [0.001, 0.003]
[base]
"strategy.maturity" = 0
"""))  # fmt: skip
    base = factors.base_config(tiny_run_config(tmp_path, steps=20))
    spec = spec_for(tmp_path, LevelSpace(factors.levels), kind="taguchi", objective="train", base=base, seeds=[1, 2])
    result = run_taguchi(spec, None, 1, QUIET, confirm=False)
    assert result.array.name == "L4" and result.confirmation is None
    runs = sorted(p.name for p in (spec.study_dir / "trials").iterdir())
    assert len(runs) == 8  # 4 rows x 2 seeds, each a real run folder
    assert result.rows["mean"].between(0.5, 5).all()


def test_an_array_too_small_is_a_clear_error(tmp_path):
    factors = Factors.from_toml_file(write_factors(tmp_path, L9_FACTORS))
    spec = spec_for(tmp_path, LevelSpace(factors.levels), kind="taguchi")
    with pytest.raises(ApoptosisError, match="L8"):
        run_taguchi(spec, "L8", 1, QUIET)


def test_search_compare_on_the_synthetic_objective(tmp_path):
    factors = Factors.from_toml_file(write_factors(tmp_path, L9_FACTORS))
    frame = compare_searches(factors, RunConfig(), "synthetic", 20, 1, None, None, 2, tmp_path / "cmp", QUIET)
    assert sorted(frame["method"].unique()) == ["random", "taguchi", "tpe"] and len(frame) == 6
    assert (frame["trials"] == 10).all()  # the same budget: L9 + a confirmation
    assert (frame["true_value"] >= 1.0).all() and (frame["true_value"] < 1.6).all()
    assert (tmp_path / "cmp" / "search_compare.csv").exists()


# --- the command line ------------------------------------------------------------------------


def test_cli_search_commands_and_their_errors(tmp_path, monkeypatch, capsys):
    factors = write_factors(tmp_path, L9_FACTORS)
    ok = run_cli(["search", "optuna", "--study", "a", "--objective", "synthetic", "--trials", "4"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "best trials" in ok.stdout and (tmp_path / "runs" / "a" / "best.toml").exists()
    ok = run_cli(["search", "taguchi", "--study", "t", "--factors", str(factors), "--objective", "synthetic"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "ANOVA" in ok.stdout and "Predicted optimum" in ok.stdout
    for args, message in [
        (["search", "optuna", "--study", "b", "--sampler", "nope"], "--sampler must be one of tpe"),
        (["search", "optuna", "--study", "b", "--objective", "x"], "--objective must be one of train, plasticity"),
        (
            ["search", "taguchi", "--study", "c", "--factors", str(factors), "--objective", "plasticity"],
            "--objective must be one of train, synthetic",
        ),
        (
            ["search", "optuna", "--study", "b", "--strategies", "cbp", "--params", "tau"],
            "--params 'tau' is not a searchable parameter of cbp",
        ),
        (
            ["search", "optuna", "--study", "b", "--objective", "plasticity", "--data", "x.txt"],
            "--data does not apply to --objective plasticity",
        ),
        (["search", "optuna", "--study", "b", "--storage", "not-a-url"], "is not a database URL"),
        (["search", "taguchi", "--study", "c", "--factors", "missing.toml"], "factors file not found"),
        (["search", "taguchi", "--study", "c", "--factors", str(factors), "--array", "L99"], "unknown"),
        (["search", "optuna", "--study", "a", "--strategies", "hybrid", "--objective", "synthetic"], "different"),
    ]:
        monkeypatch.chdir(tmp_path)
        rc, _, err = run_main(args, monkeypatch, capsys)  # in this process: a subprocess per error is slow
        assert rc == 2 and "Traceback" not in err, err
        assert message in err and len(err.strip().splitlines()) == 1, err
