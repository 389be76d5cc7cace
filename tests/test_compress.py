"""Compression against the pruning field: each method's mask as its paper defines it (checked by
hand on small layers), neuron pruning that shrinks the saved model, the source run left untouched,
the grid resumed, and one-line errors."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

import apoptosis.lazarus.compress_table as table_module
import apoptosis.lazarus.speed as speed_module
from apoptosis.cli.main import main
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import GPT
from apoptosis.lazarus.calibration import InputStats, input_stats
from apoptosis.lazarus.damage import neuron_scores, prunable_weights
from apoptosis.lazarus.pruning import (
    fitness_tracker,
    magnitude_mask,
    neuron_populations,
    prune_neurons,
    prune_weights,
    wanda_mask,
)
from apoptosis.lazarus.sparsegpt import sparsegpt_prune
from apoptosis.training import Trainer, load_model
from tests.conftest import tiny_model_config, tiny_run_config


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch):
    """Speed is timed for real, but briefly: these tests check what is measured, not how fast."""
    monkeypatch.setattr(speed_module, "SPEED_SECONDS", 0.005)


# --- hand-checked masks -------------------------------------------------------------------------

W = torch.tensor(
    [
        [1.0, -3, 3, -4, 5, -6, 7, -8],
        [8, 7, -6, 5, -4, 2, -2, 2],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [-3, 2, -1, 4, -2, 1, -4, 3],
    ]
)
# two calibration tokens whose feature norms ||X_j||_2 are [4, 1, 2, 8, 1, 4, 8, 2]
X = torch.tensor([[4.0, 0, 2, 0, 1, 0, 8, 0], [0, 1, 0, 8, 0, 4, 0, 2]])


def _kept(rows: list[list[int]]) -> torch.Tensor:
    mask = torch.zeros(len(rows), 8, dtype=torch.bool)
    for i, slots in enumerate(rows):
        mask[i, slots] = True
    return mask


def test_wanda_masks_are_the_papers_on_a_hand_checked_layer() -> None:
    stats = InputStats(X.double().T @ X.double(), tokens=2)
    assert stats.norms.tolist() == [4, 1, 2, 8, 1, 4, 8, 2]
    # S = |W| * ||X||: row 0 [4, 3, 6, 32, 5, 24, 56, 16], row 1 [32, 7, 12, 40, 4, 8, 16, 4],
    # row 2 [4, 1, 2, 8, 1, 4, 8, 2], row 3 [12, 2, 2, 32, 2, 4, 32, 6]; each row drops its 4 lowest
    expected = _kept([[3, 5, 6, 7], [0, 2, 3, 6], [0, 3, 5, 6], [0, 3, 6, 7]])
    assert torch.equal(wanda_mask(W, stats.norms, 0.5, "unstructured"), expected)
    # 2:4: in each group of 4 consecutive inputs of a row, the 2 highest scores stay
    expected_24 = _kept([[2, 3, 5, 6], [0, 3, 5, 6], [0, 3, 5, 6], [0, 3, 6, 7]])
    assert torch.equal(wanda_mask(W, stats.norms, 0.5, "2:4"), expected_24)
    # magnitude ignores the inputs: row 3's |W| is [3, 2, 1, 4 | 2, 1, 4, 3]
    assert magnitude_mask(W, 0.5, "2:4")[3].nonzero().squeeze(1).tolist() == [0, 3, 6, 7]
    layer = magnitude_mask(W, 0.25, "unstructured")
    assert (~layer).sum() == 8 and W.abs()[layer].min() >= W.abs()[~layer].max()


def test_sparsegpt_obs_update_by_hand() -> None:
    """Pruning w1 of [w1, w2] moves w2 by w1 * H12 / H22 (least squares), with H damped by 1% of its mean diagonal."""
    H = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    pruned, kept = sparsegpt_prune(torch.tensor([[0.5, 2.0]]), H, 0.5)
    assert kept.tolist() == [[False, True]]
    assert torch.allclose(pruned, torch.tensor([[0.0, 2.0 + 0.5 * 1.0 / 2.02]]), atol=1e-6)
    # with uncorrelated inputs (H = I) there is nothing to compensate: magnitude pruning, weights kept
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    same, kept = sparsegpt_prune(w, torch.eye(8), 0.5)
    assert torch.equal(kept, magnitude_mask(w, 0.5, "unstructured")) and torch.allclose(same, w * kept)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_reconstructs_better_than_magnitude_with_exact_sparsity(pattern: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 32, generator=g) @ torch.randn(32, 32, generator=g)  # correlated inputs
    w = torch.randn(16, 32, generator=g)
    pruned, kept = sparsegpt_prune(w, 2 * x.T @ x / len(x), 0.5, pattern, blocksize=16)
    magnitude = w * magnitude_mask(w, 0.5, pattern)
    assert torch.equal(pruned == 0, ~kept)
    assert (x @ (w - pruned).T).norm() < 0.8 * (x @ (w - magnitude).T).norm()
    if pattern == "2:4":
        assert ((~kept).view(16, 8, 4).sum(-1) == 2).all()
    else:  # exactly half of each block of 16 columns
        assert [int((~kept[:, i : i + 16]).sum()) for i in (0, 16)] == [128, 128]


@pytest.mark.parametrize(("method", "pattern"), [("magnitude", "unstructured"), ("wanda", "unstructured"),
                                                 ("sparsegpt", "unstructured"), ("wanda", "2:4")])  # fmt: skip
def test_every_prunable_layer_of_a_model_gets_its_pattern(method: str, pattern: str) -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model_config()).eval()
    batches = [(torch.randint(20, (4, 8)), torch.randint(20, (4, 8))) for _ in range(2)]
    first = copy.deepcopy(model)  # by hand: prune qkv, then calibrate the next layer on its pruned outputs
    qkv, out = first.blocks[0].attn.qkv, first.blocks[0].attn.out
    qkv.weight.data *= wanda_mask(qkv.weight, input_stats(first, [qkv], batches)[0].norms, 0.5, pattern)
    sequential = wanda_mask(out.weight, input_stats(first, [out], batches)[0].norms, 0.5, pattern)
    masks = prune_weights(model, method, pattern, 0.5, batches)
    assert sorted(masks) == sorted(name for name, _ in prunable_weights(model))
    for name, p in prunable_weights(model):
        kept = masks[name]
        assert torch.equal(p != 0, kept)
        if pattern == "2:4":
            assert ((~kept).view(p.shape[0], -1, 4).sum(-1) == 2).all()
        elif method == "wanda":  # every row loses the same share
            assert ((~kept).sum(1) == p.shape[1] // 2).all()
        else:
            assert int((~kept).sum()) == p.numel() // 2
    if method == "wanda":
        assert torch.equal(masks["blocks.0.attn.out.weight"], sequential)


def test_neuron_pruning_removes_the_lowest_scored_neurons_of_each_layer() -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model_config()).eval()
    scores = neuron_scores(model)
    populations = neuron_populations(model, Lineage.founders(model.mlp_widths()))
    removed = prune_neurons(model, populations, "magnitude", 0.25, [], step=5)
    assert model.mlp_widths() == [24, 24]
    for layer in range(2):
        assert removed[layer] == sorted(torch.argsort(scores[layer])[:8].tolist())
    assert populations[0].lineage.record(removed[0][0] + 1).death_cause == "compress"


def test_fitness_pruning_removes_the_least_fit_neurons_without_moving_a_weight() -> None:
    torch.manual_seed(0)
    model = GPT(tiny_model_config()).eval()
    weights = {name: p.clone() for name, p in model.state_dict().items()}
    batches = [(torch.randint(20, (4, 8)), torch.randint(20, (4, 8))) for _ in range(3)]
    tracker = fitness_tracker(model, batches)
    assert all(torch.equal(p, weights[name]) for name, p in model.state_dict().items())
    scores = [tracker.scores(layer) for layer in range(2)]
    assert all(s.abs().sum() > 0 for s in scores)
    populations = neuron_populations(model, Lineage.founders(model.mlp_widths()), tracker)
    removed = prune_neurons(model, populations, "fitness", 0.25, batches, step=0)
    assert removed == [sorted(torch.argsort(s)[:8].tolist()) for s in scores]


# --- the command --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("compress")
    Trainer(tiny_run_config(tmp, steps=20, strategy="none"), tmp / "run", show_progress=False).fit()
    return tmp / "run"


def _apoptosis(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run the command in-process as the entry point does: (exit code, stderr)."""
    capsys.readouterr()
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main replaces it
    monkeypatch.setattr(sys, "argv", ["apoptosis", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    return code, capsys.readouterr().err


def _hashes(folder: Path, skip: Path | None = None) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and (skip is None or skip not in p.parents)}  # fmt: skip


def test_neuron_compression_writes_a_smaller_run_that_keeps_the_kept_neurons(run, tmp_path, monkeypatch, capsys):
    before = _hashes(run)
    out = tmp_path / "small"
    args = ["--method", "wanda", "--pattern", "neurons", "--prune", "0.3", "--recover", "none", "--calibration", 8]
    code, err = _apoptosis(monkeypatch, capsys, "compress", run, *args, "--out", out, "--quiet")
    assert code == 0, err
    assert _hashes(run) == before  # the source run is only read
    dense, _, _ = load_model(run)
    small, _, ckpt = load_model(out)  # a run folder: what sample and fitness-check read
    assert small.mlp_widths() == [45, 45] and ckpt["config"]["model"]["mlp_widths"] == [45, 45]
    summary = json.loads((out / "compress.json").read_text())
    assert summary["result"]["model_bytes"] < summary["result"]["dense_bytes"]
    assert summary["result"]["parameters"] < summary["result"]["dense_parameters"]
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))
    for layer, gone in enumerate(summary["damage"]["removed_neurons"]):
        kept = [s for s in range(64) if s not in gone]
        d, s = dense.blocks[layer].mlp, small.blocks[layer].mlp
        with torch.no_grad():
            h_dense, h_small = d.gate(d.act(d.fc(x))), s.gate(s.act(s.fc(x)))
            assert torch.equal(h_small, h_dense[..., kept])
            assert torch.allclose(s(x), d.proj(h_dense * torch.isin(torch.arange(64), torch.tensor(kept))), atol=1e-6)
    assert _apoptosis(monkeypatch, capsys, "sample", out, "--chars", 5)[0] == 0
    assert _apoptosis(monkeypatch, capsys, "ages", out)[0] == 0
    check = ["--batches", 2, "--batch-size", 4, "--score-batches", 2, "--json", tmp_path / "check.json"]
    assert _apoptosis(monkeypatch, capsys, "fitness-check", out, *check)[0] == 0
    rows = json.loads((tmp_path / "check.json").read_text())["rows"]
    assert rows and all(row["neurons"] == (90 if row["layer"] == "all" else 45) for row in rows)  # the kept ones
    code, err = _apoptosis(monkeypatch, capsys, "compress", out, "--pattern", "2:4")  # widths of 45
    assert code == 2 and len(err.strip().splitlines()) == 1 and "divisible by 4" in err


