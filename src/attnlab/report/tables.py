"""The report's tables as pandas frames (numbers, not text): one row per variant like the
paper's Table 3, the paper's numbers beside ours, and the attention table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from attnlab.analysis import STATS
from attnlab.errors import ConfigError
from attnlab.fields import flatten
from attnlab.paper import table3_rows
from attnlab.report.collect import head_statistics, run_path
from attnlab.report.significance import Significance, marker, paired_test
from attnlab.results import METRICS, Metric, hypotheses_file
from attnlab.sweep.spec import Study

# Dotted config field -> the paper's column name (others show their last part).
SHORT_NAMES = {"model.n_layers": "N", "model.d_model": "d_model", "model.d_ff": "d_ff", "model.n_heads": "h",
               "model.d_k": "d_k", "model.d_v": "d_v", "model.dropout": "P_drop", "train.label_smoothing": "eps_ls",
               "train.max_steps": "train_steps", "model.positional": "positional",
               "model.norm_placement": "norm_placement", "model.norm": "norm"}
KINDS = ("encoder_self", "decoder_self", "cross")
ALPHA = 0.05


def short_name(dotted: str) -> str:
    return SHORT_NAMES.get(dotted, dotted.split(".")[-1])


# Fields whose None means "derived": the base row shows the derived value.
DERIVED = {"model.d_k": "key_dim", "model.d_v": "value_dim"}


def config_value(config: Any, dotted: str) -> Any:
    """The value of a dotted field in a config (dataclasses and dicts), derived values resolved."""
    node = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else getattr(node, part, None)
        if node is None:
            break
    if node is None and dotted in DERIVED:
        return getattr(config.model, DERIVED[dotted])
    return node


@dataclass
class Tables:
    """Everything the renderers print: the variant table, its notes and the attention table."""

    split: str
    varied: list[str]
    variants: pd.DataFrame
    attention: pd.DataFrame
    metric: Metric = METRICS["bleu"]
    """The study's metric: the main column, its delta, significance and agreement."""
    significance: dict[str, Significance | None] = field(default_factory=dict)
    test_signature: str = ""
    bleu_signature: str = ""
    agreement: str = ""
    notes: list[str] = field(default_factory=list)
    links: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    """Row -> [(seed, W&B run URL)], with --wandb-links."""


def frame_column(study: Study, split: str, metric: Metric) -> str | None:
    """The trial frame's column of `metric` on `split` (None: not measured there)."""
    if split == study.base.data.valid_split:
        return metric.name
    return f"{metric.name}:{split}" if metric.per_split else None


def _hypotheses(study: Study, trial: pd.Series, split: str) -> list[str] | None:
    folder = run_path(trial.get("run_dir"), study)
    path = hypotheses_file(folder, split) if folder else None
    return path.read_text(encoding="utf-8").splitlines() if path and path.exists() else None


def _references(study: Study, split: str) -> list[str]:
    from attnlab.data.corpora import load_split

    return load_split(study.base.data, split).tgt


def significance_against_base(study: Study, complete: pd.DataFrame, split: str, test: str = "bs",
                              samples: int = 0, metric: Metric = METRICS["bleu"],
                              ) -> tuple[dict[str, Significance | None], list[str]]:
    """Paired test of every row against the base row on `metric`, over the seeds both completed."""
    results: dict[str, Significance | None] = {}
    notes: list[str] = []
    base = complete[complete["row"] == "base"]
    if base.empty:
        return results, (["no complete base row: no deltas or significance"] if not study.tuning else [])
    if not metric.per_split:
        return results, [f"no significance test for {metric.header}: sacreBLEU's paired tests resample "
                         "sentences, and it is not a sentence-level score (BLEU and chrF are)"]
    references = None
    for row, trials in complete.groupby("row", sort=False):
        if row == "base":
            continue
        seeds = sorted(set(trials["seed"]) & set(base["seed"]))
        if not seeds:
            results[row] = None
            notes.append(f"{row}: no seed in common with the base row, no significance test")
            continue
        pairs = []
        for seed in seeds:
            pairs.append((_hypotheses(study, base[base["seed"] == seed].iloc[0], split),
                          _hypotheses(study, trials[trials["seed"] == seed].iloc[0], split)))
        if any(b is None or s is None for b, s in pairs):
            results[row] = None
            notes.append(f"{row}: hypotheses files missing, no significance test")
            continue
        references = references or _references(study, split)
        try:
            results[row] = paired_test([b for b, _ in pairs], [s for _, s in pairs], references, test, samples,
                                       metric.name)
        except ValueError as error:  # e.g. a row that changes the evaluation data
            results[row] = None
            notes.append(f"{row}: no significance test ({error})")
    return results, notes


