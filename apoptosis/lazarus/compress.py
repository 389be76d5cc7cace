"""One compression of a trained run: prune, recover, measure, and write a smaller run folder.

``apoptosis compress RUN_DIR --method M --prune S --pattern P --recover R`` prunes a copy of the
run's model with a method of :mod:`apoptosis.lazarus.pruning`, then recovers it in one of three
ways, each with the same number of Adam steps, batch size and learning rate:

* ``none``: the pruned model as it is (the one-shot result the papers report);
* ``lazarus``: data-free distillation from the original model on self-generated and random
  inputs (the LLM-QAT recipe: Lazarus anchored on the model before pruning);
* ``finetune``: next-character cross-entropy on windows of the run's training text: what real data buys.

Pruned weights stay zero during recovery (their gradients are masked and the masks applied again
after every step); removed neurons are gone. Every result is measured on the run's fixed
validation batches, in bits per character (val loss / ln 2), beside the dense model and the
temperature control of ``recover``; and the speed of inference (tokens/s of a forward pass over
``batch_size x block_size`` tokens) of the dense and the compressed model is timed side by side
in one process, alternating, the median of a few repeats. Zeros in a dense matrix are multiplied
like any other weight, so unstructured and 2:4 sparsity make no model faster on a CPU (2:4 needs
sparse tensor cores); only removing whole neurons does.

The compressed model is written as a run folder (``checkpoints/last.pt``, ``config.toml`` with
the new MLP widths, ``vocab.json``) plus ``compress.json``, so ``sample``, ``ages`` and
``fitness-check`` read it like any run; the source run is only read.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharDataset, CharVocab
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write, atomic_write_json, atomic_write_text
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import GPT
from apoptosis.lazarus.calibration import CALIBRATION_SEQUENCES, calibration_batches, run_dataset
from apoptosis.lazarus.damage import Masks, apply_masks, model_size, refuse_existing
from apoptosis.lazarus.pruning import (
    NEEDS_CALIBRATION,
    check_choice,
    check_widths,
    fitness_tracker,
    neuron_populations,
    prunable_layers,
    prune_neurons,
    prune_weights,
)
from apoptosis.lazarus.recovery import Batches, RecoverySettings, compare_models, evaluation_batches, recover_copy
from apoptosis.lazarus.speed import inference_speed, state_bytes
from apoptosis.training import CHECKPOINT, load_model

RECOVERIES = ("none", "lazarus", "finetune")
SUMMARY_FILE = "compress.json"

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class CompressSpec:
    """What to do: the pruning (method, pattern, share), the recovery, the calibration set and the seed."""

    method: str = "magnitude"
    pattern: str = "unstructured"
    prune: float = 0.5
    recover: str = "lazarus"
    calibration: int = CALIBRATION_SEQUENCES
    seed: int = 0

    def validate(self) -> None:
        check_choice(self.method, self.pattern, self.prune)
        if self.recover not in RECOVERIES:
            raise ApoptosisError(f"--recover must be one of {', '.join(RECOVERIES)}, got {self.recover!r}")
        if self.calibration < 1:
            raise ApoptosisError(f"--calibration must be >= 1 sequence, got {self.calibration}")

    @property
    def label(self) -> str:
        """``prune0.5`` for the defaults (magnitude, unstructured, lazarus), else with what differs:
        ``prune0.5-wanda-2of4-finetune``. The default folder name's tail."""
        parts = [f"prune{self.prune:g}"]
        parts += [self.method] if self.method != "magnitude" else []
        parts += [self.pattern.replace(":", "of")] if self.pattern != "unstructured" else []
        parts += [self.recover] if self.recover != "lazarus" else []
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Source:
    """The run being compressed, with its data and its fixed validation batches (loaded once)."""

    run_dir: Path
    model: GPT
    vocab: CharVocab
    ckpt: dict[str, Any]
    config: RunConfig
    data: CharDataset
    report: Batches
    temperature_batches: Batches
    device: str

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> Source:
        model, vocab, ckpt = load_model(run_dir, device)
        config = RunConfig.from_dict(ckpt["config"], source=str(Path(run_dir) / CHECKPOINT))
        report, temperature = evaluation_batches(config, vocab, device)
        return cls(Path(run_dir), model, vocab, ckpt, config, run_dataset(config, vocab), report, temperature, device)

    def lineage(self) -> Lineage:
        """The run's lineage (founders when its checkpoint has none), a fresh copy."""
        lineage = Lineage.founders(self.model.mlp_widths())
        if "lineage" in self.ckpt:
            lineage.load_state_dict(copy.deepcopy(self.ckpt["lineage"]))
        return lineage


