"""Finding, loading and averaging run checkpoints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from attnlab.config import ExperimentConfig
from attnlab.data.tokenizer import Vocabulary
from attnlab.model import Transformer, build_model

STEP_FILE = re.compile(r"step(\d+)\.ckpt$")


def step_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints named step<N>.ckpt, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("step*.ckpt") if (m := STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: Path) -> Path | None:
    found = step_checkpoints(directory)
    return found[-1] if found else None


def _read(path: str | Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "attnlab" not in checkpoint:
        raise ValueError(f"{path} is not an attnlab checkpoint (no 'attnlab' entry)")
    return checkpoint


def load_checkpoint(path: str | Path) -> tuple[Transformer, Vocabulary, ExperimentConfig]:
    """The model (eval mode), its vocabulary and the run's config, from a checkpoint file."""
    checkpoint = _read(path)
    config = ExperimentConfig.from_dict(checkpoint["attnlab"]["config"], where=str(path))
    vocab = Vocabulary(checkpoint["attnlab"]["vocab_model"])
    model = build_model(config.model, len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval(), vocab, config


def average_checkpoints(paths: list[str | Path], output: str | Path) -> Path:
    """Mean of the parameters of several checkpoints of one run (the paper's Table 2 recipe:
    the last 5 for base, 20 for big). The rest of the first checkpoint is kept as it is."""
    if not paths:
        raise ValueError("no checkpoints to average")
    first = _read(paths[0])
    total = {k: v.double().clone() if v.is_floating_point() else v for k, v in first["state_dict"].items()}
    for path in paths[1:]:
        state = _read(path)["state_dict"]
        if state.keys() != total.keys():
            raise ValueError(f"{path} has different parameters than {paths[0]}")
        for k, v in state.items():
            if v.is_floating_point():
                total[k] += v.double()
    original = first["state_dict"]
    first["state_dict"] = {k: (v / len(paths)).to(original[k].dtype) if original[k].is_floating_point() else v
                           for k, v in total.items()}
    first["attnlab"] = {**first["attnlab"], "averaged_from": [str(p) for p in paths]}
    first.pop("optimizer_states", None)  # an average is for evaluation, not for resuming
    torch.save(first, output)
    return Path(output)
