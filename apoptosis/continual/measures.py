"""Forgetting, plasticity and reconsolidation of a continual-learning run, read off its evaluations.

A continual run trains one model through phases of different corpora and evaluates it on every corpus as
it goes. The questions are whether learning a new corpus damages the old ones, whether the model keeps
its ability to learn, and how fast it recovers a corpus it saw before. Keeping these as pure functions of
the evaluation table lets them be tested on hand-built tables and recomputed from any saved run.

Notation: ``L_c(t)`` is the validation loss on corpus ``c`` at step ``t``; phase ``i`` (0-based) covers
steps ``i*S+1 .. (i+1)*S`` and trains on corpus ``c_i``; ``K`` is the plasticity horizon.

- **forgetting** (``forgetting_next``): ``L_c(end of phase i+1) - L_c(end of phase i)`` for ``c = c_i``
  when the next phase trains another corpus. Positive = the model got worse on the old corpus.
  ``forgetting_final`` is the same difference from the end of ``c``'s last own phase to the end of the run.
- **plasticity ratio**: ``L_c(i*S+K) / fresh[c]``, the loss after ``K`` steps of phase ``i`` over the loss
  of a freshly initialised model after ``K`` steps on the same corpus. Below 1 = the trained model learns
  the corpus faster than a fresh one; above 1 = plasticity lost. On a returning phase it also measures
  memory, since the model starts from what it kept of the corpus.
- **reconsolidation**: on a phase whose corpus was trained before, the steps into the phase until
  ``L_c`` is back at or below its value at the end of the previous phase on ``c``. Its resolution is the
  evaluation interval; ``None`` with ``reconsolidation_reached = False`` if the phase ends first.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from apoptosis.core.errors import ApoptosisError


def _column(corpus: str) -> str:
    return f"val_{corpus}"


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _check_inputs(
    evals: pd.DataFrame, phases: list[str], steps_per_phase: int, plasticity_steps: int, fresh: dict[str, float]
) -> None:
    if not phases:
        raise ApoptosisError("continual measures need at least 1 phase")
    if steps_per_phase < 1:
        raise ApoptosisError(f"steps_per_phase must be at least 1, got {steps_per_phase}")
    if not 1 <= plasticity_steps <= steps_per_phase:
        raise ApoptosisError(
            f"plasticity_steps must be between 1 and steps_per_phase = {steps_per_phase}, got {plasticity_steps}"
        )
    if "step" not in evals.columns:
        raise ApoptosisError("the evaluations have no 'step' column")
    missing = [_column(c) for c in dict.fromkeys(phases) if _column(c) not in evals.columns]
    if missing:
        raise ApoptosisError(f"the evaluations lack the column(s) {', '.join(missing)}")
    for corpus, value in fresh.items():
        if not (math.isfinite(value) and value > 0):
            raise ApoptosisError(f"the fresh-model loss on {corpus!r} must be a positive number, got {value}")


def continual_measures(
    evals: pd.DataFrame,
    phases: list[str],
    steps_per_phase: int,
    plasticity_steps: int,
    fresh: dict[str, float],
) -> dict[str, Any]:
    """Per-phase measures and their summaries (see the module docstring) as a JSON-safe dict.

    ``evals`` has a ``step`` column and one ``val_<corpus>`` column per corpus; only the phases that ended
    (an evaluation at or after their last step exists) are measured. Every measured phase needs evaluations
    at ``i*S+K`` and ``(i+1)*S``; a missing one raises :class:`ApoptosisError` naming the step. If a step
    appears twice (a resumed run), its last row counts.
    """
    _check_inputs(evals, phases, steps_per_phase, plasticity_steps, fresh)
    S, K = steps_per_phase, plasticity_steps
    table = evals.drop_duplicates("step", keep="last").set_index("step").sort_index()
    last_step = int(table.index.max()) if len(table) else 0
    n = min(len(phases), last_step // S)
    if n < 1:
        raise ApoptosisError(f"no phase has ended: the last evaluation is at step {last_step}, phase 1 ends at {S}")

    def loss(corpus: str, step: int) -> float:
        if step not in table.index:
            raise ApoptosisError(f"the evaluations have no row at step {step}, needed for {_column(corpus)}")
        value = float(table.at[step, _column(corpus)])
        if not math.isfinite(value):
            raise ApoptosisError(f"{_column(corpus)} at step {step} is {value}, not a finite loss")
        return value

    def end(i: int) -> int:
        return (i + 1) * S

    last_end: dict[str, int] = {}  # corpus -> the end step of its latest own phase so far
    per_phase: list[dict[str, Any]] = []
    for i in range(n):
        corpus = phases[i]
        start = i * S
        after_k = loss(corpus, start + K)
        fresh_loss = fresh.get(corpus)
        forgetting = None
        if i + 1 < n and phases[i + 1] != corpus:
            forgetting = loss(corpus, end(i + 1)) - loss(corpus, end(i))
        steps, reached = None, None
        if corpus in last_end:
            target = loss(corpus, last_end[corpus])
            window = table.loc[(table.index > start) & (table.index <= end(i)), _column(corpus)]
            hits = window.index[window.to_numpy() <= target]
            reached = bool(len(hits))
            steps = int(hits[0]) - start if reached else None
        per_phase.append(
            {
                "index": i,
                "corpus": corpus,
                "end_step": end(i),
                "own_loss_at_end": loss(corpus, end(i)),
                "loss_after_k": after_k,
                "plasticity_ratio": after_k / fresh_loss if fresh_loss is not None else None,
                "forgetting_next": forgetting,
                "returning": corpus in last_end,
                "reconsolidation_steps": steps,
                "reconsolidation_reached": reached,
            }
        )
        last_end[corpus] = end(i)

    final_step = end(n - 1)
    forgetting_final = {c: loss(c, final_step) - loss(c, step) for c, step in last_end.items() if step != final_step}
    forgetting = [p["forgetting_next"] for p in per_phase if p["forgetting_next"] is not None]
    rated = [(p["index"], p["plasticity_ratio"]) for p in per_phase if p["plasticity_ratio"] is not None]
    ratios = [r for _, r in rated]
    returning = [p for p in per_phase if p["returning"]]
    recon = [p["reconsolidation_steps"] for p in returning if p["reconsolidation_reached"]]
    final_val = {f"final_val_{c}": loss(c, final_step) for c in dict.fromkeys(phases)}

    summary: dict[str, Any] = {
        "phases": per_phase,
        "phases_total": len(phases),
        "phases_measured": n,
        "truncated": n < len(phases),
        "forgetting_final": forgetting_final,
        "forgetting_mean": _mean(forgetting),
        "forgetting_max": max(forgetting) if forgetting else None,
        "plasticity_ratio_mean": _mean(ratios),
        "plasticity_ratio_first": ratios[0] if ratios else None,
        "plasticity_ratio_last": ratios[-1] if ratios else None,
        "plasticity_ratio_slope": (float(np.polyfit([i for i, _ in rated], ratios, 1)[0]) if len(rated) >= 2 else None),
        "reconsolidation_steps_mean": _mean(recon),
        "reconsolidation_not_reached": len(returning) - len(recon),
        **final_val,
        "final_val_mean": _mean(list(final_val.values())),
    }
    return summary
