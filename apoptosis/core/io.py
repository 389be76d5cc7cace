"""Atomic file writes: a reader never sees a half-written file, a crash never loses the old one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from apoptosis.core.errors import ApoptosisError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_torch_file(path: str | Path, device: str = "cpu", *, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint-like file saved with ``torch.save``, or one line saying why it cannot be used:
    missing, truncated or corrupt, or lacking one of ``keys``. The file itself is left as it is."""
    path = Path(path)
    if not path.is_file():
        raise ApoptosisError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ApoptosisError(
            f"{path} is unreadable, truncated or corrupt ({reason[:120]}); it was left untouched: restore it "
            "from a copy, or start again under another --name"
        ) from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise ApoptosisError(f"{path} is not a checkpoint of this tool: it has no {', '.join(missing)}")
    return state