@dataclass
class Pruned:
    """A pruned copy of the source model: masks of kept weights (unstructured, 2:4), or the neurons removed."""

    model: GPT
    masks: Masks
    removed_neurons: list[list[int]]
    lineage: Lineage
    seconds: float

    def describe(self, spec: CompressSpec) -> dict[str, Any]:
        return {
            **spec.to_dict(),
            "label": spec.label,
            "tensors_changed": sorted(self.masks),
            "weights_pruned": int(sum((~m).sum() for m in self.masks.values())),
            "removed_neurons": self.removed_neurons,
            "mlp_widths": self.model.mlp_widths(),
        }


def prune_copy(source: Source, spec: CompressSpec, batch_size: int, progress: Progress | None = None) -> Pruned:
    """Prune a copy of the source model as ``spec`` says (calibration windows drawn with ``spec.seed``)."""
    spec.validate()
    check_widths(source.model, spec.pattern)
    start = time.perf_counter()
    model = copy.deepcopy(source.model)
    batches = []
    if spec.method in NEEDS_CALIBRATION:
        generator = torch.Generator().manual_seed(spec.seed)
        batches = calibration_batches(source.data, spec.calibration, batch_size, generator, source.device)
    lineage = source.lineage()
    total = len(model.blocks) if spec.pattern == "neurons" else len(prunable_layers(model))
    done = iter(range(1, total + 1))
    advance = (lambda: progress("pruning", next(done), total)) if progress else (lambda: None)
    if spec.pattern == "neurons":
        tracker = fitness_tracker(model, batches) if spec.method == "fitness" else None
        populations = neuron_populations(model, lineage, tracker)
        step = int(source.ckpt["step"])
        removed = prune_neurons(model, populations, spec.method, spec.prune, batches, step, advance)
        return Pruned(model.eval(), {}, removed, lineage, time.perf_counter() - start)
    masks = prune_weights(model, spec.method, spec.pattern, spec.prune, batches, advance)
    return Pruned(model.eval(), masks, [], lineage, time.perf_counter() - start)


