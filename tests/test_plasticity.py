"""``apoptosis plasticity``: tasks with a known floor, the measures on constructed activations, and
tiny benchmarks that write their rows once, resume to the same numbers and split into shards."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console
from scipy import stats

from apoptosis.core.config import ModelConfig, RunConfig
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.model import GPT
from apoptosis.plasticity import benchmark
from apoptosis.plasticity.benchmark import COLUMNS, CellRun, Settings, record_arguments, run_benchmark
from apoptosis.plasticity.measures import dormant_fraction, effective_rank, weight_norm
from apoptosis.plasticity.report import MEASURES, last_task_stats, paired_stats, results_tables
from apoptosis.plasticity.tasks import PROBE, MarkovChain, TaskFamily, memorisation_floor
from apoptosis.training import Trainer
from tests.test_cli import run_main

TINY_SETS = ("model.n_layer=1", "model.d_model=16", "model.n_head=2", "model.d_ff=32", "model.block_size=16",
             "trainer.batch_size=4")  # fmt: skip
QUIET = Console(quiet=True)


def tiny(methods: tuple[str, ...] = ("none",), **changes) -> Settings:
    """A benchmark of seconds: a 1-layer model of width 16, 10 steps per task, 5-step probes."""
    settings = Settings(methods=methods, tasks=3, steps_per_task=10, seeds=1, vocab=8, probe_steps=5, sets=TINY_SETS)
    return replace(settings, **changes)


# --- tasks ------------------------------------------------------------------------------------


def test_entropy_rate_and_window_floor_match_empirical_estimates() -> None:
    chain = MarkovChain.draw(6, 2, 0.5, np.random.default_rng(0))
    x = chain.sample(300_000, np.random.default_rng(1))
    context = x[:-2] * 6 + x[1:-1]
    empirical_rate = -np.log(chain.table[context, x[2:]]).mean()
    assert chain.entropy_rate() == pytest.approx(empirical_rate, abs=0.01)
    pairs = chain.stationary.reshape(6, 6)  # P(x1, x2): the first position of a window sees one token
    first = -np.log((pairs / pairs.sum(axis=1, keepdims=True))[x[:-1], x[1:]]).mean()
    assert first > empirical_rate + 0.05  # one token of context is worth less than two
    assert chain.window_optimum(16) == pytest.approx((first + 15 * empirical_rate) / 16, abs=0.01)


def test_tasks_are_the_same_for_a_seed_and_differ_across_seeds_and_indices() -> None:
    family = TaskFamily(vocab=4, orders=(1, 3), block_size=16)
    a, again = family.task(1, 0), family.task(1, 0)
    assert torch.equal(a.dataset.train, again.dataset.train) and a.entropy_rate == again.entropy_rate
    for other in (family.task(2, 0), family.task(1, 1), family.task(1, 0, PROBE)):
        assert not torch.equal(a.dataset.train, other.dataset.train)
    assert {family.task(1, i).order for i in range(8)} == {1, 3}


def test_memorisation_floor_known_answers() -> None:
    constant, alternating = np.zeros(40, dtype=np.int64), np.arange(40) % 2
    assert memorisation_floor(constant, alternating, 4) == pytest.approx(math.log(2))  # one context, 2 targets
    assert memorisation_floor(np.arange(40), alternating, 4) == 0.0  # every context unique


def test_random_label_task_serves_its_targets() -> None:
    task = TaskFamily(vocab=8, random_labels=200, block_size=16).task(1, 0)
    data = task.dataset
    x, y = data.batch("train", 4, torch.Generator().manual_seed(0))
    starts = torch.randint(len(data.train) - 16, (4,), generator=torch.Generator().manual_seed(0))  # as batch()
    assert torch.equal(y, torch.stack([data.targets["train"][s : s + 16] for s in starts]))
    assert not torch.equal(y[:, :-1], x[:, 1:])  # not the next tokens
    assert task.entropy_rate == pytest.approx(math.log(8)) and 0 <= task.optimal_loss < math.log(8)


# --- measures ---------------------------------------------------------------------------------


def test_dormant_fraction_and_effective_rank_known_answers() -> None:
    layer_1 = torch.tensor([[-0.1, 0.005, 0.5, -0.2], [-0.05, 0.0, 0.0, 0.3]])  # units 0, 1 never above 0.01
    layer_2 = torch.zeros(2, 2)
    assert dormant_fraction([layer_1]) == 0.5
    assert dormant_fraction([layer_1, layer_2]) == pytest.approx(4 / 6)
    assert effective_rank(torch.eye(5)[:, :3] * 2.0) == pytest.approx(3.0)
    assert effective_rank(torch.outer(torch.arange(1.0, 6.0), torch.ones(4))) == pytest.approx(1.0)
    assert effective_rank(torch.diag(torch.tensor([2.0, 1.0]))) == pytest.approx(
        math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    )
    assert effective_rank(torch.zeros(3, 3)) == 0.0
    model = GPT(ModelConfig(vocab_size=8, n_layer=1, n_head=2, d_model=8, d_ff=8, block_size=4))
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert weight_norm(model) == pytest.approx(float(flat.norm()), rel=1e-6)


def test_relu_is_an_option_and_configs_without_it_are_gelu() -> None:
    relu = GPT(ModelConfig(vocab_size=8, n_layer=1, n_head=2, d_model=8, d_ff=8, block_size=4, activation="relu"))
    assert isinstance(relu.blocks[0].mlp.act, torch.nn.ReLU)
    assert RunConfig.from_dict({"model": {"n_layer": 2}}).model.activation == "gelu"
    with pytest.raises(ApoptosisError, match="model.activation"):
        ModelConfig(activation="tanh").validate()


def test_the_table_averages_the_last_tasks_per_seed_then_over_seeds() -> None:
    rows = [
        {"method": m, "seed": seed, "task": task, "train_seconds": 1.0 + (m == "cbp"),
         **{c: 10.0 * seed + task + (m == "cbp") for c in MEASURES}}
        for m in ("none", "cbp") for seed in (1, 2, 3) for task in (1, 2, 3)
    ]  # fmt: skip
    summary = last_task_stats(pd.DataFrame(rows), last=2).set_index("method")
    per_seed = np.array([10.0 * seed + 2.5 for seed in (1, 2, 3)])  # the mean of tasks 2 and 3
    low, _ = stats.t.interval(0.95, 2, loc=per_seed.mean(), scale=stats.sem(per_seed))
    assert summary.loc["none", "excess_loss"] == pytest.approx(per_seed.mean())
    assert summary.loc["none", "excess_loss_ci"] == pytest.approx(per_seed.mean() - low)
    assert summary.loc["cbp", "probe_loss"] == pytest.approx(per_seed.mean() + 1)
    assert summary.loc["cbp", "train_seconds"] == 2.0 and list(summary.index) == ["none", "cbp"]


def test_time_per_task_is_the_median_so_one_paused_task_does_not_count() -> None:
    rows = [
        {"method": "none", "seed": seed, "task": task, "train_seconds": 1000.0 if (seed, task) == (1, 3) else 4.0,
         **{c: 0.0 for c in MEASURES}}
        for seed in (1, 2) for task in (1, 2, 3, 4)
    ]  # fmt: skip
    summary = last_task_stats(pd.DataFrame(rows), last=2).set_index("method")
    assert summary.loc["none", "train_seconds"] == 4.0


def test_paired_differences_cancel_the_seeds_and_count_only_shared_seeds() -> None:
    rng = np.random.default_rng(0)
    hard = {1: 0.0, 2: 5.0, 3: 10.0}  # a seed's tasks are harder or easier for every method alike
    gap = {1: 0.10, 2: 0.12, 3: 0.14}  # redo's excess loss above none's, per seed
    rows = [
        {"method": m, "seed": seed, "task": task, "train_seconds": 1.0,
         "excess_loss": hard[seed] + (gap[seed] if m == "redo" else 0.0) + task,
         "probe_loss": hard[seed] + task + 0.5 * (m == "redo"), "fresh_probe_loss": hard[seed] + task - 0.25,
         **{c: float(rng.random()) for c in ("dormant_fraction", "effective_rank", "weight_norm")}}
        for m, seeds in (("none", (1, 2, 3)), ("redo", (1, 2, 3)), ("cbp", (2,))) for seed in seeds
        for task in (1, 2, 3)
    ]  # fmt: skip
    paired = paired_stats(pd.DataFrame(rows), last=2).set_index("method")
    gaps = np.array(list(gap.values()))
    low, _ = stats.t.interval(0.95, 2, loc=gaps.mean(), scale=stats.sem(gaps))
    assert paired.loc["redo", "vs_none_excess"] == pytest.approx(0.12)  # the seeds' 0, 5, 10 cancel
    assert paired.loc["redo", "vs_none_excess_ci"] == pytest.approx(0.12 - low)
    assert paired.loc["redo", "vs_none_probe"] == pytest.approx(0.5) and paired.loc["redo", "vs_none_probe_ci"] == 0
    assert paired.loc["none", "behind_fresh"] == pytest.approx(0.25)
    assert paired.loc["redo", "behind_fresh"] == pytest.approx(0.75)
    assert paired.loc["cbp", "paired_seeds"] == 1 and np.isnan(paired.loc["cbp", "vs_none_excess_ci"])
    unprobed = paired_stats(pd.DataFrame(rows).assign(probe_loss=np.nan), last=2).set_index("method")
    assert unprobed.loc["redo", "paired_seeds"] == 3  # seeds are counted by the excess loss, measured always


def test_late_against_early_is_the_methods_own_probe_loss_at_the_end_minus_after_its_first_task() -> None:
    rows = [
        {"method": m, "seed": seed, "task": task, "train_seconds": 1.0, "excess_loss": 0.0,
         "probe_loss": 9.0 if task == 1 else (0.2 * task + seed if m == "none" else 1.0 + seed),
         "fresh_probe_loss": 1.0, **{c: 0.0 for c in ("dormant_fraction", "effective_rank", "weight_norm")}}
        for m in ("none", "cbp") for seed in (1, 2) for task in range(1, 6)
    ]  # fmt: skip
    paired = paired_stats(pd.DataFrame(rows), last=2).set_index("method")
    # none: tasks 4-5 (0.8, 1.0) minus tasks 2-3 (0.4, 0.6); task 1 (the untrained network's probe) left out
    assert paired.loc["none", "late_vs_early"] == pytest.approx(0.4) and paired.loc["none", "late_vs_early_ci"] == 0
    assert paired.loc["cbp", "late_vs_early"] == pytest.approx(0.0)
    overlapping = paired_stats(pd.DataFrame(rows), last=4).set_index("method")  # no early task before the last 4
    assert np.isnan(overlapping.loc["none", "late_vs_early"])
    tables = results_tables(pd.DataFrame(rows), 2, "t")
    console = Console(record=True, width=80)
    for table in tables:
        console.print(table)
    text = console.export_text()
    assert "late - early" in text and "+0.400±0.000" in text and "…" not in text  # fits 80 columns uncut


# --- the trainer at task boundaries -------------------------------------------------------------


def phase_snapshots(method: str, run_dir: Path, **params) -> list[tuple[str, int, dict[str, torch.Tensor]]]:
    """(moment, phase, weights) at every phase-start and phase-end call of a 2-task run."""
    settings = tiny(tasks=2)
    family = settings.family(16)
    corpora = {benchmark.task_name(i): family.task(1, i).dataset for i in range(2)}
    config = settings.base_config()
    config.strategy.name = method
    config.strategy.params = dict(params)
    calls = []

    def record(moment: str):
        return lambda index: calls.append(
            (moment, index, {k: v.clone() for k, v in trainer.model.state_dict().items()})
        )

    trainer = Trainer(config, run_dir, show_progress=False, corpora=corpora,
                      on_phase_start=record("start"), on_phase_end=record("end"))  # fmt: skip
    trainer.fit()
    return calls


def test_phase_hooks_see_the_trained_weights_then_what_full_reset_leaves(tmp_path: Path) -> None:
    seen = {method: phase_snapshots(method, tmp_path / method) for method in ("none", "full_reset")}
    for calls in seen.values():
        assert [(moment, index) for moment, index, _ in calls] == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    ln = "blocks.0.ln_1.weight"
    trained, none_next = seen["none"][1][2], seen["none"][2][2]
    assert not torch.equal(trained[ln], torch.ones_like(trained[ln]))  # training moved the LayerNorm
    assert all(torch.equal(trained[k], none_next[k]) for k in trained)  # none changes nothing at the boundary
    reset_end, reset_next = seen["full_reset"][1][2], seen["full_reset"][2][2]
    assert torch.equal(reset_end[ln], trained[ln])  # the same run until the boundary
    assert torch.equal(reset_next[ln], torch.ones_like(reset_next[ln]))  # a fresh network after it
    assert not torch.equal(reset_next["blocks.0.mlp.fc.weight"], reset_end["blocks.0.mlp.fc.weight"])


def test_a_task_ends_before_the_events_of_its_last_step(tmp_path: Path) -> None:
    """An event on a task's last step belongs to what the next task starts from, not to the
    measurement of the task that ends (evaluation always precedes a step's events)."""
    plain = phase_snapshots("none", tmp_path / "none")
    evented = phase_snapshots("standard", tmp_path / "standard", interval=10, maturity=0, prune_rate=0.5)
    fc = "blocks.0.mlp.fc.weight"
    assert torch.equal(evented[1][2][fc], plain[1][2][fc])  # task 1's end: as trained, before the surgery
    assert not torch.equal(evented[2][2][fc], evented[1][2][fc])  # the surgery at step 10 comes after it


def test_measuring_tasks_changes_nothing_in_training(tmp_path: Path) -> None:
    """Probes, task-end losses and network state run on the run's model between its steps: the
    weights, the optimizer and the fitness a strategy chooses by must end as they would unmeasured."""

    def trained(out: Path, measured: bool) -> CellRun:
        settings = tiny(methods=("standard",), tasks=3, probe_every=1)
        cell = benchmark.plan_cells(settings, out)[0]
        cell.config.strategy.params.update(interval=7, maturity=0, prune_rate=0.25)  # events inside tasks
        run = CellRun(cell, settings, out)
        if not measured:
            run.task_starts = run.task_ends = lambda index: None
        run.run()
        return run

    measured, unmeasured = trained(tmp_path / "measured", True), trained(tmp_path / "unmeasured", False)
    assert len(pd.read_csv(tmp_path / "measured" / "standard-s1" / "tasks.csv")) == 3
    for part in (lambda run: run.trainer.model.state_dict(), lambda run: run.trainer.optimizer.state_dict(),
                 lambda run: run.trainer.fitness.state_dict()):  # fmt: skip
        torch.testing.assert_close(part(measured), part(unmeasured), rtol=0, atol=0)  # bit for bit
    events = [
        json.loads(line) for line in (tmp_path / "measured" / "standard-s1" / "events.jsonl").read_text().splitlines()
    ]
    assert sum(e["kind"] == "standard" for e in events) == 4  # steps 7, 14, 21, 28: the strategy did act


# --- the benchmark ----------------------------------------------------------------------------


def test_shards_cover_the_grid_once_and_the_results_have_one_row_per_cell_and_task(tmp_path, monkeypatch) -> None:
    settings = tiny(methods=("none", "full_reset"), tasks=2)
    frame, cells = run_benchmark(settings, tmp_path, QUIET, shard=(1, 2))
    assert cells == 2 and set(frame["method"]) == {"none"} and not (tmp_path / "full_reset-s1").exists()
    frame, _ = run_benchmark(settings, tmp_path, QUIET, shard=(2, 2))
    written = pd.read_csv(tmp_path / "plasticity.csv")
    assert set(COLUMNS) <= set(written.columns) and len(written) == 4
    assert sorted(zip(written["method"], written["seed"], written["task"], strict=True)) == [
        ("full_reset", 1, 1), ("full_reset", 1, 2), ("none", 1, 1), ("none", 1, 2)
    ]  # fmt: skip
    first = written[written["task"] == 1]
    assert (first["probe_loss"] == first["fresh_probe_loss"]).all()  # task 1 starts from the run's initial network
    assert np.allclose(written["excess_loss"], written["val_loss"] - written["optimal_loss"], atol=1e-6)
    assert written[["probe_loss", "dormant_fraction", "effective_rank", "weight_norm"]].notna().all().all()
    assert (tmp_path / "plasticity.png").exists()
    assert "val_task001" not in pd.read_csv(tmp_path / "none-s1" / "metrics.csv").columns  # no all-task evaluations
    events = [json.loads(line) for line in (tmp_path / "full_reset-s1" / "events.jsonl").read_text().splitlines()]
    assert {e["step"] for e in events if e["kind"] == "full_reset"} == {10}  # reset at the task boundary
    monkeypatch.setattr(CellRun, "run", lambda self: pytest.fail("a finished cell ran again"))
    again, _ = run_benchmark(settings, tmp_path, QUIET)
    pd.testing.assert_frame_equal(again, frame)


def test_cells_run_seed_by_seed(tmp_path, monkeypatch) -> None:
    order = []
    monkeypatch.setattr(CellRun, "run", lambda self: order.append((self.cell.strategy, self.cell.seed)))
    run_benchmark(tiny(methods=("none", "full_reset"), seeds=2), tmp_path, QUIET)
    assert order == [("none", 1), ("full_reset", 1), ("none", 2), ("full_reset", 2)]


class Killed(Exception):
    pass


def test_a_benchmark_killed_after_a_row_resumes_to_the_same_rows(tmp_path, monkeypatch) -> None:
    settings = tiny(probe_every=2)  # probes at tasks 1 and 3 (the last)
    straight, _ = run_benchmark(settings, tmp_path / "straight", QUIET)
    task_ends = CellRun.task_ends

    def killed_after_task_2(self: CellRun, index: int) -> None:
        task_ends(self, index)
        if index == 1:  # its row is written, its checkpoint not yet
            raise Killed

    monkeypatch.setattr(CellRun, "task_ends", killed_after_task_2)
    with pytest.raises(Killed):
        run_benchmark(settings, tmp_path / "killed", QUIET)
    assert len(pd.read_csv(tmp_path / "killed" / "none-s1" / "tasks.csv")) == 2
    monkeypatch.setattr(CellRun, "task_ends", task_ends)
    resumed, _ = run_benchmark(settings, tmp_path / "killed", QUIET)
    assert resumed["task"].tolist() == [1, 2, 3] and resumed["probe_loss"].isna().tolist() == [False, True, False]
    timing = ["train_seconds"]
    pd.testing.assert_frame_equal(resumed.drop(columns=timing), straight.drop(columns=timing))


def test_other_options_for_the_same_folder_are_refused_by_name(tmp_path: Path) -> None:
    settings = tiny()
    record_arguments(tmp_path, settings)
    record_arguments(tmp_path, settings)  # the same options: continue
    with pytest.raises(ApoptosisError, match="--steps-per-task 10, not 20"):
        record_arguments(tmp_path, replace(settings, steps_per_task=20))
    with pytest.raises(ApoptosisError, match="--set"):
        record_arguments(tmp_path, replace(settings, sets=()))


CLI_ERRORS = {
    "unknown-method": (["--methods", "none,nosuch"], ["'nosuch'", "none"]),
    "no-tasks": (["--methods", "none", "--tasks", "0"], ["--tasks must be >= 1"]),
    "bad-shard": (["--methods", "none", "--shard", "3/2", "--name", "x"], ["--shard must be I/N"]),
    "shard-without-name": (["--methods", "none", "--shard", "1/2"], ["--shard needs --name"]),
    "activation": (["--methods", "none", "--activation", "tanh"], ["--activation", "gelu, relu"]),
    "vocab": (["--methods", "none", "--vocab", "100"], ["--vocab must be in 2..62"]),
    "orders": (["--methods", "none", "--orders", "2,x"], ["--orders"]),
    "huge-order": (["--methods", "none", "--orders", "5"], ["--orders", "vocab^k"]),
}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_bad_options_are_one_line_and_exit_2(case: str, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    args, fragments = CLI_ERRORS[case]
    code, _, err = run_main(["plasticity", *args, "--runs-dir", str(tmp_path / "runs")], monkeypatch, capsys)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    assert not (tmp_path / "runs").exists()  # nothing written
