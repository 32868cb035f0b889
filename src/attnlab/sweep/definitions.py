"""A study remembers what its rows meant when their trials ran.

Each row's resolved config (`ExperimentConfig.definition()`, flat fields) is stored on the Optuna study. When
the file is edited so that a row with trials now means something else, `sweep run`, `sweep
worker` and `report` refuse, naming each changed row and field: a table must never show old
results under a new definition. `sweep run --rerun-changed` accepts the change: the old trials
of those rows are kept but marked superseded (never queued against, never reported), and the
rows run again. New rows and new seeds are a normal change: only they are queued.
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from attnlab.config import stored_definition
from attnlab.errors import StudyError
from attnlab.fields import describe_changes
from attnlab.sweep.spec import Study

DEFINITIONS_ATTR = "row_definitions"  # study user attribute: row id -> definition
SUPERSEDED_ATTR = "superseded_trials"  # study user attribute: trial ids whose row changed after they ran
RAN = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL, TrialState.PRUNED)


def superseded(ostudy: optuna.Study) -> set[int]:
    """Trial ids that ran under a row definition the study file no longer has."""
    return set(ostudy.user_attrs.get(SUPERSEDED_ATTR, []))


def _row_of(trial: optuna.trial.FrozenTrial, study: Study) -> str:
    if study.tuning:
        return "(tuning)"
    params = trial.system_attrs.get("fixed_params") or trial.params
    return str(params.get("row"))


def changed_rows(ostudy: optuna.Study, study: Study) -> dict[str, str]:
    """Row id -> what changed, for rows whose trials (not superseded) ran under another definition."""
    stored = ostudy.user_attrs.get(DEFINITIONS_ATTR, {})
    gone = superseded(ostudy)
    ran = {_row_of(t, study) for t in ostudy.get_trials(deepcopy=False, states=RAN) if t._trial_id not in gone}
    changes = {}
    for row_id, new in study.definitions.items():
        if row_id in stored and row_id in ran:
            old = stored_definition(stored[row_id], new)
            if old != new:
                changes[row_id] = describe_changes(old, new)
    return changes


def check(ostudy: optuna.Study, study: Study, rerun_changed: bool = False) -> list[str]:
    """Refuse (StudyError) when rows with trials changed, unless `rerun_changed`; then supersede
    their trials. Stores the file's definitions. Returns the ids of rows marked to rerun.
    Call it under the study's queue lock: workers may start at the same moment."""
    changed = changed_rows(ostudy, study)
    if changed and study.tuning:  # every trial shares the base and the space: nothing to rerun row by row
        raise StudyError(study.path, [f"the tuning study's base or space changed since its trials ran: "
                                      f"{changed['(tuning)']}; give the study a new `study:` name"])
    if changed and not rerun_changed:
        lines = [f"row {row_id!r} changed since its trials ran: {what}" for row_id, what in changed.items()]
        lines.append(f"its results would be reported under the new definition. To go on, give the study a new "
                     f"`study:` name, or run `attnlab sweep run {study.path} --rerun-changed` (the old trials are "
                     "kept, marked superseded and left out of reports; the changed rows run again)")
        raise StudyError(study.path, lines)
    if changed:
        old = [t._trial_id for t in ostudy.get_trials(deepcopy=False, states=RAN) if _row_of(t, study) in changed]
        ostudy.set_user_attr(SUPERSEDED_ATTR, sorted(superseded(ostudy) | set(old)))
    stored = ostudy.user_attrs.get(DEFINITIONS_ATTR, {})
    if any(stored.get(k) != v for k, v in study.definitions.items()):
        ostudy.set_user_attr(DEFINITIONS_ATTR, {**stored, **study.definitions})
    return list(changed)


def refuse_if_changed(ostudy: optuna.Study, study: Study, verb: str) -> None:
    """For readers (report): the same refusal, without storing anything."""
    changed = changed_rows(ostudy, study)
    if changed:
        lines = [f"row {row_id!r} changed since its trials ran: {what}" for row_id, what in changed.items()]
        lines.append(f"`attnlab {verb}` would show the old results under the new definition; run "
                     f"`attnlab sweep run {study.path} --rerun-changed` first, or restore the file")
        raise StudyError(study.path, lines)
