"""How fast a compressed model runs, and how large its file is, against the dense model.

Speed is timed side by side in one process: the dense and the compressed model alternate, each
timing repeats a forward pass for about ``SPEED_SECONDS``, and the median of ``SPEED_REPEATS``
timings is reported, so a drift of a shared machine hits both alike.
"""

from __future__ import annotations

import io
import math
import statistics
import time

import torch

from apoptosis.core.model import GPT

SPEED_REPEATS = 7  # alternating timings of each model; the median is reported
SPEED_SECONDS = 0.2  # each timing runs forward passes for about this long
NO_SPEEDUP_NOTE = (
    "Unstructured and 2:4 sparsity give no speed-up on a CPU: the zeros of a dense matrix are multiplied "
    "like any weight. Only the neurons pattern makes the model smaller and faster."
)


def state_bytes(model: GPT) -> int:
    """Bytes of the model's saved state dict: its file size as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@torch.inference_mode()
def inference_speed(
    dense: GPT, compressed: GPT, batch_size: int, seed: int = 0, repeats: int = SPEED_REPEATS
) -> dict[str, float]:
    """Tokens/s of a forward pass over ``batch_size x block_size`` random tokens, dense and compressed
    timed alternately in this process, the median of ``repeats`` timings each. A timing repeats the
    pass until the dense model has run for about ``SPEED_SECONDS`` (after a warm-up), so a small
    model is not timed by the clock's resolution."""
    config = dense.config
    device = next(dense.parameters()).device
    x = torch.randint(config.vocab_size, (batch_size, config.block_size), generator=torch.Generator().manual_seed(seed))
    x = x.to(device)
    models = {"dense": dense.eval(), "compressed": compressed.eval()}

    def timed(model: GPT, passes: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(passes):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    timed(dense, 1), timed(compressed, 1)  # warm-up
    passes = max(1, math.ceil(SPEED_SECONDS / max(timed(dense, 1), 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(timed(model, passes))
    speed = {name: passes * x.numel() / statistics.median(t) for name, t in times.items()}
    return {
        "dense_tokens_per_s": speed["dense"],
        "tokens_per_s": speed["compressed"],
        "speedup": speed["compressed"] / speed["dense"],
    }
