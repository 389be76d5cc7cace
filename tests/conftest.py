"""Shared tiny building blocks: a small model with its optimizer, fitness, lineage and populations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from apoptosis.core.config import ModelConfig, RunConfig
from apoptosis.core.encoded_corpus import CACHE_ENV
from apoptosis.core.fitness import FitnessTracker
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import GPT
from apoptosis.core.population import NeuronPopulation
from apoptosis.training import build_optimizer

TINY_TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "And by opposing end them. To die - to sleep,\n"
) * 40


def tiny_model_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=20, n_layer=2, n_head=2, d_model=16, d_ff=32, block_size=8)
    values.update(overrides)
    return ModelConfig(**values)


def tiny_run_config(tmp_path, steps: int = 40, strategy: str = "standard", **strategy_params) -> RunConfig:
    """A run of a few seconds on a small text file."""
    data = tmp_path / "tiny.txt"
    if not data.exists():
        data.write_text(TINY_TEXT, encoding="utf-8")
    config = RunConfig()
    config.data.path = str(data)
    config.model = ModelConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, block_size=16)
    t = config.trainer
    t.steps, t.batch_size, t.eval_interval, t.eval_batches = steps, 8, 10, 2
    t.log_interval, t.checkpoint_interval, t.warmup_steps = 5, 10, 5
    config.strategy.name = strategy
    config.strategy.params = dict(strategy_params)
    return config


@pytest.fixture(autouse=True)
def corpus_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test encodes corpora into its own empty cache, never into the home folder."""
    folder = tmp_path_factory.mktemp("corpus-cache")
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@dataclass
class Colony:
    model: GPT
    optimizer: torch.optim.Optimizer
    fitness: FitnessTracker
    lineage: Lineage
    populations: list[NeuronPopulation]

    def train_steps(self, n: int, seed: int = 0) -> None:
        """A few real optimizer steps so Adam has moments and fitness has history."""
        g = torch.Generator().manual_seed(seed)
        vocab, T = self.model.config.vocab_size, self.model.config.block_size
        for _ in range(n):
            x = torch.randint(vocab, (4, T), generator=g)
            y = torch.randint(vocab, (4, T), generator=g)
            _, loss = self.model(x, y)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> None:
        """The trainer's update: the optimizer's step between every population's ``before_step``
        and ``after_step`` (newborns' own bias correction, protection), then gradients cleared."""
        for pop in self.populations:
            pop.updates.before_step()
        self.optimizer.step()
        for pop in self.populations:
            pop.updates.after_step()
        self.optimizer.zero_grad(set_to_none=True)


def make_colony(metric: str = "grad_activation", run_config: RunConfig | None = None, **model_overrides) -> Colony:
    """A tiny model with every part a run has; ``run_config`` sets the optimizer's settings."""
    torch.manual_seed(0)
    model = GPT(tiny_model_config(**model_overrides))
    optimizer = build_optimizer(model, run_config or RunConfig())
    fitness = FitnessTracker(model, metric, ema_decay=0.9, seed=0)
    fitness.attach()
    lineage = Lineage.founders(model.mlp_widths())
    pops = [NeuronPopulation(i, b.mlp, optimizer, fitness, lineage) for i, b in enumerate(model.blocks)]
    return Colony(model, optimizer, fitness, lineage, pops)


@pytest.fixture
def colony() -> Colony:
    c = make_colony()
    c.train_steps(3)
    return c
