"""``apoptosis bench``: what a strategy costs in throughput, measured side by side.

Runs of ``none`` and the strategy, eager and compiled (``trainer.compile``), live in one process
and train in turn, a segment at a time, so drift of a noisy machine hits all of them; the ratios,
paired by round (each round's ratio, then their median), are the result. The first round, where
compiled runs compile, is left out (the compile time is reported apart). Training time includes
the fitness reads and every event's surgery, not its probe passes (measurements, like
evaluation). After the rounds, the compiled code is dropped and the compiled ``none`` run grows
twice, to time a recompilation alone. The model's FLOP/s is set against the float32 matmul FLOP/s
this machine reaches; sampling is timed with and without the key/value cache, alternating too.
The peak memory is the bench process's: four trainers, the compiler and sampling.
"""

from __future__ import annotations

import copy
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from apoptosis.analysis.intervals import MIN_VALUES_FOR_MEDIAN_INTERVAL, median_interval
from apoptosis.core.config import RunConfig, StrategyConfig
from apoptosis.core.model import GPT
from apoptosis.training import Trainer

BENCH_EVENT_DEFAULTS = {"interval": 100, "maturity": 50}  # so a short bench still has events


def matmul_flops_per_s(n: int = 1024, seconds: float = 1.0, device: str = "cpu") -> float:
    """float32 FLOP/s of an n x n matmul, repeated for about ``seconds``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)  # warm-up
    iterations, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        iterations += 1
        if device != "cpu":
            torch.cuda.synchronize()
    return 2 * n**3 * iterations / (time.perf_counter() - start)


def model_flops_per_token(model: GPT) -> float:
    """Training FLOPs per token: 6 per weight (forward + backward) plus attention (PaLM's count)."""
    c = model.config
    n = model.num_params() - model.wpe.weight.numel()
    return 6 * n + 12 * c.n_layer * c.d_model * c.block_size


def sample_speed(model: GPT, chars: int = 500, repeats: int = 3) -> dict[str, float]:
    """Median characters per second of ``model.generate`` from one token, with the key/value
    cache and without it (every token re-reads the last block), in alternating runs."""
    model.eval()
    start = torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device)
    times: dict[str, list[float]] = {"cached": [], "uncached": []}
    for r in range(repeats):
        for name in times:
            began = time.perf_counter()
            model.generate(start, chars, generator=torch.Generator().manual_seed(r), use_cache=name == "cached")
            times[name].append(time.perf_counter() - began)
    return {name: chars / statistics.median(t) for name, t in times.items()}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bench_config(config: RunConfig, strategy: str, steps: int) -> RunConfig:
    from apoptosis.core.strategy import build_strategy

    config = copy.deepcopy(config)
    params = dict(config.strategy.params) if config.strategy.name == strategy else {}
    known = {row["name"] for row in build_strategy(strategy).Params.describe()}
    for key, value in BENCH_EVENT_DEFAULTS.items():
        if key in known:
            params.setdefault(key, value)
    config.strategy = StrategyConfig(name=strategy, params=params)
    config.trainer.steps = steps
    config.trainer.eval_interval = steps  # evaluation is not what is measured
    config.trainer.checkpoint_interval = steps
    return config


def _compiled(config: RunConfig, extra_steps: int = 0) -> RunConfig:
    config = copy.deepcopy(config)
    config.trainer.compile = True
    config.trainer.steps += extra_steps
    config.trainer.eval_interval = config.trainer.checkpoint_interval = config.trainer.steps
    return config


def round_ratios(tokens_per_s: dict[str, list[float]], a: str, b: str) -> list[float]:
    """Each round's tokens/s of ``a`` over ``b``: the machine's drift between rounds, which spreads
    one configuration's runs by 10-20%, cancels."""
    return [x / y for x, y in zip(tokens_per_s[a], tokens_per_s[b], strict=True)]


def paired_ratio(tokens_per_s: dict[str, list[float]], a: str, b: str) -> float:
    """The median of the rounds' ratios ``a`` / ``b``."""
    return statistics.median(round_ratios(tokens_per_s, a, b))


