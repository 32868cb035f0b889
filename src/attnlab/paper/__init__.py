"""The paper's reference numbers (Tables 2 and 3), as data that studies and reports reuse.

Table 3 rows become config overrides relative to the base model: a row "changes a few fields
of the base", and an empty cell in the paper means "same as base".
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from attnlab.config import ModelConfig

# Paper column -> ModelConfig field (model) or training setting (train).
MODEL_COLUMNS = {"N": "n_layers", "d_model": "d_model", "d_ff": "d_ff", "h": "n_heads",
                 "d_k": "d_k", "d_v": "d_v", "P_drop": "dropout"}
TRAIN_COLUMNS = {"eps_ls": "label_smoothing", "train_steps": "train_steps"}
# Row E's change is only described in words.
NOTE_OVERRIDES = {"positional embedding instead of sinusoids": {"positional": "learned"}}


@dataclass(frozen=True)
class PaperRow:
    """One row of Table 3: what it changes and what the paper measured on newstest2013."""

    id: str
    """base, A1..A4, B1..B2, C1..C8, D1..D4, E1, big (letter = the paper's group, number = order)."""
    model: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields that differ from the paper's base model."""
    train: dict[str, Any] = field(default_factory=dict)
    """Training settings that differ from the base recipe (label_smoothing, train_steps)."""
    ppl_dev: float | None = None
    bleu_dev: float | None = None
    params_millions: float | None = None
    note: str = ""

    @property
    def group(self) -> str:
        return self.id.rstrip("0123456789")

    def model_config(self, base: ModelConfig | None = None) -> ModelConfig:
        return dataclasses.replace(base or ModelConfig(), **self.model)


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def _read(name: str) -> list[dict[str, str]]:
    with resources.files(__package__).joinpath(name).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def table3_rows() -> list[PaperRow]:
    """Every row of Table 3 (plus base and big), in the paper's order."""
    records = _read("table3.csv")
    base = {k: _number(v) for k, v in records[0].items() if k not in ("row", "note")}
    rows, counters = [], {}
    for record in records:
        group = record["row"]
        counters[group] = counters.get(group, 0) + 1
        row_id = group if group in ("base", "big") else f"{group}{counters[group]}"
        values = {k: _number(v) for k, v in record.items() if k not in ("row", "note")}
        resolved = {k: (base[k] if v is None else v) for k, v in values.items()}
        model = {MODEL_COLUMNS[c]: resolved[c] for c in MODEL_COLUMNS}
        # d_k = d_v = d_model / h is ModelConfig's default: keep None so rows stay minimal.
        for dim in ("d_k", "d_v"):
            if model[dim] * model["n_heads"] == model["d_model"]:
                model[dim] = None
        model.update(NOTE_OVERRIDES.get(record["note"], {}))
        defaults = dataclasses.asdict(ModelConfig())
        rows.append(PaperRow(
            id=row_id,
            model={k: v for k, v in model.items() if v != defaults[k]},
            train={TRAIN_COLUMNS[c]: values[c] for c in TRAIN_COLUMNS if values[c] is not None and group != "base"},
            ppl_dev=values["ppl_dev"],
            bleu_dev=values["bleu_dev"],
            params_millions=resolved["params_millions"],
            note=record["note"],
        ))
    return rows


def table2() -> dict[str, dict[str, float]]:
    """Table 2: newstest2014 BLEU and training FLOPs of the base and big models."""
    return {r["model"]: {k: float(v) for k, v in r.items() if k != "model"} for r in _read("table2.csv")}


# The paper's shared source/target BPE vocabulary ("about 37000 tokens").
PAPER_VOCAB_SIZE = 37000
