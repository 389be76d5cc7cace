"""What the ``lazarus`` follower costs per event: 100 recovery steps at its defaults (8 sequences
of 64, half self-generated) on the 2-layer model of EXPERIMENT_LOG's follower runs, one thread,
2 alternating rounds. Inputs sampled every step with the sampler of the code before the
key/value cache (copied here), every step with today's sampler, and from today's pool (32
sequences, once per event).

    .venv/bin/python docs/results/speed/lazarus_follower_cost.py
"""

import statistics
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


if __name__ == "__main__":
    main()
