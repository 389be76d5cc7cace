"""How well each fitness metric predicts the true cost of removing a neuron.

A strategy kills the neurons its metric scores lowest, so a metric is only as good as its ranking
of what a neuron's death costs. The ground truth is measured directly on a run's last checkpoint:
on fixed validation batches, the loss with one neuron alone masked minus the loss with none
masked, for every neuron. One forward pass covers many neurons: the batch is replicated after the
neuron's layer, each replica without a different neuron, and only the layers above run on the
replicas. The ground truth's own noise (Spearman between the costs on two
halves of the batches) is the ceiling a metric can reach. Every registered metric scores the
neurons from its per-step values on training batches (no optimizer step: the weights are those
of the checkpoint). ``apoptosis fitness-check RUN_DIR`` prints the comparison and writes
``fitness_check.csv`` and ``fitness_check_neurons.csv`` into the run folder.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from scipy.stats import ConstantInputWarning, spearmanr

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharDataset, CharVocab
from apoptosis.core.encoded_corpus import corpus_dataset
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.fitness import FitnessMetric
from apoptosis.core.io import atomic_write_json, atomic_write_text
from apoptosis.core.model import GPT
from apoptosis.core.registry import FITNESS_METRICS

BOTTOM_SHARE = 0.10  # the share of neurons a strategy typically kills per event
MAX_ELEMENTS = 1 << 24  # bound on the largest activation of one replicated forward pass (64 MiB in float32)
SUMMARY_CSV = "fitness_check.csv"
NEURONS_CSV = "fitness_check_neurons.csv"

Batch = tuple[torch.Tensor, torch.Tensor]


# --- the run and its data -----------------------------------------------------------------------


def run_corpus(config: RunConfig, step: int, vocab: CharVocab) -> tuple[str, CharDataset]:
    """The corpus the run was training on at ``step`` (``data.path``; for a continual run, the
    phase's corpus), split as the trainer splits it, with the run's vocabulary."""
    block, val_fraction = config.model.block_size, config.data.val_fraction
    if not config.continual.phases:
        d = config.data
        return str(d.path), corpus_dataset(d.path, block, val_fraction, vocab, d.keep_line_endings)
    from apoptosis.core.corpora import corpus_text, parse_phases

    specs = parse_phases(",".join(config.continual.phases))
    spec = specs[min((max(step, 1) - 1) // config.continual.steps_per_phase, len(specs) - 1)]
    return spec.name, CharDataset.from_text(corpus_text(spec), block, val_fraction, vocab)


def _check_options(batches: int, batch_size: int, score_batches: int, device: str) -> torch.device:
    if batches < 2:
        raise ApoptosisError(f"--batches must be >= 2 (the ground truth's noise compares two halves), got {batches}")
    if batch_size < 1:
        raise ApoptosisError(f"--batch-size must be >= 1, got {batch_size}")
    if score_batches < 1:
        raise ApoptosisError(f"--score-batches must be >= 1, got {score_batches}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ApoptosisError(f"--device must be cpu or cuda, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ApoptosisError(f"--device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ApoptosisError("--device is cuda but this machine has no CUDA GPU: use --device cpu")
    return dev


# --- ground truth: the loss cost of removing each neuron ----------------------------------------


def _mean_losses(logits: torch.Tensor, targets: torch.Tensor, replicas: int) -> torch.Tensor:
    """Mean cross-entropy of each of ``replicas`` equal slices of the batch, in float64."""
    per_token = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return per_token.view(replicas, -1).double().mean(dim=1)


@contextmanager
def _hooked(handles: list[Any]) -> Iterator[None]:
    """The hooks are removed on the way out, whatever happens: the model is left as it was."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _layer_costs(
    model: GPT, layer: int, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, h: torch.Tensor,
    base: torch.Tensor, advance: Callable[[int], None],
) -> torch.Tensor:  # fmt: skip
    """Loss without each neuron of ``layer`` (alone) minus ``base``, on one batch, given the
    layer's block output ``out`` and hidden activation ``h``. The block's output is linear in h
    through ``proj`` (y = h W^T + b, and dropout is off), so without neuron n it is
    ``out - h_n W[:, n]``: the replicas (one per neuron of a chunk) start after the block, and only
    the blocks above run on them. The same as zeroing the neuron's mask (tests check it)."""
    B, T = x.shape
    width = h.shape[-1]
    weight = model.blocks[layer].mlp.proj.weight  # (d_model, width)
    per_replica = B * T * max(width, model.config.vocab_size, 4 * model.config.d_model)
    chunk = max(1, min(width, MAX_ELEMENTS // per_replica))
    costs = torch.empty(width, dtype=torch.float64)
    for start in range(0, width, chunk):
        slots = torch.arange(start, min(start + chunk, width), device=x.device)
        replicas = len(slots)
        removed = torch.einsum("btr,cr->rbtc", h[..., slots], weight[:, slots])  # (replicas, B, T, d_model)
        replicated = (out.unsqueeze(0) - removed).reshape(replicas * B, T, -1)
        hook = model.blocks[layer].register_forward_hook(lambda module, args, output, new=replicated: new)
        with _hooked([hook]):
            logits, _ = model(x)  # the blocks up to `layer` run on the one batch; the ones above on the replicas
        costs[start : start + replicas] = (_mean_losses(logits, y.repeat(replicas, 1), replicas) - base).cpu()
        advance(replicas)
    return costs


@torch.no_grad()
def removal_costs(
    model: GPT, batches: list[Batch], advance: Callable[[int], None] = lambda n: None
) -> tuple[float, list[torch.Tensor]]:
    """The mean loss over the batches with nothing masked, and per layer a (batches, width)
    float64 tensor: the loss on each batch with the neuron alone masked minus the loss with none
    masked. ``advance(n)`` is told of every n neurons measured."""
    model.eval()
    costs = [torch.empty(len(batches), width, dtype=torch.float64) for width in model.mlp_widths()]
    bases = []
    for b, (x, y) in enumerate(batches):
        outs: list[torch.Tensor] = []
        hidden: list[torch.Tensor] = []
        handles = []
        for block in model.blocks:
            handles.append(block.register_forward_hook(lambda m, args, out, outs=outs: outs.append(out)))
            handles.append(block.mlp.gate.register_forward_hook(lambda m, args, h, hidden=hidden: hidden.append(h)))
        with _hooked(handles):
            logits, _ = model(x)
        base = _mean_losses(logits, y, 1)
        bases.append(base.item())
        for layer, (out, h) in enumerate(zip(outs, hidden, strict=True)):
            costs[layer][b] = _layer_costs(model, layer, x, y, out, h, base, advance)
    return float(np.mean(bases)), costs


# --- what the metrics say -----------------------------------------------------------------------


def metric_scores(
    model: GPT, names: list[str], batches: list[Batch], seed: int, advance: Callable[[int], None] = lambda n: None
) -> dict[str, list[torch.Tensor]]:
    """Per metric, per layer, the fitness of every neuron: ``score`` of the mean of its
    ``step_value`` over the batches (h and dL/dh from one forward and backward pass per batch,
    in eval mode so dropout plays no part). The weights never change."""
    metrics: dict[str, FitnessMetric] = {}
    for name in names:
        metrics[name] = FITNESS_METRICS.get(name)()
        metrics[name].generator = torch.Generator().manual_seed(seed)
    model.eval()
    mlps = [block.mlp for block in model.blocks]
    sums = {name: [torch.zeros(mlp.width, dtype=torch.float64) for mlp in mlps] for name in names}
    hidden: list[torch.Tensor] = []
    with _hooked([mlp.gate.register_forward_hook(lambda m, args, h: hidden.append(h)) for mlp in mlps]):
        for x, y in batches:
            hidden.clear()
            with torch.enable_grad():
                _, loss = model(x, y)
                grads = torch.autograd.grad(loss, hidden)
            for name, metric in metrics.items():
                for layer, (h, g) in enumerate(zip(hidden, grads, strict=True)):
                    value = metric.step_value(h.detach(), g if metric.needs_grad else None)
                    sums[name][layer] += value.double().cpu()
            advance(1)
    with torch.no_grad():
        return {
            name: [metric.score((s / len(batches)).float().to(mlp.proj.weight.device), mlp).float().cpu()
                   for s, mlp in zip(sums[name], mlps, strict=True)]
            for name, metric in metrics.items()
        }  # fmt: skip


# --- comparison ---------------------------------------------------------------------------------


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation; NaN when either side is constant (no ranking to compare)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return float(spearmanr(a, b).statistic) if len(a) > 1 else math.nan


def bottom_overlap(score: np.ndarray, target: np.ndarray, share: float = BOTTOM_SHARE) -> float:
    """Share of the ``share`` lowest-scored neurons that are among the ``share`` lowest targets;
    a score unrelated to the target gets about ``share`` (ties in order of slot)."""
    k = max(1, round(share * len(score)))
    chosen = set(np.argsort(score, kind="stable")[:k].tolist())
    return len(chosen & set(np.argsort(target, kind="stable")[:k].tolist())) / k


def summary_frame(neurons: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """One row per metric and layer (and ``all`` layers pooled), over the unmasked neurons."""
    live = neurons[~neurons["masked"]]
    groups = [(str(layer), part) for layer, part in live.groupby("layer", sort=True)]
    if groups:
        groups.append(("all", live))
    rows = []
    for name in names:
        for layer, part in groups:
            cost, score = part["cost"].to_numpy(), part[name].to_numpy()
            k = max(1, round(BOTTOM_SHARE * len(part)))
            rows.append({
                "metric": name,
                "layer": layer,
                "neurons": len(part),
                "spearman": spearman(score, cost),
                "bottom_overlap": bottom_overlap(score, cost),
                "small_overlap": bottom_overlap(score, np.abs(cost)),
                "chance_overlap": k / len(part),
                "ceiling_spearman": spearman(part["cost_half_a"].to_numpy(), part["cost_half_b"].to_numpy()),
                "share_cost_negative": float((cost < 0).mean()),
            })  # fmt: skip
    return pd.DataFrame(rows)


@dataclass
class FitnessCheck:
    """The outcome of ``run_fitness_check``: per-neuron costs and scores, and their comparison."""

    run_dir: Path
    corpus: str
    step: int
    base_loss: float
    batches: int
    batch_size: int
    score_batches: int
    seed: int
    seconds: float
    neurons: pd.DataFrame  # layer, slot, masked, cost, cost_half_a, cost_half_b, one column per metric
    summary: pd.DataFrame  # one row per metric and layer

    def to_json(self) -> dict[str, Any]:
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                for row in self.summary.to_dict(orient="records")]  # fmt: skip
        return {
            "run_dir": str(self.run_dir),
            "corpus": self.corpus,
            "step": self.step,
            "base_loss": self.base_loss,
            "batches": self.batches,
            "batch_size": self.batch_size,
            "score_batches": self.score_batches,
            "seed": self.seed,
            "seconds": self.seconds,
            "rows": rows,
        }

    def table(self) -> Table:
        """The comparison, within 80 columns; the caption is the legend."""
        table = Table(
            title=f"Fitness metrics against the true removal cost: {self.run_dir.name}, step {self.step}",
            title_justify="left",
            caption=(
                f"cost = val loss without the neuron - with it (base {self.base_loss:.4f}; {self.batches} batches "
                f"x {self.batch_size}); scores from {self.score_batches} training batches. rho: Spearman of score "
                "and cost; low: share of the metric's lowest 10% that are the 10% lowest-cost neurons (the most "
                "harmful first); small: ... that are the 10% smallest |cost|; ceil: the cost's own split-half "
                "rho; c<0: share whose removal lowers the loss. Chance: rho 0, low and small 0.10. Neurons "
                f"masked in the checkpoint are left out. {self.seconds:.1f} s."
            ),
            caption_justify="left",
        )
        for header in ("metric", "layer", "rho", "low", "small", "ceil", "c<0"):
            table.add_column(header, justify="left" if header == "metric" else "right", no_wrap=True)
        for name, part in self.summary.groupby("metric", sort=False):
            for i, row in enumerate(part.itertuples()):
                table.add_row(
                    name if i == 0 else "",
                    row.layer,
                    _fmt(row.spearman, "+.2f"),
                    _fmt(row.bottom_overlap, ".2f"),
                    _fmt(row.small_overlap, ".2f"),
                    _fmt(row.ceiling_spearman, "+.2f"),
                    f"{row.share_cost_negative:.0%}",
                    end_section=i == len(part) - 1,
                )
        return table


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def run_fitness_check(
    run_dir: str | Path,
    *,
    batches: int = 16,
    batch_size: int = 32,
    score_batches: int = 32,
    seed: int = 0,
    device: str = "cpu",
    json_path: str | Path | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> FitnessCheck:
    """Measure every neuron's removal cost on a run's last checkpoint, score the neurons with
    every registered metric, compare, and write the two CSVs into the run folder (and
    ``json_path``). The run folder is otherwise only read."""
    from apoptosis.training import load_model

    started = time.perf_counter()
    dev = _check_options(batches, batch_size, score_batches, device)
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ApoptosisError(f"run folder not found: {run_dir}")
    if not run_dir.is_dir():
        raise ApoptosisError(f"{run_dir} is a file, not a run folder (runs/NAME)")
    model, vocab, ckpt = load_model(run_dir, str(dev))
    config = RunConfig.from_dict(ckpt["config"], source=str(run_dir))
    corpus, data = run_corpus(config, ckpt["step"], vocab)
    val_generator = torch.Generator().manual_seed(seed)
    val = [data.batch("val", batch_size, val_generator, dev) for _ in range(batches)]
    train_generator = torch.Generator().manual_seed(seed + 1)
    train = [data.batch("train", batch_size, train_generator, dev) for _ in range(score_batches)]
    names = FITNESS_METRICS.names()
    columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
               TimeRemainingColumn()]  # fmt: skip
    with Progress(*columns, console=console, disable=not show_progress, transient=False) as progress:
        truth = progress.add_task("removal costs", total=batches * sum(model.mlp_widths()))
        base, costs = removal_costs(model, val, lambda n: progress.advance(truth, n))
        scoring = progress.add_task("metric scores", total=score_batches)
        scores = metric_scores(model, names, train, seed, lambda n: progress.advance(scoring, n))
    half = batches // 2
    frames = []
    for layer, (per_batch, mlp) in enumerate(zip(costs, (block.mlp for block in model.blocks), strict=True)):
        frame = pd.DataFrame({
            "layer": layer,
            "slot": np.arange(mlp.width),
            "masked": (mlp.gate.mask == 0).cpu().numpy(),
            "cost": per_batch.mean(dim=0).numpy(),
            "cost_half_a": per_batch[:half].mean(dim=0).numpy(),
            "cost_half_b": per_batch[half:].mean(dim=0).numpy(),
        })  # fmt: skip
        for name in names:
            frame[name] = scores[name][layer].numpy()
        frames.append(frame)
    neurons = pd.concat(frames, ignore_index=True)
    summary = summary_frame(neurons, names)
    result = FitnessCheck(
        run_dir=run_dir,
        corpus=corpus,
        step=int(ckpt["step"]),
        base_loss=base,
        batches=batches,
        batch_size=batch_size,
        score_batches=score_batches,
        seed=seed,
        seconds=time.perf_counter() - started,
        neurons=neurons,
        summary=summary,
    )
    atomic_write_text(run_dir / SUMMARY_CSV, summary.to_csv(index=False))
    atomic_write_text(run_dir / NEURONS_CSV, neurons.to_csv(index=False))
    if json_path is not None:
        atomic_write_json(json_path, result.to_json())
    return result
