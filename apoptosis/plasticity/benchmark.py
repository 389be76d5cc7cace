"""``apoptosis plasticity``: one network trained through a sequence of tasks per (method, seed),
and how well it keeps learning.

Each (method, seed) is a *cell*: an ordinary continual run (``runs/<name>/<method>-s<seed>/``)
whose phases are the seed's tasks, so the strategies' phase-end hooks fire at task boundaries
and a killed cell resumes exactly from its checkpoint (written at every task end). At each
task's start the trainer hands over the weights the task starts from (after the method's
boundary intervention) for the probe; at its end, the weights as the task trained them for the
other measures; each finished task is one row of the cell's ``tasks.csv``, cut back to the
checkpoint on resume. The fresh network's probe does not depend on the method, so it is computed
once per seed and task and kept in ``fresh/``.

The grid is the methods times seeds 1..K; ``--shard I/N`` takes every N-th cell from the I-th,
so machines sharing one folder split the grid, and whoever finishes assembles
``plasticity.csv`` from every finished cell. The options are saved in ``arguments.json``: a rerun
with other options is refused, one with the same ones continues.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from apoptosis.analysis.compare import PlannedRun, check_counts, plan_runs
from apoptosis.core.config import ACTIVATIONS, ContinualConfig, ModelConfig, RunConfig, parse_set_option
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write_json, atomic_write_text
from apoptosis.plasticity.measures import copy_model, fresh_model, network_state, probe_loss
from apoptosis.plasticity.tasks import PROBE, Task, TaskFamily
from apoptosis.plasticity.tuning import Tuned, tuned_params
from apoptosis.training import CHECKPOINT, Trainer

COLUMNS = [
    "method", "seed", "task", "order", "entropy_rate", "optimal_loss", "train_loss", "val_loss", "excess_loss",
    "probe_loss", "fresh_probe_loss", "dormant_fraction", "effective_rank", "weight_norm", "train_seconds",
]  # fmt: skip
TASKS_FILE, ARGUMENTS_FILE, RESULTS_FILE = "tasks.csv", "arguments.json", "plasticity.csv"
EVAL_BATCHES = 8  # the trainer's fixed batches per task: train and held-out loss at each task end


@dataclass(frozen=True)
class Settings:
    """The options that fix the benchmark's numbers: saved with it, the same on every rerun."""

    methods: tuple[str, ...]
    tasks: int = 50
    steps_per_task: int = 300
    seeds: int = 3
    activation: str = "gelu"
    weight_decay: float = 0.0
    lr: float = 3e-3
    vocab: int = 32
    orders: tuple[int, ...] = (2,)
    alpha: float = 0.1
    random_labels: int = 0
    probe_steps: int = 500
    probe_every: int = 1  # 0: no probe (the quickest run, e.g. for tuning on excess loss)
    device: str = "cpu"
    sets: tuple[str, ...] = ()  # --set: strategy.X / then.X to the methods that have X, the rest to every run
    tuned: Tuned = ()  # --tuned: (method, parameter, value) from search studies, over --set

    def validate(self) -> None:
        """One line naming the option, for sizes the benchmark cannot run."""
        counts = {"--tasks": self.tasks, "--steps-per-task": self.steps_per_task, "--seeds": self.seeds,
                  "--probe-steps": self.probe_steps}  # fmt: skip
        for option, value in counts.items():
            if value < 1:
                raise ApoptosisError(f"{option} must be >= 1, got {value}")
        if self.probe_every < 0:
            raise ApoptosisError(f"--probe-every must be >= 0 (0: no probe), got {self.probe_every}")
        if self.activation not in ACTIVATIONS:
            raise ApoptosisError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ApoptosisError(f"--lr must be > 0 and --weight-decay >= 0, got {self.lr:g} and {self.weight_decay:g}")

    def probes_at(self, index: int) -> bool:
        """Task ``index`` (0-based) starts with a probe: the first, every ``probe_every``-th, the
        last; none at all when ``probe_every`` is 0."""
        if self.probe_every == 0:
            return False
        return index % self.probe_every == 0 or index == self.tasks - 1

    def family(self, block_size: int) -> TaskFamily:
        return TaskFamily(self.vocab, self.orders, self.alpha, self.random_labels, block_size)

    def base_config(self) -> RunConfig:
        """Every cell's config but the method and seed: the benchmark's model and optimizer, then
        ``--set``, then the phases (one per task, a checkpoint at every task end)."""
        config = RunConfig()
        config.model = ModelConfig(n_layer=2, n_head=4, d_model=64, d_ff=256, block_size=16, activation=self.activation)
        t = config.trainer
        t.batch_size = 64  # short windows, many of them: a fresh network finds the context in a task's budget
        t.lr = t.min_lr = self.lr  # constant: no warm-up, no decay, as in the plasticity literature
        t.warmup_steps, t.weight_decay, t.device = 0, self.weight_decay, self.device
        for assignment in self.sets:
            key, value = parse_set_option(assignment)
            if key.partition(".")[0] not in ("strategy", "then"):
                config.set(key, value)
        steps = self.steps_per_task
        t.steps, t.eval_interval, t.checkpoint_interval = self.tasks * steps, steps, steps
        t.log_interval, t.eval_batches = min(steps, 50), EVAL_BATCHES
        config.model.vocab_size = self.vocab
        config.continual = ContinualConfig([task_name(i) for i in range(self.tasks)], steps, steps, evaluate_all=False)
        config.validate()
        self.family(config.model.block_size).validate()
        return config

    def method_sets(self, section: str) -> dict[str, object]:
        """``--set section.X=v`` for the methods (``strategy``) or their followers (``then``)."""
        pairs = (parse_set_option(assignment) for assignment in self.sets)
        return {key.partition(".")[2]: value for key, value in pairs if key.partition(".")[0] == section}


