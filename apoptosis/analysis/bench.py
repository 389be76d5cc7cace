"""``apoptosis bench``: what a strategy costs in throughput, measured side by side.

Runs of ``none`` and the strategy, eager and compiled (``trainer.compile``), alternate under one
config, so drift of a noisy machine hits all of them; the ratios, paired by round (each round's
ratio, then their median), are the result.
Tokens/s leave out each run's first step, where a compiled run compiles (reported apart).
Training time includes the fitness hooks and every event. The model's FLOP/s is also set
against the float32 matmul FLOP/s this machine reaches, to show how far from the hardware the
small model runs. Sampling is timed with and without the key/value cache, alternating too.
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


def _bench_config(config: RunConfig, strategy: str) -> RunConfig:
    from apoptosis.core.strategy import build_strategy

    config = copy.deepcopy(config)
    params = dict(config.strategy.params) if config.strategy.name == strategy else {}
    known = {row["name"] for row in build_strategy(strategy).Params.describe()}
    for key, value in BENCH_EVENT_DEFAULTS.items():
        if key in known:
            params.setdefault(key, value)
    config.strategy = StrategyConfig(name=strategy, params=params)
    config.trainer.eval_interval = config.trainer.steps  # evaluation is not what is measured
    config.trainer.checkpoint_interval = config.trainer.steps
    return config


def _compiled(config: RunConfig) -> RunConfig:
    config = copy.deepcopy(config)
    config.trainer.compile = True
    return config


def steady_tokens_per_s(trainer: Trainer) -> float:
    """Tokens/s after the run's first step, which for a compiled run includes compiling it."""
    totals, steps = trainer.totals, trainer.config.trainer.steps
    if steps < 2 or trainer.first_step_s is None:
        return totals.tokens / totals.train_time_s
    return totals.tokens * (steps - 1) / steps / (totals.train_time_s - trainer.first_step_s)


def paired_ratio(tokens_per_s: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of ``a``'s tokens/s over ``b``'s in the same round: the machine's drift
    between rounds, which spreads one configuration's runs by 10-20%, cancels."""
    return statistics.median(x / y for x, y in zip(tokens_per_s[a], tokens_per_s[b], strict=True))


def run_bench(config: RunConfig, strategy: str, repeats: int, console: Console) -> dict[str, Any]:
    """Eager and compiled runs of ``none`` and ``strategy``, alternating, ``repeats`` times each."""
    eager = {"none": _bench_config(config, "none"), strategy: _bench_config(config, strategy)}
    configs = {**eager, **{f"{name} compiled": _compiled(cfg) for name, cfg in eager.items()}}
    tokens_per_s: dict[str, list[float]] = {name: [] for name in configs}
    first_step_s: dict[str, list[float]] = {name: [] for name in configs}
    events: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console, transient=True) as progress:
        task = progress.add_task("bench", total=repeats * len(configs))
        for r in range(repeats):
            for name, cfg in configs.items():
                trainer = Trainer(copy.deepcopy(cfg), Path(tmp) / f"{name}-{r}".replace(" ", "-"), show_progress=False)
                trainer.fit()
                tokens_per_s[name].append(steady_tokens_per_s(trainer))
                first_step_s[name].append(trainer.first_step_s or 0.0)
                events[name] = trainer.totals.events
                progress.advance(task)
        flops_per_token = model_flops_per_token(trainer.model)
        sampling = sample_speed(trainer.model, repeats=repeats)
    hardware = matmul_flops_per_s(device=config.trainer.device)
    medians = {name: statistics.median(v) for name, v in tokens_per_s.items()}
    tokens_per_step = config.trainer.batch_size * config.model.block_size
    return {
        "strategy": strategy,
        "strategy_params": configs[strategy].strategy.params,
        "steps": config.trainer.steps,
        "repeats": repeats,
        "tokens_per_s": tokens_per_s,
        "median_tokens_per_s": medians,
        "events": events,
        "throughput_ratio": paired_ratio(tokens_per_s, strategy, "none"),
        "model_flops_per_token": flops_per_token,
        "model_flops_per_s": flops_per_token * medians["none"],
        "matmul_flops_per_s": hardware,
        "hardware_share": flops_per_token * medians["none"] / hardware,
        "eager_none_tokens_per_s": medians["none"],
        "compiled_none_tokens_per_s": medians["none compiled"],
        f"compiled_{strategy}_tokens_per_s": medians[f"{strategy} compiled"],
        "compile_speedup": paired_ratio(tokens_per_s, "none compiled", "none"),
        "compiled_throughput_ratio": paired_ratio(tokens_per_s, f"{strategy} compiled", "none compiled"),
        "compile_seconds": first_step_s["none compiled"][0]  # the first compiled run: later ones reuse the code
        - tokens_per_step / medians["none compiled"],
        "sample_chars_per_s": sampling["cached"],
        "sample_chars_per_s_uncached": sampling["uncached"],
        "peak_rss_mb": peak_rss_mb(),
        "mfu": flops_per_token * medians["none"] / hardware,
    }


def _verdict(met: bool) -> str:
    return "[green]meets[/]" if met else "[red]misses[/]"


def print_bench(result: dict[str, Any], console: Console) -> None:
    s = result["strategy"]
    table = Table(title=f"bench: {result['steps']} steps x {result['repeats']} alternating runs", title_justify="left")
    table.add_column("strategy")
    table.add_column("tokens/s (median)", justify="right")
    table.add_column("runs", justify="right")
    table.add_column("events per run", justify="right")
    for name in result["tokens_per_s"]:
        runs = ", ".join(f"{v:,.0f}" for v in result["tokens_per_s"][name])
        table.add_row(name, f"{result['median_tokens_per_s'][name]:,.0f}", runs, f"{result['events'][name]}")
    console.print(table)
    ratio = result["throughput_ratio"]
    verdict = "[green]within[/]" if ratio >= 0.95 else "[red]outside[/]"
    console.print(f"{s} params: {result['strategy_params']}")
    console.print(f"throughput ratio {s}/none: {ratio:.3f} ({verdict} the 5% budget: >= 0.950)")
    speedup, compiled_ratio = result["compile_speedup"], result["compiled_throughput_ratio"]
    console.print(
        f"compiled none/eager none: {speedup:.2f}x ({_verdict(speedup >= 1.2)} the goal >= 1.2x); compiled {s}/"
        f"compiled none: {compiled_ratio:.3f} ({_verdict(compiled_ratio >= 0.98)} the goal >= 0.98); compiling "
        f"took {result['compile_seconds']:.1f} s (the first step, left out of tokens/s)"
    )
    console.print(
        f"model: {result['model_flops_per_token'] / 1e6:.2f} MFLOP/token -> {result['model_flops_per_s'] / 1e9:.2f} "
        f"GFLOP/s; float32 matmul on this machine: {result['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s; "
        f"share: {result['hardware_share']:.1%}"
    )
    speedup = result["sample_chars_per_s"] / result["sample_chars_per_s_uncached"]
    console.print(
        f"sampling 500 chars: {result['sample_chars_per_s']:,.0f} chars/s with the key/value cache, "
        f"{result['sample_chars_per_s_uncached']:,.0f} without ({speedup:.1f}x); "
        f"peak memory {result['peak_rss_mb']:,.0f} MB"
    )
