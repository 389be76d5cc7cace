"""Continual training: phases of corpora in one run, per-corpus evaluations, phase hooks, the
``stability_first`` and ``replay`` followers, exact resume, and ``apoptosis continual``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from apoptosis.continual.experiment import continual_config, fresh_config
from apoptosis.core.config import RunConfig, StrategyConfig
from apoptosis.core.model import frozen_copy
from apoptosis.core.registry import STRATEGIES
from apoptosis.core.strategy import Phase, Strategy, TrainingContext, build_strategy
from apoptosis.training import Trainer, lr_at, read_events, read_metrics
from tests.conftest import make_colony, tiny_run_config
from tests.test_cli import run_cli, run_main

S, K = 20, 5  # steps per phase, plasticity steps
PROSE = "the cat sat on the mat and the dog ran far away from home. " * 120
CODE = "def f(x):\n    return [x * 2 for x in range(10)] + {1: 2}\n" * 120


def corpora(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "prose.txt").write_text(PROSE, encoding="utf-8")
    (tmp_path / "code.txt").write_text(CODE, encoding="utf-8")
    return tmp_path / "prose.txt", tmp_path / "code.txt"


def phased_config(tmp_path: Path, schedule: str = "prose,code,prose", **strategy_params) -> RunConfig:
    files = dict(zip(("prose", "code"), corpora(tmp_path), strict=True))
    named, phases = set(), []
    for name in schedule.split(","):  # name=FILE the first time, the bare name after
        phases.append(name if name in named else f"{name}={files[name]}")
        named.add(name)
    config = tiny_run_config(tmp_path, strategy="none")
    config.trainer.eval_interval = 10
    return continual_config(config, ",".join(phases), S, K)


class _PhaseRecorder(Strategy):
    """Test-only: records the phase hooks and the corpus of each step's batch."""

    name = "_phase_recorder"
    uses_fitness = False

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self.phases: list[Phase] = []

    def on_phase_end(self, ctx: TrainingContext, phase: Phase) -> None:
        self.phases.append(phase)


def test_phases_switch_corpus_evaluate_every_corpus_and_restart_the_schedule(tmp_path: Path) -> None:
    config = phased_config(tmp_path)
    config.strategy = StrategyConfig("_phase_recorder")
    STRATEGIES.register(_PhaseRecorder)
    try:
        trainer = Trainer(config, tmp_path / "run", show_progress=False)
        seen = []
        draw = trainer.corpora["code"].batch

        def watched(*args, **kwargs):
            seen.append(trainer.step)
            return draw(*args, **kwargs)

        trainer.corpora["code"].batch = watched
        summary = trainer.fit()
    finally:
        STRATEGIES._entries.pop("_phase_recorder")
    assert seen == list(range(S + 1, 2 * S + 1))  # code is trained in phase 2 only
    assert [(p.index, p.corpus, p.end_step) for p in trainer.strategy.phases] == [(0, "prose", S), (1, "code", 2 * S)]
    assert set(trainer.data.vocab.chars) == set(PROSE) | set(CODE)
    metrics = read_metrics(tmp_path / "run")
    assert {"phase", "val_prose", "val_code"} <= set(metrics.columns)
    evals = metrics.dropna(subset=["val_prose"])
    assert {K, S, S + K, 2 * S, 2 * S + K, 3 * S} <= set(evals["step"])  # phase ends and K into each phase
    assert evals["val_code"].notna().all()
    assert list(metrics.set_index("step").loc[[S, S + K, 2 * S + K], "phase"]) == [0, 1, 2]
    phase_lines = [e for e in read_events(tmp_path / "run") if e["kind"] == "phase"]
    assert [(e["step"], e["ended"], e["next"]) for e in phase_lines] == [(S, "prose", "code"), (2 * S, "code", "prose")]
    assert lr_at(S + 1, config) == lr_at(1, config) and lr_at(2 * S, config) == lr_at(S, config)
    assert summary["phases"] == ["prose", "code", "prose"] and "final_val_code" in summary
    assert summary["corpus_chars"] == {"prose": len(PROSE), "code": len(CODE)}


