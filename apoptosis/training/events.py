"""An event: the strategy's surgery on every layer's population, written to events.jsonl with the
probe batch's loss before and after (``trainer.event_probes``: around every layer, around the
whole event, or not at all), then the follower's turn (if any)."""

from __future__ import annotations

import time
from collections.abc import Callable

from apoptosis.core.fitness import FitnessTracker
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import GPT, frozen_copy
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.strategy import Event, Strategy, Surgery, TrainingContext
from apoptosis.training.run_folder import RunFolder
from apoptosis.training.totals import RunTotals


class EventRunner:
    def __init__(
        self,
        model: GPT,
        populations: list[NeuronPopulation],
        lineage: Lineage,
        fitness: FitnessTracker,
        folder: RunFolder,
        totals: Callable[[], RunTotals],
        probe_loss: Callable[[], float],
        log: Callable[[str], None],
        probes: str = "layers",
    ) -> None:
        self.model, self.populations, self.lineage, self.fitness = model, populations, lineage, fitness
        self.folder, self.totals, self.probe_loss, self.log = folder, totals, probe_loss, log
        self.probes = probes  # "layers", "event" or "off": what each event costs in probe passes
        self.follower: Strategy | None = None
        self.follower_ctx: TrainingContext | None = None

    def follow_with(self, follower: Strategy, ctx: TrainingContext) -> None:
        """``follower`` runs after each event (if it has an ``on_event_end``), seeing ``ctx``."""
        if type(follower).on_event_end is not Strategy.on_event_end:
            self.follower, self.follower_ctx = follower, ctx

    def run(self, step: int, kind: str, surgery: Surgery) -> None:
        """One event at ``step``; nothing is recorded if the surgery changed no layer. The probe
        loss is measured before the event and after each changed layer (``layers``: 1 + layers
        forward passes), before and after the whole event (``event``: 2) or not (``off``: the
        lines carry null, the run no disruption)."""
        totals = self.totals()
        number = totals.events + 1
        first = before = self._probe()
        model_before = frozen_copy(self.model) if self.follower is not None else None
        lines = []
        for pop in self.populations:
            mark = self.lineage.mark()
            surgery(pop)
            born, dead = self.lineage.births_since(mark), self.lineage.deaths_since(mark)
            if not born and not dead:
                continue
            after = self.probe_loss() if self.probes == "layers" else None
            totals.neurons_replaced += len(dead)
            totals.neurons_born += len(born)
            lines.append(
                {
                    "event": number,
                    "step": step,
                    "kind": kind,
                    "layer": pop.layer,
                    "width": pop.width,
                    "dead_ids": [r.id for r in dead],
                    "dead_fitness": [r.death_fitness for r in dead],
                    "born_ids": [r.id for r in born],
                    "parent_ids": [list(r.parents) for r in born],
                    "parent_fitness": [r.parent_fitness for r in born],
                    "probe_loss_before": before,
                    "probe_loss_after": after,
                }
            )
            before = after
        if not lines:
            return
        if self.probes == "event":
            before = lines[-1]["probe_loss_after"] = self.probe_loss()
        for line in lines:
            self.folder.append_event(line)
        totals.events = number
        message = f"step {step}: {kind} event {number}"
        if first is not None:
            totals.surgery_disruptions.append(before - first)
            message += f", probe loss {first:.4f} -> {before:.4f}"
        if self.follower is not None and model_before is not None:
            before = self._follow(Event(number, step, kind, model_before), before)
            message += (
                f" -> {before:.4f} after {self.follower.name}" if before is not None else f", then {self.follower.name}"
            )
        if first is not None:
            totals.disruptions.append(before - first)
        self.log(message)

    def _probe(self) -> float | None:
        return None if self.probes == "off" else self.probe_loss()

    def _follow(self, event: Event, before: float | None) -> float | None:
        """The follower's turn, fitness paused and with its own random stream; one events.jsonl
        line (``layer`` null) records its effect. Returns the probe loss after it (None when
        events are not probed)."""
        assert self.follower is not None and self.follower_ctx is not None
        started = time.perf_counter()
        with self.fitness.paused():
            self.follower.on_event_end(self.follower_ctx, event)
        after = self._probe()
        self.folder.append_event(
            {
                "event": event.number,
                "step": event.step,
                "kind": self.follower.name,
                "layer": None,
                "follows": event.kind,
                "seconds": round(time.perf_counter() - started, 3),
                "probe_loss_before": before,
                "probe_loss_after": after,
            }
        )
        return after
