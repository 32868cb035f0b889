"""A worker: claim a queued (row, seed) trial, train it, store its result, repeat."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import traceback
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from attnlab.results import METRICS, result_keys
from attnlab.sweep.spec import Study
from attnlab.sweep.storage import Heartbeat, claim, heartbeat_interval, open_study, others_running
from attnlab.sweep.urls import redact

# result.json fields stored on the trial (Optuna user attributes) for status, export, reports.
RESULT_ATTRS = result_keys("trial")


def run_trial(study: Study, ostudy: optuna.Study, trial: optuna.Trial, worker: str, threads: int | None = None) -> None:
    """Train one claimed trial; the trial ends COMPLETE with its metric, or FAIL with a reason."""
    from attnlab.errors import StopTimeReached
    from attnlab.train.run import train

    # The (row, seed) it was queued with, read as stored rather than suggested: a categorical
    # whose choices grow (rows or seeds added to the file) is an error to Optuna.
    fixed = ostudy._storage.get_trial(trial._trial_id).system_attrs["fixed_params"]
    row_id, seed = str(fixed["row"]), int(fixed["seed"])
    row = study.row(row_id)
    config = study.trial_config(row, seed)
    if threads:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, threads=threads))
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("row", row_id)  # shown by Optuna's own tools, which do not read fixed params
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("changes", row.changes)
    extra = {"study": study.name, "row": row_id, "seed": seed, "trial_number": trial.number,
             "trial_id": trial._trial_id, "changes": row.changes}
    with Heartbeat(ostudy, trial._trial_id):
        try:
            # A row edited and rerun (--rerun-changed) finds its old run folder: kept aside, never resumed.
            result = train(config, extra=extra, replace_changed=True)
        except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C into SystemExit(1)
            _fail(ostudy, trial, "interrupted", "stopped by Ctrl-C; `attnlab sweep run` again resumes it")
            raise
        except StopTimeReached as error:  # not settled: the next `sweep run` queues it, and it resumes
            _fail(ostudy, trial, "interrupted", f"the sweep's time ran out (--max-minutes): {error}")
            return
        except FloatingPointError as error:
            _fail(ostudy, trial, "diverged", str(error))
            return
        except torch.cuda.OutOfMemoryError:  # not settled: it runs again with fewer workers per device
            _fail(ostudy, trial, "out_of_memory", out_of_memory_reason())
            return
        except Exception as error:  # noqa: BLE001 - any failure of one row must not stop the study
            _fail(ostudy, trial, "error", "".join(traceback.format_exception_only(error)).strip()[-2000:])
            return
    for key in RESULT_ATTRS:
        if key in result:
            trial.set_user_attr(key, result[key])
    ostudy.tell(trial, result[study.metric])
    fixed = result.get("fixed_seconds") or {}
    print(f"[{worker}] {row_id} seed {seed}: {study.metric} {result[study.metric]:.2f} after {result['wall_s']} s; "
          f"fixed cost {fixed.get('start_to_first_step')} s to the first step, "
          f"{fixed.get('training_end_to_result')} s from the end of training to the result", flush=True)


def out_of_memory_reason() -> str:
    from attnlab.train.launch import MEMORY_FRACTION_ENV

    share = os.environ.get(MEMORY_FRACTION_ENV)
    where = f"its share of the GPU ({float(share):.3g} of the memory: `--workers-per-device`)" if share else "the GPU"
    return (f"the trial ran out of memory on {where}: start fewer workers per device, or lower data.max_tokens; "
            "`attnlab sweep run` again reruns it")


def _fail(ostudy: optuna.Study, trial: optuna.Trial, kind: str, reason: str) -> None:
    trial.set_user_attr("fail_kind", kind)
    trial.set_user_attr("fail_reason", reason)
    ostudy.tell(trial, state=TrialState.FAIL)


def work(study: Study, url: str, worker: str = "worker-0", wait_for_others: bool = True,
         threads: int | None = None) -> int:
    """Run queued trials until none is left (and, by default, none is running elsewhere: a
    running trial may yet go stale and come back), or until the stop time ($ATTNLAB_STOP_AT,
    `--max-minutes`), which also stops the trial in progress at a checkpoint. The data of the
    last trial stays prepared for the next. Returns how many trials this worker ran."""
    from attnlab.data.datamodule import reuse_prepared
    from attnlab.train.callbacks import stop_time

    ostudy = open_study(study, url)
    done, stop_at = 0, stop_time()
    print(f"[{worker}] study {study.name!r} on {redact(url)}", flush=True)
    with reuse_prepared():
        while stop_at is None or time.time() < stop_at:
            trial = claim(ostudy, url)
            if trial is None:
                if wait_for_others and others_running(ostudy):
                    time.sleep(max(1, heartbeat_interval() // 2))
                    continue
                return done
            run_trial(study, ostudy, trial, worker, threads)
            done += 1
    print(f"[{worker}] the sweep's time is up: no further trial started", flush=True)
    return done


def suggest(trial: optuna.Trial, key: str, spec: dict[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if isinstance(low, int) and isinstance(high, int) and not log:
        return trial.suggest_int(key, low, high)
    return trial.suggest_float(key, float(low), float(high), log=log)


def tune(study: Study, url: str, worker: str = "worker-0", threads: int | None = None) -> int:
    """Sample, train and (maybe) prune trials until the study holds n_trials of them, counted
    over every worker (MaxTrialsCallback). Heartbeats and stale-trial reruns come from the
    RDB storage inside `optimize`."""
    from attnlab.data.datamodule import reuse_prepared
    from attnlab.sweep.pruning import PruneOnValidation
    from attnlab.train.callbacks import stop_time
    from attnlab.train.run import train

    ostudy = open_study(study, url)
    print(f"[{worker}] tuning study {study.name!r} on {redact(url)}", flush=True)

    def objective(trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, spec) for key, spec in study.space.items()}
        config = study.tuned_config(params, trial.number)
        if threads:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, threads=threads))
        trial.set_user_attr("worker", worker)
        extra = {"study": study.name, "row": f"t{trial.number}", "trial_number": trial.number,
                 "trial_id": trial._trial_id, "changes": params}
        try:
            result = train(config, extra=extra, callbacks=[PruneOnValidation(trial, METRICS[study.metric].logged)])
        except FloatingPointError as error:
            trial.set_user_attr("fail_kind", "diverged")
            trial.set_user_attr("fail_reason", str(error))
            raise
        for key in RESULT_ATTRS:
            if key in result:
                trial.set_user_attr(key, result[key])
        return result[study.metric]

    # The budget counts trials in every state, over all workers. MaxTrialsCallback stops a worker
    # after a trial ends; the remaining count stops one that starts with the budget spent. Workers
    # starting trials at the same moment can still overshoot by at most one trial each.
    # Queued (WAITING) trials, e.g. enqueued by hand, are run within the budget, not on top of it.
    # A stop time ends the worker after the trial in progress (a tuning trial is not resumed).
    counted = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    remaining = study.n_trials - len(ostudy.get_trials(deepcopy=False, states=counted))
    stop_at = stop_time()
    if remaining > 0 and (stop_at is None or stop_at > time.time()):
        budget = optuna.study.MaxTrialsCallback(study.n_trials, states=counted)
        timeout = stop_at - time.time() if stop_at is not None else None
        with reuse_prepared(), ending_trials_in_full():
            ostudy.optimize(objective, n_trials=remaining, timeout=timeout, callbacks=[budget], catch=(Exception,))
    return sum(1 for t in ostudy.get_trials(deepcopy=False) if t.user_attrs.get("worker") == worker)


@contextlib.contextmanager
def ending_trials_in_full():
    """Tuning trials are not resumed, so a stop time only keeps new ones from starting."""
    from attnlab.train.callbacks import STOP_AT_ENV

    saved = os.environ.pop(STOP_AT_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[STOP_AT_ENV] = saved


def summary(ostudy: optuna.Study) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for t in ostudy.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts
