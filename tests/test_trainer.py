"""The trainer writes a complete run folder, records events, stops on divergence, and resumes
a killed run to exactly the same numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from apoptosis.core.errors import ApoptosisError, TrainingDiverged
from apoptosis.core.registry import STRATEGIES
from apoptosis.core.strategy import Strategy
from apoptosis.training import Trainer, load_model, lr_at, read_events
from tests.conftest import tiny_run_config


def test_run_folder_metrics_events_and_summary(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, steps=40, interval=10, maturity=5, prune_rate=0.1)
    run = tmp_path / "run"
    summary = Trainer(config, run, show_progress=False).fit()
    for name in ("config.toml", "vocab.json", "metrics.csv", "events.jsonl", "lineage.csv", "summary.json",
                 "checkpoints/last.pt", "loss.png", "ages.png"):  # fmt: skip
        assert (run / name).is_file(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == ["step", "train_loss", "val_loss", "lr", "tokens_per_s", "neurons", "events"]
    assert list(metrics.step) == list(range(5, 41, 5))
    assert metrics.val_loss.notna().tolist() == [s % 10 == 0 for s in metrics.step]
    assert metrics.train_loss.iloc[-1] < metrics.train_loss.iloc[0]  # it learns

    events = read_events(run)
    assert sorted({e["step"] for e in events}) == [10, 20, 30]  # never at the last step
    assert {e["layer"] for e in events} == {0, 1}
    for e in events:
        assert len(e["dead_ids"]) == len(e["born_ids"]) == len(e["parent_ids"]) == round(0.1 * 64)
        assert all(len(p) == 1 for p in e["parent_ids"])
        assert e["probe_loss_before"] > 0 and e["probe_loss_after"] > 0
    # layer surgeries chain: the next layer's "before" is the previous layer's "after"
    first_event = [e for e in events if e["event"] == 1]
    assert first_event[1]["probe_loss_before"] == first_event[0]["probe_loss_after"]

    assert summary["events"] == 3 and summary["neurons_replaced"] == 3 * 2 * 6
    assert summary == json.loads((run / "summary.json").read_text())
    lineage = pd.read_csv(run / "lineage.csv")
    assert len(lineage) == 128 + 36 and lineage.death_step.notna().sum() == 36
    assert 0 < summary["age_diversity"] <= 1 and summary["final_val_loss"] > 0

    model, vocab, ckpt = load_model(run)
    assert ckpt["step"] == 40 and len(vocab) == model.config.vocab_size
    assert ckpt["config"]["strategy"]["prune_rate"] == 0.1


def test_lr_schedule_warms_up_then_decays_to_min(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, steps=100)
    t = config.trainer
    assert lr_at(1, config) == pytest.approx(t.lr / t.warmup_steps)
    assert lr_at(t.warmup_steps, config) == pytest.approx(t.lr)
    assert lr_at(100, config) == pytest.approx(t.min_lr)
    assert lr_at(50, config) < lr_at(20, config)


def test_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, steps=10)
    Trainer(config, tmp_path / "run", show_progress=False).fit()
    before = (tmp_path / "run" / "summary.json").read_bytes()
    with pytest.raises(ApoptosisError, match="already holds a run"):
        Trainer(tiny_run_config(tmp_path, steps=10), tmp_path / "run", show_progress=False)
    assert (tmp_path / "run" / "summary.json").read_bytes() == before


class _Poison(Strategy):
    """Test-only: at step 15 one neuron of layer 0 gets NaN weights (through the population API);
    with ``fragile``, surgery on NaN weights fails, as sampling from NaN probabilities does."""

    name = "_poison"
    fragile = False

    def on_step_end(self, ctx) -> None:
        if self.fragile and ctx.step > 16 and not torch.isfinite(ctx.populations[0].mlp.fc.weight).all():
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        if ctx.step == 15:
            pop = ctx.populations[0]
            nan = torch.full((1, pop.mlp.fc.in_features + 1), float("nan"))
            ctx.event("poison", lambda p: p.replace(
                torch.tensor([0]), nan, torch.zeros(1, p.mlp.proj.out_features), step=ctx.step,
                parents=[()], cause="poison") if p is pop else None)  # fmt: skip


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    STRATEGIES.register(_Poison)
    try:
        trainer = Trainer(
            tiny_run_config(tmp_path, steps=40, strategy="_poison"), tmp_path / "run", show_progress=False
        )
        with pytest.raises(
            TrainingDiverged, match=r"mean of steps 16..20\) at step 20; the last good checkpoint \(step 10\)"
        ):
            trainer.fit()
    finally:
        STRATEGIES._entries.pop("_poison")
    model, _, ckpt = load_model(tmp_path / "run")
    assert ckpt["step"] == 10
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_surgery_failing_on_spoiled_weights_is_reported_as_divergence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_Poison, "fragile", True)
    STRATEGIES.register(_Poison)
    try:
        trainer = Trainer(
            tiny_run_config(tmp_path, steps=40, strategy="_poison"), tmp_path / "run", show_progress=False
        )
        with pytest.raises(TrainingDiverged, match=r"training loss became nan \(mean of steps 16..17\)"):
            trainer.fit()
    finally:
        STRATEGIES._entries.pop("_poison")


def _train_command(run_dir: Path, data: Path, steps: int) -> list[str]:
    sets = {
        "model.n_layer": 2, "model.n_head": 2, "model.d_model": 32, "model.d_ff": 64, "model.block_size": 16,
        "trainer.batch_size": 8, "trainer.eval_interval": 25, "trainer.eval_batches": 2, "trainer.log_interval": 5,
        "trainer.checkpoint_interval": 10, "trainer.warmup_steps": 10, "strategy.interval": 20,
        "strategy.maturity": 10, "strategy.outgoing": "split",
    }  # fmt: skip
    cmd = [sys.executable, "-m", "apoptosis.cli", "train", "--quiet", "--steps", str(steps), "--data", str(data),
           "--name", run_dir.name, "--runs-dir", str(run_dir.parent)]  # fmt: skip
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}" if not isinstance(value, str) else f'{key}="{value}"']
    return cmd


def test_resume_after_a_real_kill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path)  # writes the data file
    data = Path(config.data.path)
    steps = 600
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "runs" / "reference"
    subprocess.run(_train_command(reference, data, steps), check=True, env=env, capture_output=True)

    killed = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(_train_command(killed, data, steps), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    checkpoint = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists():
            metrics = (killed / "metrics.csv").read_text().splitlines()
            if len(metrics) > 1 and int(metrics[-1].split(",")[0]) >= 150:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < killed_at < steps

    resume = [sys.executable, "-m", "apoptosis.cli", "train", "--quiet", "--resume", "--name", "killed",
              "--runs-dir", str(killed.parent)]  # fmt: skip
    subprocess.run(resume, check=True, env=env, capture_output=True)

    ref_summary = json.loads((reference / "summary.json").read_text())
    got_summary = json.loads((killed / "summary.json").read_text())
    for key in ("final_train_loss", "final_val_loss", "events", "neurons_replaced", "age_diversity",
                "mean_event_disruption", "train_loss_detrended_variance"):  # fmt: skip
        assert got_summary[key] == ref_summary[key], key
    ref_metrics = pd.read_csv(reference / "metrics.csv").drop(columns="tokens_per_s")
    got_metrics = pd.read_csv(killed / "metrics.csv").drop(columns="tokens_per_s")
    pd.testing.assert_frame_equal(got_metrics, ref_metrics)
    assert (killed / "events.jsonl").read_text() == (reference / "events.jsonl").read_text()
    assert (killed / "lineage.csv").read_text() == (reference / "lineage.csv").read_text()


def test_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ApoptosisError, match="nothing to resume"):
        Trainer(tiny_run_config(tmp_path), tmp_path / "nothing", resume=True, show_progress=False)


def test_a_labelled_run_keeps_its_label_through_a_resume(tmp_path: Path) -> None:
    """A comparison's label (``standard@prune_rate=0.05``) names the run in summary.json, also
    when the run is resumed by hand without it."""
    config = tiny_run_config(tmp_path)
    config.trainer.plots = False
    label = f"{config.strategy.name}@interval=5"
    Trainer(config, tmp_path / "run", show_progress=False, label=label).fit()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["strategy"] == label
    (tmp_path / "run" / "summary.json").unlink()
    Trainer(config, tmp_path / "run", resume=True, show_progress=False).fit()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["strategy"] == label
    Trainer(config, tmp_path / "plain", show_progress=False).fit()
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["strategy"] == config.strategy.name
