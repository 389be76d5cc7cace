"""Lazarus: damage, data-free recovery, its measurements and the damage/recover/compress commands."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import apoptosis.core.data as data_module
import apoptosis.lazarus.recovery as recovery_module
from apoptosis.cli.main import app
from apoptosis.core.config import RunConfig
from apoptosis.core.errors import ApoptosisError
from apoptosis.lazarus.damage import (
    DamageSpec,
    damage_model,
    damage_run,
    load_damaged,
    neuron_scores,
    noised_parameters,
    prunable_weights,
)
from apoptosis.lazarus.inputs import recovery_inputs
from apoptosis.lazarus.recovery import (
    LossWeights,
    RecoverySettings,
    compare_models,
    evaluation_batches,
    fit_temperature,
    logits_on,
    recover,
    recover_copy,
    recovery_fraction,
)
from apoptosis.training import Trainer, load_model
from tests.conftest import tiny_run_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny model trained 150 steps; tests that write into a run folder use a copy."""
    tmp = tmp_path_factory.mktemp("lazarus")
    Trainer(tiny_run_config(tmp, steps=150, strategy="none"), tmp / "run", show_progress=False).fit()
    return tmp / "run"


def _config(ckpt, eval_batches=8):
    """The run's config with more evaluation batches, so small differences are not noise."""
    config = RunConfig.from_dict(ckpt["config"])
    config.trainer.eval_batches = eval_batches
    return config


@pytest.fixture
def model(run_dir):
    return load_model(run_dir)[0]


def _copy_run(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


# --- damage -----------------------------------------------------------------------------------


def test_noise_adds_alpha_times_std_to_every_tensor_with_the_seeded_draw(model):
    before = {name: p.detach().clone() for name, p in noised_parameters(model)}
    assert "wte.weight" in before and "blocks.0.ln_1.weight" in before  # embeddings and LayerNorm too
    result = damage_model(model, DamageSpec("noise", 0.3, seed=7))
    assert result.tensors_changed == list(before)
    g = torch.Generator().manual_seed(7)
    for name, p in noised_parameters(model):
        delta = p.detach() - before[name]
        torch.testing.assert_close(delta, 0.3 * before[name].std() * torch.randn(p.shape, generator=g))
        relative = (delta.std() / before[name].std()).item()
        assert abs(relative - 0.3) < (0.03 if p.numel() >= 1000 else 0.12), (name, relative)


def test_noise_is_deterministic_per_seed(run_dir):
    def damaged(seed):
        m = load_model(run_dir)[0]
        damage_model(m, DamageSpec("noise", 0.2, seed=seed))
        return m.state_dict()

    a, b, c = damaged(1), damaged(1), damaged(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["wte.weight"], c["wte.weight"])


def test_damage_run_writes_a_new_folder_and_leaves_the_run_untouched(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path)
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
    out, _ = damage_run(run, DamageSpec("noise", 0.2, seed=3))
    assert out == run / "damaged-noise0.2"
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in digests} == digests
    assert sorted(p.name for p in out.iterdir()) == ["damage.json", "model.pt"]
    assert json.loads((out / "damage.json").read_text())["source_run"] == ".."
    damaged = load_damaged(out)
    assert damaged.run_dir.resolve() == run.resolve()
    assert damaged.damage["kind"] == "noise" and damaged.damage["seed"] == 3
    assert not torch.equal(damaged.model.wte.weight, load_model(run)[0].wte.weight)


def test_magnitude_pruning_zeroes_exactly_the_smallest_weights(model):
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    prunable = dict(prunable_weights(model))
    assert set(prunable) == {
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.out", "mlp.fc", "mlp.proj")
    }
    result = damage_model(model, DamageSpec("prune", 0.37))
    n = sum(p.numel() for p in prunable.values())
    assert result.weights_pruned == round(0.37 * n)
    assert sum(int((p == 0).sum()) for p in prunable.values()) == round(0.37 * n)
    pruned = torch.cat([before[k][~m].abs() for k, m in result.masks.items()])
    kept = torch.cat([before[k][m].abs() for k, m in result.masks.items()])
    assert pruned.max() <= kept.min()
    for name, p in model.named_parameters():
        if name in result.masks:
            assert torch.equal(p.detach(), before[name] * result.masks[name])
        else:
            assert torch.equal(p.detach(), before[name]), name  # embeddings, LayerNorm, biases untouched


