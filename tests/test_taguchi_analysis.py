"""Taguchi analysis on synthetic experiments whose true effects are known exactly."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from scipy import stats

from apoptosis.search.taguchi_analysis import (
    main_effects_plot,
    per_row,
    response_rich_table,
    response_table,
    signal_to_noise,
)
from apoptosis.search.taguchi_anova import anova, anova_rich_table, predict_optimum

# The standard L9(3^4) orthogonal array, 1-based levels.
L9 = [
    (1, 1, 1, 1),
    (1, 2, 2, 2),
    (1, 3, 3, 3),
    (2, 1, 2, 3),
    (2, 2, 3, 1),
    (2, 3, 1, 2),
    (3, 1, 3, 2),
    (3, 2, 1, 3),
    (3, 3, 2, 1),
]

FACTORS = {
    "strategy.prune_rate": [0.05, 0.1, 0.2],
    "strategy.metric": ["grad", "act", "rand"],
    "C": [1, 2, 3],
    "D": ["x", "y", "z"],
}
A, B = "strategy.prune_rate", "strategy.metric"
MU = 20.0
EFFECT_A = np.array([1.5, -2.0, 0.5])  # sums to 0, best level: 0.05
EFFECT_B = np.array([-1.0, 3.0, -2.0])  # sums to 0, best level: "act"
TRUE_OPTIMUM_SN = MU + EFFECT_A.max() + EFFECT_B.max()


@pytest.fixture
def l9() -> list[tuple[int, ...]]:
    return L9


def l9_results(design, replicates: int = 1, noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """Losses whose S/N per row is exactly MU + a[i] + b[j] (noise: relative gaussian noise per replicate)."""
    rng = np.random.default_rng(seed)
    names = list(FACTORS)
    lines = []
    for row, levels in enumerate(design, start=1):
        sn = MU + EFFECT_A[levels[0] - 1] + EFFECT_B[levels[1] - 1]
        loss = 10 ** (-sn / 20)
        for _ in range(replicates):
            line = {"row": row, **{n: FACTORS[n][lv - 1] for n, lv in zip(names, levels, strict=True)}}
            line["value"] = loss * (1 + noise * rng.standard_normal()) if noise else loss
            lines.append(line)
    return pd.DataFrame(lines)


def test_signal_to_noise_matches_hand_computation():
    assert signal_to_noise([1.0, 2.0, 3.0]) == pytest.approx(-10 * math.log10(14 / 3))
    assert signal_to_noise(np.array([0.1])) == pytest.approx(20.0)
    assert math.isnan(signal_to_noise([1.0, float("nan")]))
    with pytest.raises(ValueError):
        signal_to_noise([])


def test_per_row_statistics():
    factors = {"lr": [0.1, 0.2], "act": ["relu", "gelu"]}
    results = pd.DataFrame(
        {
            "row": [2, 1, 1, 1, 2],
            "lr": [0.2, 0.1, 0.1, 0.1, 0.2],
            "act": ["gelu", "relu", "relu", "relu", "gelu"],
            "value": [4.0, 1.0, 2.0, 3.0, float("nan")],
        }
    )
    rows = per_row(results, factors)
    assert list(rows.columns) == ["row", "lr", "act", "mean", "std", "n", "sn"]
    assert rows["row"].tolist() == [1, 2]
    assert rows["lr"].tolist() == [0.1, 0.2] and rows["act"].tolist() == ["relu", "gelu"]
    assert rows["mean"].tolist() == pytest.approx([2.0, 4.0])
    assert rows.loc[0, "std"] == pytest.approx(1.0)
    assert math.isnan(rows.loc[1, "std"])  # a single replicate has no spread
    assert rows["n"].tolist() == [3, 1]
    assert rows["sn"].tolist() == pytest.approx([-10 * math.log10(14 / 3), -20 * math.log10(4.0)])


def test_per_row_rejects_inconsistent_or_unknown_levels():
    factors = {"lr": [0.1, 0.2]}
    mixed = pd.DataFrame({"row": [1, 1], "lr": [0.1, 0.2], "value": [1.0, 2.0]})
    with pytest.raises(ValueError, match="several levels"):
        per_row(mixed, factors)
    unknown = pd.DataFrame({"row": [1], "lr": [0.3], "value": [1.0]})
    with pytest.raises(ValueError, match="not one of the levels"):
        per_row(unknown, factors)
    # a level that went through a text round trip still matches
    close = pd.DataFrame({"row": [1], "lr": [float("0.1000000000001")], "value": [1.0]})
    assert per_row(close, factors)["lr"].tolist() == [0.1]


def test_response_table_recovers_the_exact_effects(l9):
    rows = per_row(l9_results(l9), FACTORS)
    assert rows["sn"].tolist() == pytest.approx([MU + EFFECT_A[r[0] - 1] + EFFECT_B[r[1] - 1] for r in l9], abs=1e-9)
    table = response_table(rows, FACTORS)
    assert list(table.index) == list(FACTORS)
    assert list(table.columns) == ["level_1", "level_2", "level_3", "delta", "rank"]
    levels = ["level_1", "level_2", "level_3"]
    assert table.loc[A, levels].tolist() == pytest.approx(list(MU + EFFECT_A), abs=1e-9)
    assert table.loc[B, levels].tolist() == pytest.approx(list(MU + EFFECT_B), abs=1e-9)
    assert table.loc["C", levels].tolist() == pytest.approx([MU] * 3, abs=1e-9)
    assert table.loc[A, "delta"] == pytest.approx(3.5)
    assert table.loc[B, "delta"] == pytest.approx(5.0)
    assert table.loc["C", "delta"] == pytest.approx(0.0, abs=1e-9)
    assert table.loc["D", "delta"] == pytest.approx(0.0, abs=1e-9)
    assert table.loc[B, "rank"] == 1 and table.loc[A, "rank"] == 2
    assert table.loc["C", "rank"] == table.loc["D", "rank"] == 3  # equal deltas share a rank


def test_anova_on_saturated_l9_pools_the_null_factors(l9):
    rows = per_row(l9_results(l9), FACTORS)
    table = anova(rows, FACTORS)
    assert list(table.columns) == ["factor", "ss", "dof", "ms", "f", "p", "percent_contribution", "pooled"]
    assert table["factor"].tolist() == [*FACTORS, "error", "total"]
    t = table.set_index("factor")
    # each level is in 3 rows: SS = 3 * sum(effect^2)
    assert t.at[A, "ss"] == pytest.approx(3 * (EFFECT_A**2).sum())
    assert t.at[B, "ss"] == pytest.approx(3 * (EFFECT_B**2).sum())
    assert t.at["total", "ss"] == pytest.approx(3 * ((EFFECT_A**2).sum() + (EFFECT_B**2).sum()))
    assert t.at["total", "dof"] == 8
    # saturated (4 x 2 dof = 8): the smallest factors go into the error until it has 2 dof
    pooled = set(t.index[t["pooled"]])
    assert len(pooled) == 1 and pooled <= {"C", "D"}
    assert not t.at[A, "pooled"] and not t.at[B, "pooled"]
    assert t.at["error", "dof"] == 2
    assert t.loc[list(pooled), "f"].isna().all()
    assert t.at[A, "p"] < 1e-6 and t.at[B, "p"] < 1e-6
    # contributions in proportion to the sums of squared effects, summing to 100 with the error
    share_a = (EFFECT_A**2).sum() / ((EFFECT_A**2).sum() + (EFFECT_B**2).sum())
    assert t.at[A, "percent_contribution"] == pytest.approx(100 * share_a, abs=1e-6)
    assert t.at[B, "percent_contribution"] == pytest.approx(100 * (1 - share_a), abs=1e-6)
    assert t.loc[[*FACTORS, "error"], "percent_contribution"].sum() == pytest.approx(100.0)
    assert (t["percent_contribution"] >= 0).all()


def test_anova_forced_and_disabled_pooling(l9):
    rows = per_row(l9_results(l9, replicates=2, noise=0.05), FACTORS)
    forced = anova(rows, FACTORS, pool=["C", "D"]).set_index("factor")
    assert forced["pooled"].tolist() == [False, False, True, True, False, False]
    assert forced.at["error", "dof"] == 4
    assert forced.at["error", "ss"] == pytest.approx(forced.at["C", "ss"] + forced.at["D", "ss"])
    assert forced.at["error", "ms"] == pytest.approx(forced.at["error", "ss"] / 4)
    assert forced.at[A, "f"] == pytest.approx(forced.at[A, "ms"] / forced.at["error", "ms"])
    assert forced.at[A, "p"] == pytest.approx(stats.f.sf(forced.at[A, "f"], 2, 4))
    ms_e, ss_t = forced.at["error", "ms"], forced.at["total", "ss"]
    expected = max(forced.at[B, "ss"] - 2 * ms_e, 0) / ss_t * 100
    assert forced.at[B, "percent_contribution"] == pytest.approx(expected)
    assert forced.loc[[*FACTORS, "error"], "percent_contribution"].sum() == pytest.approx(100.0)

    only_a = anova(rows, FACTORS, pool=[A]).set_index("factor")
    assert only_a["pooled"].tolist() == [True, False, False, False, False, False]

    none = anova(rows, FACTORS, pool=None).set_index("factor")
    assert not none["pooled"].any()
    assert none.at["error", "dof"] == 0
    assert math.isnan(none.at["error", "ms"]) and none["f"].isna().all()
    assert none.loc[[*FACTORS, "error"], "percent_contribution"].sum() == pytest.approx(100.0)

    with pytest.raises(ValueError, match="unknown"):
        anova(rows, FACTORS, pool=["nope"])


def test_predict_optimum_exact_model(l9):
    rows = per_row(l9_results(l9), FACTORS)
    table = anova(rows, FACTORS)
    best = predict_optimum(rows, FACTORS, anova_table=table)
    assert best["best_levels"][A] == 0.05
    assert best["best_levels"][B] == "act"
    assert best["predicted"] == pytest.approx(TRUE_OPTIMUM_SN, abs=1e-9)
    assert best["larger_is_better"] is True
    pooled = set(table.loc[table["pooled"], "factor"])
    assert set(best["factors_used"]) == set(FACTORS) - pooled
    assert best["error_dof"] == 2
    assert best["n_eff"] == pytest.approx(9 / (1 + 2 * 3))
    assert math.isfinite(best["low"]) and math.isfinite(best["high"])
    assert best["low"] <= best["predicted"] <= best["high"]


def test_predict_optimum_interval_contains_truth_with_noisy_replicates(l9):
    results = l9_results(l9, replicates=3, noise=0.03, seed=7)
    rows = per_row(results, FACTORS)
    assert rows["n"].eq(3).all()
    best = predict_optimum(rows, FACTORS, confidence=0.95)
    assert best["best_levels"][A] == 0.05 and best["best_levels"][B] == "act"
    assert math.isfinite(best["half_width"]) and best["half_width"] > 0
    assert best["low"] <= TRUE_OPTIMUM_SN <= best["high"]
    assert abs(best["predicted"] - TRUE_OPTIMUM_SN) < 0.5
    # the same prediction in loss units
    loss = predict_optimum(rows, FACTORS, column="mean", anova_table=anova(rows, FACTORS, column="mean"))
    assert loss["larger_is_better"] is False
    assert loss["best_levels"][A] == 0.05 and loss["best_levels"][B] == "act"
    assert loss["predicted"] == pytest.approx(10 ** (-TRUE_OPTIMUM_SN / 20), rel=0.3)


def test_predict_optimum_in_loss_units_additive_model(l9):
    """Losses additive in the factors: the mean-loss prediction picks the lowest levels and covers the truth."""
    rng = np.random.default_rng(3)
    base, eff_a, eff_b = 2.0, np.array([0.1, -0.3, 0.2]), np.array([0.4, 0.0, -0.4])
    lines = []
    for row, levels in enumerate(l9, start=1):
        for _ in range(3):
            value = base + eff_a[levels[0] - 1] + eff_b[levels[1] - 1] + 0.01 * rng.standard_normal()
            lines.append({"row": row, **{n: FACTORS[n][lv - 1] for n, lv in zip(FACTORS, levels, strict=True)}})
            lines[-1]["value"] = value
    rows = per_row(pd.DataFrame(lines), FACTORS)
    best = predict_optimum(rows, FACTORS, column="mean", anova_table=anova(rows, FACTORS, column="mean"))
    assert best["best_levels"][A] == 0.1 and best["best_levels"][B] == "rand"
    truth = base + eff_a.min() + eff_b.min()
    assert best["low"] <= truth <= best["high"]


def test_mixed_level_counts():
    """A 2 x 3 full factorial with 2 replicates: a 2-level and a 3-level factor in one response table."""
    factors = {"gate": ["off", "on"], "width": [64, 128, 256]}
    rng = np.random.default_rng(1)
    lines = [
        {"row": r, "gate": g, "width": w, "value": float(v)}
        for r, (g, w) in enumerate(itertools.product(factors["gate"], factors["width"]), start=1)
        for v in rng.uniform(0.5, 2.0, size=2)
    ]
    rows = per_row(pd.DataFrame(lines), factors)
    assert len(rows) == 6 and rows["n"].eq(2).all()
    table = response_table(rows, factors)
    assert list(table.columns) == ["level_1", "level_2", "level_3", "delta", "rank"]
    by_gate = rows.groupby("gate")["sn"].mean()
    by_width = rows.groupby("width")["sn"].mean()
    assert table.loc["gate", ["level_1", "level_2"]].tolist() == pytest.approx([by_gate["off"], by_gate["on"]])
    assert math.isnan(table.loc["gate", "level_3"])
    assert table.loc["width", ["level_1", "level_2", "level_3"]].tolist() == pytest.approx(
        [by_width[64], by_width[128], by_width[256]]
    )
    assert table.loc["gate", "delta"] == pytest.approx(abs(by_gate["off"] - by_gate["on"]))
    assert sorted(table["rank"]) == [1, 2]
    mean_table = response_table(rows, factors, column="mean")
    assert mean_table.loc["gate", "level_1"] == pytest.approx(rows.groupby("gate")["mean"].mean()["off"])

    t = anova(rows, factors).set_index("factor")
    assert t.at["gate", "dof"] == 1 and t.at["width", "dof"] == 2 and t.at["error", "dof"] == 2
    assert not t["pooled"].any()  # already 2 error dof: nothing to pool
    assert t.at["total", "ss"] == pytest.approx(t.at["gate", "ss"] + t.at["width", "ss"] + t.at["error", "ss"])
    best = predict_optimum(rows, factors, anova_table=anova(rows, factors))
    assert best["best_levels"]["gate"] == by_gate.idxmax()
    assert best["best_levels"]["width"] == by_width.idxmax()


def test_main_effects_plot_writes_png(tmp_path, l9):
    rows = per_row(l9_results(l9, replicates=2, noise=0.05), FACTORS)
    target = tmp_path / "plots" / "main_effects.png"
    assert main_effects_plot(rows, FACTORS, target) == target
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
    assert [p.name for p in target.parent.iterdir()] == ["main_effects.png"]  # no temporary file left
    main_effects_plot(rows, FACTORS, target, column="mean")
    assert target.read_bytes().startswith(b"\x89PNG")


def l27_rows() -> tuple[pd.DataFrame, dict[str, list]]:
    """Eight 3-level factors on 27 rows: columns of the L27 array, built as linear forms over GF(3)."""
    names = [
        "strategy.prune_rate",
        "strategy.regrow_rate",
        "strategy.interval",
        "strategy.fitness_ema",
        "trainer.learning_rate",
        "trainer.warmup_steps",
        "model.d_ff",
        "strategy.metric",
    ]
    forms = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 2, 0), (1, 0, 1), (1, 0, 2), (0, 1, 1)]
    factors = {name: [0.001 * (i + 1) * 10**k for k in range(3)] for i, name in enumerate(names)}
    rng = np.random.default_rng(5)
    lines = []
    for row, x in enumerate(itertools.product(range(3), repeat=3), start=1):
        codes = [sum(c * v for c, v in zip(form, x, strict=True)) % 3 for form in forms]
        for _ in range(2):
            line = {"row": row, **{n: factors[n][c] for n, c in zip(names, codes, strict=True)}}
            line["value"] = 1.0 + 0.2 * codes[0] - 0.1 * codes[3] + 0.05 * rng.standard_normal()
            lines.append(line)
    return per_row(pd.DataFrame(lines), factors), factors


def test_rich_tables_render_in_100_columns():
    rows, factors = l27_rows()
    response = response_table(rows, factors)
    table = anova(rows, factors)
    assert table.set_index("factor").at["error", "dof"] == 26 - 16
    assert not table["pooled"].any()
    console = Console(record=True, width=100)
    for rich_table in (response_rich_table(response), anova_rich_table(table)):
        assert console.measure(rich_table).maximum <= 100  # fits without squeezing
        console.print(rich_table)
    text = console.export_text()
    for name in factors:
        assert text.count(name) == 2  # once in each table, not cut
    assert "error" in text and "total" in text and "delta" in text


def test_rich_anova_marks_pooled_factors(l9):
    rows = per_row(l9_results(l9), FACTORS)
    console = Console(record=True, width=100)
    console.print(anova_rich_table(anova(rows, FACTORS, pool=["C", "D"])))
    text = console.export_text()
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "yes" in lines["C"] and "yes" in lines["D"] and "yes" not in lines[A]
