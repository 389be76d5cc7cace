"""Where `standard` spends its time beyond `none`'s step: 100 eager steps of the default model
(steps 151-250, an event every 100 steps with 50 steps' maturity, so one event and about 50 young
neurons per layer) under cProfile, listing the project's own functions by cumulative time.

    .venv/bin/python docs/results/speed/standard_step_profile.py
"""

import cProfile
import pstats
import tempfile

from apoptosis.core.config import RunConfig, StrategyConfig
from apoptosis.training import Trainer


def main() -> None:
    config = RunConfig()
    t = config.trainer
    t.steps = t.eval_interval = t.checkpoint_interval = 400
    config.strategy = StrategyConfig(name="standard", params={"interval": 100, "maturity": 50})
    with tempfile.TemporaryDirectory() as tmp:
        steps = Trainer(config, tmp, show_progress=False).train_steps()
        for _ in range(150):
            next(steps)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(100):
            next(steps)
        profile.disable()
        steps.close()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(r"apoptosis/(core|training)/", 25)


if __name__ == "__main__":
    main()
