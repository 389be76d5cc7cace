"""``apoptosis bench-corpus``: what a large text file costs a training run in peak memory and start-up.

A random text file of the asked size is trained on for a few steps by a tiny model, each run in its
own process so its peak resident memory is that of a real run: first with an empty corpus cache
(the file is encoded), then again (the cached ids are mapped). A run on a tiny corpus is the
baseline; what a corpus adds is a run's peak memory above it (per character of the corpus) and
its start-up time above it: the seconds from launch until the run folder's vocab.json is written,
which happens once the data is loaded and the model built, before the first step.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from apoptosis.core.encoded_corpus import CACHE_ENV
from apoptosis.core.errors import ApoptosisError

# Space, newline, letters (common ones first), digits and punctuation: 72 characters of one byte each,
# at roughly the frequencies of English prose.
_CHARS = np.frombuffer(b" \netaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ0123456789.,;:'!?-", np.uint8)
_WEIGHTS = np.array([16, 2] + [8] * 13 + [1] * 13 + [0.5] * 13 + [0.1] * 13 + [0.2] * 10 + [1] * 2 + [0.3] * 6)
TINY_MODEL = [
    "--strategy", "none", "--device", "cpu", "--quiet",
    "--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2", "--set", "model.d_ff=64",
    "--set", "model.block_size=32", "--set", "trainer.batch_size=4", "--set", "trainer.eval_batches=1",
]  # fmt: skip


def write_random_text(path: Path, n_bytes: int, seed: int = 0, piece: int = 4 << 20) -> None:
    """``n_bytes`` of random ASCII text, written a piece at a time so a large file costs no memory."""
    rng = np.random.default_rng(seed)
    p = _WEIGHTS / _WEIGHTS.sum()
    with path.open("wb") as f:
        for start in range(0, n_bytes, piece):
            f.write(_CHARS[rng.choice(len(_CHARS), size=min(piece, n_bytes - start), p=p)].tobytes())


# Runs a module as `python -m` would and, at exit, writes the process's own peak resident memory (KB)
# to the file given first. VmHWM belongs to the memory map exec made; the kernel's rusage of a child
# would also count the launching process's memory, which the child held briefly before exec.
_RECORD_PEAK = """
import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def record():
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(peak_file, "w") as out:
        out.write(kb)
atexit.register(record)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def measured_run(module: str, args: list[str], env: dict[str, str], folder: Path) -> dict[str, float]:
    """``python -m module args`` run to the end in its own process: its peak resident memory (MB),
    launch time (epoch s) and wall time. A failure is an error quoting the last line of its output."""
    log, peak = folder / f"{module}.log", folder / f"{module}.peak"
    launched, began = time.time(), time.perf_counter()
    with log.open("wb") as out:
        done = subprocess.run([sys.executable, "-c", _RECORD_PEAK, str(peak), module, *args], env=env, stdout=out,
                              stderr=subprocess.STDOUT, check=False)  # fmt: skip
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        raise ApoptosisError(f"a measured run failed with exit code {done.returncode}: {' '.join(tail)}")
    return {"peak_rss_mb": int(peak.read_text()) / 1024, "launched": launched, "wall_s": seconds}


def train_args(data: Path, runs_dir: Path, name: str, steps: int) -> list[str]:
    return ["train", "--data", str(data), "--runs-dir", str(runs_dir), "--name", name, "--steps", str(steps),
            *TINY_MODEL]  # fmt: skip


def run_corpus_bench(size_mb: float, steps: int, console: Console) -> dict[str, Any]:
    """Baseline, cold and warm runs on a generated corpus of ``size_mb`` MB, in a temporary folder
    that holds the corpus, the cache and the runs, and is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="apoptosis-bench-corpus-") as tmp:
        folder = Path(tmp)
        env = {**os.environ, CACHE_ENV: str(folder / "cache"), "OMP_NUM_THREADS": "1"}
        tiny, large = folder / "tiny.txt", folder / "corpus.txt"
        write_random_text(tiny, 20_000, seed=1)
        with console.status(f"writing a {size_mb:g} MB corpus"):
            write_random_text(large, int(size_mb * 1e6))
        runs: dict[str, dict[str, float]] = {}
        for name, data in (("baseline", tiny), ("cold", large), ("warm", large)):
            args = train_args(data, folder / "runs", name, steps)
            (folder / name).mkdir()
            with console.status(f"{name} run ({steps} steps)"):
                run = runs[name] = measured_run("apoptosis.cli", args, env, folder / name)
            run["start_s"] = (folder / "runs" / name / "vocab.json").stat().st_mtime - run.pop("launched")
            run["chars"] = data.stat().st_size  # ASCII: one byte per character
        cache_mb = sum(f.stat().st_size for f in (folder / "cache").glob("*.ids")) / 1e6
    base = runs["baseline"]
    for name in ("cold", "warm"):
        run = runs[name]
        run["bytes_per_char"] = (run["peak_rss_mb"] - base["peak_rss_mb"]) * 2**20 / run["chars"]
        run["start_above_s"] = run["start_s"] - base["start_s"]
    return {"size_mb": size_mb, "steps": steps, "cache_mb": cache_mb, "runs": runs}


def print_corpus_bench(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"bench-corpus: {result['size_mb']:g} MB of text, {result['steps']} training steps, tiny model",
        title_justify="left",
    )
    columns = ("corpus chars", "peak RSS (MB)", "bytes/char above baseline", "start (s)", "above baseline", "wall (s)")
    table.add_column("run")
    for column in columns:
        table.add_column(column, justify="right")
    for name, run in result["runs"].items():
        above = ("-", "-") if name == "baseline" else (f"{run['bytes_per_char']:.2f}", f"{run['start_above_s']:+.1f}")
        table.add_row(name, f"{run['chars']:,}", f"{run['peak_rss_mb']:,.0f}", above[0], f"{run['start_s']:.1f}",
                      above[1], f"{run['wall_s']:.1f}")  # fmt: skip
    console.print(table)
    console.print(
        f"cold: the file is encoded into an empty cache ({result['cache_mb']:,.0f} MB of ids); "
        "warm: a second run maps the cached ids"
    )
