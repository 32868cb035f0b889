"""`attnlab report STUDY [--storage URL] [--out DIR] [--format md,tex,csv,html]`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from attnlab.config import ConfigError


def cmd_report(args: argparse.Namespace) -> int:
    from attnlab.report.build import build_report, parse_formats
    from attnlab.report.significance import TESTS
    from attnlab.sweep.commands import STORAGE_ENV
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import redact, storage_url

    try:
        formats = parse_formats(args.format)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if args.test not in TESTS:
        raise ConfigError(f"--test {args.test!r} is not one of {', '.join(TESTS)}")
    study = load_study(args.study)  # every problem of the file, before anything is read
    override = args.storage or os.environ.get(STORAGE_ENV)
    if not override and not study.storage:
        db = Path(study.output_dir) / study.name / "study.db"
        if not db.exists():
            raise ConfigError(f"no results for study {study.name!r}: {db} does not exist; run "
                              f"`attnlab sweep run {args.study}` first, or give --storage URL")
    url = storage_url(study, override)
    try:
        report = build_report(study, url, args.out, formats, args.split, args.test, args.samples, args.wandb_links)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    print(f"study {study.name!r} on {redact(url)}: " + " ".join(report.status[:2]))
    print(f"report -> {report.out}/ ({', '.join(p.name for p in report.files if p.parent == report.out)}; "
          f"{sum(p.suffix == '.png' for p in report.files)} figures)")
    return 0


def add_parser(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("report", help="Table-3-style report of a study: Markdown, LaTeX, CSV, HTML, figures",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("study", help="study file, e.g. ablations/smoke.yaml")
    p.add_argument("--storage", help="RDB URL (default: SQLite in the study folder; also $ATTNLAB_STORAGE)")
    p.add_argument("--out", help="output folder (default: <output_dir>/<study>/report)")
    p.add_argument("--format", default="md,tex,csv,html", help="comma-separated: md, tex, csv, html")
    p.add_argument("--split", help="split whose BLEU the table shows (default: the validation split, as the paper)")
    p.add_argument("--test", default="bs", help="significance test: bs (paired bootstrap) or ar (approx. randomization)")
    p.add_argument("--samples", type=int, default=0, help="resamples/trials of the test (0: sacreBLEU's default)")
    p.add_argument("--wandb-links", action="store_true",
                   help="link each row's seeds to their W&B runs (needs logging.entity or $WANDB_ENTITY)")
    p.set_defaults(run=cmd_report)
