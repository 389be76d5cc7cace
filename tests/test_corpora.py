"""Named corpora for continual phases: the standard-library ``python`` corpus, the phase list parser
and the shared vocabulary. Shakespeare is never loaded here (it takes seconds): its dispatch is patched."""

from __future__ import annotations

from pathlib import Path

import pytest

from apoptosis.core import corpora
from apoptosis.core.corpora import (
    BUILTIN_CORPORA,
    PhaseSpec,
    corpus_text,
    distinct_corpora,
    parse_phases,
    python_source_files,
    python_source_text,
    python_stdlib_root,
    python_stdlib_text,
    union_vocab,
)
from apoptosis.core.errors import ApoptosisError


def write(root: Path, rel: str, data: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8", newline="")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small fake standard library with every kind of file the selection must skip."""
    root = tmp_path / "lib"
    write(root, "b.py", "import os\r\ndef b():\r\n    pass\r\n")
    write(root, "a.py", "def a():\n    return 1\n\n\n")
    write(root, "pkg/__init__.py", "")
    write(root, "pkg/mod.py", "x = 'é'\n")
    write(root, "pkg/latin.py", b"x = '\xe9'\n")
    write(root, "notes.txt", "not python\n")
    for rel in (
        "test/test_a.py",
        "pkg/tests/test_b.py",
        "idlelib/idle_test/test_c.py",
        "lib2to3/tests/data.py",
        "site-packages/thirdparty.py",
        "dist-packages/other.py",
    ):
        write(root, rel, "MARKER_ONLY_IN_SKIPPED_FILES = 1\n")
    write(root, "idlelib/editor.py", "class Editor:\n    pass\n")
    return root


# --- file selection and concatenation ---------------------------------------------------------------


def test_source_files_sorted_without_tests_and_packages(tree: Path) -> None:
    assert python_source_files(tree) == [
        "a.py",
        "b.py",
        "idlelib/editor.py",
        "pkg/__init__.py",
        "pkg/latin.py",
        "pkg/mod.py",
    ]


def test_source_text_normalises_and_skips_non_utf8_and_empty(tree: Path) -> None:
    text = python_source_text(tree, 10_000)
    assert text == ("def a():\n    return 1\n\nimport os\ndef b():\n    pass\n\nclass Editor:\n    pass\n\nx = 'é'\n")
    assert "MARKER_ONLY_IN_SKIPPED_FILES" not in text and "\r" not in text


def test_source_text_stops_at_a_file_boundary(tree: Path) -> None:
    first = "def a():\n    return 1\n"
    both = first + "\nimport os\ndef b():\n    pass\n"
    assert python_source_text(tree, len(both)) == both
    assert python_source_text(tree, len(both) - 1) == first
    assert python_source_text(tree, len(first)) == first


def test_source_text_truncates_a_first_file_longer_than_the_limit(tree: Path) -> None:
    assert python_source_text(tree, 5) == "def a"


def test_source_text_errors(tmp_path: Path) -> None:
    write(tmp_path, "tests/test_x.py", "x = 1\n")
    write(tmp_path, "bad.py", b"\xff\xfe\n")
    with pytest.raises(ApoptosisError, match=r"no readable UTF-8 \*\.py files outside test folders"):
        python_source_text(tmp_path, 1000)
    with pytest.raises(ApoptosisError, match="max_chars must be at least 1"):
        python_source_text(tmp_path, 0)


# --- the real standard library ----------------------------------------------------------------------


def test_stdlib_corpus_is_code_and_stable() -> None:
    python_stdlib_text.cache_clear()
    text = python_stdlib_text()
    assert 100_000 < len(text) <= 2_000_000
    assert "def " in text and "import " in text and "\r" not in text
    python_stdlib_text.cache_clear()
    assert python_stdlib_text() == text
    assert python_stdlib_text() is python_stdlib_text()  # cached


def test_stdlib_selection_has_no_test_folders() -> None:
    files = python_source_files(python_stdlib_root())
    assert files == sorted(files) and len(files) > 100
    skipped = {"test", "tests", "idle_test", "site-packages", "dist-packages"}
    assert not [f for f in files if skipped & set(f.split("/")[:-1])]


def test_stdlib_corpus_respects_max_chars_at_a_file_boundary() -> None:
    limit = 20_000
    text = python_stdlib_text(limit)
    assert len(text) <= limit and text.endswith("\n")
    longer = python_stdlib_text(200_000)
    assert longer.startswith(text + "\n")  # the same files in the same order, then a blank line
    assert python_stdlib_text(len(text)) == text
    shorter = python_stdlib_text(len(text) - 1)
    assert text.startswith(shorter + "\n")  # one character less drops the whole last file


# --- phase lists -------------------------------------------------------------------------------------


def test_parse_builtin_phases_with_repeats_and_spaces() -> None:
    assert parse_phases(" shakespeare , python,shakespeare ") == [
        PhaseSpec("shakespeare", "shakespeare"),
        PhaseSpec("python", "python"),
        PhaseSpec("shakespeare", "shakespeare"),
    ]


def test_parse_file_phase_then_bare_name(tmp_path: Path) -> None:
    data = tmp_path / "w.txt"
    data.write_text("hello\n", encoding="utf-8")
    specs = parse_phases(f"a={data},python,a,a={data}")
    assert specs == [PhaseSpec("a", str(data)), PhaseSpec("python", "python")] + [PhaseSpec("a", str(data))] * 2
    assert distinct_corpora(specs) == [PhaseSpec("a", str(data)), PhaseSpec("python", "python")]


def test_parse_same_file_spelled_two_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w.txt").write_text("hello\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert parse_phases("wiki=w.txt,shakespeare,wiki=./w.txt") == [
        PhaseSpec("wiki", "w.txt"),
        PhaseSpec("shakespeare", "shakespeare"),
        PhaseSpec("wiki", "w.txt"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the phase list is empty"),
        ("   ", "the phase list is empty"),
        ("shakespeare,,python", "phase 2 of 'shakespeare,,python' is empty"),
        ("shakespeare,", "phase 2 of 'shakespeare,' is empty"),
        ("wiki", "unknown corpus 'wiki' in phase 1: use one of shakespeare, python, or name=FILE"),
        ("Python", "unknown corpus 'Python'"),
        ("1wiki=FILE", "bad corpus name '1wiki' in phase 1"),
        ("wi ki=FILE", "bad corpus name 'wi ki'"),
        ("=FILE", "bad corpus name ''"),
        ("python=FILE", "'python' is a built-in corpus and cannot name a file"),
        ("wiki=", "corpus 'wiki' in phase 1 has no file after '='"),
        ("wiki=missing.txt", "file for corpus 'wiki' not found: missing.txt"),
        ("wiki=DIR", "file for corpus 'wiki' is not a file"),
        ("wiki=FILE,wiki=OTHER", "corpus 'wiki' names two files"),
        ("wiki,wiki=FILE", "a bare name refers to a file only after its first name=FILE"),
        ("wiki=FILE,news", "use one of shakespeare, python, wiki, or name=FILE"),
    ],
)
def test_parse_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str) -> None:
    (tmp_path / "FILE").write_text("a\n", encoding="utf-8")
    (tmp_path / "OTHER").write_text("b\n", encoding="utf-8")
    (tmp_path / "DIR").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ApoptosisError) as info:
        parse_phases(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# --- texts and the shared vocabulary ----------------------------------------------------------------


def test_corpus_text_dispatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpora, "shakespeare_text", lambda: "To be\n")
    data = tmp_path / "w.txt"
    data.write_text("wiki text\n", encoding="utf-8")
    assert corpus_text(PhaseSpec("shakespeare", "shakespeare")) == "To be\n"
    assert corpus_text(PhaseSpec("python", "python")) == python_stdlib_text()
    assert corpus_text(PhaseSpec("wiki", str(data))) == "wiki text\n"
    with pytest.raises(ApoptosisError, match="data file not found"):
        corpus_text(PhaseSpec("wiki", str(tmp_path / "gone.txt")))
    with pytest.raises(ApoptosisError, match="built-in corpus 'python' cannot have the source"):
        corpus_text(PhaseSpec("python", str(data)))
    assert set(BUILTIN_CORPORA) == {"shakespeare", "python"}


def test_union_vocab_covers_and_encodes_every_text() -> None:
    texts = ["To be, or not\n", "def f():\n    return 1\n", "café ☕"]
    vocab = union_vocab(texts)
    assert vocab.chars == sorted(set("".join(texts)))
    for text in texts:
        assert vocab.decode(vocab.encode(text)) == text
    assert len(union_vocab(iter(texts))) == len(vocab)  # any iterable, consumed once
    with pytest.raises(ApoptosisError, match="every corpus is empty"):
        union_vocab(["", ""])
