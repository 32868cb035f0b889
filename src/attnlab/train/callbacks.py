"""The run's clock as a callback: the module keeps the loss, the optimizer and their logging.

`TrainClock` counts pure training time (data, forward, backward, update; validation excluded)
and the real target tokens trained, logs tokens/s every `log_every_steps`, stops the run when
`max_train_minutes` is spent, keeps both counts in checkpoints (a resumed run goes on counting)
and writes the run's totals to the stats file at the end. Tokens are summed on the device and
read only at log steps: nothing here waits for the GPU inside a step.

A stop time ($ATTNLAB_STOP_AT, seconds since the epoch: a sweep's slice, a job's time limit)
ends training at the first step after it, with that step checkpointed (FinalCheckpoint) and
no final evaluation: `train()` raises StopTimeReached, and running the run again resumes it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

STOP_AT_ENV = "ATTNLAB_STOP_AT"  # inherited by every rank a launcher starts


class EndsRun(pl.Callback):
    """A callback that may end a run after fit without its final evaluation (a pruned trial,
    say): `ending()` is the exception `train()` raises on rank 0 then, or None."""

    def ending(self) -> Exception | None:
        return None


def stop_time() -> float | None:
    value = os.environ.get(STOP_AT_ENV)
    return float(value) if value else None


def step_ended(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether the batch that just ended completed an optimizer step (every rank's share of an
    epoch is a whole number of steps: data/batching.py)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0


class TrainClock(pl.Callback):
    def __init__(self, stats_path: str | Path, pad_id: int, log_every: int, budget_minutes: float | None,
                 stop_at: float | None = None) -> None:
        self.stats_path, self.pad_id = Path(stats_path), pad_id
        self.every, self.budget, self.stop_at = max(1, log_every), budget_minutes, stop_at
        self.stopped_at_stop_time = False
        self.seconds = 0.0  # training time before the current window
        self.tokens = 0  # tokens of every rank before the current window
        self._window_tokens: torch.Tensor | None = None  # on the device, since the last log step
        self._window_seconds = 0.0
        self._last: float | None = None
        self.first_step_at: float | None = None  # wall clock (time.time) of the first batch's end

    # -- counting ----------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = time.perf_counter()  # validation is not training time

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self.first_step_at is None:
            self.first_step_at = time.time()
        if self._last is not None:
            self._window_seconds += now - self._last
        self._last = now
        tokens = (batch["tgt_out"] != self.pad_id).sum()
        self._window_tokens = tokens if self._window_tokens is None else self._window_tokens + tokens
        if not step_ended(trainer, batch_idx):
            return
        step, world = trainer.global_step, trainer.world_size
        if step % self.every == 0:
            self._close_window(trainer, pl_module)
        if (self.budget is not None or self.stop_at is not None) and (world == 1 or step % self.every == 0):
            spent = self.budget is not None and self.elapsed >= 60 * self.budget
            late = self.stop_at is not None and time.time() >= self.stop_at
            # Each rank has its own clock: rank 0 decides, or the ranks would stop on different steps.
            spent, late = trainer.strategy.broadcast((spent, late)) if world > 1 else (spent, late)
            self.stopped_at_stop_time = late and not spent
            trainer.should_stop = spent or late

    def _close_window(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tokens, seconds = self._drain(trainer)
        if seconds > 0:
            pl_module.log("train/tokens_per_s", tokens / seconds, on_step=True, prog_bar=True)

    def _drain(self, trainer: pl.Trainer) -> tuple[int, float]:
        """Add the open window to the totals: its tokens read from the device (the one wait for
        it) and summed over the ranks, a collective every rank reaches at the same step."""
        window = self._window_tokens
        if window is None:
            window = torch.zeros((), device=trainer.strategy.root_device)
        tokens = int(trainer.strategy.reduce(window.double(), reduce_op="sum"))
        seconds = self._window_seconds
        self.tokens, self.seconds = self.tokens + tokens, self.seconds + seconds
        self._window_tokens, self._window_seconds = None, 0.0
        return tokens, seconds

    @property
    def elapsed(self) -> float:
        """Training seconds so far, the open window included."""
        return self.seconds + self._window_seconds

    # -- checkpoints and totals ----------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """Every rank writes its checkpoint state together (Trainer.save_checkpoint), so the open
        window can be summed over the ranks here: a resumed run counts on from the true total."""
        if getattr(self, "_trainer", None) is not None:
            self._drain(self._trainer)
        return {"tokens": self.tokens, "seconds": self.elapsed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens, self.seconds = int(state["tokens"]), float(state["seconds"])

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if "throughput" in checkpoint:  # written by the module before the clock was a callback
            self.load_state_dict(checkpoint["throughput"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Totals: tokens of every rank, time of the slowest; rank 0 writes them."""
        self._drain(trainer)
        seconds = torch.tensor(self.seconds, dtype=torch.float64, device=pl_module.device)
        if trainer.world_size > 1:
            torch.distributed.all_reduce(seconds, op=torch.distributed.ReduceOp.MAX)
        if trainer.is_global_zero:
            self.stats_path.write_text(json.dumps({
                "train_steps": trainer.global_step, "epochs": trainer.current_epoch, "train_tokens": self.tokens,
                "train_seconds": float(seconds), "world_size": trainer.world_size,
                "first_step_at": self.first_step_at, "training_ended_at": time.time()}))


class FinalCheckpoint(pl.Callback):
    """The last step's checkpoint, when the last periodic one came earlier (a time budget, a
    step count between validations), written inside fit where every rank takes part, as saving
    requires, and where the spawned ranks of ddp_spawn still hold the optimizer's state."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, step: int) -> Path:
        return self.directory / f"step{step:07d}.ckpt"

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.path(trainer.global_step)
        if trainer.strategy.broadcast(trainer.is_global_zero and not path.exists()):  # rank 0 decides
            trainer.save_checkpoint(path)