def task_name(index: int) -> str:
    return f"task{index + 1:03d}"


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4); None -> (1, 1), the whole grid."""
    if text is None:
        return 1, 1
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise ApoptosisError(f"--shard must be I/N with 1 <= I <= N (e.g. 2/4), got {text!r}")
    return int(index), int(count)


def plan_cells(settings: Settings, out_dir: Path) -> list[PlannedRun]:
    """Every (method, seed), method by method, each with its tuned parameters: unknown methods
    and parameters fail here."""
    from apoptosis.core.strategy import build_strategy

    base = settings.base_config()
    seeds = list(range(1, settings.seeds + 1))
    strategy_sets, then_sets = settings.method_sets("strategy"), settings.method_sets("then")
    cells = plan_runs(base, list(settings.methods), seeds, strategy_sets, out_dir, then_sets)
    for cell in cells:
        strategy = cell.config.strategy
        strategy.params.update(tuned_params(settings.tuned, strategy.name))
        build_strategy(strategy.name, strategy.params)
    return cells


@contextmanager
def held(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``, waited for: short sections that processes, or shards on
    other machines, take in turn (a cell itself is locked by its trainer for its whole run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def record_arguments(out_dir: Path, settings: Settings) -> None:
    """Save the options, or check them against those saved: the first that differs is named."""
    given = json.loads(json.dumps(asdict(settings)))
    defaults = json.loads(json.dumps(asdict(Settings(methods=settings.methods))))  # for options added later
    path = out_dir / ARGUMENTS_FILE
    with held(out_dir / ".lock"):
        if not path.exists():
            atomic_write_json(path, given)
            return
        saved = json.loads(path.read_text(encoding="utf-8"))
    for key, value in given.items():
        if saved.get(key, defaults[key]) != value:
            option = {"sets": "--set", "tuned": "--tuned (parameters)"}.get(key, f"--{key.replace('_', '-')}")
            raise ApoptosisError(
                f"{out_dir} holds a benchmark run with {option} {_shown(saved.get(key))}, not {_shown(value)}: "
                "give the same options to continue it, or choose another --name"
            )


def _shown(value: object) -> str:
    return (",".join(map(str, value)) or "(none)") if isinstance(value, list) else str(value)


def cell_done(cell: PlannedRun) -> bool:
    return (cell.run_dir / "summary.json").exists()


class CellRun:
    """One (method, seed): its trainer through every task, measured at each task's start (the
    probe) and end (the rest); ``on_row`` is called after each row is written."""

    def __init__(self, cell: PlannedRun, settings: Settings, out_dir: Path, on_row: Callable[[], None] | None = None):
        self.cell, self.settings, self.out_dir, self.on_row = cell, settings, out_dir, on_row
        self.family = settings.family(cell.config.model.block_size)
        self.rows_path = cell.run_dir / TASKS_FILE
        self.probes: dict[int, tuple[float, float]] = {}
        self.time_at_start = 0.0

    def run(self) -> None:
        seed = self.cell.seed
        self.tasks = [self.family.task(seed, i) for i in range(self.settings.tasks)]
        corpora = {task_name(task.index): task.dataset for task in self.tasks}
        resume = (self.cell.run_dir / CHECKPOINT).exists()
        self.trainer = Trainer(
            self.cell.config, self.cell.run_dir, resume=resume, show_progress=False,
            corpora=corpora, on_phase_start=self.task_starts, on_phase_end=self.task_ends, label=self.cell.strategy,
        )  # fmt: skip
        self._keep_rows(self.trainer.step // self.settings.steps_per_task)
        self.trainer.fit()

    def _keep_rows(self, tasks_done: int) -> None:
        """The rows of the tasks the checkpoint has finished (a kill can leave a later row, or
        half of one)."""
        lines = self.rows_path.read_text(encoding="utf-8").splitlines()[1:] if self.rows_path.exists() else []
        cells = [line.split(",") for line in lines]
        kept = [",".join(c) for c in cells if len(c) == len(COLUMNS) and c[2].isdigit() and int(c[2]) <= tasks_done]
        atomic_write_text(self.rows_path, "".join(f"{line}\n" for line in [",".join(COLUMNS), *kept]))

    def task_starts(self, index: int) -> None:
        """The probe, on the weights task ``index`` starts from."""
        self.time_at_start = self.trainer.totals.train_time_s
        if not self.settings.probes_at(index):
            return
        probe_task = self.family.task(self.cell.seed, index, PROBE)
        config, steps = self.trainer.config, self.settings.probe_steps
        continued = probe_loss(copy_model(self.trainer.model), config, probe_task, steps, self.cell.seed)
        self.probes[index] = (continued, self._fresh_probe(index, probe_task))

    def _fresh_probe(self, index: int, probe_task: Task) -> float:
        """The same probe from the run's initial network: one per seed and task, shared by methods."""
        seed = self.cell.seed
        path = self.out_dir / "fresh" / f"s{seed}-{task_name(index)}.json"
        with held(path.parent / f".s{seed}.lock"):  # two workers on one seed compute it once
            if not path.exists():
                model = fresh_model(self.cell.config.model, seed, self.trainer.device)
                loss = probe_loss(model, self.trainer.config, probe_task, self.settings.probe_steps, seed)
                atomic_write_json(path, {"fresh_probe_loss": loss})
            return json.loads(path.read_text(encoding="utf-8"))["fresh_probe_loss"]

    def task_ends(self, index: int) -> None:
        """Losses and network state as task ``index`` trained it: one row of tasks.csv."""
        task, trainer = self.tasks[index], self.trainer
        train_loss, val_loss = trainer.evaluator.train_val(task_name(index))
        probe, fresh = self.probes.pop(index, (math.nan, math.nan))
        row = {
            "method": self.cell.strategy, "seed": self.cell.seed, "task": index + 1, "order": task.order,
            "entropy_rate": task.entropy_rate, "optimal_loss": task.optimal_loss, "train_loss": train_loss,
            "val_loss": val_loss, "excess_loss": val_loss - task.optimal_loss, "probe_loss": probe,
            "fresh_probe_loss": fresh, **network_state(trainer.model, task, self.cell.seed),
            "train_seconds": trainer.totals.train_time_s - self.time_at_start,
        }  # fmt: skip
        line = ",".join("" if isinstance(v, float) and math.isnan(v) else f"{v:.8g}" if isinstance(v, float)
                        else str(v) for v in (row[c] for c in COLUMNS))  # fmt: skip
        with open(self.rows_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.on_row is not None:
            self.on_row()


def run_cell(cell: PlannedRun, settings: Settings, out_dir: Path, threads: int | None = None) -> None:
    """One cell in a worker process, with its share of the CPU threads."""
    if threads is not None:
        torch.set_num_threads(threads)
    CellRun(cell, settings, out_dir).run()


def rows_written(cells: list[PlannedRun]) -> int:
    """Tasks finished in ``cells`` so far (for the progress bar)."""
    paths = [cell.run_dir / TASKS_FILE for cell in cells]
    return sum(max(len(p.read_text(encoding="utf-8").splitlines()) - 1, 0) for p in paths if p.exists())


def run_cells(cells: list[PlannedRun], settings: Settings, out_dir: Path, workers: int, console: Console) -> None:
    """Every unfinished cell of ``cells``, in ``workers`` processes, with a progress bar over tasks.
    Cells run seed by seed (every method's seed 1, then every method's seed 2, ...), so a
    benchmark stopped part way has every method on its first seeds, and workers share a seed's
    fresh probes."""
    pending = sorted((cell for cell in cells if not cell_done(cell)), key=lambda cell: cell.seed)
    columns = [TextColumn("[bold]plasticity"), BarColumn(), MofNCompleteColumn(), TextColumn("tasks"),
               TimeElapsedColumn(), TimeRemainingColumn()]  # fmt: skip
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("tasks", total=len(cells) * settings.tasks, completed=rows_written(cells))
        if workers <= 1:
            for cell in pending:
                CellRun(cell, settings, out_dir, on_row=lambda: progress.advance(bar)).run()
                progress.console.log(f"{cell.run_dir.name}: done")
            return
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_cell, cell, settings, out_dir, threads): cell for cell in pending}
            waiting = set(futures)
            try:
                while waiting:
                    finished, waiting = wait(waiting, timeout=2.0, return_when=FIRST_COMPLETED)
                    for future in finished:
                        future.result()
                        progress.console.log(f"{futures[future].run_dir.name}: done")
                    progress.update(bar, completed=rows_written(cells))
            except BaseException:  # a failed cell: start no other (the running ones finish or stop with it)
                for future in waiting:
                    future.cancel()
                raise


