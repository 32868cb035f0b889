"""A study's trials as one tidy frame (one row per trial), read from its storage and the trials'
run folders: no W&B server needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from attnlab.fields import flatten
from attnlab.results import ATTENTION_FILE, result_keys
from attnlab.sweep.definitions import superseded
from attnlab.sweep.pruning import PRUNED_AT
from attnlab.sweep.spec import Study
from attnlab.sweep.storage import open_existing

# Scalars every complete trial carries (worker.RESULT_ATTRS), as frame columns.
SCALARS = result_keys("column")


def _reason(trial: optuna.trial.FrozenTrial) -> str:
    if trial.state == TrialState.FAIL:
        kind = trial.user_attrs.get("fail_kind", "error")
        return f"{kind}: {trial.user_attrs.get('fail_reason', 'no reason stored')}"
    if trial.state == TrialState.PRUNED:
        step = trial.system_attrs.get(PRUNED_AT)
        if step is None and trial.intermediate_values:
            step = max(trial.intermediate_values)
        value = trial.intermediate_values.get(step) if step is not None else None
        return f"pruned at step {step}" + (f" (validation value {value:.2f})" if value is not None else "")
    return ""


def load_trials(study: Study, url: str) -> list[optuna.trial.FrozenTrial]:
    """The stored trials, less those superseded by an edit of their row."""
    ostudy = open_existing(study, url)
    gone = superseded(ostudy)
    return [t for t in ostudy.get_trials(deepcopy=False) if t._trial_id not in gone]


def trial_frame(study: Study, url: str) -> pd.DataFrame:
    """Every trial of the study: row, seed, state, reason, result scalars, per-split BLEU, changes."""
    records: list[dict[str, Any]] = []
    for t in load_trials(study, url):
        params = t.system_attrs.get("fixed_params") or t.params
        row = params.get("row", f"t{t.number}" if study.tuning else None)
        seed = params.get("seed", t.user_attrs.get("seed"))
        changes = t.user_attrs.get("changes")
        if changes is None:
            changes = study.row(row).changes if any(r.id == row for r in study.rows) else {
                k: v for k, v in t.params.items() if k not in ("row", "seed")}
        record = {"number": t.number, "row": row, "seed": seed, "state": t.state.name, "reason": _reason(t),
                  "value": t.value, "changes": json.dumps(flatten(changes) if isinstance(changes, dict) else changes),
                  "worker": t.user_attrs.get("worker")}
        record.update({key: t.user_attrs.get(key) for key in SCALARS})
        for split, scores in (t.user_attrs.get("splits") or {}).items():
            record[f"bleu:{split}"] = scores.get("bleu")
            record[f"chrf:{split}"] = scores.get("chrf")
        attention = t.user_attrs.get("attention") or {}
        for kind, stats in attention.items():
            if isinstance(stats, dict):
                for stat, value in stats.items():
                    record[f"{kind}:{stat}"] = value
        record["important_heads"] = json.dumps(attention.get("most_important_heads", []))
        records.append(record)
    columns = ["number", "row", "seed", "state", "reason", "value", "changes", "worker", *SCALARS]
    frame = pd.DataFrame.from_records(records, columns=None if records else columns)
    order = {r.id: i for i, r in enumerate(study.rows)}
    if len(frame):
        frame = frame.sort_values(by=["row", "seed", "number"], key=lambda c: c.map(order) if c.name == "row" else c)
    return frame.reset_index(drop=True)


def missing_trials(study: Study, frame: pd.DataFrame) -> list[tuple[str, int, str]]:
    """(row, seed, what) for every (row, seed) of the study with no complete trial: queued,
    running, failed, pruned or never queued."""
    if study.tuning:
        return []
    out = []
    for row, seed in study.trials():
        states = frame[(frame["row"] == row.id) & (frame["seed"] == seed)]["state"].tolist() if len(frame) else []
        if "COMPLETE" not in states:
            out.append((row.id, seed, states[-1].lower() if states else "not queued"))
    return out


def run_path(run_dir: str | None, study: Study) -> Path | None:
    """A trial's run folder; stored paths may be relative to where the worker ran."""
    if not isinstance(run_dir, str) or not run_dir:  # missing: None, or NaN in a pandas column
        return None
    path = Path(run_dir)
    if path.exists():
        return path
    candidate = Path(study.output_dir) / study.name / path.name
    return candidate if candidate.exists() else None


def head_statistics(study: Study, trials: pd.DataFrame) -> pd.DataFrame | None:
    """Per-head statistics (attention.csv) of the trials' runs, averaged over seeds per
    (kind, layer, head); None when no run folder holds them."""
    frames = []
    for _, trial in trials.iterrows():
        folder = run_path(trial.get("run_dir"), study)
        if folder and (folder / ATTENTION_FILE).exists():
            frames.append(pd.read_csv(folder / ATTENTION_FILE))
    if not frames:
        return None
    return pd.concat(frames).groupby(["kind", "layer", "head"], as_index=False).mean(numeric_only=True)
