"""Callbacks that keep the ranks of one run in step, whoever launched them (train/launch.py)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist

from attnlab.errors import CheckpointError, LaunchError
from attnlab.fields import describe_changes
from attnlab.results import RANKS_FILE


class SameRun(pl.Callback):
    """Once every rank is in the process group, whoever launched it: all ranks train the same
    config on the same vocabulary (nodes that prepared their data apart may not), or all stop
    with one message. Rank 0 keeps who the ranks were (RANKS_FILE) for result.json, and at the
    end how far apart their weights are (0.0: DDP kept them identical, as it must)."""

    def __init__(self, definition: dict[str, Any], vocab_path: Path, run_dir: Path, log_every_steps: int) -> None:
        from attnlab import allocator

        vocab_sha256 = hashlib.sha256(Path(vocab_path).read_bytes()).hexdigest()
        # log_every_steps does not change what a run computes, but it sets the steps of the
        # collectives in a training step: ranks that disagree on it would pair them wrongly.
        definition = {**definition, "train.log_every_steps": log_every_steps}
        self.facts = {"definition": definition, "vocab_sha256": vocab_sha256,
                      "host": socket.gethostname(), "pid": os.getpid(), "allocator": allocator.active() or "system",
                      "run_dir": str(run_dir), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        self.path = Path(run_dir) / RANKS_FILE
        self.ranks: list[dict[str, Any]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not (dist.is_available() and dist.is_initialized()) or trainer.world_size == 1:
            if trainer.is_global_zero:
                self.path.unlink(missing_ok=True)  # a resumed multi-rank run now on one process
            return
        ranks: list[dict[str, Any]] = [{}] * trainer.world_size
        dist.all_gather_object(ranks, {**self.facts, "rank": trainer.global_rank})
        first = ranks[0]
        for facts in ranks[1:]:
            if facts["definition"] != first["definition"]:
                raise LaunchError(f"rank {facts['rank']} ({facts['host']}) was started with another config than rank "
                                  f"0: {describe_changes(first['definition'], facts['definition'])}; start every rank "
                                  "with the same config file and --set overrides")
            if facts["vocab_sha256"] != first["vocab_sha256"]:
                raise LaunchError(f"rank {facts['rank']} ({facts['host']}) has another vocabulary than rank 0: the "
                                  "nodes prepared their data apart. Put data.cache_dir on a filesystem every node "
                                  "shares, or run `attnlab data CONFIG` once and copy its cache to every node")
        self.ranks = [{k: v for k, v in r.items() if k not in ("definition", "vocab_sha256")} for r in ranks]
        if trainer.is_global_zero:
            self.path.write_text(json.dumps({"ranks": self.ranks}, indent=2))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1 or not dist.is_initialized():
            return
        difference = weights_difference(pl_module)
        if trainer.is_global_zero:
            self.path.write_text(json.dumps({"ranks": self.ranks, "weights_max_rank_difference": difference},
                                            indent=2))

    @staticmethod
    def read(run_dir: Path) -> dict[str, Any]:
        path = Path(run_dir) / RANKS_FILE
        return json.loads(path.read_text()) if path.exists() else {"ranks": []}


def weights_difference(module: pl.LightningModule) -> float:
    """Largest difference between any rank's and rank 0's weight fingerprints (per tensor: sum
    and sum of magnitudes, in float64); 0.0 when every rank holds the same weights."""
    fingerprint = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()])
                               for p in module.parameters()])
    every = [torch.empty_like(fingerprint) for _ in range(dist.get_world_size())]
    dist.all_gather(every, fingerprint)
    return float(max((f - every[0]).abs().max() for f in every))


class Recount(pl.Callback):
    """Lightning counts an epoch's batches per rank. A run resumed on another number of ranks
    (the same batches per step, split otherwise: datamodule.py checks that) must count as if it
    had always run on this many, or its accumulation boundaries fall on the wrong batches. The
    checkpoint's counters are rescaled before Lightning restores its loops from them."""

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        from attnlab.data.datamodule import TranslationDataModule

        stored = (checkpoint.get(TranslationDataModule.__qualname__) or {}).get("world_size", trainer.world_size)
        if stored == trainer.world_size:
            return
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        for counters in (progress["total"], progress["current"]):
            anchor = counters["processed"]  # the others differ from it by the batch in flight, kept as is
            if anchor * stored % trainer.world_size:
                raise CheckpointError(f"the checkpoint's position ({anchor} batches on each of {stored} ranks) "
                                      f"cannot be shared by {trainer.world_size} ranks; resume on {stored} ranks")
            rescaled = anchor * stored // trainer.world_size
            for key, value in counters.items():
                counters[key] = rescaled + (value - anchor)