def _fmt_change(value: Any) -> Any:
    return value if not isinstance(value, (list, dict)) else json.dumps(value)


def variant_table(study: Study, frame: pd.DataFrame, split: str | None = None, test: str = "bs",
                  samples: int = 0) -> Tables:
    """One row per variant (in the study's order): changed fields, params, every metric over
    seeds (mean, std), the study's metric's delta and p-value against base, and the paper's
    numbers where rows map."""
    split = split or study.base.data.valid_split
    metric = METRICS[study.metric]
    score = frame_column(study, split, metric)
    if score is None:
        raise ConfigError(f"--split {split!r}: the study's metric {metric.name} is measured on the validation split "
                          f"({study.base.data.valid_split}) only; report that split, or a study of bleu or chrf")
    complete = frame[frame["state"] == "COMPLETE"] if len(frame) else frame
    if len(complete) and score not in complete:
        valid = sorted(c.split(":", 1)[1] for c in complete.columns if c.startswith("bleu:"))
        raise ConfigError(f"--split {split!r} was not scored by this study's trials; scored splits: "
                         f"{', '.join(valid) or 'none'}")
    measured = {m.column: c for m in METRICS.values() if (c := frame_column(study, split, m)) in complete}
    rows = list(study.rows) if not study.tuning else []
    row_ids = [r.id for r in rows] + [r for r in dict.fromkeys(frame["row"]) if r not in {x.id for x in rows}] \
        if len(frame) else [r.id for r in rows]
    changes = {r.id: flatten(r.changes) for r in rows}
    for r in row_ids:
        if r not in changes:
            stored = frame[frame["row"] == r]["changes"]
            changes[r] = json.loads(stored.iloc[0]) if len(stored) and stored.iloc[0] else {}
    varied = list(dict.fromkeys(k for c in changes.values() for k in c))
    sig, notes = significance_against_base(study, complete, split, test, samples, metric) \
        if len(complete) else ({}, [])
    paper = {p.id: p for p in table3_rows()} if study.paper_table3 else {}
    paper_base = paper.get("base")
    records = []
    base_score = None
    for r in row_ids:
        trials = complete[complete["row"] == r] if len(complete) else complete
        if len(trials):
            trials = trials[trials[score].notna()]  # e.g. a split some trials did not score
        all_trials = frame[frame["row"] == r] if len(frame) else frame
        record: dict[str, Any] = {"row": r}
        for key in varied:
            if r == "base":
                record[short_name(key)] = _fmt_change(config_value(study.base, key))
            else:
                record[short_name(key)] = _fmt_change(changes[r].get(key)) if key in changes[r] else None
        n = len(trials)
        record["params_M"] = float(trials["params"].iloc[0]) / 1e6 if n else None
        for name in ("ppl", "bleu", "chrf", "loss"):
            values = trials[measured[name]].astype(float) if n and name in measured else pd.Series(dtype=float)
            record[name] = float(values.mean()) if n and name in measured else None
            record[f"{name}_std"] = float(values.std()) if n > 1 and values.notna().all() else None
        record.update({
            "seeds": n,
            "failed": int((all_trials["state"] == "FAIL").sum()) if len(all_trials) else 0,
            "pruned": int((all_trials["state"] == "PRUNED").sum()) if len(all_trials) else 0,
        })
        if r == "base":
            base_score = record[metric.column]
        test_result = sig.get(r)
        record["p_value"] = test_result.p_value if test_result else None
        record["sig"] = marker(record["p_value"])
        if paper:
            p = paper.get(r)
            record["paper_ppl"] = p.ppl_dev if p else None
            record["paper_bleu"] = p.bleu_dev if p else None
            record["paper_delta"] = (round(p.bleu_dev - paper_base.bleu_dev, 2)
                                     if p and r != "base" and p.bleu_dev is not None else None)
        records.append(record)
    for record in records:
        record["delta"] = _delta(complete, record["row"], score) if base_score is not None else None
    columns = ["row", *[short_name(k) for k in varied], "params_M", "ppl", "ppl_std", "bleu", "bleu_std", "seeds",
               "chrf", "chrf_std", "loss", "loss_std", "delta", "p_value", "sig", "failed", "pruned"]
    if paper:
        columns += ["paper_ppl", "paper_bleu", "paper_delta"]
    variants = pd.DataFrame.from_records(records, columns=columns)
    signatures = [s.signature for s in sig.values() if s]
    bleu_signature = next((s for s in complete.get("sacrebleu_signature", []) if isinstance(s, str) and s), "") \
        if split == study.base.data.valid_split else ""
    tables = Tables(split=split, varied=varied, variants=variants, attention=attention_table(study, complete),
                    metric=metric, significance=sig, test_signature=signatures[0] if signatures else "",
                    bleu_signature=bleu_signature, notes=notes)
    if paper:
        tables.agreement = agreement(variants, metric)
    return tables