def verdict(interval: tuple[float, float] | None, goal: float) -> str:
    """Whether a ratio meets ``goal`` (at or above it): ``meets`` or ``misses`` only when its whole
    interval says so."""
    if interval is not None and interval[0] >= goal:
        return "[green]meets[/]"
    if interval is not None and interval[1] < goal:
        return "[red]misses[/]"
    return "[yellow]cannot tell (more --rounds) whether it meets[/]"


class _Segments:
    """One trainer, advanced a few steps at a time."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.steps = trainer, trainer.train_steps()

    def advance(self, steps: int) -> float:
        """Train ``steps`` more steps; their tokens/s (training time only, as the run counts it)."""
        totals = self.trainer.totals
        tokens, seconds = totals.tokens, totals.train_time_s
        for _ in range(steps):
            next(self.steps)
        return (totals.tokens - tokens) / (totals.train_time_s - seconds)

    def timed_step(self) -> float:
        """Wall seconds of the next step."""
        began = time.perf_counter()
        next(self.steps)
        return time.perf_counter() - began

    def close(self) -> None:
        self.steps.close()
        self.trainer.folder.release()


GROWTH_STEPS = 6  # the compiled ``none`` run's steps after the rounds: one to compile afresh, two growths each
# between two timed steps, and a last one (which would evaluate and save) never taken


def growth_recompile_s(run: _Segments) -> list[float]:
    """Seconds the step after a growth (one neuron per layer) takes beyond the step before it, for
    two growths in turn. Compiled code is per function, not per model, so the other compiled run
    may have made widths dynamic already: it is dropped first, and a step compiles afresh. torch
    then recompiles at the first new width and treats widths as dynamic sizes from there on."""
    torch._dynamo.reset()
    run.timed_step()
    costs = []
    for _ in range(2):
        steady = run.timed_step()
        for pop in run.trainer.populations:
            pop.grow(1, step=run.trainer.step)
        costs.append(run.timed_step() - steady)
    return costs


def run_bench(config: RunConfig, strategy: str, rounds: int, segment: int, console: Console) -> dict[str, Any]:
    """Eager and compiled runs of ``none`` and ``strategy``, all four alive at once and advanced in
    turn, ``segment`` steps each per round (the order reversed every other round, so that no run
    is always first): a first round left out (compiled runs compile there), then ``rounds``
    measured ones."""
    steps = segment * (rounds + 1)
    eager = {name: _bench_config(config, name, steps) for name in ("none", strategy)}
    configs = {**eager, "none compiled": _compiled(eager["none"], GROWTH_STEPS),
               f"{strategy} compiled": _compiled(eager[strategy])}  # fmt: skip
    tokens_per_s: dict[str, list[float]] = {name: [] for name in configs}
    first_round_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console, transient=True) as progress:
        runs = {name: _Segments(Trainer(cfg, Path(tmp) / name.replace(" ", "-"), show_progress=False))
                for name, cfg in configs.items()}  # fmt: skip
        try:
            task = progress.add_task("bench", total=(rounds + 1) * len(runs))
            for r in range(rounds + 1):
                for name in list(runs) if r % 2 == 0 else reversed(runs):
                    began = time.perf_counter()
                    speed = runs[name].advance(segment)
                    if r == 0:
                        first_round_s[name] = time.perf_counter() - began
                    else:
                        tokens_per_s[name].append(speed)
                    progress.advance(task)
            growth_s = growth_recompile_s(runs["none compiled"])
        finally:
            for run in runs.values():
                run.close()
        trainers = {name: run.trainer for name, run in runs.items()}
        flops_per_token = model_flops_per_token(trainers["none"].model)
        sampling = sample_speed(trainers["none"].model, repeats=3)
    hardware = matmul_flops_per_s(device=config.trainer.device)
    medians = {name: statistics.median(v) for name, v in tokens_per_s.items()}
    ratios = {"throughput_ratio": (strategy, "none"), "compile_speedup": ("none compiled", "none"),
              "compiled_throughput_ratio": (f"{strategy} compiled", "none compiled")}  # fmt: skip
    segment_tokens = segment * config.trainer.batch_size * config.model.block_size
    return {
        "strategy": strategy,
        "strategy_params": configs[strategy].strategy.params,
        "rounds": rounds,
        "segment_steps": segment,
        "tokens_per_s": tokens_per_s,
        "median_tokens_per_s": medians,
        "events": {name: trainer.totals.events for name, trainer in trainers.items()},
        "model_flops_per_token": flops_per_token,
        "model_flops_per_s": flops_per_token * medians["none"],
        "matmul_flops_per_s": hardware,
        "eager_none_tokens_per_s": medians["none"],
        "compiled_none_tokens_per_s": medians["none compiled"],
        f"compiled_{strategy}_tokens_per_s": medians[f"{strategy} compiled"],
        **{key: paired_ratio(tokens_per_s, a, b) for key, (a, b) in ratios.items()},
        # the 95% interval of each median (null with fewer rounds than median_interval needs)
        "ratio_intervals": {key: median_interval(round_ratios(tokens_per_s, a, b)) for key, (a, b) in ratios.items()},
        "compile_seconds": first_round_s["none compiled"] - segment_tokens / medians["none compiled"],
        "growth_recompile_seconds": growth_s,
        "sample_chars_per_s": sampling["cached"],
        "sample_chars_per_s_uncached": sampling["uncached"],
        "peak_rss_mb": peak_rss_mb(),
        "mfu": flops_per_token * medians["none"] / hardware,
    }


def print_bench(result: dict[str, Any], console: Console) -> None:
    s = result["strategy"]
    title = f"bench: {result['rounds']} rounds of {result['segment_steps']} steps per run, the four runs in turn"
    table = Table(title=title, title_justify="left")
    table.add_column("run")
    table.add_column("tokens/s (median)", justify="right")
    table.add_column("slowest - fastest round", justify="right")
    table.add_column("events", justify="right")
    for name, speeds in result["tokens_per_s"].items():
        spread = f"{min(speeds):,.0f} - {max(speeds):,.0f}"
        table.add_row(name, f"{result['median_tokens_per_s'][name]:,.0f}", spread, f"{result['events'][name]}")
    console.print(table)
    intervals = result["ratio_intervals"]

    def judged(key: str, goal: float, digits: str) -> str:
        interval = intervals[key]
        shown = "no interval" if interval is None else f"95% interval {interval[0]:{digits}}-{interval[1]:{digits}}"
        return f"{result[key]:{digits}} ({shown}): {verdict(interval, goal)}"

    console.print(
        f"{s} params: {result['strategy_params']}; ratios: the median of the rounds' ratios, with the interval of "
        f"that median (from {MIN_VALUES_FOR_MEDIAN_INTERVAL} rounds on)"
    )
    console.print(f"throughput ratio {s}/none: {judged('throughput_ratio', 0.95, '.3f')} the 5% budget (>= 0.950)")
    first, second = (max(seconds, 0.0) for seconds in result["growth_recompile_seconds"])  # timing noise: not < 0
    console.print(
        f"compiled none/eager none: {judged('compile_speedup', 1.2, '.3f')} the goal (>= 1.2); compiled {s}/compiled "
        f"none: {judged('compiled_throughput_ratio', 0.98, '.3f')} the goal (>= 0.98); compiling took "
        f"{result['compile_seconds']:.1f} s (in the first round, left out of tokens/s); a growth costs {first:.1f} s "
        f"the first time (recompiling), {second:.2f} s the second (the width is then dynamic)"
    )
    console.print(
        f"model: {result['model_flops_per_token'] / 1e6:.2f} MFLOP/token -> {result['model_flops_per_s'] / 1e9:.2f} "
        f"GFLOP/s; float32 matmul on this machine: {result['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s; "
        f"share (mfu): {result['mfu']:.1%}"
    )
    speedup = result["sample_chars_per_s"] / result["sample_chars_per_s_uncached"]
    console.print(
        f"sampling 500 chars: {result['sample_chars_per_s']:,.0f} chars/s with the key/value cache, "
        f"{result['sample_chars_per_s_uncached']:,.0f} without ({speedup:.1f}x); "
        f"peak memory {result['peak_rss_mb']:,.0f} MB"
    )
