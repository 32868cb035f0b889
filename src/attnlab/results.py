"""One result schema: the metrics a run reports, what its result.json holds, and where a run
folder keeps its files. The worker, pruning, a study's `metric`, the report, W&B summaries
and the CLI all read what they need from here.

Adding a metric: a `Metric` in METRICS (and its name in `MetricName`), the value in the run's
result (train/run.py) and, when it is logged during training, the `self.log` of its curve.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Metric:
    """A score a study can optimise and a report can show."""

    name: str  # its key in result.json, on Optuna trials, and a study's `metric:`
    logged: str  # its validation curve's key (Lightning, metrics.jsonl, W&B), what pruning watches
    header: str  # report column header
    digits: int  # decimals shown in reports
    direction: Direction
    column: str  # its column in a report's variant table (<column>, <column>_std)
    per_split: bool  # scored on every evaluation split (BLEU, chrF), or on the validation split only

    @property
    def better(self) -> str:
        """W&B's define_metric summary of the curve: its best value."""
        return "max" if self.direction == "maximize" else "min"

    def improves(self, delta: float) -> bool:
        return delta > 0 if self.direction == "maximize" else delta < 0


MetricName = Literal["bleu", "chrf", "val_loss", "val_ppl"]
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("bleu", "val/bleu", "BLEU", 2, "maximize", "bleu", True),
    Metric("chrf", "val/chrf", "chrF", 1, "maximize", "chrf", True),
    Metric("val_loss", "val/loss", "loss", 3, "minimize", "loss", False),
    Metric("val_ppl", "val/ppl", "PPL", 2, "minimize", "ppl", False),
)}


# -- a run folder ---------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"  # the resolved config
CHECKPOINTS = "checkpoints"  # step<N>.ckpt
HYPOTHESES = "hypotheses"  # <split>.txt: final translations, one per source line
HEATMAPS = "heatmaps"  # attention of a few fixed validation sentences
ATTENTION_FILE = "attention.csv"  # statistics per kind, layer and head
HISTORY_FILE = "metrics.jsonl"  # learning curve (train/history.py)
RESULT_FILE = "result.json"  # RunResult
RANKS_FILE = "ranks.json"  # each rank of a multi-process run (train/ranks.py)
STATS_FILE = "train_stats.json"  # steps, epochs, tokens, seconds, world size (train/callbacks.py)


def hypotheses_file(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / HYPOTHESES / f"{split.replace('/', '_')}.txt"


# -- result.json ----------------------------------------------------------------------------
def _field(default: Any = None, *, trial: bool = False, shown: bool = False, column: bool = False) -> Any:
    """trial: stored on the Optuna trial; shown: printed by `attnlab train`; column: a report
    frame column of every trial."""
    return field(default=default, metadata={"trial": trial, "shown": shown, "column": column})


@dataclass
class RunResult:
    """What `train()` returns and writes to result.json (keys in this order; `extra`, e.g. a
    sweep's study, row and seed, at the top level after them)."""

    name: str = _field("", shown=True)
    bleu: float | None = _field(trial=True, shown=True, column=True)
    chrf: float | None = _field(trial=True, shown=True, column=True)
    sacrebleu_signature: str | None = _field(trial=True, column=True)
    chrf_signature: str | None = _field()
    val_loss: float | None = _field(trial=True, column=True)
    val_ppl: float | None = _field(trial=True, shown=True, column=True)
    params: int | None = _field(trial=True, shown=True, column=True)
    train_steps: int | None = _field(trial=True, shown=True, column=True)
    epochs: int | None = _field()
    train_tokens: int | None = _field()
    train_seconds: float | None = _field(trial=True, column=True)
    world_size: int | None = _field()
    first_step_at: float | None = _field()
    training_ended_at: float | None = _field()
    train_tokens_per_s: float | None = _field(trial=True, shown=True, column=True)
    splits: dict[str, Any] = _field(None, trial=True)
    attention: dict[str, Any] = _field(None, trial=True)
    grad_norm_by_layer: dict[str, float | None] = _field(None)
    batchnorm_spread: float | None = _field(trial=True, column=True)
    run_dir: str | None = _field(trial=True, shown=True, column=True)
    wall_s: float | None = _field(trial=True, shown=True, column=True)
    peak_rss_mb: float | None = _field(trial=True, column=True)
    allocator: str | None = _field()
    launch: dict[str, Any] | None = _field()
    weights_max_rank_difference: float | None = _field()
    final_checkpoint: str | None = _field()
    wandb_run_id: str | None = _field(trial=True, column=True)
    wandb_sync: str | None = _field()
    resumed_from: str | None = _field(trial=True)
    fixed_seconds: dict[str, float | None] | None = _field(trial=True)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunResult:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in values.items() if k in known},
                   extra={k: v for k, v in values.items() if k not in known})

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        if self.weights_max_rank_difference is None:
            out.pop("weights_max_rank_difference")  # only multi-process runs measure it
        return {**out, **self.extra}


def result_keys(kind: Literal["trial", "shown", "column"]) -> tuple[str, ...]:
    """The RunResult fields stored on trials, printed by the CLI, or made report columns."""
    return tuple(f.name for f in dataclasses.fields(RunResult) if f.metadata.get(kind))