def _delta(complete: pd.DataFrame, row: str, score: str) -> float | None:
    """Mean over the seeds both the row and the base completed of (row - base): the same seeds
    the significance test pairs, so the delta's sign and its marker always agree."""
    if row == "base" or not len(complete):
        return None
    ours = complete[(complete["row"] == row) & complete[score].notna()].groupby("seed")[score].mean()
    base = complete[(complete["row"] == "base") & complete[score].notna()].groupby("seed")[score].mean()
    common = ours.index.intersection(base.index)
    return float((ours[common] - base[common]).mean()) if len(common) else None


def agreement(variants: pd.DataFrame, metric: Metric = METRICS["bleu"]) -> str:
    """How often our change of the study's metric goes the way the paper's BLEU went (better or
    worse), and how often significantly."""
    mapped = variants[variants["paper_delta"].notna() & variants["delta"].notna()]
    directional = mapped[mapped["paper_delta"] != 0]
    same_way = pd.Series([d != 0 and metric.improves(d) == (p > 0)
                          for d, p in zip(directional["delta"], directional["paper_delta"])],
                         index=directional.index, dtype=bool)
    agree = directional[same_way]
    significant = agree[agree["p_value"].notna() & (agree["p_value"] < ALPHA)]
    flat = len(mapped) - len(directional)
    ours = "BLEU change" if metric.name == "bleu" else f"{metric.header} change (better or worse, against BLEU)"
    return (f"The direction of the {ours} agrees with the paper's for {len(agree)} of {len(directional)} rows; "
            f"significantly (p < {ALPHA}) for {len(significant)} of them"
            + (f" ({flat} row(s) left out: the paper's BLEU does not change there)." if flat else ".")
            + " The paper's numbers are newstest2013 (WMT'14 en-de) at its own sizes and 100k steps: compare"
              " directions, not values.")


def _head_importance(study: Study, trials: pd.DataFrame, top: int = 3) -> str:
    """The heads whose masking raises the validation loss most, averaged over seeds."""
    heads = head_statistics(study, trials)
    if heads is None:
        return ""
    heads = heads[["kind", "layer", "head", "importance"]].dropna().sort_values("importance", ascending=False).head(top)
    short = {"encoder_self": "enc", "decoder_self": "dec", "cross": "x"}
    return ", ".join(f"{short[k]} L{int(layer)}H{int(h)} ({v:+.3f})"
                     for k, layer, h, v in heads.itertuples(index=False))


def attention_table(study: Study, complete: pd.DataFrame) -> pd.DataFrame:
    """Per variant: the mean of each attention statistic (STATS) per attention kind, and its
    most important heads (loss increase when masked)."""
    records = []
    for row, trials in complete.groupby("row", sort=False) if len(complete) else []:
        record: dict[str, Any] = {"row": row}
        for kind in KINDS:
            for stat in STATS:
                column = f"{kind}:{stat}"
                record[column] = float(trials[column].mean()) if column in trials and trials[column].notna().any() \
                    else math.nan
        record["most_important_heads"] = _head_importance(study, trials)
        records.append(record)
    return pd.DataFrame.from_records(records)


def wandb_links(study: Study, frame: pd.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """Row -> [(seed, URL of its W&B run)] for complete trials; needs the W&B entity
    (logging.entity or $WANDB_ENTITY) since offline runs do not know it."""
    import os

    entity = study.base.logging.entity or os.environ.get("WANDB_ENTITY")
    if not entity:
        raise ConfigError("--wandb-links needs the W&B entity: set logging.entity in the study's base or $WANDB_ENTITY")
    links: dict[str, list[tuple[int, str]]] = {}
    complete = frame[(frame["state"] == "COMPLETE") & frame["wandb_run_id"].notna()] if len(frame) else frame
    for _, t in complete.iterrows():
        url = f"https://wandb.ai/{entity}/{study.base.logging.project}/runs/{t['wandb_run_id']}"
        label = int(t["seed"]) if pd.notna(t["seed"]) else int(t["number"])  # tuning trials have no seed
        links.setdefault(t["row"], []).append((label, url))
    return links


def trial_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The tidy CSV: one row per trial with every stored scalar, failures and reasons."""
    return frame.drop(columns=["important_heads"], errors="ignore")


def write_sources(directory: Path, tables: Tables) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tables.variants.to_csv(directory / "variants.csv", index=False)
    tables.attention.to_csv(directory / "attention.csv", index=False)
