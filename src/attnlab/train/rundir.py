"""A run folder is reused only by the config that made it.

Rerunning a run resumes it from its last checkpoint; that is right only when the config still
means the same thing (a longer budget is fine). A run folder holding another config is refused
before anything is written, or, when asked (`--restart`, a study row rerun after an edit), kept
beside the new one as `<name>.superseded-<k>`: nothing written is lost, and no checkpoint of
the old config is ever resumed under the new one.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from attnlab.config import BATCHES_PER_STEP, BUDGETS, ExperimentConfig
from attnlab.errors import ConfigError
from attnlab.fields import describe_changes
from attnlab.results import CONFIG_FILE


def stored_changes(config: ExperimentConfig, run_dir: Path) -> str | None:
    """What differs between the run folder's stored config and `config` (budgets aside); None
    when there is no stored run or it is the same."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        stored = ExperimentConfig.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, where=str(path))
    except (ConfigError, yaml.YAMLError) as error:  # written by another attnlab version
        return f"its {CONFIG_FILE} no longer reads ({str(error).splitlines()[0]})"
    old, new = stored.definition(ignore=BUDGETS), config.definition(ignore=BUDGETS)
    return describe_changes(old, new) if old != new else None


def move_aside(run_dir: Path) -> Path:
    """Rename a run folder to the first free `<name>.superseded-<k>`; returns the new path."""
    k = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.superseded-{k}")).exists():
        k += 1
    return run_dir.rename(aside)


def must_move_aside(config: ExperimentConfig, run_dir: Path, resume: bool, replace_changed: bool) -> bool:
    """Whether the run folder must be moved aside before this run starts (a restart, or a
    replaced config); a run folder of another config that may not be replaced is a ConfigError.
    Checked before any compute; the move itself waits until the run is sure to start."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return False
    if not resume:
        return True
    changes = stored_changes(config, run_dir)
    if changes is None:
        return False
    if not replace_changed:
        hint = (" (resuming keeps the batches per optimizer step: choose devices, num_nodes and "
                "accumulate_grad_batches whose product is the stored one)" if BATCHES_PER_STEP in changes else "")
        raise ConfigError(f"{run_dir} holds a run of another config ({changes}); resuming it would mix the two{hint}. "
                          "Give this run another name, or rerun with --restart (the old folder is kept as "
                          f"{run_dir.name}.superseded-N)")
    return True

