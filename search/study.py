"""One Optuna study shared by workers: its storage, its queue of trials and the worker loop.

Every kind of search works the same way. The coordinator (the command a user runs) creates or
loads the study and *enqueues* the trials it plans, once: empty ones for Optuna (the sampler
fills them in when a worker starts them), the array's rows for Taguchi. Workers, in this process,
in child processes or on other machines running the same command, only ever take queued trials,
so a study ends with exactly the planned trials, none run twice. A worker that dies mid-trial is
noticed (its pid on this host, or a stale heartbeat on a database) and its trial is failed and
queued again, once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from apoptosis.core.config import RunConfig
from apoptosis.core.errors import ApoptosisError
from apoptosis.plasticity.benchmark import Settings
from apoptosis.search.algorithms import make_pruner, make_sampler
from apoptosis.search.objective import Objective, PlasticityObjective, SyntheticObjective, TrainingObjective
from apoptosis.search.space import LevelSpace, SearchSpace

JOURNAL_FILE = "journal.log"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
POLL_SECONDS = 0.5


@dataclass
class StudySpec:
    """Everything a worker needs to rebuild the study and its objective in another process."""

    name: str
    study_dir: Path
    kind: str  # "optuna" or "taguchi"
    objective: str  # "train", "plasticity" or "synthetic"
    base: RunConfig
    steps: int
    seeds: list[int]
    space: SearchSpace | LevelSpace
    storage: str | None = None  # an RDB URL, or None for the journal file in study_dir
    sampler: str = "tpe"
    sampler_seed: int = 0
    pruner: str = "median"
    synthetic: SyntheticObjective = field(default_factory=SyntheticObjective)
    plasticity: Settings | None = None  # the benchmark's options, for the plasticity objective
    heartbeat_s: int = 60
    retries: int = 1

    def signature(self) -> dict[str, Any]:
        """What must not change when a study is resumed or joined from another machine."""
        signature = {
            "kind": self.kind,
            "objective": self.objective,
            "steps": self.steps,
            "seeds": self.seeds,
            "space": self.space.describe(),
            "base": self.base.to_dict() if self.objective == "train" else None,
        }
        if self.objective == "plasticity" and self.plasticity is not None:  # only here: older studies match
            signature["plasticity"] = asdict(self.plasticity)
        return signature

    @property
    def storage_label(self) -> str:
        """Where the study lives, fit to print: a database URL without its password."""
        if self.storage is None:
            return str(self.study_dir / JOURNAL_FILE)
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.storage).render_as_string(hide_password=True)
        except Exception:  # not parseable: say so without echoing it
            return "(unparseable database URL)"


def open_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    """The journal file under the study folder (safe for several processes on one machine), or a
    database URL (PostgreSQL for several machines) with heartbeats, so a lost worker's trial is
    failed and retried."""
    if spec.storage is None:
        spec.study_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(spec.study_dir / JOURNAL_FILE)))
    if "://" not in spec.storage:
        raise ApoptosisError(
            f"--storage {spec.storage!r} is not a database URL (e.g. postgresql://user:pw@host/db); "
            "leave it out to use the journal file in the study folder"
        )
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                spec.storage,
                heartbeat_interval=spec.heartbeat_s,
                grace_period=2 * spec.heartbeat_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=spec.retries),
            )
    except Exception as e:  # a bad URL or an unreachable server: the driver's own message says which
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise ApoptosisError(f"cannot open --storage {spec.storage_label}: {reason}") from None


def sampler_seed(base: int, worker: int, trials_so_far: int) -> int:
    """The seed of one worker's sampler at one start. A new study's workers get ``base + worker``
    (reproducible); a resumed one's get a seed that also depends on how many trials the study
    already holds, so a restarted worker does not draw its earlier points again."""
    if trials_so_far == 0:
        return base + worker
    return int(np.random.SeedSequence([base, worker, trials_so_far]).generate_state(1)[0])


def load_study(spec: StudySpec, storage: optuna.storages.BaseStorage, worker: int = 0) -> optuna.Study:
    """Create or load the study, with a sampler seeded per worker and per start."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines and tables say what happens
    min_resource, max_resource = 1, spec.synthetic.reports
    if spec.objective == "train":
        min_resource, max_resource = min(spec.base.trainer.eval_interval, spec.steps), spec.steps * len(spec.seeds)
    elif spec.objective == "plasticity" and spec.plasticity is not None:
        max_resource = spec.plasticity.tasks * len(spec.seeds)  # one report per task
    pruner = make_pruner(spec.pruner if spec.kind == "optuna" else "none", max_resource, min_resource)
    study = optuna.create_study(
        study_name=spec.name, storage=storage, pruner=pruner, direction="minimize", load_if_exists=True
    )
    seed = sampler_seed(spec.sampler_seed, worker, len(study.get_trials(deepcopy=False)))
    study.sampler = make_sampler(spec.sampler if spec.kind == "optuna" else "random", seed)
    return study


