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
from typing import Any

import yaml

from attnlab.config import ConfigError, ExperimentConfig, set_path

STUDY_KEYS = {"study", "description", "base", "rows", "axes", "seeds", "include_base", "output_dir", "metric",
              "direction", "paper_table3", "storage", "space", "n_trials", "sampler", "pruner", "sampler_seed"}
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")


class StudyError(ConfigError):
    """Every problem of a study file, one per line."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


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
    metric: str = "bleu"
    direction: str = "maximize"
    description: str = ""
    paper_table3: bool = False
    """Row ids name rows of the paper's Table 3 (A1, B2, ...): reports put the paper beside ours."""
    storage: str | None = None
    space: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Tuning studies (sweeps/*.yaml): dotted field -> {low, high[, log]} or {choices: [...]}."""
    n_trials: int = 0
    sampler: str = "tpe"
    pruner: str = "median"
    sampler_seed: int = 1

    @property
    def tuning(self) -> bool:
        return bool(self.space)

    def tuned_config(self, params: dict[str, Any], number: int) -> ExperimentConfig:
        """The base with sampled values, as trial t<number> of a tuning study."""
        config = ExperimentConfig.from_dict(_merge(self.base.to_dict(), _unflatten(params)), where=f"trial {number}")
        row = Row(f"t{number}", _unflatten(params), config)
        return self.trial_config(row, config.train.seed)

    def trials(self) -> list[tuple[Row, int]]:
        """Every (row, seed) pair, in row order."""
        return [(row, seed) for row in self.rows for seed in self.seeds]

    def row(self, row_id: str) -> Row:
        return next(r for r in self.rows if r.id == row_id)

    def trial_config(self, row: Row, seed: int) -> ExperimentConfig:
        """The row's config for one seed, named and placed under the study's folder."""
        config = row.config
        return dataclasses.replace(
            config, name=f"{row.id}-s{seed}", output_dir=str(Path(self.output_dir) / self.name),
            train=dataclasses.replace(config.train, seed=seed),
            logging=dataclasses.replace(config.logging, group=self.name, job_type="trial",
                                        tags=tuple(dict.fromkeys((*config.logging.tags, *_tags(row))))))


def _tags(row: Row) -> list[str]:
    return [row.id] + [f"{k}={v}" for k, v in _flatten(row.changes).items()]


def _flatten(changes: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _unflatten(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        set_path(out, key, value)
    return out


def _check_space(space: Any, base_values: dict[str, Any]) -> list[str]:
    """Each entry names a real field and a valid range; both ends must build a valid config."""
    if not isinstance(space, dict) or not space:
        return ["space: expected a mapping of dotted fields to {low, high[, log]} or {choices: [...]}"]
    problems = []
    for key, spec in space.items():
        if not isinstance(spec, dict) or not ({"low", "high"} <= set(spec) or "choices" in spec):
            problems.append(f"space.{key}: expected {{low, high[, log]}} or {{choices: [...]}}, got {spec!r}")
            continue
        ends = spec["choices"] if "choices" in spec else [spec["low"], spec["high"]]
        for value in ends:
            try:
                _validate_model(ExperimentConfig.from_dict(_merge(base_values, _unflatten({key: value})), where=f"space.{key}"))
            except (ConfigError, ValueError, RuntimeError) as error:
                problems.append(f"space.{key}={value!r}: {error}")
    return problems


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in _flatten(changes).items():
        set_path(merged, key, value)
    return merged


def _row_id(changes: dict[str, Any]) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in _flatten(changes).items()) or "base"


def _validate_model(config: ExperimentConfig) -> None:
    """Build the model on the meta device: shape problems surface without allocating weights."""
    import torch

    from attnlab.model import build_model

    with torch.device("meta"):
        build_model(config.model, config.data.vocab_size)


def load_study(path: str | Path) -> Study:
    """Parse and validate a study file; raises StudyError listing every problem found."""
    path = str(path)
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise StudyError(path, [f"file {path} does not exist"]) from None
    except yaml.YAMLError as error:
        raise StudyError(path, [f"not valid YAML: {error}"]) from None
    problems: list[str] = []
    if not isinstance(document, dict):
        raise StudyError(path, ["expected a mapping with study, base and rows and/or axes"])
    for key in document:
        if key not in STUDY_KEYS:
            import difflib

            close = difflib.get_close_matches(key, sorted(STUDY_KEYS), n=1)
            problems.append(f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                      f"; valid keys: {', '.join(sorted(STUDY_KEYS))}"))
    name = document.get("study")
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        problems.append(f"study: {name!r} must be a name of letters, digits, '-' and '_'")
    base_values = document.get("base") or {}
    base = None
    try:
        base = ExperimentConfig.from_dict(base_values, where="base")
        _validate_model(base)
    except (ConfigError, ValueError, RuntimeError) as error:
        problems.append(str(error))

    variants: list[tuple[str, dict[str, Any]]] = []
    if document.get("include_base", True):
        variants.append(("base", {}))
    for i, row in enumerate(document.get("rows") or []):
        if not isinstance(row, dict):
            problems.append(f"rows[{i}]: expected a mapping of sections to changes, got {row!r}")
            continue
        row = dict(row)
        row_id = str(row.pop("id", "")) or _row_id(row)
        variants.append((row_id, row))
    axes = document.get("axes") or {}
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        problems.append("axes: expected a mapping of dotted fields to non-empty lists of values")
        axes = {}
    for values in itertools.product(*axes.values()) if axes else []:
        changes: dict[str, Any] = {}
        for key, value in zip(axes, values):
            set_path(changes, key, value)
        variants.append((_row_id(changes), changes))
    tuning = "space" in document
    if tuning:
        problems += _check_space(document["space"], base_values)
        variants = []
        n_trials = document.get("n_trials")
        if not isinstance(n_trials, int) or n_trials < 1:
            problems.append(f"n_trials: {n_trials!r} must be a positive integer for a tuning study")
        for key, choices in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if document.get(key, choices[0]) not in choices:
                problems.append(f"{key}: {document.get(key)!r} is not one of {', '.join(map(repr, choices))}")
    elif len(variants) == 0:
        problems.append("no rows: give rows and/or axes (or include_base: true)")

    rows: list[Row] = []
    seen_ids: dict[str, int] = {}
    seen_configs: dict[str, str] = {}
    for row_id, changes in variants:
        if row_id in seen_ids:
            problems.append(f"row {row_id!r}: duplicate id")
            continue
        seen_ids[row_id] = 1
        try:
            config = ExperimentConfig.from_dict(_merge(base_values, changes), where=f"row {row_id}")
            _validate_model(config)
        except (ConfigError, ValueError, RuntimeError) as error:
            problems.append(str(error))
            continue
        key = yaml.safe_dump(dataclasses.replace(config, name="", output_dir="").to_dict(), sort_keys=True)
        if key in seen_configs:
            problems.append(f"row {row_id!r} is the same config as row {seen_configs[key]!r}")
            continue
        seen_configs[key] = row_id
        rows.append(Row(row_id, changes, config))

    seeds = document.get("seeds", [1])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        problems.append(f"seeds: {seeds!r} must be a non-empty list of distinct integers")
        seeds = [1]
    direction = document.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        problems.append(f"direction: {direction!r} is not one of 'maximize', 'minimize'")
    metric = document.get("metric", "bleu")
    if metric not in ("bleu", "chrf", "val_loss", "val_ppl"):
        problems.append(f"metric: {metric!r} is not one of 'bleu', 'chrf', 'val_loss', 'val_ppl'")
    if problems:
        raise StudyError(path, problems)
    return Study(name=name, path=path, base=base, rows=tuple(rows), seeds=tuple(seeds),
                 output_dir=str(document.get("output_dir", "runs/studies")), metric=metric, direction=direction,
                 description=str(document.get("description", "")), paper_table3=bool(document.get("paper_table3")),
                 storage=document.get("storage"), space=dict(document.get("space") or {}),
                 n_trials=int(document.get("n_trials") or 0), sampler=document.get("sampler", "tpe"),
                 pruner=document.get("pruner", "median"), sampler_seed=int(document.get("sampler_seed", 1)))
