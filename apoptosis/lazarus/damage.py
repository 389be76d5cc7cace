"""Damage a trained model (weight noise, magnitude pruning, neuron pruning) into a new folder.

Lazarus asks whether a model can heal without data, so the damage must be reproducible (seeded),
described exactly (``damage.json``) and never touch the run it came from: the damaged checkpoint
is a new folder that records where its original run is.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharVocab
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write, atomic_write_json, read_torch_file
from apoptosis.core.model import GPT
from apoptosis.training import load_model

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor of its shape, True = weight kept

MODEL_FILE = "model.pt"
DAMAGE_KINDS = ("noise", "prune")


@dataclass(frozen=True)
class DamageSpec:
    """What to do to the model: ``noise`` with ``amount`` = alpha, or ``prune`` with ``amount`` = fraction."""

    kind: str
    amount: float
    structured: bool = False
    seed: int = 0

    def validate(self) -> None:
        if self.kind not in DAMAGE_KINDS:
            raise ApoptosisError(f"damage kind must be one of {', '.join(DAMAGE_KINDS)}, got {self.kind!r}")
        if self.kind == "noise":
            if not (math.isfinite(self.amount) and self.amount > 0):
                raise ApoptosisError(f"--noise ALPHA must be > 0, got {self.amount}")
            if self.structured:
                raise ApoptosisError("--structured goes with --prune, not --noise")
        elif not 0 < self.amount < 1:
            raise ApoptosisError(f"--prune FRACTION must be strictly between 0 and 1, got {self.amount}")

    @property
    def label(self) -> str:
        """``noise0.2``, ``prune0.5`` or ``prune0.5-structured``: the default folder name's tail."""
        return f"{self.kind}{self.amount:g}" + ("-structured" if self.structured else "")


@dataclass
class DamageResult:
    """Masks of pruned weights (empty after noise) and the per-layer neurons that structured pruning removed."""

    spec: DamageSpec
    masks: Masks = field(default_factory=dict)
    removed_neurons: list[list[int]] = field(default_factory=list)
    tensors_changed: list[str] = field(default_factory=list)
    weights_pruned: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            **asdict(self.spec),
            "label": self.spec.label,
            "tensors_changed": self.tensors_changed,
            "weights_pruned": self.weights_pruned,
            "removed_neurons": self.removed_neurons,
        }


# --- which tensors ----------------------------------------------------------------------------


