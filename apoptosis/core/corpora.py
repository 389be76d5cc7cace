"""Named corpora for the phases of a continual-learning run, and the one vocabulary they share.

A continual run trains one model through phases of different text (``shakespeare,python,shakespeare``),
so every phase needs a corpus that is the same on every machine, and the vocabulary has to cover all of
them before the first step: the embedding cannot grow when a new corpus arrives. The ``python`` corpus is
the standard library of the running interpreter, a large body of code that needs no download.
"""

from __future__ import annotations

import functools
import os
import re
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from apoptosis.core.data import CharVocab, read_text_file, shakespeare_text
from apoptosis.core.errors import ApoptosisError

BUILTIN_CORPORA = ("shakespeare", "python")

# Folders never read: installed third-party packages and the standard library's own test suites.
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def python_stdlib_root() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def python_source_files(root: str | Path) -> list[str]:
    """Relative POSIX paths of the ``*.py`` files under ``root``, sorted, without test folders
    (any folder named ``test``, ``tests`` or ``idle_test``) and installed packages."""
    root = Path(root)
    found: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS]
        rel = Path(folder).relative_to(root)
        found.extend((rel / f).as_posix() for f in files if f.endswith(".py"))
    return sorted(found)


def _normalised(raw: bytes) -> str | None:
    """A file's text with ``\\n`` line endings and exactly one final newline; ``None`` if it is not
    UTF-8 or holds nothing but whitespace."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n").rstrip()
    return text + "\n" if text else None


def python_source_text(root: str | Path, max_chars: int) -> str:
    """The selected files of ``root`` (see :func:`python_source_files`) in path order, separated by one
    blank line, stopping before the file that would pass ``max_chars``; a first file longer than
    ``max_chars`` alone is truncated. Files that are not UTF-8 or are empty are skipped."""
    if max_chars < 1:
        raise ApoptosisError(f"max_chars must be at least 1, got {max_chars}")
    parts: list[str] = []
    total = 0
    for rel in python_source_files(root):
        text = _normalised((Path(root) / rel).read_bytes())
        if text is None:
            continue
        added = len(text) + (1 if parts else 0)  # the "\n" that makes the blank line before it
        if total + added > max_chars:
            if not parts:
                parts.append(text[:max_chars])
            break
        parts.append(text)
        total += added
    if not parts:
        raise ApoptosisError(f"no readable UTF-8 *.py files outside test folders under {root}")
    return "\n".join(parts)


@functools.cache
def python_stdlib_text(max_chars: int = 2_000_000) -> str:
    """The ``python`` corpus: the interpreter's standard library sources (tests and site-packages left
    out) in sorted path order, cut at a file boundary before ``max_chars``. Cached: reading takes a while."""
    return python_source_text(python_stdlib_root(), max_chars)


@dataclass(frozen=True)
class PhaseSpec:
    """One phase's corpus: ``source`` is ``"shakespeare"``, ``"python"`` or a file path."""

    name: str
    source: str


def parse_phases(text: str) -> list[PhaseSpec]:
    """``"shakespeare,python,wiki=w.txt,wiki"`` -> one :class:`PhaseSpec` per item. An item is a built-in
    corpus name or ``name=FILE``; after its first ``name=FILE`` a bare ``name`` refers to the same file."""
    text = text.strip()
    if not text:
        raise ApoptosisError(
            "the phase list is empty: a continual run needs at least 1 phase, given as comma-separated corpora, "
            f"each one of {', '.join(BUILTIN_CORPORA)} or name=FILE"
        )
    files: dict[str, str] = {}  # name -> the file given first
    specs: list[PhaseSpec] = []
    for position, raw in enumerate(text.split(","), start=1):
        item = raw.strip()
        if not item:
            raise ApoptosisError(f"phase {position} of {text!r} is empty: remove the extra comma")
        if "=" in item:
            name, path = (part.strip() for part in item.split("=", 1))
            if not _NAME.fullmatch(name):
                raise ApoptosisError(
                    f"bad corpus name {name!r} in phase {position}: a name starts with a letter and has only "
                    "letters, digits, '_' and '-'"
                )
            if name in BUILTIN_CORPORA:
                raise ApoptosisError(
                    f"{name!r} is a built-in corpus and cannot name a file (phase {position}): "
                    f"write it bare, or choose another name for {path!r}"
                )
            if not path:
                raise ApoptosisError(f"corpus {name!r} in phase {position} has no file after '='")
            if not Path(path).is_file():
                what = "is not a file" if Path(path).exists() else "not found"
                raise ApoptosisError(f"file for corpus {name!r} {what}: {path}")
            if name in files and Path(files[name]).resolve() != Path(path).resolve():
                raise ApoptosisError(
                    f"corpus {name!r} names two files: {files[name]!r} and {path!r} (phase {position})"
                )
            files.setdefault(name, path)
            specs.append(PhaseSpec(name, files[name]))
        elif item in BUILTIN_CORPORA:
            specs.append(PhaseSpec(item, item))
        elif item in files:
            specs.append(PhaseSpec(item, files[item]))
        else:
            allowed = ", ".join([*BUILTIN_CORPORA, *files])
            raise ApoptosisError(
                f"unknown corpus {item!r} in phase {position}: use one of {allowed}, or name=FILE "
                "(a bare name refers to a file only after its first name=FILE)"
            )
    return specs


def corpus_text(spec: PhaseSpec) -> str:
    """The text of a phase's corpus."""
    if spec.name in BUILTIN_CORPORA:
        if spec.source != spec.name:
            raise ApoptosisError(f"built-in corpus {spec.name!r} cannot have the source {spec.source!r}")
        return shakespeare_text() if spec.name == "shakespeare" else python_stdlib_text()
    return read_text_file(spec.source)


def distinct_corpora(specs: list[PhaseSpec]) -> list[PhaseSpec]:
    """Each corpus once, in order of first appearance."""
    first: dict[str, PhaseSpec] = {}
    for spec in specs:
        first.setdefault(spec.name, spec)
    return list(first.values())


def union_vocab(texts: Iterable[str]) -> CharVocab:
    """One vocabulary over all corpora (sorted set of characters), fixed before training starts."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    if not chars:
        raise ApoptosisError("cannot build a vocabulary: every corpus is empty")
    return CharVocab(sorted(chars))