def test_structured_pruning_removes_whole_lowest_scoring_neurons(model):
    scores = torch.cat(neuron_scores(model))
    result = damage_model(model, DamageSpec("prune", 0.25, structured=True))
    removed = result.removed_neurons
    assert sum(map(len, removed)) == round(0.25 * scores.numel())
    width = model.blocks[0].mlp.width
    flat_removed = torch.tensor([layer * width + i for layer, slots in enumerate(removed) for i in slots])
    kept = torch.ones(scores.numel(), dtype=torch.bool)
    kept[flat_removed] = False
    assert scores[flat_removed].max() <= scores[kept].min()
    for layer, slots in enumerate(removed):
        mlp = model.blocks[layer].mlp
        alive = torch.ones(mlp.width, dtype=torch.bool)
        alive[slots] = False
        assert torch.equal(mlp.gate.mask, alive.float())
        assert (mlp.fc.weight[~alive] == 0).all() and (mlp.fc.bias[~alive] == 0).all()
        assert (mlp.proj.weight[:, ~alive] == 0).all()
        assert (mlp.fc.weight[alive].abs().sum(dim=1) > 0).all()


# --- recovery ---------------------------------------------------------------------------------


def test_recovery_inputs_are_built_from_the_model_alone(model):
    g = torch.Generator().manual_seed(0)
    x = recovery_inputs(model, model.config.vocab_size, 6, 10, g)
    assert x.shape == (6, 10) and x.dtype == torch.long
    assert 0 <= x.min() and x.max() < model.config.vocab_size
    again = recovery_inputs(model, model.config.vocab_size, 6, 10, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_recovery_never_reads_the_corpus(model, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("recovery touched the corpus")

    monkeypatch.setattr(recovery_module, "run_dataset", forbidden)
    for reader in ("batch", "from_text", "from_ids"):
        monkeypatch.setattr(data_module.CharDataset, reader, forbidden)
    teacher = copy.deepcopy(model)
    damage_model(model, DamageSpec("noise", 0.3))
    history = recover(model, teacher, 3, generator=torch.Generator().manual_seed(0), batch_size=4)
    assert len(history) == 3 and all(math.isfinite(h["total"]) for h in history)


def test_frozen_mode_keeps_pruned_weights_at_zero_and_regrow_lets_them_move(run_dir):
    original = load_model(run_dir)[0]
    pruned = copy.deepcopy(original)
    masks = damage_model(pruned, DamageSpec("prune", 0.5)).masks
    moved = {}
    for mode in ("frozen", "regrow"):
        student = copy.deepcopy(pruned)
        recover(student, original, 8, generator=torch.Generator().manual_seed(0), mode=mode, masks=masks, lr=3e-3)
        params = dict(student.named_parameters())
        moved[mode] = sum(int((params[k][~m] != 0).sum()) for k, m in masks.items())
        assert all(p.grad is None for p in student.parameters())
        kept_changed = any(
            not torch.equal(params[k][m], dict(pruned.named_parameters())[k][m]) for k, m in masks.items()
        )
        assert kept_changed
    assert moved["frozen"] == 0
    assert moved["regrow"] > 0


def test_noise_control_does_nothing(model):
    before = copy.deepcopy(model.state_dict())
    weights = LossWeights().ablation("noise")
    assert weights.inactive
    assert recover(model, copy.deepcopy(model), 5, generator=torch.Generator(), weights=weights) == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert LossWeights().ablation("consistency") == LossWeights(stability=0.0, entropy=0.0)
    with pytest.raises(ApoptosisError, match="loss must be one of"):
        LossWeights().ablation("magic")


def test_distillation_from_the_original_lowers_validation_loss_after_noise(run_dir):
    original, vocab, ckpt = load_model(run_dir)
    damaged = copy.deepcopy(original)
    damage_model(damaged, DamageSpec("noise", 0.5, seed=0))
    settings = RecoverySettings(steps=60, loss="consistency", anchor="original", lr=3e-3, batch_size=8)
    recovered, history = recover_copy(original, damaged, settings)
    assert len(history) == 60
    config = _config(ckpt)
    report, calibration = evaluation_batches(config, vocab)
    figures = compare_models(original, damaged, recovered, report, calibration)
    models = figures["models"]
    assert models["recovered"]["loss"] < models["damaged"]["loss"]
    assert models["recovered"]["agreement"] > models["damaged"]["agreement"]
    assert models["temperature_scaled"]["loss"] <= models["damaged"]["loss"]
    assert models["temperature_scaled"]["accuracy"] == models["damaged"]["accuracy"]  # argmax ignores T


def test_fitted_temperature_never_loses_to_t1_on_its_own_batches(run_dir, model):
    damage_model(model, DamageSpec("noise", 0.4))
    _, vocab, ckpt = load_model(run_dir)
    _, calibration = evaluation_batches(_config(ckpt), vocab)
    logits, targets = logits_on(model, calibration)
    t = fit_temperature(logits, targets)
    assert 0.05 <= t <= 20
    assert F.cross_entropy(logits / t, targets) <= F.cross_entropy(logits, targets)
    assert fit_temperature(logits * 3.0, targets) == pytest.approx(3.0 * t, rel=1e-2)


def test_recovery_fraction():
    assert recovery_fraction(1.0, 2.0, 1.25) == pytest.approx(0.75)  # loss: lower is better
    assert recovery_fraction(0.60, 0.40, 0.55) == pytest.approx(0.75)  # accuracy: higher is better
    assert recovery_fraction(1.0, 2.0, 2.5) == pytest.approx(-0.5)
    assert recovery_fraction(0.60, 0.40, 0.40) == 0.0
    assert math.isnan(recovery_fraction(1.0, 1.0 + 1e-5, 0.9))


# --- commands ---------------------------------------------------------------------------------


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_damage_recover_compress_commands_write_their_folders(run_dir, tmp_path, cli):
    run = _copy_run(run_dir, tmp_path)
    result = cli("damage", run, "--prune", "0.5", "--structured")
    assert result.exit_code == 0, result.output
    damaged = run / "damaged-prune0.5-structured"
    result = cli("recover", damaged, "--steps", 5, "--mode", "regrow", "--quiet")
    assert result.exit_code == 0, result.output
    out = damaged / "recovered-original-full-regrow-5"
    summary = json.loads((out / "recovery.json").read_text())
    assert summary["source_run"] == "../.." and summary["settings"]["mode"] == "regrow"
    assert set(summary["models"]) == {"clean", "damaged", "temperature_scaled", "recovered"}
    assert len(summary["history"]) == 5 and "recovered_loss" in summary["recovery"]
    assert load_damaged(out).run_dir.resolve() == run.resolve()
    via_run = tmp_path / "via-run"  # the run folder itself names its only damaged model
    assert cli("recover", run, "--steps", 2, "--quiet", "--out", via_run).exit_code == 0
    assert json.loads((via_run / "recovery.json").read_text())["damage"]["structured"] is True
    assert cli("damage", run, "--noise", "0.1").exit_code == 0
    result = cli("recover", run, "--steps", 2, "--quiet")
    assert isinstance(result.exception, ApoptosisError) and "several damaged models" in str(result.exception)

    result = cli("compress", run, "--prune", "0.6", "--recover-steps", 5, "--quiet")
    assert result.exit_code == 0, result.output
    compressed = json.loads((run / "compressed-prune0.6" / "compress.json").read_text())
    size = compressed["size"]
    assert size["original"]["nonzero_parameters"] == size["original"]["parameters"]
    assert (
        size["original"]["parameters"] - size["compressed"]["nonzero_parameters"]
        >= compressed["damage"]["weights_pruned"]
    )
    assert size["compressed"]["sparse_bytes"] < size["compressed"]["dense_bytes"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--noise", "0.1", "--prune", "0.5"], "exactly one of --noise"),
        ([], "exactly one of --noise"),
        (["--prune", "1.5"], "between 0 and 1"),
        (["--noise", "-1"], "must be > 0"),
        (["--noise", "0.1", "--structured"], "--structured goes with --prune"),
    ],
)
def test_damage_rejects_bad_input(run_dir, cli, args, message):
    result = cli("damage", run_dir, *args)
    assert isinstance(result.exception, ApoptosisError)
    assert message in str(result.exception)


def test_commands_refuse_existing_folders_and_bad_options(run_dir, tmp_path, cli):
    taken = tmp_path / "taken"
    taken.mkdir()
    result = cli("damage", run_dir, "--noise", "0.1", "--out", taken)
    assert isinstance(result.exception, ApoptosisError)
    assert str(taken) in str(result.exception) and "--out" in str(result.exception)
    damaged = tmp_path / "damaged"
    assert cli("damage", run_dir, "--noise", "0.1", "--out", damaged).exit_code == 0
    for args, message in [
        (["--mode", "sideways"], "--mode must be one of frozen, regrow"),
        (["--loss", "magic"], "--loss must be one of"),
        (["--anchor", "moon"], "--anchor must be one of original, damaged"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--out", taken], "already exists"),
    ]:
        result = cli("recover", damaged, *args)
        assert isinstance(result.exception, ApoptosisError), args
        assert message in str(result.exception)
    result = cli("recover", run_dir)
    assert isinstance(result.exception, ApoptosisError) and "apoptosis damage" in str(result.exception)
