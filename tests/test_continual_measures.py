"""Forgetting, plasticity and reconsolidation on hand-built evaluation tables with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from apoptosis.continual.measures import continual_measures
from apoptosis.core.errors import ApoptosisError

S, K = 10, 2
PHASES = ["a", "b", "a"]
FRESH = {"a": 3.0, "b": 3.5}

# step: (val_a, val_b). Phases: a (1..10), b (11..20), a (21..30); evals every 5 steps plus at i*S + K.
ROWS = {
    0: (4.0, 4.0),
    2: (3.0, 3.9),
    5: (2.5, 3.8),
    10: (2.0, 3.7),
    12: (2.4, 3.0),
    15: (2.6, 2.5),
    20: (2.8, 2.0),
    22: (2.3, 2.2),
    25: (1.9, 2.4),
    30: (1.5, 2.6),
}


def frame(rows: dict[int, tuple[float, float]] = ROWS, drop: tuple[int, ...] = ()) -> pd.DataFrame:
    kept = {step: v for step, v in rows.items() if step not in drop}
    return pd.DataFrame(
        {"step": list(kept), "val_a": [v[0] for v in kept.values()], "val_b": [v[1] for v in kept.values()]}
    )


def measure(evals: pd.DataFrame | None = None, phases: list[str] = PHASES, fresh=FRESH) -> dict:
    return continual_measures(frame() if evals is None else evals, phases, S, K, fresh)


def test_full_run_per_phase() -> None:
    phases = measure()["phases"]
    assert [p["index"] for p in phases] == [0, 1, 2]
    assert [p["corpus"] for p in phases] == PHASES
    assert [p["end_step"] for p in phases] == [10, 20, 30]
    assert [p["own_loss_at_end"] for p in phases] == [2.0, 2.0, 1.5]
    assert [p["loss_after_k"] for p in phases] == [3.0, 3.0, 2.3]
    assert [p["plasticity_ratio"] for p in phases] == pytest.approx([1.0, 3.0 / 3.5, 2.3 / 3.0])
    assert phases[0]["forgetting_next"] == pytest.approx(2.8 - 2.0)
    assert phases[1]["forgetting_next"] == pytest.approx(2.6 - 2.0)
    assert phases[2]["forgetting_next"] is None  # no next phase
    assert [p["returning"] for p in phases] == [False, False, True]
    assert [p["reconsolidation_steps"] for p in phases] == [None, None, 5]  # L_a(25) = 1.9 <= L_a(10) = 2.0
    assert [p["reconsolidation_reached"] for p in phases] == [None, None, True]


def test_full_run_summary() -> None:
    m = measure()
    assert m["phases_total"] == 3 and m["phases_measured"] == 3 and m["truncated"] is False
    assert m["forgetting_final"] == {"b": pytest.approx(2.6 - 2.0)}  # a's last own phase is the last phase
    assert m["forgetting_mean"] == pytest.approx(0.7)
    assert m["forgetting_max"] == pytest.approx(0.8)
    ratios = [1.0, 3.0 / 3.5, 2.3 / 3.0]
    assert m["plasticity_ratio_mean"] == pytest.approx(np.mean(ratios))
    assert m["plasticity_ratio_first"] == pytest.approx(1.0)
    assert m["plasticity_ratio_last"] == pytest.approx(2.3 / 3.0)
    assert m["plasticity_ratio_slope"] == pytest.approx((ratios[2] - ratios[0]) / 2)  # 3 equally spaced points
    assert m["reconsolidation_steps_mean"] == 5.0
    assert m["reconsolidation_not_reached"] == 0
    assert m["final_val_a"] == 1.5 and m["final_val_b"] == 2.6
    assert m["final_val_mean"] == pytest.approx(2.05)


def test_truncated_run_measures_only_ended_phases() -> None:
    for drop in ((30,), (25, 30)):  # the last eval inside phase 2, or only its K step
        m = measure(frame(drop=drop))
        assert m["phases_measured"] == 2 and m["truncated"] is True
        assert [p["index"] for p in m["phases"]] == [0, 1]
        assert m["phases"][0]["forgetting_next"] == pytest.approx(0.8)
        assert m["phases"][1]["forgetting_next"] is None  # phase 2 did not end
        assert m["forgetting_final"] == {"a": pytest.approx(2.8 - 2.0)}
        assert m["final_val_a"] == 2.8 and m["final_val_b"] == 2.0
        assert m["reconsolidation_steps_mean"] is None and m["reconsolidation_not_reached"] == 0
        json.dumps(m, allow_nan=False)


def test_reconsolidation_not_reached() -> None:
    rows = {**ROWS, 25: (2.1, 2.4), 30: (2.05, 2.6)}  # never back to L_a(10) = 2.0
    m = measure(frame(rows))
    last = m["phases"][2]
    assert last["returning"] is True
    assert last["reconsolidation_steps"] is None and last["reconsolidation_reached"] is False
    assert m["reconsolidation_not_reached"] == 1 and m["reconsolidation_steps_mean"] is None


def test_reconsolidation_counts_equality_and_uses_the_latest_own_phase() -> None:
    rows = {**ROWS, 22: (2.0, 2.2)}
    assert measure(frame(rows))["phases"][2]["reconsolidation_steps"] == 2  # L_a(22) == target
    # a, a, b: phase 1 returns to a right after phase 0 and is not "forgetting" (same corpus next)
    m = measure(phases=["a", "a", "b"])
    assert m["phases"][0]["forgetting_next"] is None
    assert m["phases"][1]["forgetting_next"] == pytest.approx(1.5 - 2.8)
    assert m["phases"][1]["returning"] is True
    assert m["phases"][1]["reconsolidation_steps"] is None  # L_a stays above L_a(10) = 2.0 in 11..20
    assert m["forgetting_final"] == {"a": pytest.approx(1.5 - 2.8)}


def test_fresh_lacking_a_corpus() -> None:
    m = measure(fresh={"a": 3.0})
    assert [p["plasticity_ratio"] for p in m["phases"]] == pytest.approx([1.0, None, 2.3 / 3.0])
    assert m["plasticity_ratio_first"] == 1.0
    assert m["plasticity_ratio_last"] == pytest.approx(2.3 / 3.0)
    assert m["plasticity_ratio_slope"] == pytest.approx((2.3 / 3.0 - 1.0) / 2)  # phase indices 0 and 2
    none = measure(fresh={})
    assert none["plasticity_ratio_mean"] is None and none["plasticity_ratio_slope"] is None
    assert none["plasticity_ratio_first"] is None and none["plasticity_ratio_last"] is None
    one = measure(frame(drop=(25, 30)), fresh={"b": 3.5})
    assert one["plasticity_ratio_slope"] is None and one["plasticity_ratio_mean"] == pytest.approx(3.0 / 3.5)


def test_output_is_json_safe() -> None:
    for m in (measure(), measure(fresh={}), measure(frame(drop=(30,)))):
        loaded = json.loads(json.dumps(m, allow_nan=False))
        assert loaded["phases"][0]["corpus"] == "a"
    types = {type(v) for p in measure()["phases"] for v in p.values()}
    assert types <= {int, float, str, bool, type(None)}


def test_only_needed_rows_matter_and_repeated_steps_keep_the_last() -> None:
    base = measure()
    extra = pd.concat([frame(), pd.DataFrame({"step": [7, 10], "val_a": [9.0, 2.0], "val_b": [9.0, 3.7]})])
    assert measure(extra.sample(frac=1.0, random_state=0)) == base  # unordered rows and an extra step 7
    resumed = pd.concat([frame(), pd.DataFrame({"step": [10], "val_a": [1.0], "val_b": [3.7]})])
    assert measure(resumed)["phases"][0]["own_loss_at_end"] == 1.0


@pytest.mark.parametrize(("drop", "step"), [((12,), 12), ((20,), 20), ((22,), 22), ((10,), 10)])
def test_missing_eval_step(drop: tuple[int, ...], step: int) -> None:
    with pytest.raises(ApoptosisError, match=f"no row at step {step}"):
        measure(frame(drop=drop))


def test_input_errors() -> None:
    with pytest.raises(ApoptosisError, match="no phase has ended: the last evaluation is at step 5"):
        measure(frame(drop=(10, 12, 15, 20, 22, 25, 30)))
    with pytest.raises(ApoptosisError, match="lack the column"):
        measure(frame().drop(columns="val_b"))
    with pytest.raises(ApoptosisError, match="no 'step' column"):
        measure(frame().drop(columns="step"))
    with pytest.raises(ApoptosisError, match="plasticity_steps must be between 1 and steps_per_phase = 10"):
        continual_measures(frame(), PHASES, S, S + 1, FRESH)
    with pytest.raises(ApoptosisError, match="at least 1 phase"):
        continual_measures(frame(), [], S, K, FRESH)
    with pytest.raises(ApoptosisError, match="fresh-model loss on 'a' must be a positive number"):
        measure(fresh={"a": float("nan")})
    with pytest.raises(ApoptosisError, match="val_a at step 20 is nan"):
        measure(frame({**ROWS, 20: (float("nan"), 2.0)}))


def test_plasticity_is_measured_a_tenth_into_a_phase_unless_told() -> None:
    from apoptosis.continual.experiment import default_plasticity_steps

    assert [default_plasticity_steps(n) for n in (1000, 5000, 50, 20, 5, 1)] == [100, 100, 5, 2, 1, 1]


def test_the_continual_tables_fit_80_columns_with_whole_words() -> None:
    import pandas as pd
    from rich.console import Console

    from apoptosis.continual.experiment import continual_tables, phases_table

    method = "standard+stability_first"
    per_phase = pd.DataFrame(
        {"method": [method] * 3, "seed": [1] * 3, "index": [0, 1, 2],
         "corpus": ["shakespeare", "python", "shakespeare"],
         "own_loss_at_end": [1.91, 1.52, 1.88], "plasticity_ratio": [1.0, 0.93, 0.88],
         "forgetting_next": [0.512, 0.1, None], "reconsolidation_steps": [None, None, 120.0]}
    )  # fmt: skip
    table = pd.DataFrame(
        {"method": [method] * 2, "seed": [1, 2], "forgetting_mean": [0.512, 0.498],
         "plasticity_ratio_mean": [0.93, 0.95], "plasticity_ratio_slope": [-0.051, -0.04],
         "reconsolidation_steps_mean": [120.0, 140.0], "reconsolidation_not_reached": [0, 1],
         "final_val_shakespeare": [1.88, 1.9], "final_val_python": [1.6, 1.62], "final_val_mean": [1.74, 1.76]}
    )  # fmt: skip
    console = Console(width=80, record=True)
    for printed in [phases_table(per_phase, "c"), *continual_tables(table, ["shakespeare", "python"], "c")]:
        console.print(printed)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text  # no header or name cut short
    for word in (
        "standard +",
        "stability_first",
        "forgetting",
        "plasticity",
        "reconsolidation",
        "shakespeare",
        "not back",
    ):
        assert word in text
