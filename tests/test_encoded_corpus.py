"""Text files encoded a chunk at a time into a cache of memory-mapped ids: the same text, ids, errors
and batches as reading the file whole, the smallest dtype, no second encoding, and runs on them."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from apoptosis.analysis.corpus_bench import measured_run, write_random_text
from apoptosis.core import encoded_corpus
from apoptosis.core.config import RunConfig
from apoptosis.core.data import CharDataset, CharVocab, read_text_file, shakespeare_text, smallest_dtype
from apoptosis.core.encoded_corpus import corpus_dataset, encode_file, iter_text, remap
from apoptosis.core.errors import ApoptosisError
from apoptosis.training import Trainer
from apoptosis.training.phases import load_corpora
from apoptosis.training.run_folder import read_metrics
from tests.conftest import tiny_run_config

MIXED = "\ufeffOne\r\ntwo\rthree\r\n\r\ncafé — naïve 🎭\r\nend\r".encode()
CHUNKS = (1, 2, 3, 4, 5, 7, 4096)


def _write(tmp_path: Path, raw: bytes, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def _outcome(read) -> str:
    """The text a reader gives, or its error message."""
    try:
        return "text: " + read()
    except ApoptosisError as e:
        return f"error: {e}"


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_streamed_text_is_read_text_file(tmp_path: Path, keep: bool, chunk: int) -> None:
    path = _write(tmp_path, MIXED)
    assert "".join(iter_text(path, keep, chunk)) == read_text_file(path, keep)
    assert ("\r" in read_text_file(path, keep)) == keep


def test_crlf_split_by_a_chunk_boundary_is_one_newline(tmp_path: Path) -> None:
    path = _write(tmp_path, b"ab\r\ncd\r")
    assert list(iter_text(path, chunk_bytes=3)) == ["ab", "\ncd", "\n"]  # "ab\r" | "\ncd" | "\r" at the end
    assert list(iter_text(path, keep_line_endings=True, chunk_bytes=3)) == ["ab\r", "\ncd", "\r"]


@pytest.mark.parametrize(
    "raw",
    [
        b"hello\nworld\n" * 5 + b"\xff\xfe tail\n",  # a bad byte in a later chunk
        b"line\n" * 9 + "café".encode() + b"\xe2\x82x\n",  # a character cut off by a bad byte, across chunks
        b"a\nb\nc\n\xe2\x82",  # a character cut off by the end of the file
        "caf\xe9 au lait".encode("latin-1"),
        b"\xef\xbb\xbf\r\n\xc3",
    ],
)
def test_errors_name_the_same_byte_offset_and_line_as_read_text_file(tmp_path: Path, raw: bytes) -> None:
    path = _write(tmp_path, raw)
    expected = _outcome(lambda: read_text_file(path))
    assert expected.startswith("error: data file is not valid UTF-8")
    for chunk in CHUNKS:
        assert _outcome(lambda chunk=chunk: "".join(iter_text(path, chunk_bytes=chunk))) == expected, chunk
        assert _outcome(lambda chunk=chunk: str(encode_file(path, chunk_bytes=chunk).ids)) == expected, chunk


def test_missing_empty_and_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    for path in (tmp_path / "missing.txt", _write(tmp_path, b"", "empty.txt"), tmp_path / "folder"):
        expected = _outcome(lambda path=path: read_text_file(path))
        assert expected.startswith("error: data ") and str(path) in expected
        assert _outcome(lambda path=path: str(encode_file(path).ids)) == expected


@pytest.mark.parametrize("keep", [False, True])
def test_encoded_ids_are_the_old_encoding(tmp_path: Path, keep: bool) -> None:
    path = _write(tmp_path, MIXED)
    text = read_text_file(path, keep)
    corpus = encode_file(path, keep, chunk_bytes=3)
    assert corpus.vocab.chars == CharVocab.from_text(text).chars
    assert isinstance(corpus.ids, np.memmap) and corpus.ids.dtype == np.uint8
    np.testing.assert_array_equal(corpus.ids, corpus.vocab.encode(text).numpy())


def test_smallest_dtype_fits_the_vocabulary(tmp_path: Path) -> None:
    assert [smallest_dtype(n) for n in (1, 256, 257, 65536, 65537)] == [np.uint8] * 2 + [np.uint16] * 2 + [np.uint32]
    many = "".join(chr(0x400 + i) for i in range(300)) * 2
    corpus = encode_file(_write(tmp_path, many.encode()))
    assert len(corpus.vocab) == 300 and corpus.ids.dtype == np.uint16
    np.testing.assert_array_equal(corpus.ids, corpus.vocab.encode(many).numpy())


def _no_encoding(*args: object) -> None:
    raise AssertionError("encoded again")


def test_second_load_maps_the_cache_without_encoding(
    tmp_path: Path, corpus_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, MIXED)
    first = encode_file(path)
    (ids_file,) = corpus_cache.glob("*.ids")
    written = ids_file.stat().st_mtime_ns
    monkeypatch.setattr(encoded_corpus, "_codepoints", _no_encoding)
    again = encode_file(_write(tmp_path, MIXED, "copy.txt"))  # same bytes under another name: same entry
    assert again.vocab.chars == first.vocab.chars and again.key == first.key
    np.testing.assert_array_equal(again.ids, first.ids)
    assert ids_file.stat().st_mtime_ns == written
    with pytest.raises(AssertionError, match="encoded again"):
        encode_file(path, keep_line_endings=True)  # other text, other entry


def test_a_damaged_cache_entry_is_encoded_again(tmp_path: Path, corpus_cache: Path) -> None:
    path = _write(tmp_path, MIXED)
    expected = np.array(encode_file(path).ids)
    (ids_file,) = corpus_cache.glob("*.ids")
    ids_file.write_bytes(ids_file.read_bytes()[:-1])
    np.testing.assert_array_equal(encode_file(path).ids, expected)
    assert ids_file.stat().st_size == len(expected)


def test_remap_to_a_larger_vocabulary_and_unknown_characters(tmp_path: Path, corpus_cache: Path) -> None:
    text = "abcab\ncab\n" * 10
    corpus = encode_file(_write(tmp_path, text.encode()))
    union = CharVocab(sorted(set(text) | set("ABZ~é")))
    wide = remap(corpus, union)
    assert wide.vocab.chars == union.chars and wide.key != corpus.key
    np.testing.assert_array_equal(wide.ids, union.encode(text).numpy())
    assert len(list(corpus_cache.glob("*.ids"))) == 2
    assert remap(corpus, union).key == wide.key and len(list(corpus_cache.glob("*.ids"))) == 2  # cached
    assert remap(corpus, CharVocab(corpus.vocab.chars)).ids is corpus.ids  # same vocabulary: nothing to do
    with pytest.raises(ApoptosisError, match=r"^character 'c' is not in the vocabulary of this run$"):
        remap(corpus, CharVocab(list("\nabz")))


@pytest.mark.parametrize("extra", ["", "".join(chr(0x400 + i) for i in range(300))])
def test_batches_and_unigram_loss_equal_the_text_path(tmp_path: Path, extra: str) -> None:
    text = ("To be, or not to be, that is the question.\n" + extra) * 30
    path = _write(tmp_path, text.encode())
    old = CharDataset.from_text(read_text_file(path), block_size=16)
    new = corpus_dataset(path, block_size=16)
    assert new.train.dtype == (torch.uint8 if not extra else torch.int16)
    assert (len(new.train), len(new.val)) == (len(old.train), len(old.val))
    for split in ("train", "val"):
        a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        for _ in range(3):
            (x_old, y_old), (x_new, y_new) = old.batch(split, 8, a), new.batch(split, 8, b)
            assert x_new.dtype == y_new.dtype == torch.int64
            assert torch.equal(x_new, x_old) and torch.equal(y_new, y_old)
    ids = old.vocab.encode(text)  # the former int64 formula
    counts = torch.bincount(ids[: len(old.train)], minlength=len(old.vocab)).double() + 1.0
    assert math.isclose(new.unigram_loss(), float(-(counts / counts.sum()).log()[ids[len(old.train) :]].mean()))


def test_the_dataset_maps_the_cached_file_without_a_copy(tmp_path: Path) -> None:
    corpus = encode_file(_write(tmp_path, b"0123456789\n" * 50))
    data = CharDataset.from_ids(corpus.vocab, corpus.ids, block_size=8)
    assert data.train.data_ptr() == corpus.ids.ctypes.data
    assert data.val.data_ptr() == corpus.ids.ctypes.data + len(data.train)


def test_continual_phases_share_one_union_vocabulary(tmp_path: Path) -> None:
    prose, code = (
        _write(tmp_path, b"the cat sat on a mat\n" * 20, "p.txt"),
        _write(tmp_path, b"f(x) = [1, 2]\n" * 30, "c.txt"),
    )
    config = RunConfig()
    config.model.block_size = 8
    config.continual.phases = [f"prose={prose}", f"code={code}", "prose"]
    corpora, phases = load_corpora(config, None)
    assert phases == ["prose", "code", "prose"]
    union = CharVocab.from_text(prose.read_text() + code.read_text())
    for name, path in (("prose", prose), ("code", code)):
        data = corpora[name]
        assert data.vocab.chars == union.chars
        assert data.vocab.decode(torch.cat([data.train, data.val])) == path.read_text()


def test_a_run_on_a_file_resumes_exactly_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def config() -> RunConfig:
        c = tiny_run_config(tmp_path, steps=20)
        c.trainer.checkpoint_interval = 5  # so a checkpoint precedes the stop at step 10
        return c

    reference = Trainer(config(), tmp_path / "reference", show_progress=False).fit()

    def stop(step: int, val_loss: float) -> None:
        if step == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config(), tmp_path / "killed", show_progress=False, on_evaluate=stop).fit()
    monkeypatch.setattr(encoded_corpus, "_codepoints", _no_encoding)
    resumed = Trainer(RunConfig(), tmp_path / "killed", resume=True, show_progress=False).fit()
    assert resumed["final_val_loss"] == reference["final_val_loss"]
    assert resumed["unigram_val_loss"] == reference["unigram_val_loss"]
    drop = ["tokens_per_s"]
    pd.testing.assert_frame_equal(
        read_metrics(tmp_path / "killed").drop(columns=drop), read_metrics(tmp_path / "reference").drop(columns=drop)
    )


def test_bench_corpus_text_and_each_runs_own_peak_memory(tmp_path: Path) -> None:
    path = tmp_path / "random.txt"
    write_random_text(path, 100_000, piece=30_000)
    text = read_text_file(path)
    assert len(text) == 100_000 and 40 <= len(set(text)) <= 72 and text.count("\n") > 1000
    (tmp_path / "big.py").write_text("b = bytearray(300 << 20)\nb[::4096] = b'x' * len(b[::4096])\n")
    (tmp_path / "small.py").write_text("")
    (tmp_path / "fails.py").write_text("import sys\nprint('boom')\nsys.exit(3)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    big = measured_run("big", [], env, tmp_path)
    small = measured_run("small", [], env, tmp_path)  # launched from this process, which holds torch
    assert big["peak_rss_mb"] > 300 > 100 > small["peak_rss_mb"]
    with pytest.raises(ApoptosisError, match="exit code 3: boom"):
        measured_run("fails", [], env, tmp_path)


def test_the_default_corpus_is_encoded_once_and_then_mapped_without_its_text(monkeypatch) -> None:
    config = RunConfig()
    first = load_corpora(config, None)[0]["main"]
    expected = CharDataset.from_text(shakespeare_text(), config.model.block_size)
    assert first.vocab.chars == expected.vocab.chars
    assert torch.equal(first.train, expected.train) and torch.equal(first.val, expected.val)
    monkeypatch.setattr(encoded_corpus, "shakespeare_text", lambda: pytest.fail("the text was converted again"))
    again = load_corpora(config, None)[0]["main"]
    assert torch.equal(again.train, expected.train) and first.train.dtype == torch.uint8
    resumed = load_corpora(config, expected.vocab.chars[::-1])[0]["main"]  # a checkpoint's vocabulary
    assert torch.equal(resumed.train.long(), len(expected.vocab) - 1 - expected.train.long())
