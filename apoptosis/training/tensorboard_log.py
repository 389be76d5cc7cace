"""TensorBoard scalars and histograms of a run (``trainer.tensorboard``, ``--tensorboard``), so
users who follow their runs in TensorBoard see these beside their others. It mirrors what the
run folder records: every metrics row, every event's probe-loss change, and at every
evaluation the neurons' ages per layer and the age diversity. Written to ``RUN/tensorboard/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apoptosis.core.errors import ApoptosisError
from apoptosis.core.lineage import Lineage

SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "tokens_per_s": "speed/tokens_per_s"}


class TensorBoardLog:
    def __init__(self, run_dir: Path, lineage: Lineage, resume_step: int | None = None) -> None:
        """``resume_step``: the checkpoint a resumed run starts from; what a killed run wrote to
        TensorBoard after it is dropped (``purge_step``), as the run folder drops its rows."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ApoptosisError(
                "--tensorboard needs the tensorboard package: pip install 'neural-apoptosis[tensorboard]' "
                "(or pip install tensorboard)"
            ) from None
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge, flush_secs=10)
        self.lineage = lineage

    def metrics(self, columns: list[str], row: list[Any]) -> None:
        values = dict(zip(columns, row, strict=True))
        step = int(values["step"])
        for column, value in values.items():
            tag = SCALARS.get(column) or (f"loss/{column}" if column.startswith("val_") else None)
            if tag and value != "":
                self.writer.add_scalar(tag, float(value), step)
        self.writer.add_scalar("neurons/count", float(values["neurons"]), step)
        if values["val_loss"] != "":  # an evaluation step: the population's ages too
            for layer in range(len(self.lineage.slots)):
                self.writer.add_histogram(f"age/layer{layer}", self.lineage.ages(step, layer), step)
            self.writer.add_scalar("neurons/age_diversity", self.lineage.age_diversity(step), step)

    def event(self, record: dict[str, Any]) -> None:
        if record.get("probe_loss_after") is not None and record.get("probe_loss_before") is not None:
            change = record["probe_loss_after"] - record["probe_loss_before"]
            self.writer.add_scalar(f"events/{record['kind']}_probe_loss_change", change, record["step"])

    def close(self) -> None:
        self.writer.close()