def collect(cells: list[PlannedRun], out_dir: Path) -> pd.DataFrame:
    """The rows of every finished cell (of any shard), written to plasticity.csv with the plots;
    read and written under the folder's lock, so a shard that finishes earlier never overwrites a
    fuller file."""
    from apoptosis.plasticity.report import plot_benchmark

    with held(out_dir / ".lock"):
        frames = [pd.read_csv(cell.run_dir / TASKS_FILE) for cell in cells if cell_done(cell)]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
        atomic_write_text(out_dir / RESULTS_FILE, frame.to_csv(index=False))
        if len(frame):
            plot_benchmark(frame, out_dir)
    return frame


def run_benchmark(
    settings: Settings, out_dir: Path, console: Console, shard: tuple[int, int] = (1, 1), workers: int = 1
) -> tuple[pd.DataFrame, int]:
    """Run this shard's cells (the whole grid by default) and return every finished cell's rows
    with the number of cells in the grid. Bad options fail before anything is written."""
    settings.validate()
    check_counts(settings.seeds, workers)
    cells = plan_cells(settings, out_dir)
    record_arguments(out_dir, settings)
    index, count = shard
    run_cells(cells[index - 1 :: count], settings, out_dir, workers, console)
    return collect(cells, out_dir), len(cells)
