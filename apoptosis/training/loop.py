"""The training loop, its run folder and exact resume.

One ``Trainer`` owns a run: it builds the data, model, optimizer, fitness tracker, lineage and
one ``NeuronPopulation`` per layer, calls the strategy's hooks, measures every event on a fixed
probe batch, and writes ``runs/<name>/`` (see runs/README.md). A checkpoint holds everything
the next step depends on, so ``--resume`` after a kill ends with the same numbers as a run that
was never interrupted (on the CPU, bit for bit).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharDataset, CharVocab, load_corpus
from apoptosis.core.errors import ApoptosisError, TrainingDiverged
from apoptosis.core.fitness import FitnessTracker
from apoptosis.core.io import atomic_write, atomic_write_json, atomic_write_text
from apoptosis.core.lineage import Lineage
from apoptosis.core.model import GPT, frozen_copy
from apoptosis.core.population import NeuronPopulation
from apoptosis.core.strategy import Event, Phase, Strategy, Surgery, TrainingContext, build_strategy

METRIC_COLUMNS = ["step", "train_loss", "val_loss", "lr", "tokens_per_s", "neurons", "events"]
CHECKPOINT = Path("checkpoints") / "last.pt"


def lr_at(step: int, config: RunConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at the last step; in continual
    training the schedule starts again with every phase."""
    t = config.trainer
    length = t.steps
    if config.continual.phases:
        length = config.continual.steps_per_phase
        step = (step - 1) % length + 1
    if step <= t.warmup_steps:
        return t.lr * step / max(t.warmup_steps, 1)
    progress = (step - t.warmup_steps) / max(length - t.warmup_steps, 1)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(model: GPT, config: RunConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (embeddings and linear weights)."""
    t = config.trainer
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2))


@dataclass
class RunTotals:
    """Counters that go into the checkpoint and the summary."""

    events: int = 0
    neurons_replaced: int = 0
    neurons_born: int = 0
    disruptions: list[float] = field(default_factory=list)  # probe loss after - before, per event
    surgery_disruptions: list[float] = field(default_factory=list)  # the same before any follower ran
    train_time_s: float = 0.0
    tokens: int = 0
    pending_losses: list[float] = field(default_factory=list)  # since the last metrics row
    pending_tokens: int = 0
    pending_time_s: float = 0.0
    last_val_loss: float | None = None
    last_train_loss: float | None = None


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
    ) -> None:
        """``on_evaluate(step, val_loss)`` is called after every evaluation (a search reports
        intermediate values through it; an exception it raises stops the run)."""
        self.run_dir = Path(run_dir)
        self.on_evaluate = on_evaluate
        self.console = console or Console(log_path=False)
        self.show_progress = show_progress
        checkpoint = self._read_checkpoint() if resume else None
        if checkpoint is not None:
            config = RunConfig.from_dict(checkpoint["config"], source="checkpoint")
        elif (self.run_dir / "config.toml").exists():
            raise ApoptosisError(
                f"run folder {self.run_dir} already holds a run: pass --resume to continue it, or another --name"
            )
        config.validate()
        self.config = config
        t = config.trainer
        self.device = torch.device(t.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ApoptosisError("trainer.device is cuda but this machine has no CUDA GPU: use --device cpu")

        torch.manual_seed(t.seed)
        self.step = 0
        self.corpora, self.phase_corpora = self._load_corpora(checkpoint["vocab"] if checkpoint else None)
        config.model.vocab_size = len(self.data.vocab)
        self.metric_columns = METRIC_COLUMNS + (
            ["phase", *(f"val_{name}" for name in self.corpora)] if config.continual.phases else []
        )

        self.model = GPT(config.model).to(self.device)
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

        self.batch_generator = torch.Generator().manual_seed(t.seed + 1)
        self.strategy_generator = torch.Generator().manual_seed(t.seed + 2)
        self.follower_generator = torch.Generator().manual_seed(t.seed + 5)  # the main stream is not shifted
        fixed = torch.Generator().manual_seed(t.seed + 4)
        self.probe_batches, self.eval_batches = {}, {}  # per corpus: one train batch; train and val batches
        for name, data in self.corpora.items():
            self.probe_batches[name] = data.batch("train", t.batch_size, fixed, self.device)
            self.eval_batches[name] = {
                split: [data.batch(split, t.batch_size, fixed, self.device) for _ in range(t.eval_batches)]
                for split in ("train", "val")
            }
        self.last_checkpoint_step: int | None = None
        self.totals = RunTotals()
        self.progress: Progress | None = None
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)
        else:
            self._start_run_folder()
        self.ctx = self._context()
        self.follower_ctx = dataclasses.replace(self.ctx, generator=self.follower_generator)

    # --- run folder ---------------------------------------------------------------------------

    def _start_run_folder(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.toml", self.config.to_toml())
        atomic_write_json(self.run_dir / "vocab.json", self.data.vocab.chars)
        atomic_write_text(self.run_dir / "metrics.csv", ",".join(self.metric_columns) + "\n")
        atomic_write_text(self.run_dir / "events.jsonl", "")

    def _append(self, name: str, line: str) -> None:
        with open(self.run_dir / name, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _truncate_logs(self, step: int) -> None:
        """After a resume: drop metric rows and events written after the checkpoint's step."""
        metrics = self.run_dir / "metrics.csv"
        lines = metrics.read_text(encoding="utf-8").splitlines()
        width = len(self.metric_columns)
        kept = [lines[0]] + [ln for ln in lines[1:] if _complete_row(ln, width) and int(ln.split(",", 1)[0]) <= step]
        atomic_write_text(metrics, "\n".join(kept) + "\n")
        events = self.run_dir / "events.jsonl"
        if events.exists():
            kept = [ln for ln in events.read_text(encoding="utf-8").splitlines() if _event_step(ln) <= step]
            atomic_write_text(events, "".join(ln + "\n" for ln in kept))

    # --- checkpoints --------------------------------------------------------------------------

    def _read_checkpoint(self) -> dict[str, Any]:
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            raise ApoptosisError(f"nothing to resume: {path} does not exist")
        return torch.load(path, map_location="cpu", weights_only=False)

    def save_checkpoint(self) -> None:
        state = {
            "config": RunConfig(
                model=self.model.current_config(),
                data=self.config.data,
                trainer=self.config.trainer,
                fitness=self.config.fitness,
                strategy=self.config.strategy,
                then=self.config.then,
                continual=self.config.continual,
            ).to_dict(),
            "vocab": self.data.vocab.chars,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "follower": self.follower.state_dict() if self.follower else None,
            "fitness": self.fitness.state_dict(),
            "neuron_updates": [pop.updates.state_dict() for pop in self.populations],
            "lineage": self.lineage.state_dict(),
            "totals": asdict(self.totals),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "batches": self.batch_generator.get_state(),
                "strategy": self.strategy_generator.get_state(),
                "follower": self.follower_generator.get_state(),
            },
        }
        atomic_write(self.run_dir / CHECKPOINT, lambda f: torch.save(state, f))
        self.last_checkpoint_step = self.step

    def _load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.strategy.load_state_dict(ckpt["strategy"])
        if self.follower is not None:
            self.follower.load_state_dict(ckpt["follower"])
        self.fitness.load_state_dict(ckpt["fitness"])
        saved = ckpt.get("neuron_updates", ckpt.get("update_scales", []))  # older runs saved scales only
        for pop, state in zip(self.populations, saved, strict=False):
            pop.updates.load_state_dict(state)
        self.lineage.load_state_dict(ckpt["lineage"])
        self.totals = RunTotals(**ckpt["totals"])
        self.step = self.last_checkpoint_step = ckpt["step"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        self.batch_generator.set_state(ckpt["rng"]["batches"])
        self.strategy_generator.set_state(ckpt["rng"]["strategy"])
        if "follower" in ckpt["rng"]:
            self.follower_generator.set_state(ckpt["rng"]["follower"])
        self._truncate_logs(self.step)

    # --- measuring ----------------------------------------------------------------------------

    @torch.no_grad()
    def _mean_loss(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        was_training = self.model.training
        self.model.eval()
        losses = [self.model(x, y)[1].item() for x, y in batches]
        self.model.train(was_training)
        return float(np.mean(losses))

    def probe_loss(self) -> float:
        """Loss on one fixed training batch of the current corpus: what an event disrupts."""
        return self._mean_loss([self.probe_batches[self.current_corpus]])

    def evaluate(self) -> tuple[float, float]:
        """(train, val) loss of the current corpus on its fixed evaluation batches."""
        batches = self.eval_batches[self.current_corpus]
        return self._mean_loss(batches["train"]), self._mean_loss(batches["val"])

    def evaluate_corpora(self) -> dict[str, float]:
        """Validation loss on every corpus (one for a plain run; learning and forgetting together
        in a continual one)."""
        return {name: self._mean_loss(batches["val"]) for name, batches in self.eval_batches.items()}

    # --- events -------------------------------------------------------------------------------

    def _run_event(self, kind: str, surgery: Surgery) -> None:
        number = self.totals.events + 1
        first = before = self.probe_loss()
        follower = self.follower if self._follows_events() else None
        model_before = frozen_copy(self.model) if follower is not None else None
        changed = False
        for pop in self.populations:
            mark = self.lineage.mark()
            surgery(pop)
            born, dead = self.lineage.births_since(mark), self.lineage.deaths_since(mark)
            if not born and not dead:
                continue
            changed = True
            after = self.probe_loss()
            self.totals.neurons_replaced += len(dead)
            self.totals.neurons_born += len(born)
            record = {
                "event": number,
                "step": self.step,
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
            self._append("events.jsonl", json.dumps(record))
            before = after
        if not changed:
            return
        self.totals.events = number
        self.totals.surgery_disruptions.append(before - first)
        message = f"step {self.step}: {kind} event {number}, probe loss {first:.4f} -> {before:.4f}"
        if follower is not None and model_before is not None:
            before = self._run_follower(follower, Event(number, self.step, kind, model_before), before)
            message += f" -> {before:.4f} after {follower.name}"
        self.totals.disruptions.append(before - first)
        self._log(message)

    def _follows_events(self) -> bool:
        """True when the follower has something to do after an event (not all followers do)."""
        return self.follower is not None and type(self.follower).on_event_end is not Strategy.on_event_end

    def _run_follower(self, follower: Strategy, event: Event, before: float) -> float:
        """The follower's turn after an event, with its own random stream; one events.jsonl line
        (``layer`` null) records its effect on the probe loss. Returns the probe loss after it."""
        started = time.perf_counter()
        with self.fitness.paused():
            follower.on_event_end(self.follower_ctx, event)
        after = self.probe_loss()
        record = {
            "event": event.number,
            "step": self.step,
            "kind": follower.name,
            "layer": None,
            "follows": event.kind,
            "seconds": round(time.perf_counter() - started, 3),
            "probe_loss_before": before,
            "probe_loss_after": after,
        }
        self._append("events.jsonl", json.dumps(record))
        return after

    def _log(self, message: str) -> None:
        if not self.show_progress:
            return
        if self.progress is not None:
            self.progress.console.log(message)
        else:
            self.console.log(message)

    # --- the loop -----------------------------------------------------------------------------

    def _context(self) -> TrainingContext:
        return TrainingContext(
            step=self.step,
            total_steps=self.config.trainer.steps,
            model=self.model,
            populations=self.populations,
            lineage=self.lineage,
            generator=self.strategy_generator,
            _run_event=self._run_event,
            _log=self._log,
        )

    def _hooked(self) -> list[tuple[Strategy, TrainingContext]]:
        """The strategy and its follower (if any), each with the context its hooks receive."""
        pairs = [(self.strategy, self.ctx)]
        if self.follower is not None:
            pairs.append((self.follower, self.follower_ctx))
        return pairs

    def fit(self) -> dict[str, Any]:
        """Train to ``trainer.steps`` (from the checkpoint's step after a resume)."""
        t = self.config.trainer
        if any(strategy.uses_fitness for strategy, _ in self._hooked()):
            self.fitness.attach()
        self.model.train()
        for strategy, ctx in self._hooked():
            strategy.on_train_begin(ctx)
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("events {task.fields[events]}"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.console, disable=not self.show_progress, transient=False) as progress:
            self.progress = progress
            task = progress.add_task(
                self.config.strategy_label, total=t.steps, completed=self.step, loss="-", val="-", tps="-", events=0
            )
            try:
                while self.step < t.steps:
                    self._train_step()
                    progress.update(task, completed=self.step, **self._progress_fields())
            finally:
                self.progress = None
                self.fitness.detach()
        for strategy, ctx in self._hooked():
            strategy.on_train_end(ctx)
        return self.finish()

    def _progress_fields(self) -> dict[str, Any]:
        tot = self.totals
        tps = tot.tokens / tot.train_time_s if tot.train_time_s > 0 else 0.0
        val = "-" if tot.last_val_loss is None else f"{tot.last_val_loss:.3f}"
        loss = "-" if tot.last_train_loss is None else f"{tot.last_train_loss:.3f}"
        return {"loss": loss, "val": val, "tps": f"{tps:,.0f}", "events": tot.events}

    def _train_step(self) -> None:
        """One step, in order: batch, forward, backward, fitness, optimizer step; then the model as
        trained is evaluated (when due) before the strategies' events change it; then the row,
        phase end and checkpoint."""
        t = self.config.trainer
        started = time.perf_counter()
        self.step += 1
        for _, ctx in self._hooked():
            ctx.step = self.step
        lr = lr_at(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self.data.batch("train", t.batch_size, self.batch_generator, self.device)
        _, loss = self.model(x, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            self._diverged(f"training loss became {loss_value}")
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
            pop.updates.after_step()
        self.optimizer.zero_grad(set_to_none=True)
        self._synchronize()
        elapsed = time.perf_counter() - started

        tot = self.totals
        n_tokens = x.numel()
        tot.tokens += n_tokens
        tot.pending_losses.append(loss_value)
        tot.last_train_loss = loss_value
        tot.pending_tokens += n_tokens
        is_last = self.step == t.steps
        is_eval = self.step % t.eval_interval == 0 or is_last or self._continual_eval_at(self.step)
        corpus_losses = None
        if is_eval:  # the model as this step trained it: this step's events have not happened yet
            val_losses = self.evaluate_corpora()  # one pass per corpus; the current one is val_loss
            tot.last_val_loss = val_losses[self.current_corpus]
            corpus_losses = val_losses if self.config.continual.phases else None
            for strategy, ctx in self._hooked():
                strategy.on_evaluate(ctx, tot.last_val_loss)
            if self.on_evaluate is not None:
                self.on_evaluate(self.step, tot.last_val_loss)

        started = time.perf_counter()
        for strategy, ctx in self._hooked():
            strategy.on_step_end(ctx)  # events: their effect is in events.jsonl, per layer
        self._synchronize()
        elapsed += time.perf_counter() - started  # surgery is training time; evaluation is not
        tot.train_time_s += elapsed
        tot.pending_time_s += elapsed

        if is_eval or self.step % t.log_interval == 0:
            self._write_metrics_row(lr, tot.last_val_loss if is_eval else None, corpus_losses)
        if self._phase_ends_at(self.step) and not is_last:
            self._end_phase()
        if self.step % t.checkpoint_interval == 0 or is_last:
            if not all(torch.isfinite(p).all() for p in self.model.parameters()):
                self._diverged("weights became NaN or infinite")
            self.save_checkpoint()

    def _synchronize(self) -> None:
        """Wait for queued GPU work, so that a time taken next covers it (no-op on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # --- phases (continual training) ----------------------------------------------------------

    @property
    def current_corpus(self) -> str:
        """The corpus of the step being trained (of the last one between steps)."""
        return self.phase_corpora[self._phase_of(max(self.step, 1))]

    @property
    def data(self) -> CharDataset:
        return self.corpora[self.current_corpus]

    def _phase_of(self, step: int) -> int:
        """The phase (0-based) that training step ``step`` (1-based) belongs to."""
        if not self.config.continual.phases:
            return 0
        return min((step - 1) // self.config.continual.steps_per_phase, len(self.phase_corpora) - 1)

    def _phase_ends_at(self, step: int) -> bool:
        return bool(self.config.continual.phases) and step % self.config.continual.steps_per_phase == 0

    def _continual_eval_at(self, step: int) -> bool:
        """Every corpus is evaluated at each phase end and ``plasticity_steps`` into each phase."""
        c = self.config.continual
        return bool(c.phases) and (step % c.steps_per_phase in (0, c.plasticity_steps % c.steps_per_phase))

    def _end_phase(self) -> None:
        """Hooks see the phase that ends; then the next phase's corpus takes over."""
        index = self._phase_of(self.step)
        phase = Phase(index, self.phase_corpora[index], self.step)
        for strategy, ctx in self._hooked():
            strategy.on_phase_end(ctx, phase)
        following = self.phase_corpora[index + 1]
        self._append(
            "events.jsonl",
            json.dumps({"kind": "phase", "step": self.step, "layer": None, "ended": phase.corpus, "next": following}),
        )
        self._log(f"step {self.step}: phase {index + 1} ({phase.corpus}) ended; next: {following}")

    def _load_corpora(self, vocab_chars: list[str] | None) -> tuple[dict[str, CharDataset], list[str]]:
        """The datasets by corpus name, and the corpus of each phase. One corpus (``data.path``)
        unless ``continual.phases`` is set; then one vocabulary over all corpora, fixed first."""
        config = self.config
        block, val_fraction = config.model.block_size, config.data.val_fraction
        vocab = CharVocab(vocab_chars) if vocab_chars else None
        if not config.continual.phases:
            return {"main": CharDataset.from_text(load_corpus(config.data.path), block, val_fraction, vocab)}, ["main"]
        from apoptosis.core.corpora import corpus_text, distinct_corpora, parse_phases, union_vocab

        specs = parse_phases(",".join(config.continual.phases))
        texts = {spec.name: corpus_text(spec) for spec in distinct_corpora(specs)}
        vocab = vocab or union_vocab(texts.values())
        corpora = {name: CharDataset.from_text(text, block, val_fraction, vocab) for name, text in texts.items()}
        return corpora, [spec.name for spec in specs]

    def _diverged(self, what: str) -> None:
        kept = (
            f"the last good checkpoint (step {self.last_checkpoint_step}) is kept in {self.run_dir / CHECKPOINT}"
            if self.last_checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        raise TrainingDiverged(f"{what} at step {self.step}; {kept} (lower trainer.lr or check the strategy)")

    def _write_metrics_row(self, lr: float, val_loss: float | None, corpus_losses: dict[str, float] | None) -> None:
        tot = self.totals
        row = [
            self.step,
            f"{np.mean(tot.pending_losses):.6f}",
            "" if val_loss is None else f"{val_loss:.6f}",
            f"{lr:.6g}",
            f"{tot.pending_tokens / max(tot.pending_time_s, 1e-9):.1f}",
            sum(self.model.mlp_widths()),
            tot.events,
        ]
        if self.config.continual.phases:
            losses = corpus_losses or {}
            row += [self._phase_of(self.step)] + [
                f"{losses[name]:.6f}" if name in losses else "" for name in self.corpora
            ]
        self._append("metrics.csv", ",".join(map(str, row)))
        tot.pending_losses, tot.pending_tokens, tot.pending_time_s = [], 0, 0.0

    # --- the end ------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        train_loss, val_loss = self.evaluate()
        tot = self.totals
        metrics = read_metrics(self.run_dir)
        tail = metrics[metrics["step"] > 0.8 * self.config.trainer.steps]
        return {
            "strategy": self.config.strategy_label,
            "steps": self.step,
            "final_train_loss": train_loss,
            "final_val_loss": val_loss,
            "unigram_val_loss": self.data.unigram_loss(),
            "train_loss_detrended_variance": detrended_variance(tail["step"], tail["train_loss"]),
            "tokens_per_s": tot.tokens / tot.train_time_s if tot.train_time_s > 0 else None,
            "events": tot.events,
            "neurons_replaced": tot.neurons_replaced,
            "neurons_born": tot.neurons_born,
            "mean_event_disruption": float(np.mean(tot.disruptions)) if tot.disruptions else None,
            "mean_abs_event_disruption": float(np.mean(np.abs(tot.disruptions))) if tot.disruptions else None,
            "mean_surgery_disruption": float(np.mean(tot.surgery_disruptions)) if tot.surgery_disruptions else None,
            "age_diversity": self.lineage.age_diversity(self.step),
            "founders_share": self.lineage.founders_share(),
            "max_generation": self.lineage.max_generation(),
            "neurons": sum(self.model.mlp_widths()),
            "parameters": self.model.num_params(),
            **self._continual_summary(),
        }

    def _continual_summary(self) -> dict[str, Any]:
        """Phases and the final validation loss on every corpus (empty for one corpus)."""
        if not self.config.continual.phases:
            return {}
        return {
            "phases": self.phase_corpora,
            "steps_per_phase": self.config.continual.steps_per_phase,
            "corpus_chars": {name: len(data.train) + len(data.val) for name, data in self.corpora.items()},
            "python_version": platform.python_version(),  # the `python` corpus is this version's library
            **{f"final_val_{name}": loss for name, loss in self.evaluate_corpora().items()},
        }

    def finish(self) -> dict[str, Any]:
        """Write summary.json, lineage.csv and the plots."""
        from apoptosis.analysis.plots import plot_run  # seaborn is slow to import; only needed here

        summary = self.summary()
        atomic_write_json(self.run_dir / "summary.json", summary)
        self.lineage.write_csv(self.run_dir / "lineage.csv")
        plot_run(self.run_dir)
        return summary


def detrended_variance(steps, losses) -> float | None:
    """Variance of the logged training losses around their least-squares line: how much the loss
    jumps about (events, noise) with its downward trend taken out. None for fewer than 3 rows."""
    if len(losses) < 3:
        return None
    x, y = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(np.var(y - (slope * x + intercept)))


def _complete_row(line: str, width: int) -> bool:
    """False for a metrics row cut short by a kill."""
    return len(line.split(",")) == width and line.split(",", 1)[0].isdigit()


def _event_step(line: str) -> float:
    """The step of an events.jsonl line; a line cut short by a kill counts as after any step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def read_metrics(run_dir: str | Path):
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "metrics.csv")


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_model(run_dir: str | Path, device: str = "cpu") -> tuple[GPT, CharVocab, dict[str, Any]]:
    """The model of a run's last checkpoint, rebuilt from the config saved inside it."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise ApoptosisError(f"no checkpoint at {path}: is {run_dir} a run folder?")
    ckpt = torch.load(path, map_location=device, weights_only=False)
    config = RunConfig.from_dict(ckpt["config"], source=str(path))
    model = GPT(config.model).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, CharVocab(ckpt["vocab"]), ckpt
