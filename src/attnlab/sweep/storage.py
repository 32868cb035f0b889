"""The Optuna study behind an ablation study: storage, queue of (row, seed) trials, claiming.

Every (row, seed) is enqueued once as a WAITING trial; workers claim WAITING trials one at a
time (RDB row lock on PostgreSQL, a file lock beside an SQLite file), so however many workers
run, each row runs once per seed. A worker that dies stops sending heartbeats; the next
worker to look marks its trial failed and re-enqueues it (RetryHeartbeatStaleTrialCallback),
and the rerun resumes from the trial's last checkpoint.
"""

from __future__ import annotations

import os
import threading
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import optuna
from filelock import FileLock
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from attnlab.errors import StorageError, StudyError
from attnlab.sweep.spec import Study
from attnlab.sweep.urls import CONNECT_TIMEOUT_S, check_storage_url, redact, storage_faults

# Heartbeats and stale-trial recovery are marked experimental in Optuna; they are what we rely on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_ENV = "ATTNLAB_HEARTBEAT_S"  # tests shorten it
SETTLED_FAILURES = ("diverged", "error")  # rerunning these would fail the same way


def heartbeat_interval() -> int:
    return int(os.environ.get(HEARTBEAT_ENV, "30"))


def storage_url(study: Study, override: str | None = None) -> str:
    """--storage, else the study file's `storage`, else SQLite in the study's folder.

    A given URL is checked before anything is opened or created (StorageError); only the
    default folder, which is attnlab's own, is created here.
    """
    if override:
        return check_storage_url(override, "--storage")
    if study.storage:
        return check_storage_url(study.storage, f"{study.path}: storage")
    path = default_database(study)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def default_database(study: Study) -> Path:
    """Where a study without a storage URL keeps its trials: SQLite in the study's folder."""
    return Path(study.output_dir) / study.name / "study.db"


SCHEMA_LOCK_KEY = 72540002  # creating Optuna's tables and the study: one process at a time
CLAIM_LOCK_KEY = 72540001  # queueing and claiming trials