def check_signature(study: optuna.Study, spec: StudySpec) -> None:
    """A resumed or joined study must be the same search; a new one records what it is."""
    stored = study.user_attrs.get("signature")
    wanted = json.loads(json.dumps(spec.signature(), default=str))
    if stored is None:
        study.set_user_attr("signature", wanted)
    elif stored != wanted:
        changed = sorted(k for k in wanted if stored.get(k) != wanted.get(k))
        raise ApoptosisError(
            f"study {spec.name!r} in {spec.storage_label} was started with different {', '.join(changed)}: "
            "use the same options to resume it, or another --study"
        )


def build_objective(spec: StudySpec) -> Objective:
    if spec.objective == "synthetic":
        return spec.synthetic
    if spec.objective == "plasticity":
        if spec.plasticity is None:
            raise ApoptosisError("the plasticity objective needs the benchmark's settings")
        return PlasticityObjective(spec.plasticity, spec.study_dir / "trials")
    return TrainingObjective(spec.base, spec.steps, spec.study_dir / "trials")


def queued(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("queued"))


def enqueue(study: optuna.Study, params: dict[str, Any], **attrs: Any) -> None:
    study.enqueue_trial(params, user_attrs={"queued": True, **attrs})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reclaim_dead_workers(study: optuna.Study, storage: optuna.storages.BaseStorage, retries: int) -> list[int]:
    """Fail the running trials of workers on this host whose process is gone, and queue each
    again (at most ``retries`` times). Returns the failed trial numbers. Setting the state is
    atomic in the storage, so two workers never both reclaim one trial."""
    host = socket.gethostname()
    reclaimed = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != host or "pid" not in attrs or _pid_alive(attrs["pid"]):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        reclaimed.append(trial.number)
        attempt = attrs.get("attempt", 0) + 1
        if attempt <= retries:
            params = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
            keep = {k: v for k, v in attrs.items() if k in ("row", "confirmation")}
            enqueue(study, params, retry_of=trial.number, attempt=attempt, **keep)
    return reclaimed


def run_trial_fn(spec: StudySpec, objective: Objective) -> Callable[[optuna.Trial], float]:
    """The function Optuna calls: refuses unqueued trials, records who runs it and why it failed."""

    def run(trial: optuna.Trial) -> float:
        if not trial.user_attrs.get("queued"):
            # Two workers raced for the last queued trial and Optuna made a fresh one: not planned.
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("the queue was empty")
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        started = time.perf_counter()
        try:
            settings = spec.space.suggest(trial)
            trial.set_user_attr("settings", settings)
            return objective(trial, settings, spec.seeds)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # a failed run is a failed trial, with its reason; the study goes on
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}".splitlines()[0][:300])
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))

    return run


def work(spec: StudySpec, worker: int = 0, on_trial: Callable[[], None] | None = None) -> None:
    """Take queued trials until none is waiting or running anywhere (a running one may still
    die and come back to the queue)."""
    storage = open_storage(spec)
    study = load_study(spec, storage, worker)
    run = run_trial_fn(spec, build_objective(spec))
    callbacks = [lambda study, trial: on_trial()] if on_trial else []
    while True:
        reclaim_dead_workers(study, storage, spec.retries)
        with warnings.catch_warnings():  # experimental in Optuna, and the way heartbeats take effect
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))]
        if TrialState.WAITING in states:
            study.optimize(run, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=False)
        elif TrialState.RUNNING in states:
            time.sleep(POLL_SECONDS)
        else:
            return