def noised_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Every floating parameter with more than one element: embeddings (the tied head with them,
    once), attention, MLP, LayerNorm gains and biases. A one-element tensor has no spread to scale by."""
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point() and p.numel() > 1]


def prunable_weights(model: GPT) -> list[tuple[str, torch.nn.Parameter]]:
    """The 2-D weight matrices of the blocks' linear layers (attention qkv and out, MLP fc and proj).
    Embeddings (the tied output head) and LayerNorm stay dense: they are small and every token uses them."""
    return [
        (n, p)
        for n, p in model.named_parameters()
        if n.startswith("blocks.")
        and p.dim() == 2
        and n.endswith(("qkv.weight", "out.weight", "fc.weight", "proj.weight"))
    ]


# --- the damage -------------------------------------------------------------------------------


@torch.no_grad()
def add_weight_noise(model: torch.nn.Module, alpha: float, generator: torch.Generator) -> list[str]:
    """``W += alpha * std(W) * N(0, 1)`` for every tensor of ``noised_parameters``, each scaled by its
    own spread so small and large tensors are hurt alike. Noise is drawn on the CPU (same on any device)."""
    names = []
    for name, p in noised_parameters(model):
        noise = torch.randn(p.shape, generator=generator).to(p)
        p.add_(alpha * p.std() * noise)
        names.append(name)
    return names


@torch.no_grad()
def magnitude_prune(model: GPT, fraction: float) -> Masks:
    """Zero exactly ``round(fraction * N)`` of the N weights of ``prunable_weights``, the smallest |w|
    over all of them together (ties broken by position), and return the masks of kept weights."""
    params = prunable_weights(model)
    flat = torch.cat([p.detach().abs().flatten().cpu() for _, p in params])
    k = round(fraction * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False
    masks: Masks = {}
    start = 0
    for name, p in params:
        masks[name] = keep[start : start + p.numel()].view(p.shape).to(p.device)
        start += p.numel()
    apply_masks(model, masks)
    return masks


def neuron_scores(model: GPT) -> list[torch.Tensor]:
    """Per layer, (width,) importance of each MLP neuron: L2 norm of its incoming weights and bias
    times L2 norm of its outgoing weights, times its gate (a masked neuron already does nothing)."""
    scores = []
    for block in model.blocks:
        mlp = block.mlp
        incoming = torch.cat([mlp.fc.weight, mlp.fc.bias[:, None]], dim=1).norm(dim=1)
        outgoing = mlp.proj.weight.norm(dim=0)
        scores.append((incoming * outgoing * mlp.gate.mask).detach().float().cpu())
    return scores


@torch.no_grad()
def structured_prune(model: GPT, fraction: float) -> tuple[Masks, list[list[int]]]:
    """Remove the ``round(fraction * neurons)`` least important MLP neurons over all layers together:
    their gate is closed (as a masked neuron of the population) and their fc row, bias and proj
    column are zeroed. Returns the weight masks and, per layer, the removed neuron slots."""
    scores = neuron_scores(model)
    flat = torch.cat(scores)
    k = round(fraction * flat.numel())
    dead = torch.zeros(flat.numel(), dtype=torch.bool)
    dead[torch.argsort(flat, stable=True)[:k]] = True
    masks: Masks = {}
    removed: list[list[int]] = []
    start = 0
    for i, block in enumerate(model.blocks):
        mlp = block.mlp
        gone = dead[start : start + mlp.width].to(mlp.fc.weight.device)
        start += mlp.width
        alive = ~gone
        masks[f"blocks.{i}.mlp.fc.weight"] = alive[:, None].expand_as(mlp.fc.weight).clone()
        masks[f"blocks.{i}.mlp.fc.bias"] = alive.clone()
        masks[f"blocks.{i}.mlp.proj.weight"] = alive[None, :].expand_as(mlp.proj.weight).clone()
        mlp.gate.mask[gone] = 0.0
        removed.append(gone.nonzero().squeeze(1).tolist())
    apply_masks(model, masks)
    return masks, removed


@torch.no_grad()
def apply_masks(model: torch.nn.Module, masks: Masks) -> None:
    """Zero every masked-off weight (used after pruning and after each frozen-mask recovery step)."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name]))


@torch.no_grad()
def reopen_neurons(model: GPT, removed_neurons: list[list[int]]) -> None:
    """Open the gates of structurally pruned neurons again, so regrowth can reach them."""
    for block, slots in zip(model.blocks, removed_neurons, strict=True):
        block.mlp.gate.mask[torch.as_tensor(slots, dtype=torch.long, device=block.mlp.gate.mask.device)] = 1.0


def damage_model(model: GPT, spec: DamageSpec) -> DamageResult:
    """Apply ``spec`` to ``model`` in place (noise seeded by ``spec.seed``)."""
    spec.validate()
    result = DamageResult(spec)
    if spec.kind == "noise":
        result.tensors_changed = add_weight_noise(model, spec.amount, torch.Generator().manual_seed(spec.seed))
    elif spec.structured:
        result.masks, result.removed_neurons = structured_prune(model, spec.amount)
    else:
        result.masks = magnitude_prune(model, spec.amount)
    if result.masks:
        result.tensors_changed = sorted(result.masks)
        result.weights_pruned = int(sum((~m).sum() for m in result.masks.values()))
    return result


# --- sizes ------------------------------------------------------------------------------------


def model_size(model: torch.nn.Module) -> dict[str, int | float]:
    """Parameters (a tied tensor once), nonzero parameters, dense bytes, and bitmap-sparse bytes:
    each tensor stored either dense or as its nonzero values plus one bit per entry, whichever is smaller."""
    params = [p.detach() for _, p in model.named_parameters()]
    total = sum(p.numel() for p in params)
    nonzero = sum(int((p != 0).sum()) for p in params)
    dense = sum(p.numel() * p.element_size() for p in params)
    sparse = sum(
        min(p.numel() * p.element_size(), int((p != 0).sum()) * p.element_size() + math.ceil(p.numel() / 8))
        for p in params
    )
    return {
        "parameters": total,
        "nonzero_parameters": nonzero,
        "dense_bytes": dense,
        "sparse_bytes": sparse,
        "compression": dense / sparse,
    }


# --- folders ----------------------------------------------------------------------------------


