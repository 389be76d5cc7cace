"""Who every neuron is: id, layer, slot, birth step, parents, generation, and how it died.

The population calls ``birth``/``death``/``move`` during surgery; ages, age diversity, founder
share and family sizes are all derived from these records.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from apoptosis.core.io import atomic_write_text

if TYPE_CHECKING:  # pandas and scipy are imported where used, never on the training path
    import pandas as pd

CSV_COLUMNS = [
    "id", "layer", "slot", "birth_step", "parent_1", "parent_2", "generation",
    "parent_fitness", "death_step", "death_cause", "death_fitness",
]  # fmt: skip


@dataclass
class NeuronRecord:
    id: int
    layer: int
    slot: int  # current slot while alive, last slot once dead
    birth_step: int
    parents: tuple[int, ...]  # neuron ids: () for founders, 1 for copies, 2 for crossover
    generation: int
    parent_fitness: float | None = None
    death_step: int | None = None
    death_cause: str | None = None
    death_fitness: float | None = None

    @property
    def alive(self) -> bool:
        return self.death_step is None


class Lineage:
    def __init__(self) -> None:
        self.records: list[NeuronRecord] = []  # records[i].id == i + 1
        self.slots: list[list[int]] = []  # slots[layer][slot] -> id of the living neuron there
        self.death_log: list[int] = []  # ids in order of death, so events can ask "who died since"

    @classmethod
    def founders(cls, widths: list[int]) -> Lineage:
        lineage = cls()
        for layer, width in enumerate(widths):
            lineage.slots.append([])
            for slot in range(width):
                lineage._add(layer, slot, step=0, parents=(), parent_fitness=None)
        return lineage

    def _add(self, layer: int, slot: int, step: int, parents: tuple[int, ...], parent_fitness: float | None) -> int:
        generation = 1 + max((self.records[p - 1].generation for p in parents), default=-1)
        record = NeuronRecord(
            id=len(self.records) + 1,
            layer=layer,
            slot=slot,
            birth_step=step,
            parents=tuple(parents),
            generation=generation,
            parent_fitness=parent_fitness,
        )
        self.records.append(record)
        if slot == len(self.slots[layer]):
            self.slots[layer].append(record.id)
        else:
            self.slots[layer][slot] = record.id
        return record.id

    # --- called by the population during surgery -------------------------------------------

    def birth(self, layer: int, slot: int, step: int, parents: tuple[int, ...], parent_fitness: float | None) -> int:
        """A new neuron in ``slot`` (which must be empty or one past the end)."""
        return self._add(layer, slot, step, parents, parent_fitness)

    def death(self, neuron_id: int, step: int, cause: str, fitness: float) -> None:
        record = self.records[neuron_id - 1]
        record.death_step, record.death_cause, record.death_fitness = step, cause, float(fitness)
        self.death_log.append(neuron_id)

    def compact(self, layer: int, keep_slots: list[int]) -> None:
        """After a shrink: surviving neurons move to slots 0..len(keep)-1 in order."""
        ids = [self.slots[layer][s] for s in keep_slots]
        for slot, neuron_id in enumerate(ids):
            self.records[neuron_id - 1].slot = slot
        self.slots[layer] = ids

    # --- queries ------------------------------------------------------------------------------

    def ids(self, layer: int) -> list[int]:
        return list(self.slots[layer])

    def record(self, neuron_id: int) -> NeuronRecord:
        return self.records[neuron_id - 1]

    def living(self, layer: int | None = None) -> list[NeuronRecord]:
        layers = range(len(self.slots)) if layer is None else [layer]
        return [self.records[i - 1] for lay in layers for i in self.slots[lay]]

    def ages(self, step: int, layer: int | None = None) -> np.ndarray:
        return np.array([step - r.birth_step for r in self.living(layer)], dtype=np.int64)

    def age_diversity(self, step: int, layer: int | None = None, bins: int = 10) -> float:
        """Normalised entropy of the age histogram (``bins`` equal bins over [0, step]):
        0 when every neuron has the same age, 1 when ages spread evenly over the run."""
        ages = self.ages(step, layer)
        if len(ages) == 0 or step <= 0:
            return 0.0
        counts, _ = np.histogram(ages, bins=bins, range=(0, step))
        p = counts[counts > 0] / counts.sum()  # scipy.stats.entropy's value; scipy is too big to load
        return max(0.0, float(-(p * np.log(p)).sum() / np.log(bins)))  # for this at the end of a run

    def founders_share(self, layer: int | None = None) -> float:
        """Share of the living neurons that were there at step 0."""
        living = self.living(layer)
        return sum(r.birth_step == 0 and not r.parents for r in living) / max(len(living), 1)

    def max_generation(self, layer: int | None = None) -> int:
        return max((r.generation for r in self.living(layer)), default=0)

    def founder_of(self, neuron_id: int) -> int:
        """The generation-0 ancestor along first parents (a family's name)."""
        record = self.records[neuron_id - 1]
        while record.parents:
            record = self.records[record.parents[0] - 1]
        return record.id

    def births_since(self, mark: tuple[int, int]) -> list[NeuronRecord]:
        return self.records[mark[0] :]

    def deaths_since(self, mark: tuple[int, int]) -> list[NeuronRecord]:
        return [self.records[i - 1] for i in self.death_log[mark[1] :]]

    def mark(self) -> tuple[int, int]:
        return (len(self.records), len(self.death_log))

    # --- export and persistence ---------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """One dict per neuron ever born, in the columns of ``lineage.csv`` (None where empty, a
        NaN fitness included, as pandas writes it)."""
        rows = []
        for r in self.records:
            row = asdict(r)
            parents = row.pop("parents")
            row["parent_1"] = parents[0] if len(parents) > 0 else None
            row["parent_2"] = parents[1] if len(parents) > 1 else None
            rows.append({c: None if isinstance(row[c], float) and math.isnan(row[c]) else row[c] for c in CSV_COLUMNS})
        return rows

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame(self.rows(), columns=CSV_COLUMNS)
        for col in ("parent_1", "parent_2", "death_step"):
            frame[col] = frame[col].astype("Int64")
        return frame

    def write_csv(self, path: str | Path) -> None:
        """``lineage.csv``, as ``to_frame().to_csv`` would write it, without pandas: the process
        that trained writes it at its end and should not load pandas for it (memory)."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows([list(row.values()) for row in self.rows()])  # None: an empty field
        atomic_write_text(path, text.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {
            "records": [asdict(r) for r in self.records],
            "slots": [list(s) for s in self.slots],
            "death_log": list(self.death_log),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = [NeuronRecord(**{**r, "parents": tuple(r["parents"])}) for r in state["records"]]
        self.slots = [list(s) for s in state["slots"]]
        self.death_log = list(state["death_log"])

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Lineage:
        """Rebuild from ``lineage.csv`` (for ``apoptosis ages`` on a finished run)."""
        import pandas as pd

        lineage = cls()
        n_layers = int(frame["layer"].max()) + 1 if len(frame) else 0
        lineage.slots = [[] for _ in range(n_layers)]
        living: list[list[tuple[int, int]]] = [[] for _ in range(n_layers)]
        for row in frame.sort_values("id").itertuples(index=False):
            parents = tuple(int(p) for p in (row.parent_1, row.parent_2) if not pd.isna(p))
            dead = not pd.isna(row.death_step)
            lineage.records.append(
                NeuronRecord(
                    id=int(row.id),
                    layer=int(row.layer),
                    slot=int(row.slot),
                    birth_step=int(row.birth_step),
                    parents=parents,
                    generation=int(row.generation),
                    parent_fitness=None if pd.isna(row.parent_fitness) else float(row.parent_fitness),
                    death_step=int(row.death_step) if dead else None,
                    death_cause=None if pd.isna(row.death_cause) else str(row.death_cause),
                    death_fitness=None if pd.isna(row.death_fitness) else float(row.death_fitness),
                )
            )
            if dead:
                lineage.death_log.append(int(row.id))
            else:
                living[int(row.layer)].append((int(row.slot), int(row.id)))
        lineage.slots = [[i for _, i in sorted(layer)] for layer in living]
        return lineage
