"""`attnlab sweep run | worker | status | best | export`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

STORAGE_ENV = "ATTNLAB_STORAGE"  # how `run` hands the URL to its workers: never on a command line


def _study_and_url(args: argparse.Namespace):
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import storage_url

    study = load_study(args.study)  # every problem of the file, before anything starts
    return study, storage_url(study, args.storage or os.environ.get(STORAGE_ENV))


def cmd_run(args: argparse.Namespace) -> int:
    from attnlab.sweep.storage import enqueue_missing, open_study, redact
    from attnlab.sweep.worker import summary, tune, work

    study, url = _study_and_url(args)
    ostudy = open_study(study, url)
    if study.tuning:
        print(f"tuning study {study.name!r}: {study.n_trials} trials, {study.sampler} sampler, "
              f"{study.pruner} pruner on {study.metric}; storage {redact(url)}", flush=True)
    else:
        queued = enqueue_missing(ostudy, study, url, retry_failed=args.retry_failed)
        print(f"study {study.name!r}: {len(study.rows)} rows x {len(study.seeds)} seeds = {len(study.trials())} "
              f"trials; {queued} queued now; storage {redact(url)}", flush=True)
    if args.workers == 1:
        (tune if study.tuning else work)(study, url, "worker-0", threads=args.threads)
    else:
        _spawn_workers(args, url)
    print(json.dumps(summary(ostudy)))
    return 0


def _spawn_workers(args: argparse.Namespace, url: str) -> None:
    """N worker processes on this machine, each with its share of the cores or its own device."""
    devices = [d for d in (args.devices or "").split(",") if d]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    procs = []
    for i in range(args.workers):
        env = {**os.environ, STORAGE_ENV: url}
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[i % len(devices)]
        cmd = [sys.executable, "-m", "attnlab.cli", "sweep", "worker", args.study, "--name", f"worker-{i}",
               "--threads", str(threads)]
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

    study, url = _study_and_url(args)
    (tune if study.tuning else work)(study, url, args.name, threads=args.threads)
    return 0


def trials_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One flat record per trial (row, seed, state, value, result fields, failure reason)."""
    from attnlab.sweep.storage import open_study

    study, url = _study_and_url(args)
    records = []
    for t in open_study(study, url).get_trials(deepcopy=False):
        params = t.system_attrs.get("fixed_params") or t.params
        record = {"number": t.number, "row": params.get("row"), "seed": params.get("seed"), "state": t.state.name,
                  "value": t.value, "duration_s": t.duration.total_seconds() if t.duration else None}
        record.update({k: v for k, v in t.user_attrs.items() if k not in ("splits", "attention", "changes")})
        records.append(record)
    return records


def cmd_status(args: argparse.Namespace) -> int:
    from attnlab.sweep.spec import load_study

    study = load_study(args.study)
    records = trials_table(args)
    print(f"{'row':18} {'seed':>4} {'state':9} {study.metric:>8}  {'worker':9} note")
    for r in records:
        value = f"{r['value']:.2f}" if r["value"] is not None else "-"
        note = r.get("fail_reason", "") or ""
        print(f"{str(r['row']):18} {str(r['seed']):>4} {r['state']:9} {value:>8}  {r.get('worker', ''):9} {note[:80]}")
    done = {(r["row"], r["seed"]) for r in records if r["state"] == "COMPLETE"}
    missing = [f"{row.id}/s{seed}" for row, seed in study.trials() if (row.id, seed) not in done]
    print(f"{len(done)} of {len(study.trials())} trials complete" + (f"; not yet: {', '.join(missing)}" if missing else ""))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from attnlab.sweep.spec import load_study

    study = load_study(args.study)
    complete = [r for r in trials_table(args) if r["state"] == "COMPLETE"]
    if not complete:
        print("no complete trials yet")
        return 1
    best = (max if study.direction == "maximize" else min)(complete, key=lambda r: r["value"])
    print(json.dumps(best, indent=2, default=str))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import pandas as pd

    frame = pd.DataFrame(trials_table(args))
    out = Path(args.output)
    if out.suffix == ".json":
        frame.to_json(out, orient="records", indent=2)
    else:
        frame.to_csv(out, index=False)
    print(f"{len(frame)} trials -> {out}")
    return 0


def add_parser(verbs: argparse._SubParsersAction) -> None:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    sweep = verbs.add_parser("sweep", help="ablation studies as Optuna studies", formatter_class=fmt)
    sub = sweep.add_subparsers(dest="sweep_verb", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("study", help="study file, e.g. ablations/smoke.yaml")
        p.add_argument("--storage", help=f"RDB URL (default: SQLite in the study folder; also ${STORAGE_ENV})")

    run = sub.add_parser("run", help="queue missing trials and work on them (resumes a study)", formatter_class=fmt)
    common(run)
    run.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    run.add_argument("--devices", help="comma-separated GPU ids; worker i gets device i mod n")
    run.add_argument("--threads", type=int, help="torch threads per worker (default: cores / workers)")
    run.add_argument("--retry-failed", action="store_true", help="also rerun trials that diverged or failed")
    run.set_defaults(run=cmd_run)
    worker = sub.add_parser("worker", help="work on queued trials (what `run --workers` starts)", formatter_class=fmt)
    common(worker)
    worker.add_argument("--name", default=f"worker-{os.getpid()}")
    worker.add_argument("--threads", type=int)
    worker.set_defaults(run=cmd_worker)
    for name, fn, text in [("status", cmd_status, "state of every trial"), ("best", cmd_best, "the best trial")]:
        p = sub.add_parser(name, help=text, formatter_class=fmt)
        common(p)
        p.set_defaults(run=fn)
    export = sub.add_parser("export", help="every trial as CSV or JSON", formatter_class=fmt)
    common(export)
    export.add_argument("-o", "--output", required=True, help="file.csv or file.json")
    export.set_defaults(run=cmd_export)