def open_study(study: Study, url: str) -> optuna.Study:
    """The study in its storage, its tables and the study created on first use.

    Workers started together on a fresh PostgreSQL database would otherwise race to create
    Optuna's tables and enum types (UniqueViolation on `studydirection`), so creation runs
    under a lock. Server faults become one-line StorageErrors; nothing is left half-made.
    """
    check_storage_url(url, "storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with storage_faults(url), queue_lock(url, SCHEMA_LOCK_KEY):
        storage = _rdb_storage(url)
        return optuna.create_study(study_name=study.name, storage=storage, direction=study.direction,
                                   load_if_exists=True, sampler=_sampler(study), pruner=_pruner(study))


def open_existing(study: Study, url: str) -> optuna.Study:
    """The study for verbs that only read (status, best, export, report): never creates a file,
    a table or a study; one missing from the storage is a StudyError naming what it holds."""
    check_storage_url(url, "storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with storage_faults(url):
        names = _study_names(url)
        if study.name in names:
            storage = RDBStorage(url, skip_table_creation=True, engine_kwargs=_engine_kwargs(url))
            return optuna.load_study(study_name=study.name, storage=storage)
    raise StudyError(study.path, [f"the storage {redact(url)} holds no study named {study.name!r}; it holds: "
                                  f"{', '.join(names) or 'none'} (run `attnlab sweep run` first, or check --storage)"])


def _study_names(url: str) -> list[str]:
    """Names of the studies in a storage, without creating anything (an absent SQLite file or a
    database without Optuna's tables holds none)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return []
    engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
    try:
        with engine.connect() as connection:
            if not sqlalchemy.inspect(connection).has_table("studies"):
                return []
            return [row[0] for row in connection.execute(sqlalchemy.text("SELECT study_name FROM studies"))]
    finally:
        engine.dispose()


def _rdb_storage(url: str) -> RDBStorage:
    interval = heartbeat_interval()
    try:
        return RDBStorage(url, heartbeat_interval=interval, grace_period=2 * interval,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                          engine_kwargs=_engine_kwargs(url))
    except RuntimeError as error:  # Optuna's "schema is too old/new": a storage fault, not a bug
        if "storage upgrade" not in str(error):
            raise
        raise StorageError(f"storage {redact(url)}: its tables were written by another Optuna version; "
                           "run `optuna storage upgrade --storage URL` (back it up first)") from error


def _engine_kwargs(url: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 60}}  # wait for another worker's write, do not fail
    if "connect_timeout" in parsed.query:  # the user's own choice
        return {"pool_pre_ping": True}
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}


def _sampler(study: Study) -> optuna.samplers.BaseSampler:
    """The same seed on every worker, so a study's suggestions do not depend on who asks."""
    if study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=study.sampler_seed)
    return optuna.samplers.TPESampler(seed=study.sampler_seed, n_startup_trials=min(5, max(study.n_trials // 3, 1)))


def _pruner(study: Study) -> optuna.pruners.BasePruner:
    if study.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if study.pruner == "none" or not study.tuning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def trial_key(trial: optuna.trial.FrozenTrial) -> tuple[str, int] | None:
    params = trial.system_attrs.get("fixed_params") or trial.params
    return (params["row"], int(params["seed"])) if "row" in params else None


def pending_or_done(ostudy: optuna.Study, retry_failed: bool = False) -> set[tuple[str, int]]:
    """(row, seed) pairs that need no new trial: complete, queued, running, or failed for good;
    trials superseded by an edit of their row do not count."""
    from attnlab.sweep.definitions import superseded

    keys, gone = set(), superseded(ostudy)
    for t in ostudy.get_trials(deepcopy=False):
        if t._trial_id in gone:
            continue
        settled_failure = t.state == TrialState.FAIL and t.user_attrs.get("fail_kind") in SETTLED_FAILURES
        live = t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
        if live or (settled_failure and not retry_failed):
            keys.add(trial_key(t))
    return keys


_ENGINES: dict[str, Any] = {}


def _lock_engine(url: str) -> Any:
    """One plain engine per URL for advisory locks: it needs no table, so it also serves the
    lock taken before Optuna's tables exist."""
    import sqlalchemy

    if url not in _ENGINES:
        _ENGINES[url] = sqlalchemy.create_engine(url, **_engine_kwargs(url))
    return _ENGINES[url]


@contextmanager
def _advisory_lock(url: str, key: int) -> Iterator[None]:
    """A PostgreSQL session lock, held on a connection of its own: serialises a step across
    machines, and is released by the server if this process dies."""
    import sqlalchemy

    # Autocommit: the lock is the session's, and no transaction stays open while it is held.
    with _lock_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def queue_lock(url: str, key: int = CLAIM_LOCK_KEY) -> Any:
    """One worker at a time: a lock file beside an SQLite database (one machine; it guards
    every step), an advisory lock per step on PostgreSQL (any number of machines)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.drivername.partition("+")[0]
    if backend == "sqlite" and parsed.database and not parsed.database.startswith("file:"):
        return FileLock(parsed.database + ".claim.lock")
    if backend == "postgresql":
        return _advisory_lock(url, key)
    return nullcontext()


def enqueue_missing(ostudy: optuna.Study, study: Study, url: str, retry_failed: bool = False) -> int:
    """Queue every (row, seed) without a trial; returns how many were queued."""
    with storage_faults(url), queue_lock(url):
        have = pending_or_done(ostudy, retry_failed)
        missing = [(row.id, seed) for row, seed in study.trials() if (row.id, seed) not in have]
        for row_id, seed in missing:
            ostudy.enqueue_trial({"row": row_id, "seed": seed})
    return len(missing)


def claim(ostudy: optuna.Study, url: str) -> optuna.Trial | None:
    """Move one WAITING trial to RUNNING for this worker; None when the queue is empty."""
    with storage_faults(url):
        optuna.storages.fail_stale_trials(ostudy)  # trials of dead workers go back to the queue
    with storage_faults(url), queue_lock(url):
        for frozen in ostudy.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if ostudy._storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(ostudy, frozen._trial_id)
    return None


def others_running(ostudy: optuna.Study) -> bool:
    return bool(ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


class Heartbeat:
    """Records a heartbeat for a running trial every `interval` seconds, in a thread."""

    def __init__(self, ostudy: optuna.Study, trial_id: int) -> None:
        self.storage, self.trial_id = ostudy._storage, trial_id
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.storage.record_heartbeat(self.trial_id)
            if self.stop_event.wait(heartbeat_interval()):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        self.thread.join()
