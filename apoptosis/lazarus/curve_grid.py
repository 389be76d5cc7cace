"""The grid of ``apoptosis lazarus-curve``: which rows a sweep runs.

Kept apart from running and reporting so the settings (damage levels x anchors x modes x losses x
seeds), their parsing from the command's lists and the plan of rows can be read, and tested,
without a model: the runner and the report both build on these names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from apoptosis.core.errors import ApoptosisError
from apoptosis.lazarus.damage import DamageSpec
from apoptosis.lazarus.recovery import ANCHORS, MODES, LossWeights, RecoverySettings

CURVE_LOSSES = ("full", "consistency", "stability", "entropy")
NO_RECOVERY = "none"  # the damaged model left alone (the write-up's "noise only" control)
T_SCALED = "T-scaled"  # the damaged model divided by its fitted temperature
NOT_APPLICABLE = "-"  # mode after noise (no mask) and of the controls; anchor of the controls and of
# the losses without the consistency term (stability, entropy: no teacher)

KEY = ["kind", "amount", "structured", "seed", "mode", "anchor", "loss"]


# --- options ----------------------------------------------------------------------------------


def _items(text: str) -> list[str]:
    return [] if not text.strip() else [part.strip() for part in text.split(",")]


def _no_repeats(values: list[Any], option: str) -> None:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise ApoptosisError(f"{option} lists {value} twice")


def parse_levels(text: str, option: str, low: float, high: float | None) -> tuple[float, ...]:
    """A comma-separated list of damage levels, each > ``low`` (and < ``high`` when given), sorted;
    ``""`` is none."""
    allowed = f"> {low:g}" if high is None else f"strictly between {low:g} and {high:g}"
    levels = []
    for item in _items(text):
        try:
            value = float(item)
        except ValueError:
            raise ApoptosisError(
                f"{option} takes comma-separated numbers {allowed} (e.g. {option} 0.3,0.5), got {item!r}"
            ) from None
        if not (math.isfinite(value) and value > low and (high is None or value < high)):
            raise ApoptosisError(f"every {option} level must be {allowed}, got {item}")
        levels.append(value)
    _no_repeats(levels, option)
    return tuple(sorted(levels))


def parse_names(text: str, option: str, allowed: Iterable[str], hint: str = "") -> tuple[str, ...]:
    """A comma-separated list of names out of ``allowed`` (at least one), in the order of ``allowed``
    (so the same choice in another order is the same sweep)."""
    allowed = tuple(allowed)
    names = _items(text)
    if not names:
        raise ApoptosisError(f"{option} needs at least one of {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            raise ApoptosisError(f"{option} takes a comma-separated list of {', '.join(allowed)}{hint}, got {name!r}")
    _no_repeats(names, option)
    return tuple(name for name in allowed if name in names)


@dataclass(frozen=True)
class CurveSettings:
    """Everything that decides the rows of a sweep; saved in ``curve.json`` and checked on resume."""

    noise: tuple[float, ...] = (0.1, 0.2, 0.3, 0.35)
    prune: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8)
    structured: bool = False
    modes: tuple[str, ...] = MODES
    anchors: tuple[str, ...] = ANCHORS
    losses: tuple[str, ...] = CURVE_LOSSES
    seeds: int = 3
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 12
    seq_len: int = 64
    sampled_fraction: float = 0.5

    @classmethod
    def from_options(
        cls,
        noise: str,
        prune: str,
        modes: str,
        anchors: str,
        losses: str,
        **values: Any,
    ) -> CurveSettings:
        """Parse the command's comma-separated lists (``--noise ""`` or ``--prune ""`` skips that kind)."""
        return cls(
            noise=parse_levels(noise, "--noise", 0.0, None),
            prune=parse_levels(prune, "--prune", 0.0, 1.0),
            modes=parse_names(modes, "--modes", MODES),
            anchors=parse_names(anchors, "--anchors", ANCHORS),
            losses=parse_names(
                losses, "--losses", CURVE_LOSSES, " (the no-recovery control is always included, as 'none')"
            ),
            **values,
        )

    def validate(self, block_size: int) -> None:
        checks = [
            (bool(self.noise or self.prune), "nothing to sweep: --noise and --prune are both empty"),
            (self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}"),
            (
                2 <= self.seq_len <= block_size,
                f"--seq-len must be in 2..{block_size} (model.block_size), got {self.seq_len}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ApoptosisError(message)
        RecoverySettings(self.steps, lr=self.lr, batch_size=self.batch_size, seq_len=self.seq_len).validate()

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def recovery(self, cell: Cell) -> RecoverySettings:
        mode = "frozen" if cell.mode == NOT_APPLICABLE else cell.mode  # no mask after noise: modes are the same
        anchor = "original" if cell.anchor == NOT_APPLICABLE else cell.anchor  # no consistency term: never read
        return RecoverySettings(
            self.steps,
            mode,
            cell.loss,
            anchor,
            self.lr,
            self.batch_size,
            self.seq_len,
            self.sampled_fraction,
            seed=cell.seed,
        )


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One row of the CSV: a damage, a seed, and a recovery (or the no-recovery control)."""

    kind: str
    amount: float
    structured: bool
    seed: int
    mode: str
    anchor: str
    loss: str

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.kind, float(self.amount), bool(self.structured), int(self.seed), self.mode, self.anchor, self.loss)

    @property
    def label(self) -> str:
        damage = f"{self.kind} {self.amount:g}" + (" structured" if self.structured else "")
        if self.loss == NO_RECOVERY:
            return f"{damage} s{self.seed} no recovery"
        anchor = "" if self.anchor == NOT_APPLICABLE else f" <- {self.anchor}"
        mode = "" if self.mode == NOT_APPLICABLE else f" {self.mode}"
        return f"{damage} s{self.seed} {self.loss}{anchor}{mode}"


def anchored(loss: str) -> bool:
    """Whether a loss variant reads its teacher: only the consistency term does."""
    return LossWeights().ablation(loss).consistency != 0


def plan(settings: CurveSettings) -> list[tuple[DamageSpec, list[Cell]]]:
    """Per (seed, damage): the damage (its seed drives the noise draw and every recovery's
    generator) and its rows: the no-recovery control, then anchor x mode x loss. What would give
    the same row twice runs once, labelled ``-``: noise leaves no mask, so it gets one mode, and a
    loss without the consistency term has no teacher, so it gets no anchor. Seeds outermost: a
    stopped sweep has whole curves."""
    groups = []
    for seed in range(settings.seeds):
        damages = [DamageSpec("noise", a, False, seed) for a in settings.noise]
        damages += [DamageSpec("prune", a, settings.structured, seed) for a in settings.prune]
        for spec in damages:
            modes = settings.modes if spec.kind == "prune" else (NOT_APPLICABLE,)
            base = (spec.kind, spec.amount, spec.structured, seed)
            cells = [Cell(*base, NOT_APPLICABLE, NOT_APPLICABLE, NO_RECOVERY)]
            for anchor in (*settings.anchors, NOT_APPLICABLE):
                losses = [loss for loss in settings.losses if (anchor != NOT_APPLICABLE) == anchored(loss)]
                cells += [Cell(*base, mode, anchor, loss) for mode in modes for loss in losses]
            groups.append((spec, cells))
    return groups
