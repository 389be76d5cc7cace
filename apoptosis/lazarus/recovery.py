"""Data-free recovery of a damaged model (Lazarus v3) and the measurements that judge it.

Recovery sees no corpus text: its inputs are sequences the model samples itself and uniformly
random token sequences, built from the model, the vocabulary size and a generator alone. The
corpus is read only to measure clean, damaged, temperature-scaled and recovered models on the
same fixed validation batches, because a gain that temperature scaling alone would give is
calibration, not recovery.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharVocab
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.model import GPT, frozen_copy
from apoptosis.lazarus.calibration import run_dataset
from apoptosis.lazarus.damage import Masks, apply_masks, noised_parameters, reopen_neurons
from apoptosis.lazarus.inputs import InputPool

LOSS_KINDS = ("full", "consistency", "stability", "entropy", "noise")
MODES = ("frozen", "regrow")
ANCHORS = ("original", "damaged")
RECOVERY_TOLERANCE = 1e-3  # |damaged - clean| below this (nats or accuracy) leaves recovery undefined

Batches = list[tuple[torch.Tensor, torch.Tensor]]
Progress = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class LossWeights:
    """``consistency * KL(teacher || student) + stability * KL(student || student with weight noise)
    + entropy * mean(relu(h0 - H(student)))``; defaults are the Lazarus write-up's v3 values."""

    consistency: float = 1.0
    stability: float = 0.5
    entropy: float = 0.05
    h0: float = 1.5
    epsilon: float = 0.05

    def ablation(self, kind: str) -> LossWeights:
        """The weights of one loss variant: ``full``, one term alone, or ``noise`` (the write-up's
        "noise only" control: no term, so no step at all and the damaged model is measured as is)."""
        if kind not in LOSS_KINDS:
            raise ApoptosisError(f"loss must be one of {', '.join(LOSS_KINDS)}, got {kind!r}")
        keep = {"full": ("consistency", "stability", "entropy"), "noise": ()}.get(kind, (kind,))
        return replace(
            self, **{t: getattr(self, t) if t in keep else 0.0 for t in ("consistency", "stability", "entropy")}
        )

    @property
    def inactive(self) -> bool:
        return self.consistency == 0 and self.stability == 0 and self.entropy == 0


# --- the loss ---------------------------------------------------------------------------------


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(p || q), both given as log-probabilities (..., vocab)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1).mean()


