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

from attnlab.sweep.spec import Study

# Heartbeats and stale-trial recovery are marked experimental in Optuna; they are what we rely on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_ENV = "ATTNLAB_HEARTBEAT_S"  # tests shorten it
SETTLED_FAILURES = ("diverged", "error")  # rerunning these would fail the same way


def heartbeat_interval() -> int:
    return int(os.environ.get(HEARTBEAT_ENV, "30"))


def storage_url(study: Study, override: str | None = None) -> str:
    """--storage, else the study file's `storage`, else SQLite in the study's folder."""
    url = override or study.storage
    if url:
        return url
    folder = Path(study.output_dir) / study.name
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def redact(url: str) -> str:
    """The URL with any password masked, for logs and reports."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - never let a malformed URL leak through an error path
        return "<storage url>"


def open_study(study: Study, url: str) -> optuna.Study:
    interval = heartbeat_interval()
    storage = RDBStorage(
        url, heartbeat_interval=interval, grace_period=2 * interval,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
        engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else {"connect_args": {"timeout": 60}},
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=study.name, storage=storage, direction=study.direction, load_if_exists=True,
                               sampler=_sampler(study), pruner=_pruner(study))


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
    """(row, seed) pairs that need no new trial: complete, queued, running, or failed for good."""
    keys = set()
    for t in ostudy.get_trials(deepcopy=False):
        settled_failure = t.state == TrialState.FAIL and t.user_attrs.get("fail_kind") in SETTLED_FAILURES
        if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING) or (settled_failure and not retry_failed):
            keys.add(trial_key(t))
    return keys


_ENGINES: dict[str, Any] = {}


@contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    """A PostgreSQL session lock: serialises queueing and claiming across machines."""
    import sqlalchemy

    engine = _ENGINES.setdefault(url, sqlalchemy.create_engine(url, pool_pre_ping=True))
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(72540001)"))
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(72540001)"))


def _lock(url: str):
    """Queueing and claiming run one worker at a time: a lock file beside an SQLite database
    (one machine), an advisory lock on PostgreSQL (any number of machines)."""
    if url.startswith("sqlite:///"):
        return FileLock(url.removeprefix("sqlite:///") + ".claim.lock")
    if url.startswith("postgresql"):
        return _advisory_lock(url)
    return nullcontext()


def enqueue_missing(ostudy: optuna.Study, study: Study, url: str, retry_failed: bool = False) -> int:
    """Queue every (row, seed) without a trial; returns how many were queued."""
    with _lock(url):
        have = pending_or_done(ostudy, retry_failed)
        missing = [(row.id, seed) for row, seed in study.trials() if (row.id, seed) not in have]
        for row_id, seed in missing:
            ostudy.enqueue_trial({"row": row_id, "seed": seed})
    return len(missing)


def claim(ostudy: optuna.Study, url: str) -> optuna.Trial | None:
    """Move one WAITING trial to RUNNING for this worker; None when the queue is empty."""
    optuna.storages.fail_stale_trials(ostudy)  # trials of dead workers go back to the queue
    with _lock(url):
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

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        self.thread.join()
