"""``lazarus``: a follower (``--then lazarus``) that, after each event of the main strategy, runs a
few steps of data-free Lazarus recovery: the v3 loss on sequences the model samples itself and
on random sequences, never on training text. The teacher is the model as it was just before the
event (``anchor = "before"``: the surgery is distilled back towards the function it disturbed),
or a frozen copy of the model just after it (``"after"``: the write-up's self-anchoring).

The self-generated sequences come from a pool sampled once per event (``pool_size`` sequences;
``pool_refresh`` K samples a new pool every K steps): sampling costs a forward pass per token,
so sampling anew at every step made the follower cost several times the training it follows.
``pool_size=0, pool_refresh=1`` samples every step, as before 2026-12-02."""

from __future__ import annotations

from dataclasses import dataclass

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.model import frozen_copy
from apoptosis.core.params import StrategyParams, param
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Event, Strategy, TrainingContext
from apoptosis.lazarus.inputs import InputPool, sequence_length
from apoptosis.lazarus.recovery import LossWeights, recover


@dataclass
class LazarusParams(StrategyParams):
    steps: int = param(20, low=1, high=100_000, search=(5, 100), log=True, help="recovery steps after each event")
    lr: float = param(1e-4, low=1e-7, high=1.0, search=(1e-5, 1e-3), log=True, help="Adam learning rate")
    anchor: str = param("before", choices=("before", "after"), help="teacher: the model before or after the event")
    consistency: float = param(1.0, low=0.0, high=100.0, search=(0.0, 2.0), help="weight of KL(teacher || model)")
    stability: float = param(0.5, low=0.0, high=100.0, search=(0.0, 2.0), help="weight of the weight-noise KL")
    entropy: float = param(0.05, low=0.0, high=100.0, search=(0.0, 0.2), help="weight of the entropy floor")
    h0: float = param(1.5, low=0.0, high=100.0, search=(0.5, 3.0), help="entropy floor (nats)")
    epsilon: float = param(0.05, low=0.0, high=10.0, search=(0.01, 0.2), help="weight noise, in units of std(W)")
    batch_size: int = param(8, low=1, high=4096, search=(4, 32), log=True, help="recovery sequences per step")
    seq_len: int = param(
        0, low=0, high=1_000_000, searched=False, help="recovery sequence length (0: model.block_size)"
    )
    sampled_fraction: float = param(
        0.5, low=0.0, high=1.0, search=(0.0, 1.0), help="share of sequences sampled from the model (rest random)"
    )
    pool_size: int = param(
        32, low=0, high=100_000, searched=False, help="self-generated sequences sampled per refresh (0: one batch's)"
    )
    pool_refresh: int = param(
        0, low=0, high=100_000, searched=False, help="steps between refreshes of the pool (0: once per event)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.consistency == 0 and self.stability == 0 and self.entropy == 0:
            raise ApoptosisError("lazarus: at least one of consistency, stability and entropy must be > 0")

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.consistency, self.stability, self.entropy, self.h0, self.epsilon)


@register_strategy
class Lazarus(Strategy):
    name = "lazarus"
    description = "follower: data-free Lazarus recovery steps after each event, anchored on the model before it"
    Params = LazarusParams
    uses_fitness = False
    follows_events = True

    def on_train_begin(self, ctx: TrainingContext) -> None:
        sequence_length(self.params.seq_len, ctx.model, self.name)  # fail at the start, not at the first event

    def on_event_end(self, ctx: TrainingContext, event: Event) -> None:
        p = self.params
        teacher = event.model_before if p.anchor == "before" else frozen_copy(ctx.model)
        seq_len = sequence_length(p.seq_len, ctx.model, self.name)
        history = recover(
            ctx.model,
            teacher,
            p.steps,
            generator=ctx.generator,
            weights=p.weights,
            mode="regrow",  # masked neurons stay masked by their gates; every weight may move
            lr=p.lr,
            batch_size=p.batch_size,
            seq_len=seq_len,
            sampled_fraction=p.sampled_fraction,
            pool=InputPool(p.batch_size, seq_len, p.sampled_fraction, p.pool_refresh, p.pool_size),
        )
        ctx.log(f"lazarus: {p.steps} steps, loss {history[0]['total']:.4f} -> {history[-1]['total']:.4f}")
