"""The LightningModule: loss, optimizer, schedule and logging around an injected model.

It never reads ablation fields: whatever `build_model` produced is trained the same way.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import time
from typing import Any, Callable

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F

from attnlab.config import DecodeConfig, TrainConfig
from attnlab.model import Transformer
from attnlab.train.checkpoints import FORMAT_VERSION
from attnlab.train.evaluation import search
from attnlab.train.schedule import noam_scheduler, scale_for_peak

# Scores hypotheses (token ids in dataset order) of the validation split: {"bleu": .., "chrf": ..}
Scorer = Callable[[dict[int, list[int]]], dict[str, float]]


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class TranslationModule(pl.LightningModule):
    def __init__(self, model: Transformer, train: TrainConfig, scorer: Scorer | None = None,
                 checkpoint_extra: dict[str, Any] | None = None, stats_path: str | None = None,
                 decode: DecodeConfig | None = None) -> None:
        super().__init__()
        self.model, self.train_config, self.scorer = model, train, scorer
        self.decode = decode or DecodeConfig()
        self.stats_path = stats_path  # rank 0 writes training totals here (spawned workers too)
        self.checkpoint_extra = checkpoint_extra or {}  # what `load_checkpoint` needs to rebuild the run
        self._val: dict[str, Any] = {}
        self._last_step_time: float | None = None
        self.train_tokens = 0
        self.train_seconds = 0.0
        self._step_sums = torch.zeros(4, dtype=torch.float64)  # loss, NLL, tokens, batches of this step
        self._step_seconds = 0.0

    def setup(self, stage: str) -> None:
        # Spawned DDP ranks exit right after fit; a gloo process group still alive at interpreter
        # exit can abort the rank ("terminate called without an active exception"; seen once in
        # CI). Destroy it first.
        if dist.is_available() and dist.is_initialized():
            atexit.unregister(_destroy_process_group)  # once per process, however many runs
            atexit.register(_destroy_process_group)

    # -- loss ------------------------------------------------------------------------------
    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(label-smoothed loss per token, summed NLL, real target tokens); padding ignored."""
        logits = self.model(batch["src"], batch["tgt_in"]).flatten(0, 1).float()
        target = batch["tgt_out"].flatten()
        tokens = int((target != self.model.pad_id).sum())
        smoothed = F.cross_entropy(logits, target, ignore_index=self.model.pad_id,
                                   label_smoothing=self.train_config.label_smoothing, reduction="sum")
        nll = F.cross_entropy(logits.detach(), target, ignore_index=self.model.pad_id, reduction="sum")
        return smoothed / max(tokens, 1), nll, tokens

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, nll, tokens = self._losses(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}: the run diverged")
        now = time.perf_counter()
        if self._last_step_time is not None:  # time since the previous batch: forward+backward+step
            elapsed = now - self._last_step_time
            self.train_seconds += elapsed
            self._step_seconds += elapsed
            self.train_tokens += tokens
        self._last_step_time = now
        self._step_sums += torch.stack([loss.detach().double(), nll.double(),
                                        torch.tensor(float(tokens), dtype=torch.float64, device=nll.device),
                                        torch.ones((), dtype=torch.float64, device=nll.device)])
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0:  # this batch completes an optimizer step
            self._end_of_step(self.global_step + 1)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        self.log("global_step", float(self.global_step), on_step=True)
        return loss

    def _end_of_step(self, step: int) -> None:
        """Log the step's global batch (every micro-batch of every rank: the batch whose gradient
        is applied, so a 2-rank run and a 1-process run accumulating 2 batches log the same
        curve) every `log_every_steps`, and decide the time budget on the same steps on every rank."""
        every, world = max(1, self.train_config.log_every_steps), self.trainer.world_size
        if step % every == 0:
            loss_sum, nll_sum, tokens, batches = self.trainer.strategy.reduce(self._step_sums, reduce_op="sum").tolist()
            self.log("train/loss", loss_sum / batches, on_step=True, prog_bar=True)
            self.log("train/ppl", math.exp(min(nll_sum / max(tokens, 1), 50)), on_step=True)
            if self._step_seconds > 0:
                self.log("train/tokens_per_s", tokens / self._step_seconds, on_step=True, prog_bar=True)
        self._step_sums = torch.zeros_like(self._step_sums)
        self._step_seconds = 0.0
        budget = self.train_config.max_train_minutes
        if budget is not None and (world == 1 or step % every == 0):
            stop = self.train_seconds >= 60 * budget
            # Each rank has its own clock: rank 0 decides, or the ranks would stop on different steps.
            self.trainer.should_stop = bool(self.trainer.strategy.broadcast(stop)) if world > 1 else stop

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = [p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]
        if norms:
            self.log("train/grad_norm", torch.stack(norms).norm(), on_step=True)

    def on_train_start(self) -> None:
        self._step_sums = self._step_sums.to(self.device)

    def on_train_epoch_start(self) -> None:
        self._last_step_time = None

    def on_train_end(self) -> None:
        """Totals over all ranks: tokens summed, time of the slowest rank."""
        tokens, seconds = float(self.train_tokens), self.train_seconds
        if dist.is_available() and dist.is_initialized():
            totals = torch.tensor([tokens, seconds], dtype=torch.float64, device=self.device)
            dist.all_reduce(totals[:1])
            dist.all_reduce(totals[1:], op=dist.ReduceOp.MAX)
            tokens, seconds = totals.tolist()
        stats = {"train_steps": self.global_step, "epochs": self.current_epoch, "train_tokens": int(tokens),
                 "train_seconds": seconds, "world_size": self.trainer.world_size}
        if self.trainer.world_size > 1:
            stats["weights_max_rank_difference"] = self._weights_difference()
        if self.stats_path and self.trainer.global_rank == 0:
            with open(self.stats_path, "w") as f:
                json.dump(stats, f)

    def _weights_difference(self) -> float:
        """Largest difference between any rank's and rank 0's weight fingerprints (per tensor: sum
        and sum of magnitudes, in float64); 0.0 when DDP kept every rank's weights identical."""
        fingerprint = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()])
                                   for p in self.model.parameters()])
        every = [torch.empty_like(fingerprint) for _ in range(dist.get_world_size())]
        dist.all_gather(every, fingerprint)
        return float(max((f - every[0]).abs().max() for f in every))

    # -- validation ------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = {"nll": 0.0, "tokens": 0, "hyps": {}}
        self._last_step_time = None  # validation time is not training time

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, nll, tokens = self._losses(batch)
        self._val["nll"] += nll.item()
        self._val["tokens"] += tokens
        if self.scorer is not None and self.train_config.val_bleu and not self.trainer.sanity_checking:
            decode = self.decode
            if self.train_config.val_beam_size is not None:
                decode = dataclasses.replace(decode, beam_size=self.train_config.val_beam_size)
            self._val["hyps"].update(zip(batch["index"].tolist(), search(self.model, batch["src"], decode)))

    def on_validation_epoch_end(self) -> None:
        nll, tokens, hyps = self._val["nll"], self._val["tokens"], self._val["hyps"]
        if dist.is_available() and dist.is_initialized():  # sum over ranks, exactly
            totals = torch.tensor([nll, tokens], dtype=torch.float64, device=self.device)
            dist.all_reduce(totals)
            nll, tokens = totals.tolist()
            gathered: list[dict] = [None] * dist.get_world_size()  # type: ignore[list-item]
            dist.all_gather_object(gathered, hyps)
            hyps = {k: v for part in gathered for k, v in part.items()}
        val_loss = nll / max(tokens, 1)
        # Every rank holds the same exact totals now; sync_dist only averages equal values.
        self.log("val/loss", val_loss, sync_dist=True)
        self.log("val/ppl", math.exp(min(val_loss, 50)), sync_dist=True)
        if hyps and self.scorer is not None:
            for name, value in self.scorer(hyps).items():
                self.log(f"val/{name}", value, sync_dist=True)

    def on_validation_end(self) -> None:
        # Callbacks' on_validation_end ran first: a stop decided on rank 0 alone (pruning) is
        # everyone's, or rank 0 would leave fit while the others wait in the next step's all-reduce.
        if self.trainer.world_size > 1 and not self.trainer.sanity_checking:
            self.trainer.should_stop = bool(self.trainer.strategy.broadcast(self.trainer.should_stop))

    # -- optimisation ----------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        cfg, d_model = self.train_config, self.model.config.d_model
        scale = scale_for_peak(cfg.peak_lr, d_model, cfg.warmup_steps) if cfg.peak_lr else cfg.lr_scale
        optimizer = torch.optim.Adam(self.model.parameters(), lr=1.0, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                     weight_decay=cfg.weight_decay)
        scheduler = noam_scheduler(optimizer, d_model, cfg.warmup_steps, scale)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The version lets a later attnlab refuse, by name, a layout it cannot read.
        checkpoint["attnlab"] = {**self.checkpoint_extra, "format_version": FORMAT_VERSION}
        checkpoint["rng"] = {"torch": torch.get_rng_state()}  # dropout masks continue exactly on resume
        checkpoint["throughput"] = {"tokens": self.train_tokens, "seconds": self.train_seconds}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng" in checkpoint:
            torch.set_rng_state(checkpoint["rng"]["torch"])
        self.train_tokens = checkpoint.get("throughput", {}).get("tokens", 0)
        self.train_seconds = checkpoint.get("throughput", {}).get("seconds", 0.0)
