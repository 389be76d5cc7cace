"""``fitness-check`` measures each neuron's removal cost exactly as masking it one at
a time does, and its command prints the comparison and writes both CSVs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from apoptosis.analysis.fitness_check import NEURONS_CSV, SUMMARY_CSV, removal_costs, run_corpus
from apoptosis.core.config import RunConfig
from apoptosis.core.model import GPT
from apoptosis.core.registry import FITNESS_METRICS
from apoptosis.training import Trainer, load_model
from tests.conftest import tiny_model_config, tiny_run_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder after a few steps with events (so neurons of different ages and fitness)."""
    tmp = tmp_path_factory.mktemp("fitness-check")
    config = tiny_run_config(tmp, steps=20, interval=10, maturity=5)
    config.trainer.checkpoint_interval = 20
    run = tmp / "run"
    Trainer(config, run, show_progress=False).fit()
    return run


def test_batched_costs_equal_masking_one_neuron_at_a_time(tiny_run: Path) -> None:
    model, vocab, ckpt = load_model(tiny_run)
    config = RunConfig.from_dict(ckpt["config"], source="test")
    _, data = run_corpus(config, ckpt["step"], vocab)
    g = torch.Generator().manual_seed(3)
    batches = [data.batch("val", 5, g) for _ in range(2)]
    model.blocks[0].mlp.gate.mask[7] = 0.0  # an already masked neuron costs nothing more
    base, costs = removal_costs(model, batches)
    assert [c.shape for c in costs] == [(2, w) for w in model.mlp_widths()]

    def slow_loss(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return model(x, y)[1].item()

    assert base == pytest.approx(sum(slow_loss(x, y) for x, y in batches) / 2, abs=1e-6)
    for layer, slot in ((0, 0), (0, 7), (0, 63), (1, 1), (1, 40)):
        mask = model.blocks[layer].mlp.gate.mask
        for b, (x, y) in enumerate(batches):
            with_it = slow_loss(x, y)
            kept = mask[slot].item()
            mask[slot] = 0.0
            without = slow_loss(x, y)
            mask[slot] = kept
            assert costs[layer][b, slot].item() == pytest.approx(without - with_it, abs=1e-5), (layer, slot, b)
    assert costs[0][:, 7].abs().max() < 1e-6
    assert model.blocks[0].mlp.gate.mask.sum() == 63  # the model is left as it was
    assert all(c.abs().max() > 1e-5 for c in costs)  # removing a neuron does change the loss


def test_batched_costs_every_neuron_of_a_deeper_model() -> None:
    """Every neuron of every layer, middle layers included, on a model with dropout (off in eval)."""
    torch.manual_seed(0)
    model = GPT(tiny_model_config(n_layer=3, dropout=0.1))
    for block in model.blocks:  # neurons that matter: costs far above the tolerance
        block.mlp.proj.weight.data.mul_(30)
    g = torch.Generator().manual_seed(4)
    x, y = torch.randint(20, (3, 8), generator=g), torch.randint(20, (3, 8), generator=g)
    _, costs = removal_costs(model, [(x, y)])
    model.eval()
    with torch.no_grad():
        base = model(x, y)[1].item()
        for layer, block in enumerate(model.blocks):
            slow = []
            for slot in range(block.mlp.width):
                block.mlp.gate.mask[slot] = 0.0
                slow.append(model(x, y)[1].item() - base)
                block.mlp.gate.mask[slot] = 1.0
            assert max(map(abs, slow)) > 2e-3
            assert torch.allclose(costs[layer][0], torch.tensor(slow, dtype=torch.float64), rtol=0, atol=1e-5)


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from apoptosis.cli.main import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["apoptosis", *args])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_fitness_check_command(tiny_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    def run_files() -> dict[Path, bytes]:
        written = (SUMMARY_CSV, NEURONS_CSV)
        return {p: p.read_bytes() for p in tiny_run.rglob("*") if p.is_file() and p.name not in written}

    before = run_files()
    report = tmp_path / "check.json"
    args = ["fitness-check", str(tiny_run), "--batches", "4", "--batch-size", "8", "--score-batches", "4"]
    code, out, err = run_main([*args, "--json", str(report)], monkeypatch, capsys)
    assert code == 0, err
    names = FITNESS_METRICS.names()
    assert {"taylor", "taylor_signed", "grad_activation", "random"} <= set(names)
    for text in ("Fitness metrics against the true removal cost", *names, "Chance", "0.10"):
        assert text in out, text
    assert all(len(line) <= 80 for line in out.splitlines())

    summary = pd.read_csv(tiny_run / SUMMARY_CSV)
    assert list(summary.columns[:3]) == ["metric", "layer", "neurons"]
    assert sorted(summary.metric.unique()) == names
    assert {str(v) for v in summary.layer} == {"0", "1", "all"} and len(summary) == 3 * len(names)
    assert summary.spearman.between(-1, 1).all() and summary.ceiling_spearman.between(-1, 1).all()
    assert summary.bottom_overlap.between(0, 1).all() and summary.small_overlap.between(0, 1).all()
    neurons = pd.read_csv(tiny_run / NEURONS_CSV)
    assert list(neurons.columns) == ["layer", "slot", "masked", "cost", "cost_half_a", "cost_half_b", *names]
    assert len(neurons) == 128 and neurons.cost.abs().max() > 0
    # the cost is the mean of its two halves (4 batches: two and two)
    assert ((neurons.cost_half_a + neurons.cost_half_b) / 2 - neurons.cost).abs().max() < 1e-12
    assert (neurons.taylor >= neurons.taylor_signed.abs() - 1e-9).all()  # mean of |x| >= |mean of x|
    data = json.loads(report.read_text())
    assert data["batches"] == 4 and len(data["rows"]) == len(summary)
    assert run_files() == before  # the run folder is otherwise only read

    code, out, err = run_main(["fitness-check", str(tmp_path / "nosuch")], monkeypatch, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and "nosuch" in err
    code, _, err = run_main(["fitness-check", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "no checkpoint" in err
    code, _, err = run_main([*args[:2], "--batches", "1"], monkeypatch, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "--batches must be >= 2" in err
