"""The training loop: one ``Trainer`` owns a run, and ``_train_step`` is one step, in order.

The Trainer builds the data, model, optimizer, fitness tracker, lineage and one
``NeuronPopulation`` per layer, and hands the strategy (and its follower) a ``TrainingContext``.
Its neighbours do the rest: ``run_folder`` (files), ``checkpoint`` (exact resume), ``evaluation``
(fixed batches), ``events`` (surgery measured per layer), ``phases`` (continual training) and
``summary``.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharDataset, CharVocab
from apoptosis.core.errors import ApoptosisError, TrainingDiverged
from apoptosis.core.fitness import FitnessTracker
from apoptosis.core.io import atomic_write_json
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import GPT
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.strategy import Phase, Strategy, TrainingContext, build_strategy
from apoptosis.training.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from apoptosis.training.evaluation import Evaluator
from apoptosis.training.events import EventRunner
from apoptosis.training.phases import PhaseSchedule, load_corpora
from apoptosis.training.progress import PROGRESS_COLUMNS, progress_fields
from apoptosis.training.run_checks import not_learning, warn, why_no_events
from apoptosis.training.run_folder import METRIC_COLUMNS, RunFolder
from apoptosis.training.schedule import build_optimizer, lr_at
from apoptosis.training.speed_options import apply_tf32, precision, training_forward
from apoptosis.training.summary import run_summary
from apoptosis.training.totals import RunTotals


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        console: Console | None = None,
        show_progress: bool = True,
        on_evaluate: Callable[[int, float], None] | None = None,
        corpora: dict[str, CharDataset] | None = None,
        on_phase_start: Callable[[int], None] | None = None,
        on_phase_end: Callable[[int], None] | None = None,
        label: str | None = None,
        draw_figures: bool = True,
    ) -> None:
        """``on_evaluate(step, val_loss)`` is called after every evaluation (a search reports
        intermediate values through it; an exception it raises stops the run). ``corpora``: the
        phases' generated datasets (the same again on resume). ``on_phase_start(i)`` sees the model
        phase ``i`` starts from (after the strategies' phase-end hooks; again on a resume there),
        ``on_phase_end(i)`` the model as phase ``i`` trained it (the last too), before those hooks.
        ``label``: the name the run's results go by in summary.json (a comparison's label, such as
        ``standard@prune_rate=0.05``); by default the strategy's. ``draw_figures=False``: the caller
        draws them (``apoptosis train`` does, in a fresh process, to keep its peak memory low)."""
        self.run_dir = Path(run_dir)
        self.draw_figures = draw_figures
        self.folder = RunFolder(self.run_dir)
        self.on_evaluate, self.label = on_evaluate, label
        self.supplied_corpora, self.on_phase_start, self.on_phase_end = corpora, on_phase_start, on_phase_end
        self.console = console or Console(log_path=False)
        self.show_progress = show_progress
        self.progress: Progress | None = None
        checkpoint = read_checkpoint(self.folder.checkpoint) if resume else None
        if checkpoint is not None:
            config = RunConfig.from_dict(checkpoint["config"], source="checkpoint")
        config.validate()
        created = not self.run_dir.exists()
        self.folder.claim()
        try:
            self._build(config, checkpoint)
        except BaseException:
            self.folder.release()
            if created:  # bad input found while building: leave no folder behind
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def _build(self, config: RunConfig, checkpoint: dict[str, Any] | None) -> None:
        """Everything the run needs, in an order that fixes the random draws (model initialisation
        first); restored from ``checkpoint`` when resuming."""
        if checkpoint is None and self.folder.holds_run():
            if self.folder.checkpoint.exists():
                raise ApoptosisError(
                    f"run folder {self.run_dir} already holds a run: pass --resume to continue it, or another --name"
                )
            warn(f"replacing {self.run_dir}: it holds a run that stopped before its first checkpoint")
            self.folder.clear()
        self.config = config
        t = config.trainer
        self.device = torch.device(t.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ApoptosisError("trainer.device is cuda but this machine has no CUDA GPU: use --device cpu")

        torch.manual_seed(t.seed)
        self.step = 0
        self.corpora, phase_corpora = load_corpora(config, checkpoint and checkpoint["vocab"], self.supplied_corpora)
        self.phases = PhaseSchedule(config, phase_corpora)
        self.vocab: CharVocab = self.data.vocab
        config.model.vocab_size = len(self.vocab)
        self.watched = list(self.corpora) if config.continual.evaluate_all else []  # val_<corpus> columns
        self.metric_columns = METRIC_COLUMNS + (
            ["phase", *(f"val_{name}" for name in self.watched)] if self.phases.phased else []
        )

        self.model = GPT(config.model).to(self.device)
        self.train_forward = training_forward(self.model, t)
        apply_tf32(t)
        self.probe_time_s = 0.0  # this process's seconds in events' probe passes
        self.optimizer = build_optimizer(self.model, config)
        self.lineage = Lineage.founders(self.model.mlp_widths())
        self.fitness = FitnessTracker(self.model, config.fitness.metric, config.fitness.ema_decay, seed=t.seed + 3)
        self.populations = [
            NeuronPopulation(i, block.mlp, self.optimizer, self.fitness, self.lineage)
            for i, block in enumerate(self.model.blocks)
        ]
        self.strategy: Strategy = build_strategy(config.strategy.name, config.strategy.params)
        config.strategy.params = self.strategy.params.to_dict()  # saved with every default filled in
        self.follower: Strategy | None = None
        if config.then.name:
            self.follower = build_strategy(config.then.name, config.then.params, follower=True)
            config.then.params = self.follower.params.to_dict()
        self.generators = {  # each its own stream, so a follower never shifts the strategy's choices
            name: torch.Generator().manual_seed(t.seed + offset)
            for name, offset in (("batches", 1), ("strategy", 2), ("follower", 5))
        }
        self.evaluator = Evaluator(self.model, self.corpora, t.batch_size, t.eval_batches, t.seed + 4, self.device)
        self.totals = RunTotals()
        self.last_checkpoint_step: int | None = None
        if checkpoint is not None:
            restore_checkpoint(self, checkpoint)
            self.last_checkpoint_step = self.step
            self.folder.truncate_to(self.step, self.metric_columns)
        else:
            self.folder.start(config, self.vocab, self.metric_columns)
        if t.tensorboard:
            from apoptosis.training.tensorboard_log import TensorBoardLog  # an optional package

            resumed_at = self.step if checkpoint is not None else None
            self.folder.mirror = TensorBoardLog(self.run_dir, self.lineage, resumed_at)
        self.events = EventRunner(
            self.model, self.populations, self.lineage, self.fitness, self.folder,
            totals=lambda: self.totals, probe_loss=self.probe_loss, log=self._log, probes=t.event_probes,
        )  # fmt: skip
        self.ctx = TrainingContext(
            step=self.step,
            total_steps=t.steps,
            model=self.model,
            populations=self.populations,
            lineage=self.lineage,
            generator=self.generators["strategy"],
            _run_event=lambda kind, surgery: self.events.run(self.step, kind, surgery),
            _log=self._log,
        )
        self.follower_ctx = dataclasses.replace(self.ctx, generator=self.generators["follower"])
        if self.follower is not None:
            self.events.follow_with(self.follower, self.follower_ctx)
        self.no_events_reason = why_no_events(config)
        if self.no_events_reason and checkpoint is None:
            warn(f"no event can happen in this run: {self.no_events_reason}")
        self.warned_unlearned = False

    @property
    def current_corpus(self) -> str:
        """The corpus of the step being trained (of the last one between steps)."""
        return self.phases.corpus_at(self.step)

    @property
    def data(self) -> CharDataset:
        return self.corpora[self.current_corpus]

    def probe_loss(self) -> float:
        """Loss on the current corpus's fixed probe batch: what an event disrupts. Its time is a
        measurement, like evaluation, and is kept out of training time (``probe_time_s``)."""
        self._synchronize()  # the step's queued GPU work is training time, not the probe's
        started = time.perf_counter()
        loss = self.evaluator.probe_loss(self.current_corpus)
        self.probe_time_s += time.perf_counter() - started
        return loss

    def fit(self) -> dict[str, Any]:
        """Train to ``trainer.steps`` (from the checkpoint's step after a resume); then finish. The
        run folder is released at the end, however the run ends."""
        try:
            for _ in self.train_steps():
                pass
            for strategy, ctx in self._hooked():
                strategy.on_train_end(ctx)
            return self.finish()
        finally:
            self.folder.release()

    def train_steps(self) -> Iterator[int]:
        """Train to ``trainer.steps``, yielding after each step its number: ``fit`` runs it to the
        end; ``apoptosis bench`` advances several trainers in turn, a few steps each, so that a
        noisy machine's drift hits them alike. Closing it early leaves the run as after that step."""
        t = self.config.trainer
        if any(strategy.uses_fitness for strategy, _ in self._hooked()):
            self.fitness.attach()
        self.model.train()
        for strategy, ctx in self._hooked():
            strategy.on_train_begin(ctx)
        with Progress(*PROGRESS_COLUMNS, console=self.console, disable=not self.show_progress) as progress:
            self.progress = progress
            task = progress.add_task(self.config.strategy_label, total=t.steps, completed=self.step,
                                     loss="-", val="-", tps="-", events=0)  # fmt: skip
            try:
                if self.on_phase_start and self.step < t.steps and self.phases.starts_after(self.step):
                    self.on_phase_start(self.phases.phase_of(self.step + 1))
                while self.step < t.steps:
                    self._train_step()
                    progress.update(task, completed=self.step, **progress_fields(self.totals))
                    yield self.step
            finally:
                self.progress = None
                self.fitness.detach()

    def _train_step(self) -> None:
        """One step, in order: batch, forward, backward, fitness, optimizer step; then the model as
        trained is evaluated (when due) and, at a phase's last step, handed to ``on_phase_end``,
        both before the strategies' events change it; then the metrics row, the strategies' phase
        end and the checkpoint."""
        t = self.config.trainer
        started = time.perf_counter()
        self.step += 1
        for _, ctx in self._hooked():
            ctx.step = self.step
        lr = lr_at(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.data.batch("train", t.batch_size, self.generators["batches"], self.device)
        with precision(self.device, t):
            _, loss = self.train_forward(x, y)
        self.totals.add_loss(loss.detach())  # on the device: read once per metrics row
        for strategy, ctx in self._hooked():
            if type(strategy).extra_loss is not Strategy.extra_loss:
                with self.fitness.paused():  # its own forward passes are not what fitness measures
                    extra = strategy.extra_loss(ctx)
                if extra is not None:
                    loss = loss + extra
        loss.backward()
        self.fitness.after_backward()  # metrics read from the weights' gradients, before clipping
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        for pop in self.populations:
            pop.updates.before_step()
        self.optimizer.step()
        for pop in self.populations:
            pop.updates.after_step()  # newborns' own bias correction, protected neurons' scales
        self.optimizer.zero_grad(set_to_none=True)
        # The host waits for the GPU only before work that is not training time (evaluation, the
        # metrics row, a phase end, a checkpoint), so every second of training is counted once.
        is_last = self.step == t.steps
        is_eval = self.step % t.eval_interval == 0 or is_last or self.phases.evaluates_all_at(self.step)
        is_row = is_eval or self.step % t.log_interval == 0
        is_checkpoint = self.step % t.checkpoint_interval == 0 or is_last
        pauses = is_row or is_checkpoint or self.phases.ends_at(self.step)
        if is_eval:
            self._synchronize()
        elapsed = time.perf_counter() - started

        tot = self.totals
        tot.tokens += x.numel()
        tot.pending_tokens += x.numel()
        corpus_losses = None
        if is_eval:  # the model as this step trained it: this step's events have not happened yet
            val_losses = self.evaluator.val_losses(self.watched or [self.current_corpus])  # the current: val_loss
            tot.last_val_loss = val_losses[self.current_corpus]
            corpus_losses = val_losses if self.phases.phased else None
            self._check_learning(tot.last_val_loss)
            for strategy, ctx in self._hooked():
                strategy.on_evaluate(ctx, tot.last_val_loss)
            if self.on_evaluate is not None:
                self.on_evaluate(self.step, tot.last_val_loss)

        if self.phases.ends_at(self.step) and self.on_phase_end:  # the phase as its last step trained it,
            self.on_phase_end(self.phases.phase_of(self.step))  # before this step's events, as evaluation

        started, probed = time.perf_counter(), self.probe_time_s
        try:
            for strategy, ctx in self._hooked():
                strategy.on_step_end(ctx)  # events: their effect is in events.jsonl, per layer
        except Exception:  # surgery on weights a non-finite loss has spoiled fails: say that instead
            train_loss, first = tot.read_losses(self.step)
            if not math.isfinite(train_loss):
                self._diverged(f"training loss became {train_loss} (mean of steps {first}..{self.step})")
            raise
        if pauses:
            self._synchronize()
        elapsed += time.perf_counter() - started - (self.probe_time_s - probed)  # surgery is training time;
        # evaluation and the events' probe passes (measurements) are not
        tot.train_time_s += elapsed
        tot.pending_time_s += elapsed

        if is_row:
            train_loss, first = tot.read_losses(self.step)
            if not math.isfinite(train_loss):
                self._diverged(f"training loss became {train_loss} (mean of steps {first}..{self.step})")
            self._write_metrics_row(lr, tot.last_val_loss if is_eval else None, corpus_losses)
        if self.phases.ends_at(self.step) and not is_last:
            self._end_phase()
        if is_checkpoint:
            if not all(torch.isfinite(p).all() for p in self.model.parameters()):
                self._diverged("weights became NaN or infinite")
            save_checkpoint(self, self.folder.checkpoint)
            self.last_checkpoint_step = self.step

    def _hooked(self) -> list[tuple[Strategy, TrainingContext]]:
        """The strategy and its follower (if any), each with the context its hooks receive."""
        pairs = [(self.strategy, self.ctx)]
        if self.follower is not None:
            pairs.append((self.follower, self.follower_ctx))
        return pairs

    def _end_phase(self) -> None:
        """Hooks see the phase that ends; then the next phase's corpus takes over."""
        index = self.phases.phase_of(self.step)
        phase = Phase(index, self.phases.phase_corpora[index], self.step)
        for strategy, ctx in self._hooked():
            strategy.on_phase_end(ctx, phase)
        following = self.phases.phase_corpora[index + 1]
        self.folder.append_event(
            {"kind": "phase", "step": self.step, "layer": None, "ended": phase.corpus, "next": following}
        )
        self._log(f"step {self.step}: phase {index + 1} ({phase.corpus}) ended; next: {following}")
        if self.on_phase_start:
            self.on_phase_start(index + 1)

    def _write_metrics_row(self, lr: float, val_loss: float | None, corpus_losses: dict[str, float] | None) -> None:
        row = self.totals.take_row(self.step, lr, val_loss, sum(self.model.mlp_widths()))
        if self.phases.phased:
            losses = corpus_losses or {}
            row += [self.phases.phase_of(self.step)]
            row += [f"{losses[name]:.6f}" if name in losses else "" for name in self.watched]
        self.folder.append_metrics(row)

    def _check_learning(self, val_loss: float) -> None:
        """Warn once when, after warm-up, the model is worse than one with no context at all."""
        message = not_learning(self.step, val_loss, self.data.unigram_loss(), self.config.trainer.warmup_steps)
        if message and not self.warned_unlearned:
            self.warned_unlearned = True
            warn(message)

    def _synchronize(self) -> None:
        """Wait for queued GPU work, so that a time taken next covers it (no-op on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _diverged(self, what: str) -> None:
        kept = (
            f"the last good checkpoint (step {self.last_checkpoint_step}) is kept in {self.folder.checkpoint}"
            if self.last_checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(f"{what} at step {self.step}; {kept} (lower trainer.lr or check the strategy)")

    def _log(self, message: str) -> None:
        if not self.show_progress:
            return
        (self.progress.console if self.progress is not None else self.console).log(message)

    def summary(self) -> dict[str, Any]:
        summary = run_summary(self.config, self.step, self.run_dir, self.model, self.lineage, self.totals,
                              self.evaluator, self.corpora, self.phases.phase_corpora, self.current_corpus)  # fmt: skip
        if summary["events"] == 0 and self.no_events_reason:
            summary["no_events_reason"] = self.no_events_reason
        if self.label is not None:
            summary["strategy"] = self.label
        return summary

    def finish(self) -> dict[str, Any]:
        """Write summary.json, lineage.csv and (``trainer.plots``, unless the caller draws them) the figures."""
        summary = self.summary()
        atomic_write_json(self.run_dir / "summary.json", summary)
        self.lineage.write_csv(self.run_dir / "lineage.csv")
        if self.config.trainer.plots and self.draw_figures:
            from apoptosis.training.run_plots import plot_run  # seaborn is slow to import; only needed here

            plot_run(self.run_dir)
        return summary