def finetune(
    student: GPT,
    data: CharDataset,
    settings: RecoverySettings,
    masks: Masks | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Adam (``settings.lr``, no weight decay) on next-character cross-entropy for ``settings.steps``
    steps of ``settings.batch_size`` training windows (drawn with ``settings.seed``), pruned
    weights held at zero as in Lazarus' frozen mode: the data-using control with the same budget."""
    generator = torch.Generator().manual_seed(settings.seed)
    device = next(student.parameters()).device
    student.eval()  # no dropout, as in the Lazarus recovery
    optimizer = torch.optim.Adam(student.parameters(), lr=settings.lr)
    params = dict(student.named_parameters())
    masks = masks or {}
    apply_masks(student, masks)
    history = []
    for step in range(1, settings.steps + 1):
        x, y = data.batch("train", settings.batch_size, generator, device)
        _, loss = student(x, y)
        if not math.isfinite(loss.item()):
            raise ApoptosisError(f"the fine-tuning loss became {loss.item()} at step {step}: lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for name, mask in masks.items():
            params[name].grad.mul_(mask)
        optimizer.step()
        apply_masks(student, masks)
        history.append({"total": loss.item()})
        if progress is not None:
            progress(step, history[-1])
    optimizer.zero_grad(set_to_none=True)
    return history


def recover_pruned(
    source: Source, pruned: Pruned, spec: CompressSpec, settings: RecoverySettings, progress: Progress | None = None
) -> tuple[GPT, list[dict[str, float]]]:
    """The recovered copy of the pruned model (the pruned model itself for ``none``) and its history."""
    if spec.recover == "none":
        return pruned.model, []
    steps = settings.steps
    report = (lambda step, parts: progress("recovering", step, steps)) if progress else None
    if spec.recover == "lazarus":
        return recover_copy(source.model, pruned.model, settings, pruned.masks, None, report)
    student = copy.deepcopy(pruned.model)
    return student, finetune(student, source.data, settings, pruned.masks, report)


# --- measuring ----------------------------------------------------------------------------------


def bits(nats: float) -> float:
    return nats / math.log(2)


def result_row(
    spec: CompressSpec, figures: dict[str, Any], dense: GPT, compressed: GPT, speed: dict[str, float], seconds: float
) -> dict[str, Any]:
    """One row of the comparison: bits per character, parameters kept, bytes and speed."""
    models = figures["models"]
    size, dense_size = model_size(compressed), model_size(dense)
    return {
        **{k: getattr(spec, k) for k in ("method", "pattern", "prune", "recover", "seed")},
        "dense_bpc": bits(models["clean"]["loss"]),
        "pruned_bpc": bits(models["damaged"]["loss"]),
        "temperature_scaled_bpc": bits(models["temperature_scaled"]["loss"]),
        "bpc": bits(models["recovered"]["loss"]),
        "dense_parameters": dense_size["parameters"],
        "parameters": size["parameters"],
        "nonzero_parameters": size["nonzero_parameters"],
        "kept": size["nonzero_parameters"] / dense_size["parameters"],
        "dense_bytes": state_bytes(dense),
        "model_bytes": state_bytes(compressed),
        "sparse_bytes": size["sparse_bytes"],
        **speed,
        "seconds": round(seconds, 3),
    }


def measure(
    source: Source, spec: CompressSpec, pruned: Pruned, recovered: GPT, batch_size: int, seconds: float,
    speed: dict[str, float] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """``compare_models``' figures (clean, pruned, temperature-scaled, recovered) and the result row;
    ``speed`` is timed here unless given (it depends on the shapes only, not on the recovery)."""
    figures = compare_models(source.model, pruned.model, recovered, source.report, source.temperature_batches)
    speed = speed or inference_speed(source.model, recovered, batch_size, spec.seed)
    return figures, result_row(spec, figures, source.model, recovered, speed, seconds)


# --- the folder ---------------------------------------------------------------------------------


def write_run_folder(out: Path, source: Source, model: GPT, lineage: Lineage, masks: Masks, summary: dict) -> None:
    """A run folder holding ``model`` (config with its MLP widths, vocabulary, lineage, step), plus
    ``compress.json``; written into a hidden folder beside ``out`` and renamed, so it appears whole."""
    refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(source.config)
    config.model = model.current_config()
    relative = os.path.relpath(source.run_dir.resolve(), out.resolve())
    state = {
        "config": config.to_dict(),
        "vocab": source.vocab.chars,
        "step": source.ckpt["step"],
        "model": model.state_dict(),
        "lineage": lineage.state_dict(),
        "masks": {name: m.cpu() for name, m in masks.items()},
        "compression": summary["damage"],
        "source_run": relative,
    }
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        atomic_write(tmp / CHECKPOINT, lambda f: torch.save(state, f))
        atomic_write_text(tmp / "config.toml", config.to_toml())
        atomic_write_json(tmp / "vocab.json", source.vocab.chars)
        atomic_write_json(tmp / SUMMARY_FILE, {**summary, "source_run": relative})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def compress_run(
    run_dir: str | Path,
    spec: CompressSpec,
    settings: RecoverySettings,
    out: Path | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The command: check the options, load the run, prune, recover, measure, write ``out``
    (default ``RUN_DIR/compressed-<label>``). Returns the folder and its summary."""
    spec.validate()
    settings.validate()
    out = out or Path(run_dir) / f"compressed-{spec.label}"
    refuse_existing(out)
    source = Source.load(run_dir, device)
    pruned = prune_copy(source, spec, settings.batch_size, progress)
    start = time.perf_counter()
    recovered, history = recover_pruned(source, pruned, spec, settings, progress)
    seconds = pruned.seconds + time.perf_counter() - start
    figures, row = measure(source, spec, pruned, recovered, settings.batch_size, seconds)
    summary = {
        "compression": spec.to_dict(),
        "damage": pruned.describe(spec),
        "settings": settings.to_dict() if spec.recover != "none" else None,
        **_json_safe(figures),
        "size": {"original": model_size(source.model), "compressed": model_size(recovered)},
        "result": row,
        "history": history,
        "step": source.ckpt["step"],
    }
    write_run_folder(out, source, recovered, pruned.lineage, pruned.masks, summary)
    return out, summary


def _json_safe(obj: Any) -> Any:
    """NaN (undefined recovery) becomes null, so the JSON stays standard JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    return None if isinstance(obj, float) and math.isnan(obj) else obj