def test_update_scales_slow_protected_neurons_through_any_surgery(tmp_path: Path) -> None:
    c = make_colony()
    c.train_steps(2)
    pop = c.populations[0]
    pop.protect(torch.tensor([0, 1]), 0.0)
    pop.protect(torch.tensor([2]), 0.5)
    before = [p.detach().clone() for p in (pop.mlp.fc.weight, pop.mlp.proj.weight)]
    g = torch.Generator().manual_seed(3)
    x = torch.randint(20, (4, 8), generator=g)
    _, loss = c.model(x, x)
    loss.backward()
    pop.updates.before_step()
    c.optimizer.step()
    step_fc = pop.mlp.fc.weight.detach() - before[0]
    unscaled = step_fc[3].clone()
    pop.updates.after_step()
    after_fc = pop.mlp.fc.weight.detach() - before[0]
    assert torch.equal(after_fc[:2], torch.zeros_like(after_fc[:2]))  # frozen rows
    assert torch.equal(pop.mlp.proj.weight[:, :2], before[1][:, :2])  # and frozen outgoing columns
    assert torch.allclose(after_fc[2], 0.5 * step_fc[2])
    assert torch.equal(after_fc[3], unscaled)
    assert not pop.mature(10_000, 0)[:3].any() and pop.mature(10_000, 0)[3]  # protected neurons never die
    pop.copy_from(torch.tensor([1]), torch.tensor([5]), step=3, mutation_strength=0.1, outgoing="zero",
                  generator=g, cause="test")  # fmt: skip
    assert pop.updates.scale[1] == 1.0  # a newborn is free
    pop.grow(2, step=3)
    assert pop.updates.scale.tolist()[-2:] == [1.0, 1.0] and pop.updates.scale[0] == 0.0
    pop.shrink(torch.tensor([0]), step=3, cause="test")
    assert pop.updates.scale[1] == 0.5 and len(pop.updates.scale) == pop.width  # kept aligned with slots
    c.populations[1].updates.before_step()
    assert c.populations[1].updates._before is None  # nothing protected: nothing copied


def test_stability_first_protects_the_fittest_and_freezes_them(tmp_path: Path) -> None:
    config = phased_config(tmp_path, "prose,code")
    config.then = StrategyConfig("stability_first", {"protect_share": 0.25, "lr_scale": 0.0})
    trainer = Trainer(config, tmp_path / "run", show_progress=False)
    protected_weights = {}
    real = trainer.follower.on_phase_end

    def watched(ctx, phase):
        fitness = [pop.fitness() for pop in trainer.populations]
        real(ctx, phase)
        for pop, fit in zip(trainer.populations, fitness, strict=True):
            chosen = pop.protected()
            assert int(chosen.sum()) == round(0.25 * pop.width)
            assert fit[chosen].min() >= fit[~chosen].max()  # the fittest of the phase
            protected_weights[pop.layer] = (chosen, pop.mlp.fc.weight.detach().clone())

    trainer.follower.on_phase_end = watched
    trainer.fit()
    for pop in trainer.populations:
        chosen, weights = protected_weights[pop.layer]
        assert torch.equal(pop.mlp.fc.weight[chosen], weights[chosen])
        assert not torch.equal(pop.mlp.fc.weight[~chosen], weights[~chosen])


