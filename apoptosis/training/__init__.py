"""Training: the loop, the run folder, checkpoints and exact resume, evaluation, the event runner
and the continual phase schedule. What other packages use is importable from here."""

from apoptosis.training.loop import CHECKPOINT, Trainer, build_optimizer, load_model, lr_at, read_events, read_metrics

__all__ = ["CHECKPOINT", "Trainer", "build_optimizer", "load_model", "lr_at", "read_events", "read_metrics"]