def _work_in_child(spec: StudySpec, worker: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.getLogger("optuna").setLevel(logging.ERROR)
    work(spec, worker)


def run_workers(spec: StudySpec, workers: int, on_poll: Callable[[], None]) -> list[int]:
    """``workers`` processes (or this one, for 1) working the queue; ``on_poll`` is called about
    twice a second to show progress. Returns the exit codes of child processes that failed."""
    if workers == 1:
        work(spec, 0, on_trial=on_poll)
        return []
    ctx = get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [ctx.Process(target=_work_in_child, args=(spec, i, threads), daemon=False) for i in range(workers)]
    for p in procs:
        p.start()
    try:
        while any([p.is_alive() for p in procs]):  # every child polled: is_alive reaps a dead one, so
            # its pid disappears and the other workers see that its trial has lost its worker
            on_poll()
            time.sleep(POLL_SECONDS)
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    on_poll()
    return [p.exitcode for p in procs if p.exitcode]


def trials_frame(study: optuna.Study):
    """One row per trial: number, state, value, settings, seed values, seconds, failure reason."""
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        if attrs.get("surplus"):
            continue
        reason = attrs.get("fail_reason")
        if t.state == TrialState.FAIL and reason is None:
            reason = "worker died during the trial (no result)"
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.state == TrialState.COMPLETE else None,
                **{f"params_{k}": v for k, v in attrs.get("settings", t.params).items()},
                "seed_values": json.dumps(attrs.get("seed_values")) if "seed_values" in attrs else None,
                "seconds": attrs.get("seconds"),
                "row": attrs.get("row"),
                "retry_of": attrs.get("retry_of", t.system_attrs.get("failed_trial")),
                "fail_reason": reason,
                "pruned_at": max(t.intermediate_values)
                if t.state == TrialState.PRUNED and t.intermediate_values
                else None,
                "pid": attrs.get("pid"),
            }
        )
    return pd.DataFrame(rows)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "settings" in t.user_attrs
    ]
    return min(complete, key=lambda t: t.value) if complete else None


def coordinate(spec: StudySpec, plan: Callable[[optuna.Study], None], workers: int, console: Console) -> optuna.Study:
    """Open the study, check it is the same search, let ``plan`` enqueue what is missing, then
    run ``workers`` workers (0: only prepare, for workers started elsewhere) with a progress bar."""
    if workers < 0:
        raise ApoptosisError(f"--workers must be >= 0, got {workers}")
    storage = open_storage(spec)
    study = load_study(spec, storage)
    check_signature(study, spec)
    reclaim_dead_workers(study, storage, spec.retries)  # left over from a killed earlier run
    plan(study)
    if workers == 0:
        waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        console.print(f"study {spec.name!r} is ready in {spec.storage_label}: {waiting} queued trials")
        return study
    seen: set[int] = set()
    columns = [TextColumn(f"[bold]{spec.kind} {spec.name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("trials", total=None)

        def poll() -> None:
            trials = [t for t in study.get_trials(deepcopy=False) if queued(t)]
            done = [t for t in trials if t.state in FINISHED]
            progress.update(task, total=len(trials), completed=len(done))
            for t in done:
                if t.number not in seen:
                    seen.add(t.number)
                    progress.console.log(trial_line(t))

        failed_workers = run_workers(spec, workers, poll)
    if failed_workers:
        console.print(f"[yellow]{len(failed_workers)} worker process(es) died (exit codes {failed_workers})")
    reclaim_dead_workers(study, storage, spec.retries)
    return study


def trial_line(t: FrozenTrial) -> str:
    """One log line per finished trial."""
    settings = ", ".join(
        f"{k.removeprefix('strategy.')}={_short(v)}" for k, v in t.user_attrs.get("settings", {}).items()
    )
    if t.state == TrialState.COMPLETE:
        return f"trial {t.number}: {t.value:.4f}  {settings}"
    if t.state == TrialState.PRUNED:
        return f"trial {t.number}: pruned at step {max(t.intermediate_values, default=0)}  {settings}"
    return f"trial {t.number}: [red]failed[/red] {t.user_attrs.get('fail_reason', 'worker died')}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
