"""Sampling speed of ``GPT.generate`` against the algorithm it replaced, side by side in one
process: the default model (random weights: speed does not depend on them), 500 characters from
one token, 5 alternating rounds, one thread unless ``--threads``. "before" is the generate of the code before the
key/value cache (26130a8^), copied here: a full forward pass over the last block per token, the
head on every position, softmax moved to the CPU and ``torch.multinomial``. Then where the
cached way's time goes: its three parts (encoding the context, one-position steps, sampling),
each timed by wrapping it.

    .venv/bin/python docs/results/speed/sampling_before_after.py              # one thread
    .venv/bin/python docs/results/speed/sampling_before_after.py --threads 2  # torch's default here
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from apoptosis.core import model as model_module
from apoptosis.core.config import ModelConfig
from apoptosis.core.model import GPT


@torch.no_grad()
def generate_before(model: GPT, idx: torch.Tensor, new: int, generator: torch.Generator) -> torch.Tensor:
    for _ in range(new):
        logits, _ = model(idx[:, -model.config.block_size :])
        probs = F.softmax(logits[:, -1, :], dim=-1).cpu()
        idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator).to(idx.device)), dim=1)
    return idx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    torch.set_num_threads(parser.parse_args().threads)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=65)).eval()
    start = torch.zeros(1, 1, dtype=torch.long)
    ways = {
        "before (no cache)": lambda g: generate_before(model, start, 500, g),
        "now, cache": lambda g: model.generate(start, 500, generator=g),
        "now, no cache": lambda g: model.generate(start, 500, generator=g, use_cache=False),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(5):
        for name, sample in ways.items():
            began = time.perf_counter()
            sample(torch.Generator().manual_seed(r))
            seconds[name].append(time.perf_counter() - began)
    before = statistics.median(seconds["before (no cache)"])
    for name, times in seconds.items():
        print(f"{name}: {500 / statistics.median(times):,.0f} chars/s, {before / statistics.median(times):.2f}x before")
    where_the_time_goes(model, start)


def where_the_time_goes(model: GPT, start: torch.Tensor) -> None:
    """Seconds of one cached generation of 500 characters in each of its three parts."""
    spent = {"encoding the context": 0.0, "one-position steps": 0.0, "sampling": 0.0}

    def timed(part: str, function):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            result = function(*args, **kwargs)
            spent[part] += time.perf_counter() - began
            return result

        return wrapper

    decoder = model_module.OnePositionDecoder
    originals = (model.last_logits, decoder.step, GPT._sample)
    model.last_logits = timed("encoding the context", originals[0])
    decoder.step = timed("one-position steps", originals[1])
    GPT._sample = staticmethod(timed("sampling", originals[2]))
    try:
        began = time.perf_counter()
        model.generate(start, 500, generator=torch.Generator().manual_seed(0))
        total = time.perf_counter() - began
    finally:
        del model.last_logits
        decoder.step, GPT._sample = originals[1], staticmethod(originals[2])
    parts = ", ".join(f"{part} {seconds:.3f} s" for part, seconds in spent.items())
    print(f"cached, 500 chars: {total:.3f} s in all; {parts}")


if __name__ == "__main__":
    main()
