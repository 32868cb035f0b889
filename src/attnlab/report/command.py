"""`attnlab report STUDY [--storage URL] [--out DIR] [--format md,tex,csv,html]`."""

from __future__ import annotations

import argparse

from attnlab.config import ConfigError


def cmd_report(args: argparse.Namespace) -> int:
    from attnlab.paths import check_writable_folder
    from attnlab.report.build import build_report, parse_formats
    from attnlab.report.significance import TESTS
    from attnlab.sweep import definitions
    from attnlab.sweep.commands import existing_study_url
    from attnlab.sweep.storage import open_existing
    from attnlab.sweep.urls import redact

    formats = parse_formats(args.format)
    if args.test not in TESTS:
        raise ConfigError(f"--test {args.test!r} is not one of {', '.join(TESTS)}")
    if args.out:
        check_writable_folder(args.out, "--out")
    study, url = existing_study_url(args)  # every problem of the file, before anything is read
    definitions.refuse_if_changed(open_existing(study, url), study, "report")
    report = build_report(study, url, args.out, formats, args.split, args.test, args.samples, args.wandb_links,
                          wandb=args.wandb)
    print(f"study {study.name!r} on {redact(url)}: " + " ".join(report.status[:2]))
    for line in report.status:
        if line.startswith("W&B"):
            print(line)
    print(f"report -> {report.out}/ ({', '.join(p.name for p in report.files if p.parent == report.out)}; "
          f"{sum(p.suffix == '.png' for p in report.files)} figures)")
    return 0


def add_parser(verbs: argparse._SubParsersAction) -> None:
    from attnlab.cli import int_at_least

    p = verbs.add_parser("report", help="Table-3-style report of a study: Markdown, LaTeX, CSV, HTML, figures",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("study", help="study file, e.g. ablations/smoke.yaml")
    p.add_argument("--storage", help="RDB URL (default: SQLite in the study folder; also $ATTNLAB_STORAGE)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the same overrides of the study's base that `sweep run --set` was given")
    p.add_argument("--out", help="output folder (default: <output_dir>/<study>/report)")
    p.add_argument("--format", default="md,tex,csv,html", help="comma-separated: md, tex, csv, html")
    p.add_argument("--split", help="split whose BLEU the table shows (default: the validation split, as the paper)")
    p.add_argument("--test", default="bs",
                   help="significance test: bs (paired bootstrap) or ar (approx. randomization)")
    p.add_argument("--samples", type=int_at_least(0), default=0,
                   help="resamples/trials of the test (0: sacreBLEU's default)")
    p.add_argument("--wandb-links", action="store_true",
                   help="link each row's seeds to their W&B runs (needs logging.entity or $WANDB_ENTITY)")
    p.add_argument("--wandb", action="store_true",
                   help="save a W&B workspace view of the study (offline: its JSON beside the report) and log the "
                        "report's tables and figures as a W&B run of the study's group (job type report)")
    p.set_defaults(run=cmd_report)
