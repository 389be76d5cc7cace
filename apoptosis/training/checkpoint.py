"""Checkpoints: everything the next step depends on, so that ``--resume`` after a kill ends with
the same numbers as a run that was never interrupted (on the CPU, bit for bit). The config saved
inside has the MLP widths as they are, so grown or shrunk models load."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharVocab
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.fitness import FitnessTracker
from apoptosis.core.io import atomic_write, read_torch_file
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import GPT
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.strategy import Strategy
from apoptosis.training.totals import RunTotals


class CheckpointedRun(Protocol):
    """The parts of a run a checkpoint holds (``Trainer`` has them)."""

    config: RunConfig
    label: str | None  # a comparison's name for the run (summary.json's strategy)
    vocab: CharVocab
    step: int
    model: GPT
    optimizer: torch.optim.Optimizer
    strategy: Strategy
    follower: Strategy | None
    fitness: FitnessTracker
    populations: list[NeuronPopulation]
    lineage: Lineage
    totals: RunTotals
    generators: dict[str, torch.Generator]  # batches, strategy, follower


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ApoptosisError(f"nothing to resume: {path} does not exist")
    return read_torch_file(path, keys=("config", "model", "optimizer", "step"))


def save_checkpoint(run: CheckpointedRun, path: Path) -> None:
    c = run.config
    config = RunConfig(
        model=run.model.current_config(),
        data=c.data,
        trainer=c.trainer,
        fitness=c.fitness,
        strategy=c.strategy,
        then=c.then,
        continual=c.continual,
    )
    state = {
        "config": config.to_dict(),
        "vocab": run.vocab.chars,
        "step": run.step,
        "label": run.label,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "strategy": run.strategy.state_dict(),
        "follower": run.follower.state_dict() if run.follower else None,
        "fitness": run.fitness.state_dict(),
        "neuron_updates": [pop.updates.state_dict() for pop in run.populations],
        "lineage": run.lineage.state_dict(),
        "totals": run.totals.state(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            **{name: generator.get_state() for name, generator in run.generators.items()},
        },
    }
    atomic_write(path, lambda f: torch.save(state, f))


def restore_checkpoint(run: CheckpointedRun, ckpt: dict[str, Any]) -> None:
    """Put the checkpoint's state into a run built from the checkpoint's config."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.config.trainer.fused_adamw = bool(run.optimizer.param_groups[0].get("fused"))  # the saved state's kernel
    run.strategy.load_state_dict(ckpt["strategy"])
    if run.follower is not None:
        run.follower.load_state_dict(ckpt["follower"])
    run.fitness.load_state_dict(ckpt["fitness"])
    saved = ckpt.get("neuron_updates", ckpt.get("update_scales", []))  # older runs saved scales only
    for pop, state in zip(run.populations, saved, strict=False):
        pop.updates.load_state_dict(state)
    run.lineage.load_state_dict(ckpt["lineage"])
    run.totals = RunTotals.from_state(ckpt["totals"])
    run.step = ckpt["step"]
    run.label = run.label or ckpt.get("label")  # `train --resume` of a compared run keeps its label
    torch.set_rng_state(ckpt["rng"]["torch"])
    if ckpt["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    for name, generator in run.generators.items():
        if name in ckpt["rng"]:  # runs from before followers have no follower stream
            generator.set_state(ckpt["rng"][name])