def refuse_existing(out: Path) -> None:
    if out.exists():
        raise ApoptosisError(f"{out} already exists: remove it or choose another folder with --out")


def write_folder(out: Path, run_dir: Path, checkpoint: dict[str, Any], json_name: str, summary: dict[str, Any]) -> None:
    """Write ``model.pt`` and ``json_name`` into a hidden folder beside ``out``, then rename it to
    ``out``: a reader sees both files or no folder. Both record ``run_dir`` relative to ``out``, so
    a runs folder can move as a whole."""
    refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = os.path.relpath(Path(run_dir).resolve(), out.resolve())
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        atomic_write(tmp / MODEL_FILE, lambda f: torch.save({**checkpoint, "source_run": source}, f))
        atomic_write_json(tmp / json_name, {**summary, "source_run": source})
        os.chmod(tmp, 0o777 & ~_umask())
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class DamagedCheckpoint:
    """A damaged (or recovered, or compressed) model with what it needs to be recovered and measured."""

    model: GPT
    vocab: CharVocab
    config: RunConfig
    masks: Masks
    damage: dict[str, Any]
    run_dir: Path
    state: dict[str, Any]


def checkpoint_dict(model: GPT, vocab: CharVocab, config: dict[str, Any], masks: Masks, **extra: Any) -> dict[str, Any]:
    """The ``model.pt`` of a damaged, recovered or compressed folder (``write_folder`` adds ``source_run``)."""
    return {
        "config": config,
        "vocab": vocab.chars,
        "model": model.state_dict(),
        "masks": {name: m.cpu() for name, m in masks.items()},
        **extra,
    }


def find_damaged(folder: str | Path) -> Path:
    """``folder`` itself when it holds a damaged model; for a run folder with exactly one
    ``damaged-*`` folder, that one (so ``apoptosis recover RUN_DIR`` works after one damage)."""
    folder = Path(folder)
    if (folder / MODEL_FILE).is_file() or not (folder / "checkpoints" / "last.pt").is_file():
        return folder
    damaged = sorted(p for p in folder.glob("damaged-*") if (p / MODEL_FILE).is_file())
    if len(damaged) == 1:
        return damaged[0]
    if not damaged:
        raise ApoptosisError(f"{folder} is a run with no damaged model yet: run `apoptosis damage {folder}` first")
    raise ApoptosisError(f"{folder} has several damaged models; pass one of: {', '.join(str(p) for p in damaged)}")


def load_damaged(folder: str | Path, device: str = "cpu") -> DamagedCheckpoint:
    """Read ``folder/model.pt`` and find its original run (stored relative to the folder)."""
    folder = Path(folder)
    path = folder / MODEL_FILE
    if not path.is_file():
        raise ApoptosisError(f"no {MODEL_FILE} in {folder}: pass a folder written by `apoptosis damage`")
    state = read_torch_file(path, device, keys=("config", "model", "masks"))
    if "damage" not in state or "source_run" not in state:
        raise ApoptosisError(f"{path} is not a damaged checkpoint (no damage description or source run)")
    config = RunConfig.from_dict(state["config"], source=str(path))
    model = GPT(config.model).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    masks = {name: m.to(device) for name, m in state["masks"].items()}
    run_dir = folder / state["source_run"]
    return DamagedCheckpoint(model, CharVocab(state["vocab"]), config, masks, state["damage"], run_dir, state)


def default_damaged_dir(run_dir: Path, spec: DamageSpec) -> Path:
    return Path(run_dir) / f"damaged-{spec.label}"


def damage_run(
    run_dir: str | Path, spec: DamageSpec, out: Path | None = None, device: str = "cpu"
) -> tuple[Path, DamageResult]:
    """Load a run's last checkpoint, damage a copy in memory and write it to ``out`` (default
    ``RUN_DIR/damaged-<label>``). The run folder itself is only read."""
    spec.validate()
    run_dir = Path(run_dir)
    out = out or default_damaged_dir(run_dir, spec)
    refuse_existing(out)
    model, vocab, ckpt = load_model(run_dir, device)
    result = damage_model(model, spec)
    described = result.describe()
    state = checkpoint_dict(model, vocab, ckpt["config"], result.masks, damage=described, step=ckpt["step"])
    write_folder(out, run_dir, state, "damage.json", {"damage": described, "step": ckpt["step"]})
    return out, result