def test_replay_term_pulls_the_model_back_to_its_snapshot() -> None:
    c = make_colony()
    replay = build_strategy("replay", {"buffer": 16, "batch_size": 8, "weight": 1.0}, follower=True)
    ctx = TrainingContext(0, 10, c.model, c.populations, c.lineage, torch.Generator().manual_seed(0), None, print)  # type: ignore[arg-type]
    assert replay.extra_loss(ctx) is None  # nothing before the first phase ends
    replay.on_phase_end(ctx, Phase(0, "a", 10))
    assert replay.sequences.shape == (16, c.model.config.block_size)
    snapshot = frozen_copy(c.model)
    with torch.no_grad():
        for p in c.model.parameters():
            p.add_(0.2 * p.std() * torch.randn_like(p))

    def kl() -> float:
        with torch.no_grad():
            t, m = (F.log_softmax(model(replay.sequences)[0], -1) for model in (snapshot, c.model))
        return (t.exp() * (t - m)).sum(-1).mean().item()

    start = kl()
    optimizer = torch.optim.Adam(c.model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = replay.extra_loss(ctx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert kl() < 0.5 * start


@pytest.mark.parametrize("follower", ["replay", "stability_first"])
def test_a_continual_run_with_a_follower_resumes_exactly(tmp_path: Path, follower: str) -> None:
    def config() -> RunConfig:
        c = phased_config(tmp_path, "prose,code")
        c.strategy = StrategyConfig("standard", {"interval": 10, "maturity": 0, "prune_rate": 0.2})
        c.then = StrategyConfig(follower, {"buffer": 16} if follower == "replay" else {})
        return c

    reference = Trainer(config(), tmp_path / "reference", show_progress=False).fit()

    def stop(step: int, val_loss: float) -> None:
        if step == S + K:  # as a kill: the last checkpoint is the end of phase 1, after its hooks ran
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(), tmp_path / "killed", show_progress=False, on_evaluate=stop).fit()
    resumed = Trainer(RunConfig(), tmp_path / "killed", resume=True, show_progress=False).fit()
    for key in ("final_val_loss", "final_val_prose", "final_val_code", "mean_event_disruption"):
        assert resumed[key] == reference[key], key
    drop = ["tokens_per_s"]
    pd.testing.assert_frame_equal(
        read_metrics(tmp_path / "killed").drop(columns=drop), read_metrics(tmp_path / "reference").drop(columns=drop)
    )
    assert read_events(tmp_path / "killed") == read_events(tmp_path / "reference")
    assert not [e for e in read_events(tmp_path / "killed") if e["kind"] == follower]  # no event follow-up


def test_fresh_baseline_has_the_run_vocabulary_and_trains_k_steps_on_one_corpus(tmp_path: Path) -> None:
    config = phased_config(tmp_path)
    config.strategy = StrategyConfig("standard")
    fresh = fresh_config(config, "code", seed=7)
    assert [p.split("=")[0] for p in fresh.continual.phases] == ["code", "prose"]
    assert fresh.trainer.steps == K and fresh.trainer.seed == 7 and fresh.strategy.name == "none"
    trainer = Trainer(fresh, tmp_path / "fresh", show_progress=False)
    assert trainer.data.vocab.chars == Trainer(config, tmp_path / "full", show_progress=False).data.vocab.chars


def test_continual_command_table_csvs_plots_and_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    prose, code = corpora(tmp_path)
    tiny = ["--set", "model.n_layer=1", "--set", "model.d_model=16", "--set", "model.n_head=2",
            "--set", "model.d_ff=32", "--set", "model.block_size=8", "--set", "trainer.eval_interval=10",
            "--set", "trainer.eval_batches=2", "--set", "trainer.batch_size=4", "--set", "trainer.warmup_steps=2",
            "--set", "strategy.interval=10", "--set", "strategy.maturity=0", "--set", "then.buffer=16"]  # fmt: skip
    args = ["continual", "--phases", f"prose={prose},code={code},prose", "--steps-per-phase", "20",
            "--plasticity-steps", "5", "--compare", "none,standard,stability_first,standard+replay", "--seeds", "2",
            "--name", "ct", *tiny]  # fmt: skip
    done = run_cli(args, tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "forgetting" in done.stdout and "standard+replay" in done.stdout and "per phase" in done.stdout
    out = tmp_path / "runs" / "ct"
    table = pd.read_csv(out / "continual.csv")
    assert sorted(zip(table["method"], table["seed"], strict=True)) == sorted(
        (m, s) for m in ("none", "standard", "stability_first", "standard+replay") for s in (1, 2)
    )
    phases = pd.read_csv(out / "phases.csv")
    assert len(phases) == 8 * 3 and phases["returning"].tolist().count(True) == 8
    summary = json.loads((out / "standard+replay-s1" / "summary.json").read_text())
    measures = summary["continual"]
    assert measures["phases"][0]["forgetting_next"] == pytest.approx(
        read_metrics(out / "standard+replay-s1").set_index("step").loc[40, "val_prose"]
        - read_metrics(out / "standard+replay-s1").set_index("step").loc[20, "val_prose"],
        abs=1e-6,
    )
    fresh = json.loads((out / "fresh" / "code-s1" / "summary.json").read_text())
    assert fresh["steps"] == 5
    assert measures["phases"][1]["plasticity_ratio"] == pytest.approx(
        measures["phases"][1]["loss_after_k"] / fresh["final_val_code"]
    )
    for plot in ("continual_loss.png", "plasticity.png"):
        assert (out / plot).stat().st_size > 0
    trained = (out / "standard-s1" / "metrics.csv").stat().st_mtime_ns
    again = run_cli(args, tmp_path)  # the same command reads the finished runs back
    assert again.returncode == 0, again.stderr
    assert (out / "standard-s1" / "metrics.csv").stat().st_mtime_ns == trained
    assert pd.read_csv(out / "continual.csv").equals(table)

    one = ["continual", "--phases", f"prose={prose},code={code}", "--steps-per-phase", "10",
           "--plasticity-steps", "5", "--strategy", "standard+replay", "--name", "one", *tiny]  # fmt: skip
    single = run_cli(one, tmp_path)
    assert single.returncode == 0, single.stderr
    assert list(pd.read_csv(tmp_path / "runs" / "one" / "continual.csv")["method"]) == ["standard+replay"]
    assert (tmp_path / "runs" / "one" / "plasticity.png").exists()

    bad = {
        ("--phases", "prose"): "unknown corpus",
        ("--phases", "shakespeare", "--plasticity-steps", "50", "--steps-per-phase", "20"): "--plasticity-steps",
        ("--compare", "none,none"): "distinct",
        ("--compare", "none", "--strategy", "standard"): "not both",
        ("--set", "then.nothing=1", "--compare", "standard+replay"): "no compared follower",
    }
    for extra, message in bad.items():
        monkeypatch.chdir(tmp_path)
        rc, _, err = run_main(["continual", *extra, "--name", "bad", *tiny[:-2]], monkeypatch, capsys)
        assert rc == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "runs" / "bad").exists()