def lazarus_loss(
    student: GPT,
    teacher: GPT,
    x: torch.Tensor,
    weights: LossWeights,
    generator: torch.Generator,
    masks: Masks | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted loss on inputs ``x`` and its terms (unweighted) for logging.

    Stability compares the student with itself under ``epsilon * std(W) * N(0, 1)`` weight noise
    (the tensors of ``noised_parameters``; with ``masks`` the noise keeps pruned weights at zero).
    Gradients flow through both the clean and the perturbed branch, as in the write-up's code.
    """
    log_s = F.log_softmax(student(x)[0], dim=-1)
    total = log_s.new_zeros(())
    parts: dict[str, float] = {}
    if weights.consistency:
        with torch.no_grad():
            log_t = F.log_softmax(teacher(x)[0], dim=-1)
        term = _kl(log_t, log_s)
        total = total + weights.consistency * term
        parts["consistency"] = term.item()
    if weights.stability:
        perturbed = {}
        for name, p in noised_parameters(student):
            noise = torch.randn(p.shape, generator=generator).to(p)
            if masks is not None and name in masks:
                noise = noise * masks[name]
            perturbed[name] = p + weights.epsilon * p.detach().std() * noise
        log_n = F.log_softmax(functional_call(student, perturbed, (x,))[0], dim=-1)
        term = _kl(log_s, log_n)
        total = total + weights.stability * term
        parts["stability"] = term.item()
    if weights.entropy:
        entropy = -(log_s.exp() * log_s).sum(-1)
        term = F.relu(weights.h0 - entropy).mean()
        total = total + weights.entropy * term
        parts["entropy_floor"] = term.item()
    parts["total"] = total.item()
    return total, parts


# --- the recovery loop ------------------------------------------------------------------------


def recover(
    student: GPT,
    teacher: GPT,
    steps: int,
    *,
    generator: torch.Generator,
    weights: LossWeights | None = None,
    mode: str = "frozen",
    masks: Masks | None = None,
    lr: float = 1e-4,
    batch_size: int = 12,
    seq_len: int | None = None,
    sampled_fraction: float = 0.5,
    progress: Progress | None = None,
    pool: InputPool | None = None,
) -> list[dict[str, float]]:
    """Adam on ``student`` for ``steps`` steps of the Lazarus loss against the frozen ``teacher``;
    returns each step's loss terms. No training data is read. Inputs come from ``pool`` (default:
    sampled afresh every step).

    ``frozen`` keeps the weights masked off in ``masks`` at exactly zero (gradients masked, masks
    re-applied after every step); ``regrow`` lets every weight move. Works on a live model: the
    student's train/eval mode is restored and its gradients are left at None; the teacher is only
    read. ``progress(step, terms)`` is called after every step. With inactive weights (the
    ``noise`` control) nothing happens.
    """
    weights = weights or LossWeights()
    if mode not in MODES:
        raise ApoptosisError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    seq_len = seq_len or student.config.block_size
    if not 2 <= seq_len <= student.config.block_size:
        raise ApoptosisError(f"seq_len must be in 2..{student.config.block_size} (model.block_size), got {seq_len}")
    if weights.inactive or steps < 1:
        return []
    frozen = masks if mode == "frozen" and masks else None
    was_training = student.training
    student.eval()  # no dropout: every random draw comes from ``generator``
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    params = dict(student.named_parameters())
    if frozen:
        apply_masks(student, frozen)
    pool = pool or InputPool(batch_size, seq_len, sampled_fraction)
    history = []
    try:
        for step in range(1, steps + 1):
            x = pool.inputs(student, step, generator)
            loss, parts = lazarus_loss(student, teacher, x, weights, generator, frozen)
            if not math.isfinite(parts["total"]):
                raise ApoptosisError(f"the recovery loss became {parts['total']} at step {step}: lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if frozen:
                for name, mask in frozen.items():
                    if params[name].grad is not None:
                        params[name].grad.mul_(mask)
            optimizer.step()
            if frozen:
                apply_masks(student, frozen)
            history.append(parts)
            if progress is not None:
                progress(step, parts)
    finally:
        optimizer.zero_grad(set_to_none=True)
        student.train(was_training)
    return history


@dataclass(frozen=True)
class RecoverySettings:
    """Everything that decides a recovery, saved with its result."""

    steps: int = 200
    mode: str = "frozen"
    loss: str = "full"
    anchor: str = "original"
    lr: float = 1e-4
    batch_size: int = 12
    seq_len: int | None = None
    sampled_fraction: float = 0.5
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}"),
            (self.loss in LOSS_KINDS, f"--loss must be one of {', '.join(LOSS_KINDS)}, got {self.loss!r}"),
            (self.anchor in ANCHORS, f"--anchor must be one of {', '.join(ANCHORS)}, got {self.anchor!r}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (0 <= self.sampled_fraction <= 1, f"sampled_fraction must be in [0, 1], got {self.sampled_fraction}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ApoptosisError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def recover_copy(
    original: GPT,
    damaged: GPT,
    settings: RecoverySettings,
    masks: Masks | None = None,
    removed_neurons: list[list[int]] | None = None,
    progress: Progress | None = None,
) -> tuple[GPT, list[dict[str, float]]]:
    """Recover a copy of ``damaged``, anchored on ``original`` (data-free distillation) or on a
    frozen copy of ``damaged`` itself (the write-up's prose). In ``regrow`` mode structurally pruned
    neurons get their gates back, so regrowth can reach them."""
    settings.validate()
    student = copy.deepcopy(damaged)
    teacher = original if settings.anchor == "original" else frozen_copy(damaged)
    if settings.mode == "regrow" and removed_neurons:
        reopen_neurons(student, removed_neurons)
    history = recover(
        student,
        teacher,
        settings.steps,
        generator=torch.Generator().manual_seed(settings.seed),
        weights=settings.weights.ablation(settings.loss),
        mode=settings.mode,
        masks=masks,
        lr=settings.lr,
        batch_size=settings.batch_size,
        seq_len=settings.seq_len,
        sampled_fraction=settings.sampled_fraction,
        progress=progress,
    )
    return student, history


# --- measuring --------------------------------------------------------------------------------


def evaluation_batches(config: RunConfig, vocab: CharVocab, device: str = "cpu") -> tuple[Batches, Batches]:
    """Fixed validation batches: (report, calibration), ``trainer.eval_batches`` of
    ``trainer.batch_size`` windows each, drawn with two different seeds from the run's seed."""
    data = run_dataset(config, vocab)
    t = config.trainer
    report = torch.Generator().manual_seed(t.seed + 100)
    calibration = torch.Generator().manual_seed(t.seed + 101)
    return (
        [data.batch("val", t.batch_size, report, device) for _ in range(t.eval_batches)],
        [data.batch("val", t.batch_size, calibration, device) for _ in range(t.eval_batches)],
    )


@torch.no_grad()
def logits_on(model: GPT, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, vocab) float logits and (positions,) targets on the CPU, every batch in order."""
    was_training = model.training
    model.eval()
    logits = [model(x)[0].flatten(0, 1).float().cpu() for x, _ in batches]
    model.train(was_training)
    return torch.cat(logits), torch.cat([y.flatten().cpu() for _, y in batches])


def quality(
    logits: torch.Tensor, targets: torch.Tensor, clean_top1: torch.Tensor, temperature: float = 1.0
) -> dict[str, float]:
    """Loss (nats/char) at ``temperature``, next-char accuracy, and top-1 agreement with the clean model."""
    top1 = logits.argmax(-1)
    return {
        "loss": F.cross_entropy(logits / temperature, targets).item(),
        "accuracy": (top1 == targets).float().mean().item(),
        "agreement": (top1 == clean_top1).float().mean().item(),
    }


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The single softmax temperature in [0.05, 20] with the lowest cross-entropy on these logits
    (bounded search on log T); T = 1 when nothing beats it."""
    from scipy.optimize import minimize_scalar  # scipy is heavy; the training path never needs it

    def loss(log_t: float) -> float:
        return F.cross_entropy(logits / math.exp(log_t), targets).item()

    best = minimize_scalar(loss, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return math.exp(best.x) if best.fun < loss(0.0) else 1.0


def recovery_fraction(clean: float, damaged: float, recovered: float, tol: float = RECOVERY_TOLERANCE) -> float:
    """``(damaged - recovered) / (damaged - clean)``: 1 = all of the damage undone, 0 = none, < 0 =
    worse. The same formula serves loss and accuracy (both signs flip together). NaN when the
    damage is below ``tol``: there is nothing to recover and the ratio would be noise."""
    if abs(damaged - clean) < tol:
        return math.nan
    return (damaged - recovered) / (damaged - clean) + 0.0  # + 0.0: no -0.0 in reports


def compare_models(clean: GPT, damaged: GPT, recovered: GPT, report: Batches, calibration: Batches) -> dict[str, Any]:
    """Loss, accuracy and agreement of clean, damaged, temperature-scaled damaged and recovered
    models on ``report``; the temperature is fitted on ``calibration``. Recovery fractions of the
    recovered model, and of the temperature-scaled one for the loss (T changes no top-1 choice)."""
    clean_logits, targets = logits_on(clean, report)
    clean_top1 = clean_logits.argmax(-1)
    temperature = fit_temperature(*logits_on(damaged, calibration))
    damaged_logits = logits_on(damaged, report)[0]
    models = {
        "clean": quality(clean_logits, targets, clean_top1),
        "damaged": quality(damaged_logits, targets, clean_top1),
        "temperature_scaled": {
            **quality(damaged_logits, targets, clean_top1, temperature),
            "temperature": temperature,
        },
        "recovered": quality(logits_on(recovered, report)[0], targets, clean_top1),
    }
    c, d = models["clean"], models["damaged"]
    recovery = {f"recovered_{m}": recovery_fraction(c[m], d[m], models["recovered"][m]) for m in c}
    recovery["temperature_scaled_loss"] = recovery_fraction(c["loss"], d["loss"], models["temperature_scaled"]["loss"])
    return {"models": models, "recovery": recovery, "positions": int(targets.numel())}
