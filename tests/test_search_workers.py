"""Several workers on one study: on the journal file (processes of one machine) and on a real
PostgreSQL server (as several machines would share it). Every planned trial finishes once, none
is lost or run twice, and a worker killed mid-trial leaves the study consistent: its trial is
failed and run again once.

PostgreSQL: ``bash scripts/postgres.sh`` starts a server on 127.0.0.1 (CI does this first);
``APOPTOSIS_TEST_POSTGRES_URL`` points elsewhere. Without a server these tests are skipped,
unless ``APOPTOSIS_REQUIRE_POSTGRES=1`` (set by CI) makes that a failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from apoptosis.search.study import trials_frame
from tests.test_search import L9_FACTORS, write_factors

POSTGRES_URL = os.environ.get(
    "APOPTOSIS_TEST_POSTGRES_URL", "postgresql://apoptosis:apoptosis@127.0.0.1:5432/apoptosis_test"
)
CLI = [sys.executable, "-m", "apoptosis.cli"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    return subprocess.Popen(CLI + args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def running_trial(study: optuna.Study, timeout: float = 60) -> optuna.trial.FrozenTrial:
    """A trial that has started and recorded its worker's pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "pid" in t.user_attrs and "settings" in t.user_attrs:
                return t
        time.sleep(0.2)
    raise AssertionError("no trial started in time")


def check_design_ran_once_each(study: optuna.Study, rows: int, killed: int | None) -> None:
    """Each row completed exactly once; the killed trial failed and was retried once. Two workers
    racing for the last queued trial make Optuna create one fresh trial for the loser: it must be
    pruned at once, without running anything, and left out of every table."""
    trials = study.get_trials(deepcopy=False)
    surplus = [t for t in trials if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.PRUNED and not t.params and "settings" not in t.user_attrs for t in surplus)
    surplus_numbers = {t.number for t in surplus}
    assert not set(trials_frame(study)["number"]) & surplus_numbers
    trials = [t for t in trials if t.number not in surplus_numbers]
    complete = [t for t in trials if t.state == TrialState.COMPLETE and "row" in t.user_attrs]
    assert Counter(t.user_attrs["row"] for t in complete) == Counter(range(rows))
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == ([killed] if killed is not None else [])
    retries = [t.user_attrs.get("retry_of", t.system_attrs.get("failed_trial")) for t in trials]
    assert [r for r in retries if r is not None] == ([killed] if killed is not None else [])
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)  # nothing left running


def journal_study(tmp_path: Path, name: str) -> optuna.Study:
    path = tmp_path / "runs" / name / "journal.log"
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


TAGUCHI = ["search", "taguchi", "--factors", "factors.toml", "--objective", "synthetic", "--no-confirm"]


def test_two_worker_processes_on_the_journal_file_and_a_killed_worker(tmp_path):
    write_factors(tmp_path, L9_FACTORS)
    proc = start([*TAGUCHI, "--study", "j", "--workers", "2", "--synthetic-seconds", "1.5"], tmp_path)
    study = journal_study(tmp_path, "j")
    victim = running_trial(study)
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    out = finish(proc)
    assert "1 worker process(es) died" in out
    check_design_ran_once_each(study, rows=9, killed=victim.number)
    assert len({t.user_attrs["pid"] for t in study.get_trials() if t.state == TrialState.COMPLETE}) >= 1


@pytest.fixture(scope="module")
def postgres_url() -> str:
    try:
        import psycopg

        psycopg.connect(POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3).close()
    except Exception as e:  # no server here: CI starts one, a developer may not have one
        if os.environ.get("APOPTOSIS_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"no PostgreSQL server at {POSTGRES_URL.split('@')[-1]} ({type(e).__name__}); "
                    "run: bash scripts/postgres.sh")  # fmt: skip
    return POSTGRES_URL


def test_two_machines_share_one_postgres_study(tmp_path, postgres_url):
    """As on two machines: one command queues the design, two more (each its own process and
    folder) work it against the same database URL."""
    name = f"pg-{uuid.uuid4().hex[:8]}"
    write_factors(tmp_path, L9_FACTORS)
    common = [*TAGUCHI, "--study", name, "--storage", postgres_url, "--synthetic-seconds", "0.5"]
    finish(start([*common, "--workers", "0"], tmp_path))
    machines = []
    for i in range(2):
        (tmp_path / f"m{i}").mkdir()
        (tmp_path / f"m{i}" / "factors.toml").write_text(L9_FACTORS)
        machines.append(start([*common, "--workers", "1"], tmp_path / f"m{i}"))
    for proc in machines:
        finish(proc)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    check_design_ran_once_each(study, rows=9, killed=None)
    ran = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    assert len({t.user_attrs["pid"] for t in ran}) == 2  # both machines took rows


def test_a_frozen_worker_is_failed_by_its_heartbeat_and_its_trial_retried(tmp_path, postgres_url):
    """A stopped worker (a machine that hangs or loses the network) keeps its pid, so only its
    missing heartbeat tells the other worker that its trial is lost."""
    name = f"pg-{uuid.uuid4().hex[:8]}"
    write_factors(tmp_path, L9_FACTORS)
    common = [*TAGUCHI, "--study", name, "--storage", postgres_url, "--synthetic-seconds", "1", "--heartbeat", "1"]
    finish(start([*common, "--workers", "0"], tmp_path))
    first = start([*common, "--workers", "1"], tmp_path)
    study = optuna.load_study(study_name=name, storage=postgres_url)
    victim = running_trial(study)
    second = start([*common, "--workers", "1"], tmp_path)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        finish(second)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    check_design_ran_once_each(study, rows=9, killed=victim.number)
