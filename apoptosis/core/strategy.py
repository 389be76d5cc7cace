"""The strategy plugin interface: a name, a validated ``Params`` dataclass and trainer hooks.

Hooks are named ``on_<moment>`` and do nothing by default (as HF Trainer callbacks), so a
strategy overrides only what it needs. Surgery always goes through ``ctx.event(...)``, which
hands each layer's ``NeuronPopulation`` to the strategy and measures the loss on a fixed probe
batch before and after, so every strategy's disruption is recorded the same way.

A *follower* (``follows_events = True``, set with ``--then``) makes no events of its own: its
``on_event_end`` runs after each event of the main strategy, with the model as it was just
before that event, and the event's disruption is measured after the follower is done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import GPT
from apoptosis.core.params import StrategyParams
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.registry import STRATEGIES

Surgery = Callable[[NeuronPopulation], None]


@dataclass
class TrainingContext:
    """What a strategy sees of the run. ``generator`` is its own checkpointed random stream."""

    step: int
    total_steps: int
    model: GPT
    populations: list[NeuronPopulation]
    lineage: Lineage
    generator: torch.Generator
    _run_event: Callable[[str, Surgery], None]
    _log: Callable[[str], None]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The run's optimizer, which every population shares (for model-wide resets)."""
        return self.populations[0].optimizer

    def event(self, kind: str, surgery: Surgery) -> None:
        """Run ``surgery`` on every layer's population as one recorded event."""
        self._run_event(kind, surgery)

    def every(self, interval: int) -> bool:
        """True on steps that are multiples of ``interval``, except the last step (an event
        there would change the final model with no training after it)."""
        return self.step % interval == 0 and self.step < self.total_steps

    def log(self, message: str) -> None:
        """A line printed above the progress bar."""
        self._log(message)


@dataclass(frozen=True)
class Event:
    """One finished event of the main strategy, as a follower sees it. ``model_before`` is a frozen
    copy of the model just before the surgery (it may be narrower or wider than the model now)."""

    number: int
    step: int
    kind: str
    model_before: GPT


@dataclass(frozen=True)
class Phase:
    """A phase of continual training that has just ended: its index (0-based), its corpus and
    its last step."""

    index: int
    corpus: str
    end_step: int


@dataclass
class NoParams(StrategyParams):
    """For strategies without parameters."""


class Strategy:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = NoParams
    uses_fitness: ClassVar[bool] = True  # False skips the fitness hooks (and their cost)
    follows_events: ClassVar[bool] = False  # True: only usable as a follower (``--then``)

    def __init__(self, params: StrategyParams | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> Strategy:
        return cls(cls.Params.from_mapping(dict(values), owner=f"strategy {cls.name!r}"))

    def on_train_begin(self, ctx: TrainingContext) -> None:
        """Called once before the first step (also after ``--resume``)."""

    def on_step_end(self, ctx: TrainingContext) -> None:
        """Called after every optimizer step; ``ctx.step`` counts from 1."""

    def on_evaluate(self, ctx: TrainingContext, val_loss: float) -> None:
        """Called after each evaluation on the validation batches."""

    def on_event_end(self, ctx: TrainingContext, event: Event) -> None:
        """Called on a follower after each event of the main strategy (fitness hooks paused)."""

    def on_phase_end(self, ctx: TrainingContext, phase: Phase) -> None:
        """Called in continual training when a phase ends, before the next corpus takes over."""

    def extra_loss(self, ctx: TrainingContext) -> torch.Tensor | None:
        """A term added to this step's training loss before the backward pass (None: nothing)."""
        return None

    def on_train_end(self, ctx: TrainingContext) -> None:
        """Called once after the last step."""

    def state_dict(self) -> dict[str, Any]:
        """What ``--resume`` needs to continue exactly (the random stream is saved for you)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def build_strategy(name: str, params: Mapping[str, Any] | None = None, *, follower: bool = False) -> Strategy:
    """The registered strategy ``name`` with validated parameters (defaults for missing ones);
    ``follower`` asks for one that follows another's events (``--then``)."""
    if name not in STRATEGIES:
        leaders, followers = strategy_kinds()
        raise ApoptosisError(
            f"unknown {'follower' if follower else 'strategy'} {name!r}; strategies: {', '.join(leaders)}; "
            f"followers (--then, or A+B in compare): {', '.join(followers) or 'none'}"
        )
    cls = STRATEGIES.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ApoptosisError(f"strategy plugin {name!r} is {cls!r}, not a subclass of apoptosis.strategy.Strategy")
    if cls.follows_events != follower:
        followers = strategy_kinds()[1]
        if follower:
            raise ApoptosisError(
                f"{name!r} makes events of its own and cannot follow another strategy; followers: "
                f"{', '.join(followers) or 'none registered'}"
            )
        raise ApoptosisError(
            f"{name!r} only follows another strategy's events: use e.g. --strategy standard --then {name}"
        )
    return cls.from_config(params or {})


def strategy_kinds() -> tuple[list[str], list[str]]:
    """The registered names, split into strategies that make events and followers of events."""
    names = STRATEGIES.names()
    followers = [n for n in names if getattr(STRATEGIES.get(n), "follows_events", False)]
    return [n for n in names if n not in followers], followers


def resolve_composition(label: str) -> tuple[str, str]:
    """A compared label -> (strategy, follower): ``standard+lazarus``, ``standard``, or a follower
    alone (``replay``), which follows the plain baseline ``none``."""
    from apoptosis.core.config import split_composition

    name, follower = split_composition(label)
    if not follower and getattr(STRATEGIES.get(name), "follows_events", False):
        return "none", name
    return name, follower
