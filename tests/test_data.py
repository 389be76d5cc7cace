"""Corpus loading (the markdown plays as plain text, user files with one-line errors), the
character vocabulary and the train/val windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from apoptosis.core.data import CharDataset, CharVocab, markdown_play_to_text, read_text_file, shakespeare_text
from apoptosis.core.errors import ApoptosisError

PLAY = (
    "# Title\n"
    "\n"
    "## ACT I\n"
    "\n"
    "### SCENE I. Elsinore. A platform before the castle.\n"
    "\n"
    "_Enter X_\n"
    "\n"
    "**HAMLET**  \n"
    "To be, or not  \n"
    "to be\\--that\n"
    "\n"
    "_\\[Aside]_  \n"
    "\n"
    "**FIRST GRAVEDIGGER**  \n"
    "1\\. Is she to be buried?\n"
    "\n"
    "\n"
    "\n"
    "_Exeunt_\n"
)


# --- markdown -> text -------------------------------------------------------------------------


def test_markdown_play_to_text_exact() -> None:
    assert markdown_play_to_text(PLAY) == (
        "Title\n"
        "\n"
        "ACT I\n"
        "\n"
        "SCENE I. Elsinore. A platform before the castle.\n"
        "\n"
        "Enter X\n"
        "\n"
        "HAMLET:\n"
        "To be, or not\n"
        "to be--that\n"
        "\n"
        "[Aside]\n"
        "\n"
        "FIRST GRAVEDIGGER:\n"
        "1. Is she to be buried?\n"
        "\n"
        "Exeunt\n"
    )


def test_markdown_play_to_text_strips_all_markup() -> None:
    text = markdown_play_to_text(PLAY)
    for mark in ("*", "_", "#", "\\", "\x00"):
        assert mark not in text, mark
    lines = text.splitlines()
    assert "HAMLET:" in lines and "FIRST GRAVEDIGGER:" in lines
    assert all(line == line.rstrip() for line in lines)  # hard line breaks ("  ") removed
    assert "\n\n\n" not in text  # runs of blank lines collapse to one
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_bold_inside_a_line_is_not_a_speaker() -> None:
    assert markdown_play_to_text("He said **no** twice\n") == "He said no twice\n"


def test_escaped_emphasis_characters_are_kept_literally() -> None:
    assert markdown_play_to_text("2 \\* 3 and snake\\_case\n") == "2 * 3 and snake_case\n"


# --- the default corpus -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> str:
    return shakespeare_text()


def test_default_corpus_is_large_plain_text(corpus: str) -> None:
    assert len(corpus) > 4_000_000
    assert "HAMLET:" in corpus and "ROMEO:" in corpus and "MACBETH:" in corpus
    assert "**" not in corpus
    for mark in ("*", "\\", "#", "\x00"):
        assert mark not in corpus, mark
    assert corpus.endswith("\n")


def test_default_corpus_is_deterministic(corpus: str) -> None:
    shakespeare_text.cache_clear()
    again = shakespeare_text()
    assert again == corpus
    # plays are concatenated in sorted path order: comedies/ first, A Midsummer Night's Dream first
    assert corpus.startswith("A Midsummer Night's Dream\n\nACT I\n")


def test_default_corpus_vocabulary_is_small(corpus: str) -> None:
    vocab = CharVocab.from_text(corpus)
    assert 40 <= len(vocab) <= 120
    ids = vocab.encode(corpus[:10_000])
    assert vocab.decode(ids) == corpus[:10_000]


# --- vocabulary -------------------------------------------------------------------------------


def test_vocab_round_trip() -> None:
    text = "Hello, world!\nÆther — naïve 🎭 \t"
    vocab = CharVocab.from_text(text)
    assert vocab.chars == sorted(set(text))
    assert len(vocab) == len(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == torch.int64 and ids.shape == (len(text),)
    assert int(ids.min()) >= 0 and int(ids.max()) < len(vocab)
    assert vocab.decode(ids) == text
    assert vocab.decode(ids.tolist()) == text
    assert vocab.encode("").numel() == 0


def test_vocab_ids_follow_sorted_chars() -> None:
    vocab = CharVocab.from_text("cab")
    assert vocab.encode("abc").tolist() == [0, 1, 2]
    assert vocab.decode([2, 1, 0]) == "cba"


@pytest.mark.parametrize("unknown", ["z", "ab~", "\x00", "é", "🎭"])
def test_vocab_unknown_character_raises(unknown: str) -> None:
    vocab = CharVocab.from_text("abc")
    with pytest.raises(ApoptosisError, match="not in the vocabulary") as e:
        vocab.encode(unknown)
    bad = next(c for c in unknown if c not in "abc")
    assert repr(bad) in str(e.value)


# --- dataset ----------------------------------------------------------------------------------

TEXT = "".join(chr(ord("a") + (i * 7) % 26) for i in range(1000))


def test_split_is_90_10() -> None:
    ds = CharDataset.from_text(TEXT, block_size=8)
    assert len(ds.train) == 900 and len(ds.val) == 100
    assert ds.vocab.decode(ds.train) == TEXT[:900]
    assert ds.vocab.decode(ds.val) == TEXT[900:]
    ds = CharDataset.from_text(TEXT, block_size=8, val_fraction=0.25)
    assert len(ds.train) == 750 and len(ds.val) == 250


def test_given_vocab_is_used() -> None:
    vocab = CharVocab([chr(c) for c in range(ord("a"), ord("z") + 1)] + ["!"])
    ds = CharDataset.from_text(TEXT, block_size=8, vocab=vocab)
    assert ds.vocab is vocab
    with pytest.raises(ApoptosisError, match="not in the vocabulary"):
        CharDataset.from_text(TEXT + "?", block_size=8, vocab=vocab)


@pytest.mark.parametrize("split", ["train", "val"])
def test_batch_targets_are_inputs_shifted_by_one(split: str) -> None:
    ds = CharDataset.from_text(TEXT, block_size=16)
    data = ds.train if split == "train" else ds.val
    x, y = ds.batch(split, 32, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (32, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y, strict=True):
        # each row is a contiguous window of this split, targets the next character
        window = torch.cat([row_x, row_y[-1:]])
        starts = [s for s in range(len(data) - 16) if torch.equal(data[s : s + 17], window)]
        assert starts, "window not found in the split"


def test_batches_cover_the_end_of_the_split() -> None:
    ds = CharDataset.from_text(TEXT, block_size=8)
    g = torch.Generator().manual_seed(1)
    last = ds.train[-1]
    seen_last_target = False
    for _ in range(200):
        _, y = ds.batch("train", 16, g)
        seen_last_target |= bool((y[:, -1] == last).any())
    assert seen_last_target


def test_same_seed_same_batch_different_seed_different_batch() -> None:
    ds = CharDataset.from_text(TEXT, block_size=8)
    a = ds.batch("train", 8, torch.Generator().manual_seed(42))
    b = ds.batch("train", 8, torch.Generator().manual_seed(42))
    c = ds.batch("train", 8, torch.Generator().manual_seed(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    g = torch.Generator().manual_seed(42)
    first, second = ds.batch("train", 8, g), ds.batch("train", 8, g)
    assert not torch.equal(first[0], second[0])  # the generator advances


def test_smallest_usable_split() -> None:
    # 100 chars: val has 10 = block_size + 1, the minimum
    ds = CharDataset.from_text(TEXT[:100], block_size=9)
    x, y = ds.batch("val", 4, torch.Generator().manual_seed(0))
    assert torch.equal(x[0], ds.val[:9]) and torch.equal(y[0], ds.val[1:])


@pytest.mark.parametrize(
    ("n_chars", "block_size", "split", "have"),
    [(100, 10, "val", 10), (10, 9, "train", 9), (1000, 100, "val", 100)],
)
def test_text_too_short_for_block_size(n_chars: int, block_size: int, split: str, have: int) -> None:
    with pytest.raises(ApoptosisError) as e:
        CharDataset.from_text(TEXT[:n_chars], block_size=block_size)
    message = str(e.value)
    assert f"the {split} split has {have} characters" in message
    assert f"block_size + 1 = {block_size + 1}" in message
    assert "model.block_size" in message
    assert "\n" not in message


# --- user text files --------------------------------------------------------------------------


def test_read_text_file_ok(tmp_path: Path) -> None:
    path = tmp_path / "ok.txt"
    path.write_bytes("héllo\nwörld\n".encode())
    assert read_text_file(path) == "héllo\nwörld\n"
    assert read_text_file(str(path)) == "héllo\nwörld\n"
    assert read_text_file(path) == "héllo\nwörld\n"


def _error(path: Path) -> str:
    with pytest.raises(ApoptosisError) as e:
        read_text_file(path)
    message = str(e.value)
    assert "\n" not in message, message
    assert str(path) in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "missing.txt")
    with pytest.raises(ApoptosisError, match="not found"):
        read_text_file(tmp_path / "missing.txt")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    assert "empty" in _error(path)


def test_invalid_utf8_names_byte_offset_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(b"hello\nworld\n\xff\xfe tail\n")
    message = _error(path)
    assert "not valid UTF-8" in message
    assert "0xff" in message
    assert "offset 12" in message
    assert "line 3" in message


def test_invalid_utf8_on_first_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait".encode("latin-1"))
    message = _error(path)
    assert "0xe9" in message and "offset 3" in message and "line 1" in message


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    assert "not a file" in _error(folder)


def test_unigram_loss_is_the_context_free_cross_entropy() -> None:
    import math

    from apoptosis.core.data import CharDataset

    ds = CharDataset.from_text("ab" * 200, block_size=4)
    assert math.isclose(ds.unigram_loss(), math.log(2), rel_tol=1e-2)
    skewed = CharDataset.from_text("aaab" * 100, block_size=4)
    assert skewed.unigram_loss() < math.log(2)
