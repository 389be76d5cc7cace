"""``--tensorboard``: a run's losses, event disruptions and neuron ages in TensorBoard's files,
read back with TensorBoard's own reader; without the package, one line says how to get it."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from apoptosis.core.errors import ApoptosisError
from apoptosis.training import Trainer
from tests.conftest import tiny_run_config

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_back(run_dir: Path):
    reader = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    reader.Reload()
    return reader


def test_a_run_writes_its_losses_events_and_ages(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, steps=30, interval=10, maturity=0)
    config.trainer.tensorboard = True
    Trainer(config, tmp_path / "run", show_progress=False).fit()
    reader = read_back(tmp_path / "run")
    tags = reader.Tags()
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    train = [(e.step, e.value) for e in reader.Scalars("loss/train")]
    assert [s for s, _ in train] == metrics["step"].tolist()
    assert [v for _, v in train] == pytest.approx(metrics["train_loss"].tolist(), rel=1e-6)
    val = metrics.dropna(subset=["val_loss"])
    assert [e.step for e in reader.Scalars("loss/val")] == val["step"].tolist()
    assert "events/standard_probe_loss_change" in tags["scalars"]
    assert {"age/layer0", "age/layer1"} <= set(tags["histograms"])
    assert reader.Scalars("neurons/age_diversity")[-1].value > 0  # events made the ages differ


def test_a_resumed_run_keeps_each_step_once(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path, steps=30, interval=10, maturity=0)
    config.trainer.tensorboard, config.trainer.checkpoint_interval = True, 10
    trainer = Trainer(config, tmp_path / "run", show_progress=False)
    trainer.fitness.attach()
    while trainer.step < 15:  # killed at step 15: rows 11..15 were written after the checkpoint
        trainer._train_step()
    trainer.fitness.detach()
    trainer.folder.release()
    Trainer(config, tmp_path / "run", resume=True, show_progress=False).fit()
    steps = [e.step for e in read_back(tmp_path / "run").Scalars("loss/train")]
    assert steps == sorted(set(steps)) and steps[-1] == 30


def test_without_the_package_the_option_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if absent
    config = tiny_run_config(tmp_path, steps=5)
    config.trainer.tensorboard = True
    with pytest.raises(ApoptosisError, match=r"pip install 'neural-apoptosis\[tensorboard\]'"):
        Trainer(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()  # nothing left behind
