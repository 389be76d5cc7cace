"""``replay``: self-generated replay for continual training (``--then replay``, or alone as
``replay``). When a phase ends, a frozen snapshot of the model is kept and ``buffer`` sequences
are sampled from it; through every later step, ``weight`` x KL(snapshot || model) on a few of
those sequences is added to the training loss (the Lazarus consistency term, anchored on the
snapshot). No text of an earlier corpus is stored: only what the model itself generates. Each
phase end replaces the snapshot, which already carries what the replay kept of earlier phases."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from apoptosis.core.config import ModelConfig
from apoptosis.core.model import GPT, frozen_copy
from apoptosis.core.params import StrategyParams, param
from apoptosis.core.registry import register_strategy
from apoptosis.core.strategy import Phase, Strategy, TrainingContext
from apoptosis.lazarus.inputs import recovery_inputs, sequence_length


@dataclass
class ReplayParams(StrategyParams):
    weight: float = param(1.0, low=0.0, high=100.0, search=(0.1, 3.0), log=True, help="weight of the replay term")
    buffer: int = param(256, low=1, high=1_000_000, search=(64, 1024), log=True, help="sequences sampled per phase end")
    batch_size: int = param(8, low=1, high=4096, search=(4, 32), log=True, help="replayed sequences per step")
    seq_len: int = param(
        0, low=0, high=1_000_000, searched=False, help="replayed sequence length (0: model.block_size)"
    )


@register_strategy
class Replay(Strategy):
    name = "replay"
    description = "follower: after each phase, a consistency term on sequences the old model generates itself"
    Params = ReplayParams
    uses_fitness = False
    follows_events = True

    def __init__(self, params: StrategyParams | None = None) -> None:
        super().__init__(params)
        self.snapshot: GPT | None = None
        self.sequences: torch.Tensor | None = None  # (buffer, seq_len) token ids sampled from the snapshot

    def on_train_begin(self, ctx: TrainingContext) -> None:
        sequence_length(self.params.seq_len, ctx.model, self.name)  # fail at the start, not at the first event

    def on_phase_end(self, ctx: TrainingContext, phase: Phase) -> None:
        p = self.params
        self.snapshot = frozen_copy(ctx.model)
        seq_len = sequence_length(p.seq_len, ctx.model, self.name)
        vocab = ctx.model.config.vocab_size
        self.sequences = recovery_inputs(self.snapshot, vocab, p.buffer, seq_len, ctx.generator, sampled_fraction=1.0)
        ctx.log(f"replay: {p.buffer} sequences sampled from the model at the end of {phase.corpus}")

    def extra_loss(self, ctx: TrainingContext) -> torch.Tensor | None:
        if self.snapshot is None or self.sequences is None:
            return None
        device = next(ctx.model.parameters()).device
        if self.sequences.device != device:  # restored from a checkpoint on the CPU
            self.snapshot, self.sequences = self.snapshot.to(device), self.sequences.to(device)
        rows = torch.randint(len(self.sequences), (self.params.batch_size,), generator=ctx.generator)
        x = self.sequences[rows.to(device)]
        with torch.no_grad():
            log_teacher = F.log_softmax(self.snapshot(x)[0], dim=-1)
        log_model = F.log_softmax(ctx.model(x)[0], dim=-1)
        kl = F.kl_div(log_model, log_teacher, reduction="none", log_target=True).sum(-1).mean()  # KL(teacher||model)
        return self.params.weight * kl

    def state_dict(self) -> dict[str, Any]:
        if self.snapshot is None:
            return {}
        return {
            "model_config": dataclasses.asdict(self.snapshot.current_config()),
            "snapshot": self.snapshot.state_dict(),
            "sequences": self.sequences,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        snapshot = GPT(ModelConfig(**state["model_config"]))
        snapshot.load_state_dict(state["snapshot"])
        self.snapshot = frozen_copy(snapshot)
        self.sequences = state["sequences"]
