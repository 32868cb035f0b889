"""Weights & Biases through Lightning's WandbLogger: online with an API key, offline without."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from attnlab.config import ExperimentConfig
from attnlab.results import METRICS


def wandb_mode(configured: str) -> str:
    """online | offline | disabled. "auto" is online only when credentials are configured, so a
    machine without an account or network logs offline, to be synced later."""
    if configured != "auto":
        return configured
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def make_logger(config: ExperimentConfig, run_dir: Path, extra_config: dict[str, Any] | None = None):
    """A WandbLogger for the run, or None when W&B is disabled."""
    mode = wandb_mode(config.logging.wandb)
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    log = config.logging
    os.environ.setdefault("WANDB_SILENT", "true" if log.quiet else "false")
    logger = WandbLogger(
        name=config.name, project=log.project, entity=log.entity, group=log.group, job_type=log.job_type,
        tags=list(log.tags), save_dir=str(run_dir), offline=mode == "offline",
        config={**config.to_dict(), **(extra_config or {})}, reinit="finish_previous",
    )
    for metric in METRICS.values():  # a run's summary holds each curve's best value, not its last
        logger.experiment.define_metric(metric.logged, summary=metric.better)
    return logger


def finish(logger, failed: bool) -> str | None:
    """Close the W&B run (also after a failure) and return the command that uploads it, if offline."""
    if logger is None:
        return None
    import wandb

    directory = Path(logger.experiment.dir).parent  # .../wandb/offline-run-<time>-<id>
    wandb.finish(exit_code=1 if failed else 0)
    return f"wandb sync {directory}" if directory.name.startswith("offline-run") else None
