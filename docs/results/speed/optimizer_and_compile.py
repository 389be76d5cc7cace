"""Step time of the default `none` run under the trainer, four ways side by side: eager or compiled,
with AdamW's per-tensor loop (torch's CPU default) or its fused kernel. One process trains the four
at once, 40 steps each in turn (the order reversed every other round), 12 rounds after a 20-step
warm-up (where the compiled ones compile); each step is timed, and the medians compared.

    .venv/bin/python docs/results/speed/optimizer_and_compile.py
"""

import statistics
import tempfile
import time
from pathlib import Path

from apoptosis.core.config import RunConfig
from apoptosis.training import Trainer

STEPS, WARM_UP, SEGMENT, ROUNDS = 1000, 20, 40, 12
WAYS = {"eager": (False, False), "eager, fused AdamW": (False, True),
        "compiled": (True, False), "compiled, fused AdamW": (True, True)}  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for name, (compiled, fused) in WAYS.items():
            config = RunConfig()
            t = config.trainer
            t.steps = t.eval_interval = t.checkpoint_interval = STEPS
            t.compile, t.fused_adamw = compiled, fused
            trainer = Trainer(config, Path(tmp) / name.replace(" ", "-").replace(",", ""), show_progress=False)
            runs[name] = trainer.train_steps()
        for steps in runs.values():
            for _ in range(WARM_UP):
                next(steps)
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(ROUNDS):
            for name in list(runs) if r % 2 == 0 else reversed(runs):
                for _ in range(SEGMENT):
                    began = time.perf_counter()
                    next(runs[name])
                    seconds[name].append(time.perf_counter() - began)
        for steps in runs.values():
            steps.close()
    eager = statistics.median(seconds["eager"])
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"{name}: {1000 * median:.1f} ms per step (median of {len(times)}), {eager / median:.3f}x eager")


if __name__ == "__main__":
    main()
