"""``lazarus`` as a follower (``--then lazarus``): it runs after every event of the main strategy,
pulls the model back towards the one before the event without reading the corpus, leaves the
fitness and the main strategy's random stream alone, and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from apoptosis.core.config import RunConfig, StrategyConfig
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.model import GPT, frozen_copy
from apoptosis.core.strategy import Event, TrainingContext, build_strategy
from apoptosis.training import Trainer, read_events
from tests.conftest import tiny_model_config, tiny_run_config
from tests.test_cli import run_cli, write_corpus

EVENTS = {"interval": 10, "maturity": 0, "prune_rate": 0.25}


def followed_config(tmp_path: Path, steps: int = 30, **then_params) -> RunConfig:
    config = tiny_run_config(tmp_path, steps=steps, **EVENTS)
    config.then = StrategyConfig(name="lazarus", params={"steps": 3, "batch_size": 4, **then_params})
    return config


def kl_to(teacher: GPT, model: GPT, x: torch.Tensor) -> float:
    with torch.no_grad():
        log_t = F.log_softmax(teacher(x)[0], -1)
        log_m = F.log_softmax(model(x)[0], -1)
    return (log_t.exp() * (log_t - log_m)).sum(-1).mean().item()


def test_anchored_on_the_model_before_the_event_it_undoes_part_of_the_change() -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model_config())
    before = frozen_copy(model)
    with torch.no_grad():  # stands in for an event's surgery: every weight disturbed
        for p in model.parameters():
            p.add_(0.3 * p.std() * torch.randn_like(p))
    lazarus = build_strategy("lazarus", {"steps": 60, "lr": 3e-3, "stability": 0.0, "entropy": 0.0}, follower=True)
    ctx = TrainingContext(0, 100, model, [], None, torch.Generator().manual_seed(0), None, lambda m: None)  # type: ignore[arg-type]
    x = torch.randint(20, (16, 8), generator=torch.Generator().manual_seed(1))  # held out: not what it trained on
    disturbed = kl_to(before, model, x)
    lazarus.on_event_end(ctx, Event(1, 10, "standard", before))
    assert kl_to(before, model, x) < 0.5 * disturbed
    assert model.training  # the trainer's mode is given back


def test_follower_runs_after_every_event_and_is_recorded(tmp_path: Path) -> None:
    summary = Trainer(followed_config(tmp_path), tmp_path / "run", show_progress=False).fit()
    events = read_events(tmp_path / "run")
    follower_lines = [e for e in events if e["kind"] == "lazarus"]
    assert [e["event"] for e in follower_lines] == [1, 2]  # steps 10 and 20; none at the last step
    for line in follower_lines:
        assert line["layer"] is None and line["follows"] == "standard"
        surgery = [e for e in events if e["event"] == line["event"] and e["kind"] == "standard"]
        assert line["probe_loss_before"] == surgery[-1]["probe_loss_after"]  # measured right after surgery
    assert summary["strategy"] == "standard+lazarus"
    assert summary["mean_surgery_disruption"] != summary["mean_event_disruption"]
    saved = RunConfig.from_toml_file(tmp_path / "run" / "config.toml")
    assert saved.then.name == "lazarus" and saved.then.params["steps"] == 3 and saved.then.params["anchor"] == "before"


def test_fitness_is_not_fed_by_the_follower_and_the_main_stream_is_not_shifted(tmp_path: Path) -> None:
    trainer = Trainer(followed_config(tmp_path, steps=20), tmp_path / "run", show_progress=False)
    seen = []
    real = trainer.follower.on_event_end

    def watched(ctx, event):
        sums = [s.clone() for s in trainer.fitness.sums]
        real(ctx, event)
        seen.append(all(torch.equal(a, b) for a, b in zip(sums, trainer.fitness.sums, strict=True)))

    trainer.follower.on_event_end = watched
    trainer.fit()
    assert seen == [True]
    plain = Trainer(tiny_run_config(tmp_path, steps=20, **EVENTS), tmp_path / "plain", show_progress=False)
    plain.fit()
    surgery = [e for e in read_events(tmp_path / "run") if e["kind"] == "standard"]
    assert surgery == read_events(tmp_path / "plain")  # same deaths, parents and probe losses at event 1


def test_a_run_with_a_follower_resumes_exactly(tmp_path: Path) -> None:
    reference = Trainer(followed_config(tmp_path, steps=40), tmp_path / "reference", show_progress=False).fit()

    def stop_at_30(step: int, val_loss: float) -> None:
        if step == 30:
            raise KeyboardInterrupt  # as a kill: the last checkpoint is step 20, after event 2

    with pytest.raises(KeyboardInterrupt):
        config = followed_config(tmp_path, steps=40)
        Trainer(config, tmp_path / "killed", show_progress=False, on_evaluate=stop_at_30).fit()
    resumed = Trainer(RunConfig(), tmp_path / "killed", resume=True, show_progress=False).fit()
    for key in ("final_val_loss", "final_train_loss", "mean_event_disruption", "mean_surgery_disruption"):
        assert resumed[key] == reference[key], key
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in read_events(tmp_path / "reference")]
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in read_events(tmp_path / "killed")] == strip


def test_lazarus_parameters_are_checked() -> None:
    with pytest.raises(ApoptosisError, match="at least one of consistency, stability and entropy"):
        build_strategy("lazarus", {"consistency": 0.0, "stability": 0.0, "entropy": 0.0}, follower=True)
    with pytest.raises(ApoptosisError, match="anchor in"):
        build_strategy("lazarus", {"anchor": "sideways"}, follower=True)
    with pytest.raises(ApoptosisError, match="only follows"):
        build_strategy("lazarus")
    with pytest.raises(ApoptosisError, match="cannot follow"):
        build_strategy("standard", follower=True)
    model = GPT(tiny_model_config())  # block size 8
    ctx = TrainingContext(0, 10, model, [], None, torch.Generator(), None, print)  # type: ignore[arg-type]
    for name in ("lazarus", "replay"):
        with pytest.raises(ApoptosisError, match=rf"{name}: seq_len must be 0 or in 2..8"):
            build_strategy(name, {"seq_len": 9}, follower=True).on_train_begin(ctx)
        build_strategy(name, {"seq_len": 8}, follower=True).on_train_begin(ctx)


def test_cli_then_and_compare_with_a_follower(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus.txt")
    tiny = ["--data", "corpus.txt", "--steps", "20", "--set", "model.n_layer=1", "--set", "model.d_model=16",
            "--set", "model.n_head=2", "--set", "model.d_ff=32", "--set", "model.block_size=8",
            "--set", "trainer.eval_interval=10", "--set", "trainer.eval_batches=2",
            "--set", "strategy.interval=10", "--set", "strategy.maturity=0"]  # fmt: skip
    done = run_cli(
        ["train", "--strategy", "standard", "--then", "lazarus", "--set", "then.steps=2", "--name", "r", *tiny],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "standard+lazarus" in done.stdout and "before the follower ran" in done.stdout
    assert json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())["strategy"] == "standard+lazarus"

    bad = {
        ("--strategy", "lazarus"): "only follows another strategy's events",
        ("--then", "standard"): "cannot follow another strategy",
        ("--set", "then.steps=2"): "no follower is: add --then NAME",
        ("--then", "lazarus", "--set", "then.anchor=sideways"): "anchor in {before, after}",
    }
    for args, message in bad.items():
        result = run_cli(["train", *args, "--name", "bad", *tiny], tmp_path)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "runs" / "bad").exists()

    compared = run_cli(
        ["compare", "--strategies", "standard,standard+lazarus", "--seeds", "1", "--name", "c",
         "--set", "then.steps=2", *tiny],
        tmp_path,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    assert "surg" in compared.stdout
    frame = (tmp_path / "runs" / "c" / "compare.csv").read_text()
    assert "standard+lazarus" in frame and (tmp_path / "runs" / "c" / "standard+lazarus-s1" / "summary.json").exists()
    runs = [str(p) for p in sorted((tmp_path / "runs" / "c").glob("*-s1"))]
    listed = run_cli(["events", *runs, "--csv", "events.csv", "--plot", "events.png"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert (tmp_path / "events.png").stat().st_size > 0
    assert "c/standard+lazarus" in listed.stdout and "c/standard " in listed.stdout
    rows = pd.read_csv(tmp_path / "events.csv")
    followed = rows[rows["group"] == "c/standard+lazarus"].iloc[0]
    lines = [e for e in read_events(tmp_path / "runs" / "c" / "standard+lazarus-s1") if e["event"] == 1]
    assert followed["surgery"] == pytest.approx(lines[-2]["probe_loss_after"] - lines[0]["probe_loss_before"])
    assert followed["after_follower"] == pytest.approx(lines[-1]["probe_loss_after"] - lines[0]["probe_loss_before"])
    assert "recovery_steps" in rows.columns
    plain = rows[rows["group"] == "c/standard"]
    assert (plain["surgery"] == plain["after_follower"]).all() and (plain["follower_seconds"] == 0).all()
    for strategies, message in {"standard+": "STRATEGY+FOLLOWER", "standard+lazarus+x": "STRATEGY+FOLLOWER"}.items():
        result = run_cli(["compare", "--strategies", strategies, "--name", "d", *tiny], tmp_path)
        assert result.returncode == 2 and message in result.stderr
    result = run_cli(["compare", "--strategies", "standard", "--set", "then.steps=2", "--name", "d", *tiny], tmp_path)
    assert result.returncode == 2 and "no compared follower (A+B) has parameter 'steps'" in result.stderr


def test_the_input_pool_samples_once_per_refresh_and_without_a_pool_every_step(monkeypatch) -> None:
    from apoptosis.lazarus import inputs as recovery

    torch.manual_seed(0)
    model = GPT(tiny_model_config()).eval()
    sampled = []
    real_generate = GPT.generate
    monkeypatch.setattr(
        GPT, "generate", lambda self, idx, n, **kw: sampled.append(len(idx)) or real_generate(self, idx, n, **kw)
    )
    g = torch.Generator().manual_seed(0)
    pool = recovery.InputPool(batch_size=4, seq_len=8, sampled_fraction=0.5, refresh_every=5, size=6)
    batches = [pool.inputs(model, step, g) for step in range(1, 11)]
    assert sampled == [6, 6]  # steps 1 and 6: six sequences each, never one per step
    assert all(b.shape == (4, 8) for b in batches)
    pool_rows = {tuple(r) for r in pool.pool.tolist()}
    assert all(tuple(r) in pool_rows for r in batches[-1][:2].tolist())  # sampled rows come from the pool
    sampled.clear()
    every_step = recovery.InputPool(batch_size=4, seq_len=8, sampled_fraction=0.5)
    for step in range(1, 4):
        x = every_step.inputs(model, step, torch.Generator().manual_seed(step))
        torch.testing.assert_close(
            x, recovery.recovery_inputs(model, model.config.vocab_size, 4, 8, torch.Generator().manual_seed(step))
        )
    assert len(sampled) == 6  # three steps, each sampling anew (and the reference three times)
