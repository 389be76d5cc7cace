"""What the ``lazarus`` follower costs per event: 100 recovery steps at its defaults (8 sequences
of 64, half self-generated) on the 2-layer model of EXPERIMENT_LOG's follower runs, one thread,
2 alternating rounds. Inputs sampled every step with the sampler of the code before the
key/value cache (copied here), every step with today's sampler, and from today's pool (32
sequences, once per event).

    .venv/bin/python docs/results/speed/lazarus_follower_cost.py            # the three ways
    .venv/bin/python docs/results/speed/lazarus_follower_cost.py --profile  # where a pool step's time goes
"""

import cProfile
import pstats
import statistics
import sys
import time

import torch
from sampling_before_after import generate_before  # the script next to this one

from apoptosis.core.config import ModelConfig
from apoptosis.core.model import GPT, frozen_copy
from apoptosis.lazarus.inputs import InputPool
from apoptosis.lazarus.recovery import recover


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = GPT(ModelConfig(vocab_size=65, n_layer=2))
    teacher = frozen_copy(student)
    cached = GPT.generate
    uncached = lambda model, idx, new, generator=None, **_: generate_before(model, idx, new, generator)  # noqa: E731
    ways = {
        "every step, sampler before the cache": (uncached, lambda: InputPool(8, 64, 0.5, refresh_every=1)),
        "every step, cached sampler": (cached, lambda: InputPool(8, 64, 0.5, refresh_every=1)),
        "pool of 32, once per event": (cached, lambda: InputPool(8, 64, 0.5, refresh_every=0, size=32)),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(2):
        for name, (generate, pool) in ways.items():
            GPT.generate = generate
            began = time.perf_counter()
            recover(student, teacher, 100, generator=torch.Generator().manual_seed(r), mode="regrow",
                    batch_size=8, seq_len=64, pool=pool())  # fmt: skip
            seconds[name].append(time.perf_counter() - began)
    GPT.generate = cached
    before = statistics.median(seconds["every step, sampler before the cache"])
    for name, times in seconds.items():
        print(f"{name}: {statistics.median(times):.1f} s per event, {before / statistics.median(times):.2f}x less")


def profile() -> None:
    """Shares of 30 recovery steps from the pool: backward, the forward passes, the optimizer."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = GPT(ModelConfig(vocab_size=65, n_layer=2))
    teacher = frozen_copy(student)
    pool = InputPool(8, 64, 0.5, refresh_every=0, size=32)
    pool.inputs(student, 1, torch.Generator().manual_seed(0))  # the pool and torch's lazy imports come first
    recover(student, teacher, 2, generator=torch.Generator(), mode="regrow", batch_size=8, seq_len=64, pool=pool)
    profiler = cProfile.Profile()
    profiler.runcall(recover, student, teacher, 30, generator=torch.Generator().manual_seed(0), mode="regrow",
                     batch_size=8, seq_len=64, pool=pool)  # fmt: skip
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive, own, cumulative, callers)

    def cumulative(file_end: str, name: str) -> float:
        return max((v[3] for (file, _, fn), v in stats.items() if file.endswith(file_end) and name in fn), default=0.0)

    total = cumulative("recovery.py", "recover")
    parts = {
        "backward": cumulative("~", "run_backward"),
        "forward passes of the model (student, noised student, teacher)": cumulative("model.py", "forward"),
        "optimizer step": cumulative("optimizer.py", "wrapper"),
    }
    for label, seconds in parts.items():
        print(f"{label}: {seconds / total:.0%} of {total:.2f} s")


if __name__ == "__main__":
    profile() if "--profile" in sys.argv else main()
