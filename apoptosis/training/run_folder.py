"""A run's folder (``runs/<name>/``, see runs/README.md): its files, appended line by line while
training, cut back to the checkpoint's step on resume, and read back by everything else."""

from __future__ import annotations

import fcntl
import json
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharVocab
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write_json, atomic_write_text, read_torch_file
from apoptosis.core.model import GPT

METRIC_COLUMNS = ["step", "train_loss", "val_loss", "lr", "tokens_per_s", "neurons", "events"]
CHECKPOINT = Path("checkpoints") / "last.pt"


class RunMirror(Protocol):
    """Something that records a run's metrics rows and events elsewhere as they are written."""

    def metrics(self, columns: list[str], row: list[Any]) -> None: ...
    def event(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = None
        self.metric_columns: list[str] = []
        self.mirror: RunMirror | None = None  # e.g. TensorBoard: sees every row and event written

    def claim(self) -> None:
        """Hold an exclusive lock on the folder for the run's life (released by ``release`` or when
        the process ends), so two runs started with the same name never write into one folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a")  # noqa: SIM115 (held open for the run's life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ApoptosisError(
                f"folder {self.path} is in use by another process (a run or comparison with this name is "
                "going): wait for it to end, or choose another --name"
            ) from None
        self._lock = handle

    def release(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None

    def clear(self) -> None:
        """Remove everything but the lock: for a run that stopped before its first checkpoint."""
        for child in self.path.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def holds_run(self) -> bool:
        return (self.path / "config.toml").exists()

    def start(self, config: RunConfig, vocab: CharVocab, metric_columns: list[str]) -> None:
        """Write the config, the vocabulary and empty metrics and events files."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / "config.toml", config.to_toml())
        atomic_write_json(self.path / "vocab.json", vocab.chars)
        atomic_write_text(self.path / "metrics.csv", ",".join(metric_columns) + "\n")
        self.metric_columns = metric_columns
        atomic_write_text(self.path / "events.jsonl", "")

    def append_metrics(self, row: list[Any]) -> None:
        self._append("metrics.csv", ",".join(map(str, row)))
        if self.mirror is not None:
            self.mirror.metrics(self.metric_columns, row)

    def append_event(self, record: dict[str, Any]) -> None:
        self._append("events.jsonl", json.dumps(record))
        if self.mirror is not None:
            self.mirror.event(record)

    def _append(self, name: str, line: str) -> None:
        with open(self.path / name, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def truncate_to(self, step: int, metric_columns: list[str]) -> None:
        """After a resume: drop metric rows and events written after the checkpoint's step (and
        lines a kill cut short)."""
        self.metric_columns = metric_columns
        metrics = self.path / "metrics.csv"
        lines = metrics.read_text(encoding="utf-8").splitlines()
        width = len(metric_columns)
        kept = [lines[0]] + [ln for ln in lines[1:] if _complete_row(ln, width) and int(ln.split(",", 1)[0]) <= step]
        atomic_write_text(metrics, "\n".join(kept) + "\n")
        events = self.path / "events.jsonl"
        if events.exists():
            kept = [ln for ln in events.read_text(encoding="utf-8").splitlines() if _event_step(ln) <= step]
            atomic_write_text(events, "".join(ln + "\n" for ln in kept))


@contextmanager
def claimed(path: str | Path) -> Iterator[None]:
    """Hold ``path`` for a command that writes several runs into it (compare, continual)."""
    folder = RunFolder(path)
    folder.claim()
    try:
        yield
    finally:
        folder.release()


def _complete_row(line: str, width: int) -> bool:
    """False for a metrics row cut short by a kill."""
    return len(line.split(",")) == width and line.split(",", 1)[0].isdigit()


def _event_step(line: str) -> float:
    """The step of an events.jsonl line; a line cut short by a kill counts as after any step."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def read_metrics(run_dir: str | Path):
    """metrics.csv as a pandas DataFrame."""
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "metrics.csv")


def read_events(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_model(run_dir: str | Path, device: str = "cpu") -> tuple[GPT, CharVocab, dict[str, Any]]:
    """The model of a run's last checkpoint, rebuilt from the config saved inside it."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise ApoptosisError(f"no checkpoint at {path}: is {run_dir} a run folder?")
    ckpt = read_torch_file(path, device, keys=("config", "model", "vocab"))
    config = RunConfig.from_dict(ckpt["config"], source=str(path))
    model = GPT(config.model).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, CharVocab(ckpt["vocab"]), ckpt
