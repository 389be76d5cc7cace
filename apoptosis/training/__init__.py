"""Training: the loop, the run folder, checkpoints and exact resume, evaluation, the event runner
and the continual phase schedule. What other packages use is importable from here."""

from apoptosis.training.loop import Trainer
from apoptosis.training.run_folder import CHECKPOINT, load_model, read_events, read_metrics
from apoptosis.training.schedule import build_optimizer, lr_at

__all__ = ["CHECKPOINT", "Trainer", "build_optimizer", "load_model", "lr_at", "read_events", "read_metrics"]
