"""``trainer.compile``: the compiled training step follows the eager one within float tolerance,
through a change of shape (growth recompiles it) and across a resume."""

from __future__ import annotations

import pandas as pd
import pytest

from apoptosis.training import Trainer
from tests.conftest import tiny_run_config


class Killed(Exception):
    pass


def train_losses(config, run_dir, resume: bool = False) -> pd.Series:
    Trainer(config, run_dir, resume=resume, show_progress=False).fit()
    return pd.read_csv(run_dir / "metrics.csv").set_index("step")["train_loss"]


def killed_at_step_20(step: int, val_loss: float) -> None:
    if step == 20:  # evaluated, not yet checkpointed: the resume starts from step 10
        raise Killed


def test_compiled_growth_follows_eager_and_resumes(tmp_path) -> None:
    config = tiny_run_config(tmp_path, steps=30, strategy="growth_only", interval=10, growth_rate=0.25)
    config.trainer.log_interval = 1
    eager = train_losses(config, tmp_path / "eager")
    config.trainer.compile = True
    compiled = train_losses(config, tmp_path / "compiled")
    widths = pd.read_csv(tmp_path / "compiled" / "metrics.csv")["neurons"]
    assert widths.iloc[-1] > widths.iloc[0]  # the layers grew, so the compiled step met new shapes
    pd.testing.assert_series_equal(compiled, eager, rtol=1e-4, atol=1e-4)  # new neurons train as in eager
    with pytest.raises(Killed):
        Trainer(config, tmp_path / "resumed", show_progress=False, on_evaluate=killed_at_step_20).fit()
    resumed = train_losses(config, tmp_path / "resumed", resume=True)
    pd.testing.assert_series_equal(resumed, eager, rtol=1e-4, atol=1e-4)
