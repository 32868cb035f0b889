"""Pruning hopeless tuning trials from their validation curve, also under DDP.

optuna-integration's Lightning callback reports once per epoch; our validations run every n
steps, so this one reports at the global step. Rank 0 reports and decides; the module hands
rank 0's decision to every rank (TranslationModule.on_validation_end), so the ranks that
Lightning's launcher re-executes need no copy of this callback.
"""

from __future__ import annotations

import lightning.pytorch as pl
import optuna

from attnlab.train.callbacks import EndsRun

PRUNED_AT = "pruned_at_step"


class PruneOnValidation(EndsRun):
    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        if trainer.is_global_zero:
            self.trial.report(float(value), step=trainer.global_step)
            if self.trial.should_prune():  # kept in storage: a spawned rank's flag would not reach the main process
                self.trial.storage.set_trial_system_attr(self.trial._trial_id, PRUNED_AT, trainer.global_step)
                trainer.should_stop = True

    def ending(self) -> optuna.TrialPruned | None:
        """TrialPruned when any validation decided to prune."""
        step = self.trial.storage.get_trial_system_attrs(self.trial._trial_id).get(PRUNED_AT)
        if step is not None:
            return optuna.TrialPruned(f"pruned at step {step}: {self.monitor} below the pruner's bar")
        return None
