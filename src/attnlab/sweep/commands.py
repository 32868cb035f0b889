"""`attnlab sweep run | worker | status | best | export`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

STORAGE_ENV = "ATTNLAB_STORAGE"  # how `run` hands the URL to its workers: never on a command line


def _study_and_url(args: argparse.Namespace):
    from attnlab.paths import check_writable_folder
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import storage_url

    study = load_study(args.study, args.set)  # every problem of the file, before anything starts
    check_writable_folder(study.output_dir, f"{args.study}: output_dir")
    return study, storage_url(study, args.storage or os.environ.get(STORAGE_ENV))


def worker_name() -> str:
    """Host and process id: workers on many machines, or started one by one, stay apart."""
    return f"{socket.gethostname()}-{os.getpid()}"


def train_configs(study) -> list:
    """The TrainConfig of every row (the base's for a tuning study)."""
    return [row.config.train for row in study.rows] or [study.base.train]


def check_hardware(study) -> None:
    """Each distinct accelerator/devices/strategy of the study's rows, tried before any trial."""
    from attnlab.train.launch import resolve as check

    seen = set()
    for t in train_configs(study):
        key = (t.accelerator, str(t.devices), t.strategy, t.num_nodes, t.precision)
        if key not in seen:
            seen.add(key)
            check(t)


def prepare_data(study) -> None:
    """Each distinct data setting of the study's rows prepared here, once, before any worker
    starts: a data error (a missing mirror, a bad file) is one line with nothing written, and
    the workers find the cache warm instead of each waiting on one preparation. A tuning study
    that samples data fields prepares them in its trials."""
    import time

    from attnlab.data.datamodule import BATCHING, prepare, settings_key
    from attnlab.fields import flatten

    sampled = {key.split(".")[1] for key in flatten(study.space) if key.startswith("data.")}
    if sampled - set(BATCHING):
        return
    start = time.perf_counter()
    settings = {settings_key(row.config.data): row.config.data for row in study.rows} or {"": study.base.data}
    for data in settings.values():
        prepare(data)
    print(f"data ready: {len(settings)} setting{'s' if len(settings) > 1 else ''} in "
          f"{time.perf_counter() - start:.1f} s", flush=True)


def _checked_study(args: argparse.Namespace):
    """The study and its URL for verbs that run trials: the file, the output folder and the
    hardware checked, nothing opened or written yet. Starts the clock of --max-minutes."""
    study, url = _study_and_url(args)
    check_hardware(study)
    set_stop_time(args.max_minutes)
    return study, url


def set_stop_time(minutes: float | None) -> None:
    """--max-minutes as the stop time every worker and rank reads ($ATTNLAB_STOP_AT): the
    earlier of it and one already set (a job's own limit)."""
    import time

    from attnlab.train.callbacks import STOP_AT_ENV, stop_time

    if minutes is not None:
        earlier = min(t for t in (stop_time(), time.time() + 60 * minutes) if t is not None)
        os.environ[STOP_AT_ENV] = repr(earlier)


def _open_for_work(study, url: str, rerun_changed: bool = False):
    """The Optuna study (created on first use) with the row definitions checked; returns the
    rows marked to rerun too."""
    from attnlab.sweep import definitions
    from attnlab.sweep.storage import open_study, queue_lock
    from attnlab.sweep.urls import storage_faults

    ostudy = open_study(study, url)
    with storage_faults(url), queue_lock(url):
        rerun = definitions.check(ostudy, study, rerun_changed=rerun_changed)
    return ostudy, rerun


def cmd_run(args: argparse.Namespace) -> int:
    from attnlab.sweep.storage import enqueue_missing
    from attnlab.sweep.urls import redact
    from attnlab.sweep.worker import summary, tune, work

    study, url = _checked_study(args)
    # Where the workers go, checked before the storage is opened: a bad --devices writes nothing.
    placement = worker_devices(study, args.devices, args.workers, args.workers_per_device)
    prepare_data(study)  # the last check, the only slow one
    ostudy, rerun = _open_for_work(study, url, rerun_changed=args.rerun_changed)
    if rerun:
        print(f"rows {', '.join(rerun)} changed: their old trials are superseded and they run again", flush=True)
    if study.tuning:
        print(f"tuning study {study.name!r}: {study.n_trials} trials, {study.sampler} sampler, "
              f"{study.pruner} pruner on {study.metric}; storage {redact(url)}", flush=True)
    else:
        queued = enqueue_missing(ostudy, study, url, retry_failed=args.retry_failed)
        print(f"study {study.name!r}: {len(study.rows)} rows x {len(study.seeds)} seeds = {len(study.trials())} "
              f"trials; {queued} queued now; storage {redact(url)}", flush=True)
    if placement == [None]:
        (tune if study.tuning else work)(study, url, worker_name(), threads=args.threads)
    else:  # --devices: even one worker is a process of its own, so that it sees only its devices
        if args.workers_per_device > 1:
            print(sharing_note(args.workers_per_device), flush=True)
        _spawn_workers(args, url, placement, args.workers_per_device)
    print(json.dumps(summary(ostudy)))
    return 0


def worker_devices(study, devices: str | None, workers: int, per_device: int = 1) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES (None: not set), one entry per worker to start.

    A trial on one device gets one device id, a trial that runs DDP over `train.devices` of them
    a disjoint group (--workers 2 --devices 0,1,2,3 with train.devices: 2 gives 0,1 and 2,3).
    `--workers N` deals the ids (groups) out in turn; `--workers-per-device K` starts K workers
    on each of them instead (small trials that leave most of a GPU idle)."""
    from attnlab.config import device_count
    from attnlab.errors import ConfigError

    ids = [d for d in (devices or "").split(",") if d]
    per_trial = max(device_count(t.devices, t.accelerator) or 1 for t in train_configs(study))
    if per_device > 1:
        groups: list[str | None] = [",".join(ids[i:i + per_trial]) for i in range(0, len(ids), per_trial)] or [None]
        if ids and len(ids) % per_trial:
            raise ConfigError(f"--devices lists {len(ids)} devices ({','.join(ids)}), not a multiple of the "
                              f"{per_trial} each trial's ranks take (train.devices)")
        if workers not in (1, len(groups) * per_device):
            raise ConfigError(f"--workers {workers} and --workers-per-device {per_device} disagree: the latter "
                              f"starts {len(groups) * per_device} workers ({per_device} on each of {len(groups)} "
                              "device(s)); give one of them")
        return [group for group in groups for _ in range(per_device)]
    if not ids:
        return [None] * workers
    if per_trial == 1:
        return [ids[i % len(ids)] for i in range(workers)]
    if workers * per_trial > len(ids):
        raise ConfigError(f"--workers {workers} x train.devices {per_trial} (each trial's ranks) needs "
                          f"{workers * per_trial} devices, but --devices lists {len(ids)} ({','.join(ids)}): list "
                          "more devices, start fewer workers, or share devices with --workers-per-device")
    return [",".join(ids[i * per_trial:(i + 1) * per_trial]) for i in range(workers)]


def sharing_note(per_device: int) -> str:
    """How K workers will share each GPU: CUDA MPS when its daemon runs, time-slicing otherwise."""
    from pathlib import Path

    mps = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")).exists()
    how = ("through CUDA MPS" if mps else
           "by time-slicing (no CUDA MPS daemon runs; `nvidia-cuda-mps-control -d` starts one, which shares better)")
    return f"{per_device} workers per device, each limited to 1/{per_device} of its memory, sharing it {how}"


def _spawn_workers(args: argparse.Namespace, url: str, devices: list[str | None], per_device: int = 1) -> None:
    """Worker processes on this machine, each with its share of the cores and its own devices."""
    from attnlab.train.launch import MEMORY_FRACTION_ENV

    threads = args.threads or max(1, (os.cpu_count() or 1) // len(devices))
    procs = []
    for i, device in enumerate(devices):
        env = {**os.environ, STORAGE_ENV: url}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        if per_device > 1:
            env[MEMORY_FRACTION_ENV] = str(1 / per_device)
        cmd = [sys.executable, "-m", "attnlab.cli", "sweep", "worker", args.study, "--name", f"{worker_name()}-{i}",
               "--threads", str(threads), *(f"--set={pair}" for pair in args.set)]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        for p in procs:
            p.wait()
    except KeyboardInterrupt:  # pass Ctrl-C on; each worker marks its trial interrupted
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise


def cmd_worker(args: argparse.Namespace) -> int:
    from attnlab.sweep.worker import tune, work

    study, url = _checked_study(args)
    prepare_data(study)
    _open_for_work(study, url)
    (tune if study.tuning else work)(study, url, args.name or worker_name(), threads=args.threads)
    return 0


def existing_study_url(args: argparse.Namespace):
    """The study and its storage for verbs that only read: a study that was never run is an
    error, not a new empty database."""
    from attnlab.errors import StudyError
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import default_database, storage_url

    study = load_study(args.study, args.set)
    override = args.storage or os.environ.get(STORAGE_ENV)
    if not override and not study.storage and not default_database(study).exists():
        raise StudyError(args.study, [f"no results for study {study.name!r}: {default_database(study)} does not "
                                      f"exist; run `attnlab sweep run {args.study}` first, or give --storage URL"])
    return study, storage_url(study, override)


def trials_table(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    """The study and one flat record per trial (row, seed, state, value, result fields, failure
    reason, whether a later edit of its row superseded it)."""
    from attnlab.sweep.definitions import superseded
    from attnlab.sweep.storage import open_existing

    study, url = existing_study_url(args)
    ostudy = open_existing(study, url)
    gone = superseded(ostudy)
    records = []
    for t in ostudy.get_trials(deepcopy=False):
        params = t.system_attrs.get("fixed_params") or t.params
        record = {"number": t.number, "row": params.get("row"), "seed": params.get("seed"), "state": t.state.name,
                  "value": t.value, "duration_s": t.duration.total_seconds() if t.duration else None,
                  "superseded": t._trial_id in gone}
        record.update({k: v for k, v in t.user_attrs.items() if k not in ("splits", "attention", "changes")})
        records.append(record)
    return study, records


def cmd_status(args: argparse.Namespace) -> int:
    study, records = trials_table(args)
    print(f"{'row':18} {'seed':>4} {'state':9} {study.metric:>8}  {'worker':20} note")
    for r in records:
        value = f"{r['value']:.2f}" if r["value"] is not None else "-"
        note = "superseded: its row was edited after it ran" if r["superseded"] else r.get("fail_reason", "") or ""
        print(f"{str(r['row']):18} {str(r['seed']):>4} {r['state']:9} {value:>8}  {r.get('worker', ''):20} {note[:80]}")
    done = {(r["row"], r["seed"]) for r in records if r["state"] == "COMPLETE" and not r["superseded"]}
    missing = [f"{row.id}/s{seed}" for row, seed in study.trials() if (row.id, seed) not in done]
    not_yet = f"; not yet: {', '.join(missing)}" if missing else ""
    print(f"{len(done)} of {len(study.trials())} trials complete{not_yet}")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    study, records = trials_table(args)
    complete = [r for r in records if r["state"] == "COMPLETE" and not r["superseded"]]
    if not complete:
        print("no complete trials yet")
        return 1
    best = (max if study.direction == "maximize" else min)(complete, key=lambda r: r["value"])
    print(json.dumps(best, indent=2, default=str))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import pandas as pd

    from attnlab.paths import check_output_file

    check_output_file(args.output, "-o")
    frame = pd.DataFrame(trials_table(args)[1])
    out = Path(args.output)
    if out.suffix == ".json":
        frame.to_json(out, orient="records", indent=2)
    else:
        frame.to_csv(out, index=False)
    print(f"{len(frame)} trials -> {out}")
    return 0


def offline_runs(study) -> list[Path]:
    """Every offline W&B run in the study's run folders (superseded ones included)."""
    return sorted((Path(study.output_dir) / study.name).glob("*/wandb/offline-run-*"))


def is_synced(run: Path) -> bool:
    """wandb sync leaves run-<id>.wandb.synced beside the run's log once uploaded."""
    return any(log.with_suffix(".wandb.synced").exists() for log in run.glob("*.wandb"))


def cmd_sync(args: argparse.Namespace) -> int:
    """Upload the study's offline W&B runs, several at a time, skipping those already synced."""
    import shutil

    from attnlab.errors import StudyError
    from attnlab.sweep.spec import load_study

    study = load_study(args.study, args.set)
    runs = offline_runs(study)
    pending = [run for run in runs if not is_synced(run)]
    print(f"study {study.name!r}: {len(runs)} offline W&B runs, {len(runs) - len(pending)} already synced, "
          f"{len(pending)} to upload ({args.parallel} at a time)", flush=True)
    if not pending:
        return 0
    wandb = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    if not Path(wandb).exists():
        raise StudyError(args.study, ["the `wandb` command is not installed here: pip install wandb"])
    log = study.base.logging
    cmd = [wandb, "sync", "--yes", "--skip-synced", "-n", str(args.parallel),
           *(["-p", log.project] if log.project else []), *(["-e", log.entity] if log.entity else []),
           *(["--dry-run"] if args.dry_run else []), *map(str, pending)]
    return subprocess.run(cmd).returncode


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the study's storage, read-only (sweep/dashboard.py)."""
    from attnlab.sweep.dashboard import serve
    from attnlab.sweep.storage import open_existing
    from attnlab.sweep.urls import redact

    study, url = existing_study_url(args)
    open_existing(study, url)  # a missing study or a storage fault: one line, before serving
    print(f"study {study.name!r} on {redact(url)}", flush=True)
    serve(url, args.host, args.port)
    return 0


def device_list(text: str) -> str:
    """argparse type for --devices: GPU ids such as 0,1,3 (what CUDA_VISIBLE_DEVICES takes)."""
    ids = [d.strip() for d in text.split(",")]
    if not all(d.isdigit() for d in ids):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated GPU ids, e.g. 0,1")
    return ",".join(ids)


def positive_minutes(text: str) -> float:
    """argparse type for --max-minutes."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of minutes, e.g. 30")
    return value


def slices(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-minutes", type=positive_minutes, metavar="M",
                        help="run the study in slices: after M minutes no trial starts, and each one in progress "
                             "stops at a checkpoint; the next `sweep run` resumes it (tuning trials run to the end)")


def add_parser(verbs: argparse._SubParsersAction) -> None:
    from attnlab.cli import positive_int
    from attnlab.sweep.dashboard import DEFAULT_HOST, DEFAULT_PORT

    fmt = argparse.ArgumentDefaultsHelpFormatter
    sweep = verbs.add_parser("sweep", help="ablation studies as Optuna studies", formatter_class=fmt)
    sub = sweep.add_subparsers(dest="sweep_verb", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("study", help="study file, e.g. ablations/smoke.yaml")
        p.add_argument("--storage", help=f"RDB URL (default: SQLite in the study folder; also ${STORAGE_ENV})")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field of the study's base config, e.g. --set train.max_steps=100")

    run = sub.add_parser("run", help="queue missing trials and work on them (resumes a study)", formatter_class=fmt)
    common(run)
    run.add_argument("--workers", type=positive_int, default=1, help="worker processes on this machine")
    run.add_argument("--devices", type=device_list,
                     help="comma-separated GPU ids; worker i gets device i mod n, or its own train.devices of them "
                          "for trials that run DDP over several")
    run.add_argument("--workers-per-device", type=positive_int, default=1, metavar="K",
                     help="start K workers on each device of --devices (small trials), each with 1/K of its memory")
    run.add_argument("--threads", type=positive_int, help="torch threads per worker (default: cores / workers)")
    slices(run)
    run.add_argument("--retry-failed", action="store_true", help="also rerun trials that diverged or failed")
    run.add_argument("--rerun-changed", action="store_true",
                     help="rows edited since their trials ran run again; their old trials are kept as superseded")
    run.set_defaults(run=cmd_run)
    worker = sub.add_parser("worker", help="work on queued trials (what `run --workers` starts)", formatter_class=fmt)
    common(worker)
    worker.add_argument("--name", help="shown in `sweep status` (default: <host>-<pid>)")
    worker.add_argument("--threads", type=positive_int)
    slices(worker)
    worker.set_defaults(run=cmd_worker)
    for name, fn, text in [("status", cmd_status, "state of every trial"), ("best", cmd_best, "the best trial")]:
        p = sub.add_parser(name, help=text, formatter_class=fmt)
        common(p)
        p.set_defaults(run=fn)
    sync = sub.add_parser("sync", help="upload the study's offline W&B runs, skipping those already synced",
                          formatter_class=fmt)
    common(sync)
    sync.add_argument("--parallel", type=positive_int, default=8, metavar="N", help="runs uploaded at a time")
    sync.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    sync.set_defaults(run=cmd_sync)
    dashboard = sub.add_parser("dashboard", help="optuna-dashboard on the study's storage, read-only",
                               formatter_class=fmt)
    common(dashboard)
    dashboard.add_argument("--host", default=DEFAULT_HOST, help="address to serve on (0.0.0.0: every interface)")
    dashboard.add_argument("--port", type=positive_int, default=DEFAULT_PORT)
    dashboard.set_defaults(run=cmd_dashboard)
    export = sub.add_parser("export", help="every trial as CSV or JSON", formatter_class=fmt)
    common(export)
    export.add_argument("-o", "--output", required=True, help="file.csv or file.json")
    export.set_defaults(run=cmd_export)
