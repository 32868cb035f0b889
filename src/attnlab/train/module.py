"""The LightningModule: loss, optimizer, schedule and logging around an injected model.

It never reads ablation fields: whatever `build_model` produced is trained the same way.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
from typing import Any, Callable

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F

from attnlab.config import DecodeConfig, TrainConfig
from attnlab.model import Transformer
from attnlab.train.callbacks import step_ended
from attnlab.train.checkpoints import FORMAT_VERSION
from attnlab.train.evaluation import search
from attnlab.train.schedule import noam_scheduler, scale_for_peak

# Scores hypotheses (token ids in dataset order) of the validation split: {"bleu": .., "chrf": ..}
Scorer = Callable[[dict[int, list[int]]], dict[str, float]]
GRAD_NORM = "train/grad_norm"  # over every gradient; GRAD_NORM/<layer> per layer (Transformer.layer_groups)
BATCHNORM_SPREAD = "train/batchnorm_spread"  # Transformer.batch_statistics_spread, with norm: batchnorm


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class TranslationModule(pl.LightningModule):
    def __init__(self, model: Transformer, train: TrainConfig, scorer: Scorer | None = None,
                 checkpoint_extra: dict[str, Any] | None = None, decode: DecodeConfig | None = None) -> None:
        super().__init__()
        self.model, self.train_config, self.scorer = model, train, scorer
        self.decode = decode or DecodeConfig()
        self.checkpoint_extra = checkpoint_extra or {}  # what `load_checkpoint` needs to rebuild the run
        self._val: dict[str, Any] = {}
        # On the device, read every log_every_steps: loss, NLL, tokens and batches of the step
        # being trained, and the first step whose loss was not finite (-1: none yet).
        self._step_sums = torch.zeros(4, dtype=torch.float64)
        self._diverged_at = torch.tensor(-1)
        self._compiled: Callable[..., torch.Tensor] | None = None  # the training forward, when compiled

    def setup(self, stage: str) -> None:
        # Spawned DDP ranks exit right after fit; a gloo process group still alive at interpreter
        # exit can abort the rank ("terminate called without an active exception"; seen once in
        # CI). Destroy it first.
        if dist.is_available() and dist.is_initialized():
            atexit.unregister(_destroy_process_group)  # once per process, however many runs
            atexit.register(_destroy_process_group)
        mode = self.train_config.compile
        if mode != "off" and self._compiled is None:
            # The training forward only: a compiled function, not a wrapped module, so the state
            # dict keeps its names; decoding and the statistics after training stay eager.
            self._compiled = torch.compile(self.model.forward, mode=mode)

    # -- loss ------------------------------------------------------------------------------
    def _losses(self, batch: dict[str, torch.Tensor], forward: Callable[..., torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(label-smoothed loss per token, summed NLL, real target tokens); padding ignored.
        All three stay on the device: reading them would make the host wait for the step."""
        logits = (forward or self.model)(batch["src"], batch["tgt_in"]).flatten(0, 1).float()
        target = batch["tgt_out"].flatten()
        tokens = (target != self.model.pad_id).sum()
        smoothed = F.cross_entropy(logits, target, ignore_index=self.model.pad_id,
                                   label_smoothing=self.train_config.label_smoothing, reduction="sum")
        nll = F.cross_entropy(logits.detach(), target, ignore_index=self.model.pad_id, reduction="sum")
        return smoothed / tokens.clamp(min=1), nll, tokens

    @property
    def _every(self) -> int:
        return max(1, self.train_config.log_every_steps)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, nll, tokens = self._losses(batch, self._compiled)
        step = self.global_step + 1  # the optimizer step this batch belongs to
        finite = torch.isfinite(loss.detach())
        self._diverged_at = torch.where(~finite & (self._diverged_at < 0), step, self._diverged_at)
        self._step_sums += torch.stack([loss.detach().double(), nll.double(), tokens.double(),
                                        torch.ones_like(nll, dtype=torch.float64)])
        if step_ended(self.trainer, batch_idx):
            if step % self._every == 0:
                self._log_step()
            self._step_sums = torch.zeros_like(self._step_sums)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        self.log("global_step", float(self.global_step), on_step=True)
        return loss

    def _log_step(self) -> None:
        """The step's global batch (every batch of every rank: the batch whose gradient is
        applied, so a 2-rank run and a 1-process run accumulating 2 batches log the same curve),
        and the divergence check: the one wait for the device in `log_every_steps` steps."""
        loss_sum, nll_sum, tokens, batches = self.trainer.strategy.reduce(self._step_sums, reduce_op="sum").tolist()
        self._check_finite(self.global_step + 1)
        self.log("train/loss", loss_sum / batches, on_step=True, prog_bar=True)
        self.log("train/ppl", math.exp(min(nll_sum / max(tokens, 1), 50)), on_step=True)
        spread = self.model.batch_statistics_spread()
        if spread is not None:
            self.log(BATCHNORM_SPREAD, spread, on_step=True)

    def _check_finite(self, seen_at: int) -> None:
        """A diverged run fails with the first step whose loss was NaN or infinite, on every rank
        at once (the flag is the maximum over the ranks). Checked at log steps, before each
        validation and checkpoint, and at the end, all places every rank reaches together."""
        first = int(self.trainer.strategy.reduce(self._diverged_at.clone(), reduce_op="max")) \
            if self.trainer.world_size > 1 else int(self._diverged_at)
        if first >= 0:
            raise FloatingPointError(f"training loss is not finite (nan or inf) since step {first}, seen at step "
                                     f"{seen_at}: the run diverged; lower the learning rate "
                                     "(train.peak_lr / lr_scale) or clip gradients (train.grad_clip)")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if (self.global_step + 1) % self._every == 0:  # norms over the gradients: only when logged
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                self.log(GRAD_NORM, torch.nn.utils.get_total_norm(grads), on_step=True)
            for layer, parameters in self.model.layer_groups().items():
                grads = [p.grad for p in parameters if p.grad is not None]
                if grads:  # "vanishing gradients" as a curve per layer
                    self.log(f"{GRAD_NORM}/{layer}", torch.nn.utils.get_total_norm(grads), on_step=True)

    def on_train_start(self) -> None:
        self._step_sums = self._step_sums.to(self.device)
        self._diverged_at = self._diverged_at.to(self.device)

    def on_train_end(self) -> None:
        self._check_finite(self.global_step)  # a NaN in the last steps before a log step

    # -- validation ------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._check_finite(self.global_step)  # never validate weights that already diverged
        self._val = {"nll": 0.0, "tokens": 0, "hyps": {}}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, nll, tokens = self._losses(batch)
        self._val["nll"] += nll.item()
        self._val["tokens"] += int(tokens)
        if self.scorer is not None and self.train_config.val_bleu and not self.trainer.sanity_checking:
            decode = self.decode
            if self.train_config.val_beam_size is not None:
                decode = dataclasses.replace(decode, beam_size=self.train_config.val_beam_size)
            real = batch["index"] >= 0  # not the empty rows that fill a bucketed batch
            hypotheses = search(self.model, batch["src"][real], decode)
            self._val["hyps"].update(zip(batch["index"][real].tolist(), hypotheses))

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
        # One fused kernel for all parameters on CUDA; Lightning refuses to clip the gradients of a
        # fused optimizer under mixed precision, so clipping keeps the plain one there.
        fused = next(self.model.parameters()).is_cuda and (cfg.grad_clip is None or cfg.precision == "32-true")
        optimizer = torch.optim.Adam(self.model.parameters(), lr=1.0, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                     weight_decay=cfg.weight_decay, fused=True if fused else None)
        scheduler = noam_scheduler(optimizer, d_model, cfg.warmup_steps, scale, ramp=cfg.warmup == "linear")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.training:  # every rank saves together
            self._check_finite(self.global_step)  # never a checkpoint of diverged weights
        # The version lets a later attnlab refuse, by name, a layout it cannot read.
        checkpoint["attnlab"] = {**self.checkpoint_extra, "format_version": FORMAT_VERSION}
        checkpoint["rng"] = {"torch": torch.get_rng_state()}  # dropout masks continue exactly on resume

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng" in checkpoint:
            torch.set_rng_state(checkpoint["rng"]["torch"])
