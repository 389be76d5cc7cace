"""What torch.compile gains on the bare training step of the default model, outside the trainer:
eager, the model compiled (forward and backward), and the model and AdamW's step both compiled
(constant learning rate: a Python float that changes every step would recompile it). Same data
and initial weights, 5 alternating rounds of 50 steps, tokens/s after warm-up.

    .venv/bin/python docs/results/speed/compile_step_probe.py
"""

import statistics
import time

import torch

from apoptosis.core.config import ModelConfig
from apoptosis.core.model import GPT

BATCH, BLOCK, STEPS, ROUNDS = 12, 64, 50, 5


def build(compile_model: bool, compile_optimizer: bool):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=65, block_size=BLOCK))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compile_model else model
    update = torch.compile(optimizer.step) if compile_optimizer else optimizer.step

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        _, loss = forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        update()

    return step


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randint(65, (BATCH, BLOCK), generator=generator) for _ in range(2))
    ways = {
        "eager": build(False, False),
        "model compiled": build(True, False),
        "model and optimizer step compiled": build(True, True),
    }
    for step in ways.values():  # compiling happens here, outside the timings
        for _ in range(3):
            step(x, y)
    speeds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(ROUNDS):
        for name, step in ways.items():
            began = time.perf_counter()
            for _ in range(STEPS):
                step(x, y)
            speeds[name].append(STEPS * BATCH * BLOCK / (time.perf_counter() - began))
    eager = statistics.median(speeds["eager"])
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"{name}: {median:,.0f} tokens/s (median of {ROUNDS}), {median / eager:.2f}x eager")


if __name__ == "__main__":
    main()
