"""Every setting of a run, as dataclasses that round-trip through TOML and ``--set key=value``.

The same ``RunConfig`` is saved as ``config.toml`` in the run folder and inside every checkpoint,
so a run can always be rebuilt (model widths included) from what it wrote.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.params import type_word

ACTIVATIONS = ("gelu", "relu")
AUTOCASTS = ("none", "bf16")
EVENT_PROBES = ("layers", "event", "off")


@dataclass
class ModelConfig:
    vocab_size: int = 0  # set from the corpus when the run starts
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 512
    block_size: int = 64
    dropout: float = 0.0
    mlp_widths: list[int] = field(default_factory=list)  # per block; empty means d_ff everywhere
    activation: str = "gelu"  # the MLP's nonlinearity: gelu or relu (configs without it are gelu)

    def widths(self) -> list[int]:
        return list(self.mlp_widths) if self.mlp_widths else [self.d_ff] * self.n_layer

    def validate(self) -> None:
        _check(self.n_layer >= 1, "model.n_layer must be >= 1")
        _check(self.n_head >= 1, "model.n_head must be >= 1")
        _check(self.d_model % self.n_head == 0, "model.d_model must be divisible by model.n_head")
        _check(self.d_ff >= 1, "model.d_ff must be >= 1")
        _check(self.block_size >= 1, "model.block_size must be >= 1")
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        _check(
            not self.mlp_widths or (len(self.mlp_widths) == self.n_layer and min(self.mlp_widths) >= 1),
            "model.mlp_widths must be empty or list one width >= 1 per layer",
        )
        _check(
            self.activation in ACTIVATIONS,
            f"model.activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}",
        )


@dataclass
class DataConfig:
    path: str = "shakespeare"  # "shakespeare" (the default corpus) or a UTF-8 text file
    val_fraction: float = 0.1
    keep_line_endings: bool = False  # False: CRLF and CR become "\n" (a BOM is always dropped)

    def validate(self) -> None:
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction must be in (0, 1)")


@dataclass
class TrainerConfig:
    steps: int = 2000
    batch_size: int = 12
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    eval_interval: int = 250
    eval_batches: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 250
    seed: int = 1337
    device: str = "cpu"
    tensorboard: bool = False  # also write TensorBoard scalars and age histograms to RUN/tensorboard/
    compile: bool = False  # torch.compile the training forward and backward (recompiled after a change of shape)
    fused_adamw: bool = True  # AdamW's fused kernel (CPU and CUDA): one kernel for every parameter's update
    tf32: bool = False  # CUDA only: TensorFloat-32 matmuls and convolutions
    autocast: str = "none"  # "bf16": the training forward in bfloat16 autocast (weights and optimizer stay float32)
    event_probes: str = "layers"  # probe loss around every layer of an event, the whole "event", or "off"
    plots: bool = True  # loss.png, ages.png, lineage.png at the end (matplotlib + seaborn: ~100 MB more memory)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_interval", "eval_batches", "log_interval", "checkpoint_interval"):
            _check(getattr(self, name) >= 1, f"trainer.{name} must be >= 1")
        _check(self.lr > 0 and self.min_lr >= 0, "trainer.lr must be > 0 and trainer.min_lr >= 0")
        _check(self.warmup_steps >= 0, "trainer.warmup_steps must be >= 0")
        _check(self.weight_decay >= 0, "trainer.weight_decay must be >= 0")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "trainer.beta1 and trainer.beta2 must be in [0, 1)")
        _check(self.grad_clip >= 0, "trainer.grad_clip must be >= 0")
        _check(
            re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
            f"trainer.device must be cpu, cuda or cuda:N, got {self.device!r}",
        )
        _check(
            self.autocast in AUTOCASTS, f"trainer.autocast must be one of {', '.join(AUTOCASTS)}, got {self.autocast!r}"
        )
        _check(
            self.event_probes in EVENT_PROBES,
            f"trainer.event_probes must be one of {', '.join(EVENT_PROBES)}, got {self.event_probes!r}",
        )
        _check(
            not self.tf32 or self.device.startswith("cuda"),
            "trainer.tf32 needs trainer.device cuda (TF32 is a GPU format)",
        )


@dataclass
class FitnessConfig:
    metric: str = "taylor_signed"  # the best predictor of a removal's cost: EXPERIMENT_LOG 2026-12-02
    ema_decay: float = 0.99

    def validate(self) -> None:
        _check(0.0 <= self.ema_decay < 1.0, "fitness.ema_decay must be in [0, 1)")


@dataclass
class ContinualConfig:
    """Phases of training on different corpora, in order (empty: one corpus, ``data.path``)."""

    phases: list[str] = field(default_factory=list)  # each shakespeare, python or name=FILE; names may repeat
    steps_per_phase: int = 1000
    plasticity_steps: int = 100  # every corpus is evaluated this many steps into each phase
    evaluate_all: bool = True  # False: evaluations read the current phase's corpus only (runs of many phases)

    def validate(self, total_steps: int) -> None:
        if not self.phases:
            return
        _check(self.steps_per_phase >= 1, "continual.steps_per_phase must be >= 1")
        _check(
            1 <= self.plasticity_steps <= self.steps_per_phase,
            "continual.plasticity_steps must be in 1..continual.steps_per_phase",
        )
        _check(
            total_steps <= len(self.phases) * self.steps_per_phase,
            f"trainer.steps ({total_steps}) is longer than the phases ({len(self.phases)} x {self.steps_per_phase})",
        )


@dataclass
class StrategyConfig:
    name: str = "standard"
    params: dict[str, Any] = field(default_factory=dict)  # validated by the strategy's Params class


def no_follower() -> StrategyConfig:
    return StrategyConfig(name="")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    fitness: FitnessConfig = field(default_factory=FitnessConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    then: StrategyConfig = field(default_factory=no_follower)  # a follower of the strategy's events ("" = none)
    continual: ContinualConfig = field(default_factory=ContinualConfig)

    def validate(self) -> None:
        for section in (self.model, self.data, self.trainer, self.fitness):
            section.validate()
        self.continual.validate(self.trainer.steps)

    @property
    def strategy_label(self) -> str:
        """``standard``; ``standard+lazarus`` with a follower; ``replay`` for a follower of ``none``."""
        if not self.then.name:
            return self.strategy.name
        return self.then.name if self.strategy.name == "none" else f"{self.strategy.name}+{self.then.name}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for section in STRATEGY_SECTIONS:
            chosen = d.pop(section)
            if chosen["name"] or chosen["params"]:  # no [then] table without a follower
                d[section] = {"name": chosen["name"], **chosen["params"]}
        if not self.continual.phases:  # no [continual] table for a run on one corpus
            del d["continual"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        config = cls()
        for section, values in d.items():
            if not isinstance(values, dict):
                raise ApoptosisError(f"{source}: [{section}] must be a table")
            for key, value in values.items():
                config.set(f"{section}.{key}", value, source=source)
        return config

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ApoptosisError(f"config file not found: {path}")
        try:
            d = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ApoptosisError(f"config file {path} is not valid TOML: {e}") from None
        return cls.from_dict(d, source=str(path))

    def set(self, dotted_key: str, value: Any, source: str = "--set") -> None:
        """Set ``section.key`` to ``value``, checking that the key exists and the type fits.

        ``strategy.*`` and ``then.*`` keys other than ``name`` are kept as given; the strategy's
        parameter class checks them when the strategy is built.
        """
        section_name, _, key = dotted_key.partition(".")
        sections = {f.name for f in dataclasses.fields(self)}
        if section_name not in sections or not key:
            raise ApoptosisError(
                f"{source}: unknown key {dotted_key!r}: keys look like section.key with section one of "
                f"{', '.join(sorted(sections))}"
            )
        if section_name in STRATEGY_SECTIONS:
            chosen = getattr(self, section_name)
            if key == "name":
                chosen.name = _coerce(str, value, dotted_key, source)
            else:
                chosen.params[key] = value
            return
        section = getattr(self, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        if key not in fields:
            raise ApoptosisError(
                f"{source}: unknown key {dotted_key!r}: {section_name} has {', '.join(sorted(fields))}"
            )
        hint = typing.get_type_hints(type(section))[key]
        setattr(section, key, _coerce(hint, value, dotted_key, source))


STRATEGY_SECTIONS = ("strategy", "then")


def split_composition(label: str) -> tuple[str, str]:
    """``"standard+lazarus"`` -> ("standard", "lazarus"); ``"standard"`` -> ("standard", "")."""
    name, _, follower = label.partition("+")
    if not name or "+" in follower or label.endswith("+"):
        raise ApoptosisError(f"{label!r}: expected STRATEGY or STRATEGY+FOLLOWER, e.g. standard+lazarus")
    return name, follower


def split_variant(label: str) -> tuple[str, dict[str, Any]]:
    """``standard@prune_rate=0.05`` -> ("standard", {"prune_rate": 0.05}): a compared strategy (or
    ``A+B``) with settings of its own, so one comparison can hold a sweep; ``@a=1@b=2`` for more."""
    base, *assignments = label.split("@")
    own: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ApoptosisError(f"{label!r}: expected STRATEGY@PARAM=VALUE, e.g. standard@prune_rate=0.05")
        if "+" in text and not _is_number(text):
            raise ApoptosisError(f"{label!r}: a follower comes before the settings, e.g. standard+lazarus@steps=50")
        if key.strip() in own:
            raise ApoptosisError(f"{label!r}: {key.strip()} is set twice")
        own.update([parse_set_option(assignment)])
    return base, own


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_set_option(assignment: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value), the value read as a TOML literal (a bare word is a string)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ApoptosisError(f"--set {assignment!r}: expected key=value, e.g. model.n_layer=2")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.strip(), value


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    """Check ``value`` against a simple type hint (int, float, bool, str, list[int])."""
    origin = typing.get_origin(hint)
    if origin in (list,):
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ApoptosisError(f"{source}: {key} must be a list of {item.__name__}, got {value!r}")
        return [_coerce(item, v, key, source) for v in value]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type {hint}")
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ApoptosisError(f"{source}: {key} must be {type_word(hint)}, got {value!r}")
    return value


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ApoptosisError(message)
