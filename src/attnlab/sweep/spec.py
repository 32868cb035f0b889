"""Ablation studies as data: a base config and its variants, validated whole before launch.

    study: heads                      # the study's name: storage key, W&B group, folder name
    base: {model: {...}, data: {...}, train: {...}, decode: {...}, logging: {...}}
    rows:                             # one-factor-at-a-time rows (the paper's Table 3)
      - {id: A1, model: {n_heads: 1, d_k: 512, d_v: 512}}
    axes:                             # and/or a finite grid over dotted fields
      model.positional: [sinusoidal, rope]
    seeds: [1, 2]
    include_base: true                # the base row itself, id "base"

Every (row, seed) pair is one trial. All problems of a file are reported together, before
any trial starts: unknown keys, values outside a component's choices, rows that build an
invalid model, duplicate rows.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from attnlab.config import ConfigError, ExperimentConfig
from attnlab.errors import StudyError  # re-exported for `from attnlab.sweep.spec import StudyError`
from attnlab.fields import (
    field_types,
    flatten,
    from_dict,
    matches,
    parse_overrides,
    problems_of,
    read_yaml,
    set_path,
    unflatten,
)
from attnlab.results import METRICS, Direction, MetricName

Sampler = Literal["tpe", "random"]
Pruner = Literal["median", "hyperband", "none"]


@dataclass(frozen=True)
class Range:
    """One entry of a tuning `space`: a range {low, high[, log]} or a list {choices: [...]}."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    """Sample on a log scale (learning rates)."""
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise ConfigError("expected {low, high[, log]} or {choices: [...]}, not both or neither")
        if self.choices is not None and not self.choices:
            raise ConfigError("choices: give at least one value")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ConfigError(f"low={self.low} is above high={self.high}")
        if self.log and self.low is not None and self.low <= 0:
            raise ConfigError(f"log=true needs low > 0, got low={self.low}")

    @property
    def ends(self) -> tuple[Any, ...]:
        """The values that must each build a valid config."""
        return self.choices if self.choices is not None else (self.low, self.high)


@dataclass(frozen=True)
class StudyFile:
    """A study file as written (ablations/*.yaml, sweeps/*.yaml): checked key by key like every
    config, then resolved into a `Study` by `load_study`."""

    study: str | None = None
    """The study's name: storage key, W&B group and folder name (letters, digits, '-', '_')."""
    description: str = ""
    base: dict[str, Any] | None = None
    """The config every row starts from (model/data/train/decode/logging sections)."""
    rows: tuple[Any, ...] = ()
    """One-factor-at-a-time variants: {id: A1, model: {n_heads: 1, d_k: 512}}."""
    axes: dict[str, tuple[Any, ...]] | None = None
    """A grid over dotted fields: {model.positional: [sinusoidal, rope]}."""
    seeds: tuple[int, ...] = (1,)
    """Every row runs once per seed."""
    include_base: bool = True
    """The base config itself is a row, id "base"."""
    output_dir: str = "runs/studies"
    """Run folders go to <output_dir>/<study>/."""
    metric: MetricName = "bleu"
    """What the study optimises and reports (attnlab/results.py: METRICS)."""
    direction: Direction | None = None
    """None: the metric's own (maximize BLEU and chrF, minimize loss and PPL)."""
    paper_table3: bool = False
    """Row ids name rows of the paper's Table 3 (A1, B2, ...): reports put the paper beside ours."""
    storage: str | None = None
    """An RDB URL (default: SQLite in the study folder)."""
    space: dict[str, Any] | None = None
    """Tuning studies: dotted field -> {low, high[, log]} or {choices: [...]} (a `Range`)."""
    n_trials: int | None = None
    """Tuning studies: trials over all workers."""
    sampler: Sampler = "tpe"
    pruner: Pruner = "median"
    sampler_seed: int = 1
    """The same on every worker, so suggestions do not depend on who asks."""


@dataclass(frozen=True)
class Row:
    """One variant: its id, the fields it changes against the base, the config it resolves to."""

    id: str
    changes: dict[str, Any]
    config: ExperimentConfig


@dataclass(frozen=True)
class Study:
    name: str
    path: str
    base: ExperimentConfig
    rows: tuple[Row, ...]
    seeds: tuple[int, ...]
    output_dir: str
    metric: MetricName = "bleu"
    direction: Direction = "maximize"
    description: str = ""
    paper_table3: bool = False
    """Row ids name rows of the paper's Table 3 (A1, B2, ...): reports put the paper beside ours."""
    storage: str | None = None
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Tuning studies (sweeps/*.yaml): dotted field -> {low, high[, log]} or {choices: [...]}."""
    n_trials: int = 0
    sampler: Sampler = "tpe"
    pruner: Pruner = "median"
    sampler_seed: int = 1

    @property
    def tuning(self) -> bool:
        return bool(self.space)

    def tuned_config(self, params: dict[str, Any], number: int) -> ExperimentConfig:
        """The base with sampled values, as trial t<number> of a tuning study."""
        config = ExperimentConfig.from_dict(merge(self.base.to_dict(), unflatten(params)), where=f"trial {number}")
        row = Row(f"t{number}", unflatten(params), config)
        return self.trial_config(row, config.train.seed)

    def trials(self) -> list[tuple[Row, int]]:
        """Every (row, seed) pair, in row order."""
        return [(row, seed) for row in self.rows for seed in self.seeds]

    def row(self, row_id: str) -> Row:
        return next(r for r in self.rows if r.id == row_id)

    @property
    def definitions(self) -> dict[str, dict[str, Any]]:
        """Row id -> definition; a tuning study is one entry: its base and its space."""
        if self.tuning:
            space = {f"space.{k}": v for k, v in flatten(self.space).items()}
            return {"(tuning)": {**self.base.definition(), **space}}
        return {row.id: row.config.definition() for row in self.rows}

    def trial_config(self, row: Row, seed: int) -> ExperimentConfig:
        """The row's config for one seed, named and placed under the study's folder."""
        config = row.config
        return dataclasses.replace(
            config, name=f"{row.id}-s{seed}", output_dir=str(Path(self.output_dir) / self.name),
            train=dataclasses.replace(config.train, seed=seed),
            logging=dataclasses.replace(config.logging, group=self.name, job_type="trial",
                                        tags=tuple(dict.fromkeys((*config.logging.tags, *_tags(row))))))


def _tags(row: Row) -> list[str]:
    return [row.id] + [f"{k}={v}" for k, v in flatten(row.changes).items()]


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `base` with the (nested) `changes` written over it, field by field."""
    merged = copy.deepcopy(dict(base))
    for key, value in flatten(changes).items():
        set_path(merged, key, value)
    return merged


def _row_id(changes: dict[str, Any]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in flatten(changes).items()) or "base"


def _validate_model(config: ExperimentConfig) -> None:
    """Build the model on the meta device: shape problems surface without allocating weights."""
    import torch

    from attnlab.model import build_model

    with torch.device("meta"):
        build_model(config.model, config.data.vocab_size)


def _resolve(values: Mapping[str, Any], where: str) -> tuple[ExperimentConfig | None, list[str]]:
    """A config and its model checked whole; problems as lines, never raised."""
    try:
        config = ExperimentConfig.from_dict(values, where=where)
        _validate_model(config)
    except ConfigError as error:
        return None, str(error).splitlines()
    except (ValueError, RuntimeError) as error:  # shapes the config checks cannot see
        return None, [f"{where}: {error}"]
    return config, []


def _variants(spec: StudyFile) -> tuple[list[tuple[str, dict[str, Any], list[str]]], list[str]]:
    """(row id, changes, problems of its own keys) for the base, every row and every point of the
    axes grid; and the problems of the rows and axes sections themselves."""
    variants: list[tuple[str, dict[str, Any], list[str]]] = [("base", {}, [])] if spec.include_base else []
    problems = []
    for i, row in enumerate(spec.rows):
        if not isinstance(row, Mapping):
            problems.append(f"rows[{i}]: expected a mapping like {{id: A1, model: {{n_heads: 1}}}}, got {row!r}")
            continue
        changes = {k: v for k, v in row.items() if k != "id"}
        row_id = str(row.get("id") or _row_id(changes))
        variants.append((row_id, changes, [f"row {row_id}: {p}" for p in problems_of(ExperimentConfig, changes)]))
    axes = spec.axes or {}
    for key, values in axes.items():
        if not values:
            problems.append(f"axes.{key}: give at least one value")
        for value in values:
            problems += [f"axes.{key}: {p}" for p in problems_of(ExperimentConfig, unflatten({key: value}))]
    if axes and all(axes.values()) and not problems:
        for point in itertools.product(*axes.values()):
            changes = unflatten(dict(zip(axes, point)))
            variants.append((_row_id(changes), changes, []))
    return variants, problems


def _rows(spec: StudyFile, base_values: dict[str, Any]) -> tuple[list[Row], list[str]]:
    """Each variant resolved against the base; duplicate ids and duplicate configs are problems."""
    variants, problems = _variants(spec)
    rows: list[Row] = []
    ids: set[str] = set()
    seen_configs: dict[str, str] = {}
    for row_id, changes, own in variants:
        if row_id in ids:
            problems.append(f"row {row_id!r}: duplicate id")
            continue
        ids.add(row_id)
        config, found = _resolve(merge(base_values, changes), f"row {row_id}") if not own else (None, own)
        problems += found
        if config is None:
            continue
        key = yaml.safe_dump(dataclasses.replace(config, name="", output_dir="").to_dict(), sort_keys=True)
        if key in seen_configs:
            problems.append(f"row {row_id!r} is the same config as row {seen_configs[key]!r}")
            continue
        seen_configs[key] = row_id
        rows.append(Row(row_id, changes, config))
    return rows, problems


def _space(spec: StudyFile, base_values: dict[str, Any]) -> list[str]:
    """Each entry names a real field and a valid range; both ends must build a valid config."""
    if not spec.space:
        return ["space: expected a mapping of dotted fields to {low, high[, log]} or {choices: [...]}"]
    problems = []
    for key, entry in spec.space.items():
        if not isinstance(entry, Mapping):
            problems.append(f"space.{key}: expected {{low, high[, log]}} or {{choices: [...]}}, got {entry!r}")
            continue
        try:
            values = from_dict(Range, entry, where=f"space.{key}").ends
        except ConfigError as error:
            problems += str(error).splitlines()
            continue
        for value in values:
            found = problems_of(ExperimentConfig, unflatten({key: value}))
            problems += [f"space.{key}={value!r}: {p}" for p in found]
            if not found:
                problems += _resolve(merge(base_values, unflatten({key: value})), f"space.{key}={value!r}")[1]
    if spec.n_trials is None or spec.n_trials < 1:
        problems.append(f"n_trials: {spec.n_trials!r} must be a positive integer for a tuning study")
    return problems


def _study_file(document: dict[str, Any]) -> tuple[StudyFile, list[str]]:
    """The file's keys checked like a config's; keys with problems fall back to their defaults so
    that the rest of the file is still checked and every problem is reported at once."""
    problems = problems_of(StudyFile, document)
    types = field_types(StudyFile)
    clean = {k: v for k, v in document.items() if k in types and matches(v, types[k])}
    spec = StudyFile(**clean)
    name = spec.study
    if name is None:
        problems.append("study: missing; name the study with letters, digits, '-' and '_' (e.g. `study: heads`)")
    elif not name.replace("-", "").replace("_", "").isalnum():
        problems.append(f"study: {name!r} must be a name of letters, digits, '-' and '_'")
    if len(set(spec.seeds)) != len(spec.seeds) or not spec.seeds:
        problems.append(f"seeds: {list(spec.seeds)!r} must be a non-empty list of distinct integers")
    if spec.space is None and not spec.rows and not spec.axes and not spec.include_base:
        problems.append("no rows: give rows and/or axes (or include_base: true)")
    return spec, problems


FILE_SHAPE = "a study needs `study: NAME`, a `base` config, and `rows` and/or `axes` (see ablations/smoke.yaml)"


def load_study(path: str | Path, overrides: Sequence[str] = ()) -> Study:
    """Parse and validate a study file (plus --set overrides of its base); raises StudyError
    listing every problem found, each naming the row and the key."""
    path = str(path)
    try:
        document = read_yaml(path, FILE_SHAPE)
    except ConfigError as error:
        raise StudyError(path, [str(error).removeprefix(f"{path}: ").removeprefix(f"{path} ")]) from None
    spec, problems = _study_file(document)
    base_values = copy.deepcopy(dict(spec.base or {}))  # --set writes into it
    for key, value in parse_overrides(overrides, ExperimentConfig).items():  # an error here names --set
        set_path(base_values, key, value)
    base, found = _resolve(base_values, "base")
    problems += found
    if spec.space is not None:
        problems += _space(spec, base_values) if base else []
        rows: list[Row] = []
    elif base is not None:
        rows, found = _rows(spec, base_values)
        problems += found
    else:  # rows cannot resolve against a broken base: check their own keys only
        variants, found = _variants(spec)
        problems += found + [p for _, _, own in variants for p in own]
    if problems:
        raise StudyError(path, list(dict.fromkeys(problems)))
    direction = spec.direction or METRICS[spec.metric].direction
    return Study(name=spec.study, path=path, base=base, rows=tuple(rows), seeds=tuple(spec.seeds),
                 output_dir=spec.output_dir, metric=spec.metric, direction=direction,
                 description=spec.description, paper_table3=spec.paper_table3, storage=spec.storage,
                 space=dict(spec.space or {}), n_trials=spec.n_trials or 0, sampler=spec.sampler,
                 pruner=spec.pruner, sampler_seed=spec.sampler_seed)