def test_compress_measures_bits_size_and_speed_against_the_dense_model(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sparse"
    args = ["--method", "sparsegpt", "--pattern", "2:4", "--recover", "finetune", "--recover-steps", 2]
    code, err = _apoptosis(monkeypatch, capsys, "compress", run, *args, "--calibration", 8, "--out", out)
    assert code == 0, err
    row = json.loads((out / "compress.json").read_text())["result"]
    assert row["bpc"] == pytest.approx(json.loads((out / "compress.json").read_text())["models"]["recovered"]["loss"]
                                       / torch.log(torch.tensor(2.0)).item())  # fmt: skip
    assert row["nonzero_parameters"] < row["dense_parameters"] == row["parameters"]
    assert row["tokens_per_s"] > 0 and row["dense_tokens_per_s"] > 0
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    for name, kept in state["masks"].items():  # fine-tuning kept the pattern
        assert torch.equal(state["model"][name] != 0, kept) and ((~kept).view(kept.shape[0], -1, 4).sum(-1) == 2).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prune", "0.5", "--method", "obs"], "--method must be one of"),
        (["--prune", "1.0"], "strictly between 0 and 1"),
        (["--prune", "0"], "strictly between 0 and 1"),
        (["--prune", "0.5", "--method", "fitness"], "needs --pattern neurons"),
        (["--prune", "0.5", "--method", "sparsegpt", "--pattern", "neurons"], "single weights"),
        (["--prune", "0.3", "--pattern", "2:4"], "must be 0.5"),
        (["--prune", "0.5", "--pattern", "blocks"], "--pattern must be one of"),
        (["--prune", "0.5", "--recover", "distil"], "--recover must be one of"),
        (["--prune", "0.5", "--structured", "--pattern", "2:4"], "--structured"),
        ([], "--prune FRACTION is needed"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run, monkeypatch, capsys, args, message):
    before = _hashes(run)
    code, err = _apoptosis(monkeypatch, capsys, "compress", run, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert _hashes(run) == before


def test_a_folder_without_a_model_is_one_line(tmp_path, monkeypatch, capsys):
    for command in (["compress", tmp_path, "--prune", "0.5"], ["compress-table", tmp_path]):
        code, err = _apoptosis(monkeypatch, capsys, *command)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "last.pt" in err


def test_compress_table_resumes_and_refuses_other_settings(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "table"
    grid = ["--methods", "magnitude,fitness", "--sparsities", "0.5", "--patterns", "unstructured,neurons",
            "--recoveries", "none,lazarus", "--seeds", 1, "--steps", 1, "--calibration", 4,
            "--out", out, "--quiet"]  # fmt: skip
    code, err = _apoptosis(monkeypatch, capsys, "compress-table", run, *grid)
    assert code == 0, err
    cells = (out / "cells.csv").read_text()
    assert len(cells.splitlines()) == 1 + 3 * 2  # magnitude x 2 patterns + fitness x neurons, 2 recoveries each
    table = (out / "table.csv").read_text()
    assert table.splitlines()[1].startswith("dense,")

    def never(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(table_module, "run_group", never)
    assert _apoptosis(monkeypatch, capsys, "compress-table", run, *grid)[0] == 0
    assert (out / "cells.csv").read_text() == cells
    code, err = _apoptosis(monkeypatch, capsys, "compress-table", run, *grid[:-3], "--steps", 2, "--out", out)
    assert code == 2 and "other settings" in err and len(err.strip().splitlines()) == 1
    code, err = _apoptosis(monkeypatch, capsys, "compress-table", run, "--methods", "fitness", "--patterns", "2:4")
    assert code == 2 and "go together" in err
