"""Lineage records births and deaths, and derives ages, diversity and families from them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from apoptosis.core.lineage import Lineage


def test_founders_births_deaths_and_generations(tmp_path) -> None:
    lin = Lineage.founders([3, 2])
    assert [r.id for r in lin.records] == [1, 2, 3, 4, 5] and lin.ids(1) == [4, 5]
    lin.death(2, step=10, cause="low_fitness", fitness=0.01)
    child = lin.birth(0, 1, step=10, parents=(1,), parent_fitness=0.5)
    lin.death(3, step=20, cause="low_fitness", fitness=float("nan"))  # a NaN score: an empty field
    grandchild = lin.birth(0, 2, step=20, parents=(child, 1), parent_fitness=0.4)
    assert lin.ids(0) == [1, child, grandchild]
    assert lin.record(child).generation == 1 and lin.record(grandchild).generation == 2
    assert lin.founder_of(grandchild) == 1
    assert lin.max_generation(0) == 2 and lin.max_generation(1) == 0
    assert math.isclose(lin.founders_share(), 3 / 5)
    assert list(lin.ages(30, 0)) == [30, 20, 10]
    assert [r.id for r in lin.deaths_since((0, 0))] == [2, 3]

    frame = lin.to_frame()
    assert len(frame) == 7 and frame.loc[frame.id == grandchild, "parent_2"].item() == 1
    assert frame.loc[frame.id == 2, "death_cause"].item() == "low_fitness"
    path = tmp_path / "lineage.csv"
    lin.write_csv(path)
    assert path.read_text() == frame.to_csv(index=False)  # written without pandas, as pandas writes it
    back = Lineage.from_frame(pd.read_csv(path))
    assert back.ids(0) == lin.ids(0) and back.ids(1) == lin.ids(1)
    assert back.record(grandchild).parents == (child, 1)
    assert list(back.ages(30)) == list(lin.ages(30))


def test_age_diversity_is_zero_for_one_age_and_grows_with_spread() -> None:
    lin = Lineage.founders([10])
    assert lin.age_diversity(100) == 0.0
    for slot in range(5):
        lin.death(lin.ids(0)[slot], step=50, cause="x", fitness=0.0)
        lin.birth(0, slot, step=50, parents=(), parent_fitness=None)
    half = lin.age_diversity(100)
    assert math.isclose(half, math.log(2) / math.log(10))
    assert math.isclose(half, stats.entropy(np.histogram(lin.ages(100), bins=10, range=(0, 100))[0], base=10))
    even = Lineage.founders([10])
    for slot in range(10):
        even.death(even.ids(0)[slot], step=slot * 10 + 5, cause="x", fitness=0.0)
        even.birth(0, slot, step=slot * 10 + 5, parents=(), parent_fitness=None)
    assert math.isclose(even.age_diversity(100), 1.0)


def test_compact_and_state_round_trip() -> None:
    lin = Lineage.founders([4])
    lin.death(2, step=1, cause="shrink", fitness=0.0)
    lin.compact(0, [0, 2, 3])
    assert lin.ids(0) == [1, 3, 4] and lin.record(3).slot == 1
    other = Lineage()
    other.load_state_dict(lin.state_dict())
    assert other.ids(0) == [1, 3, 4] and other.record(2).death_cause == "shrink"
