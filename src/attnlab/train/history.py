"""The run's learning curve in its own folder (`metrics.jsonl`), so reports need no W&B server.

One JSON object per line: `{"step", "train_seconds", "train/loss", ...}` every `log_every_steps`
training steps and `{"step", "train_seconds", "val/loss", "val/ppl", "val/bleu", ...}` after
every validation. Rank 0 appends; a resumed run appends after the checkpoint's step, so a
reader keeps the last line of each (kind, step): see `read_history`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from attnlab.results import HISTORY_FILE


class History(pl.Callback):
    def __init__(self, run_dir: Path, every: int, clock: Any = None) -> None:
        self.path = Path(run_dir) / HISTORY_FILE
        self.clock = clock  # the run's TrainClock: training seconds at each record
        self.every = max(1, every)
        self._last_step = -1  # with gradient accumulation, several batches end at the same step

    def _append(self, trainer: pl.Trainer, module: pl.LightningModule, prefix: str) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        record: dict[str, Any] = {"step": trainer.global_step,
                                  "train_seconds": round(self.clock.elapsed if self.clock else 0.0, 3)}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(prefix):
                value = float(value)
                record[key] = value if math.isfinite(value) else None
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step  # a resumed run's first batches end at the checkpoint's step

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every == 0 and step > 0 and step != self._last_step:
            self._last_step = step
            self._append(trainer, module, "train/")

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._append(trainer, module, "val/")


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's records in step order, a resumed run's repeated steps replaced by their last."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            kind = "val" if any(k.startswith("val/") for k in record) else "train"
            latest[(kind, record["step"])] = record
    return [latest[key] for key in sorted(latest, key=lambda k: (k[1], k[0]))]
