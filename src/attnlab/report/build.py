"""`attnlab report STUDY`: read the study, build tables and figures, write the chosen formats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from attnlab.config import ConfigError
from attnlab.report import figures as fig
from attnlab.report import render
from attnlab.report.collect import missing_trials, trial_frame
from attnlab.report.tables import Tables, trial_rows, variant_table, wandb_links, write_sources
from attnlab.sweep.spec import Study

FORMATS = ("md", "tex", "csv", "html")


@dataclass
class Report:
    out: Path
    files: list[Path]
    tables: Tables
    frame: pd.DataFrame
    status: list[str]


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"--format {text!r}: {', '.join(bad) or 'nothing given'} not among {', '.join(FORMATS)}")
    return formats


def status_lines(study: Study, frame: pd.DataFrame) -> list[str]:
    """What is finished, what is missing, and every failed or pruned trial with its reason."""
    if study.tuning:
        complete, total = (int((frame["state"] == "COMPLETE").sum()) if len(frame) else 0), study.n_trials
    else:
        planned = {(row.id, seed) for row, seed in study.trials()}
        done = set(zip(frame["row"], frame["seed"])) if len(frame) else set()
        finished = {key for key in done if key in planned and
                    (frame[(frame["row"] == key[0]) & (frame["seed"] == key[1])]["state"] == "COMPLETE").any()}
        complete, total = len(finished), len(planned)
    lines = [f"{complete} of {total} trials complete."]
    missing = missing_trials(study, frame)
    if missing:
        lines.append("Missing: " + ", ".join(f"{row}/seed {seed} ({what})" for row, seed, what in missing) + ".")
    for _, t in frame[frame["state"].isin(["FAIL", "PRUNED"])].iterrows() if len(frame) else []:
        lines.append(f"- trial {t['number']} ({t['row']}, seed {t['seed']}) {t['state'].lower()}: {t['reason']}")
    return lines


def build_report(study: Study, url: str, out: str | Path | None = None, formats: tuple[str, ...] = FORMATS,
                 split: str | None = None, test: str = "bs", samples: int = 0, links: bool = False,
                 wandb: bool = False) -> Report:
    out = Path(out) if out else Path(study.output_dir) / study.name / "report"
    frame = trial_frame(study, url)
    tables = variant_table(study, frame, split, test, samples)
    if links:
        tables.links = wandb_links(study, frame)
    status = status_lines(study, frame)
    out.mkdir(parents=True, exist_ok=True)
    figure_dir = out / "figures"
    figures = [*fig.axis_figures(study, tables, frame, figure_dir)]
    curves = fig.learning_curves(study, frame, figure_dir)
    figures += [curves] if curves else []
    figures += fig.head_heatmaps(study, frame, figure_dir)
    title = f"attnlab report: {study.name}"
    cap = render.caption(study.name, tables, study.base.decode.beam_size)
    files: list[Path] = []

    def write(name: str, text: str) -> None:
        path = out / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # a reader never sees half a report
        files.append(path)

    if "md" in formats:
        write("README.md", render.markdown(title, study.description, tables, cap, status, figures, out))
    if "tex" in formats:
        write("table.tex", render.latex(study.name, tables, cap))
    if "csv" in formats:
        write("trials.csv", trial_rows(frame).to_csv(index=False))
        write_sources(out, tables)
        files += [out / "variants.csv", out / "attention.csv"]
    if "html" in formats:
        write("report.html", render.html_page(title, study.description, tables, cap, status, figures))
    if wandb:
        from attnlab.report.wandb_view import publish

        status += publish(study, tables, out, figures)
    return Report(out=out, files=files + figures, tables=tables, frame=frame, status=status)
