"""Finding, loading and averaging run checkpoints.

Every way a checkpoint file can be unusable (missing, not a checkpoint, another format version,
its tokenizer gone or changed, weights that no longer fit its config) is a CheckpointError
naming the file, raised before any weight is loaded.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from attnlab.config import ExperimentConfig
from attnlab.data.tokenizer import Vocabulary
from attnlab.errors import CheckpointError, DataError
from attnlab.model import Transformer, build_model

STEP_FILE = re.compile(r"step(\d+)\.ckpt$")

FORMAT_VERSION = 1
"""Version of the 'attnlab' entry and the state dict layout written by this attnlab. Bump it when
an older reader could not use a new checkpoint; a checkpoint without a version is version 1."""

# What torch.load raises for a zip archive that is not (or no longer) a torch checkpoint, or
# whose pickle names a class this installation lacks.
_LOAD_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ImportError, AttributeError)


def step_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints named step<N>.ckpt, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(directory).glob("step*.ckpt") if (m := STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: Path) -> Path | None:
    found = step_checkpoints(directory)
    return found[-1] if found else None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _check_file(path: Path) -> None:
    """A readable, non-empty zip archive (what torch.save writes) before torch.load sees it:
    unpickling arbitrary bytes can fail in too many ways to catch them all specifically."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give a .ckpt file (its checkpoints/step*.ckpt)")
    try:
        size, is_zip = path.stat().st_size, zipfile.is_zipfile(path)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is an empty file")
    if not is_zip:
        raise CheckpointError(f"{path} is not a checkpoint: not a zip archive as torch.save writes "
                              "(another kind of file, or a truncated checkpoint)")


def _check_entry(path: Path, checkpoint: Any) -> None:
    """Our 'attnlab' entry, of a format version this attnlab reads, and a state dict."""
    if not isinstance(checkpoint, dict) or "attnlab" not in checkpoint:
        raise CheckpointError(f"{path} is a torch file but not an attnlab checkpoint (no 'attnlab' entry); "
                              "use a checkpoint written by `attnlab train` or `attnlab average`")
    entry = checkpoint["attnlab"]
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: its 'attnlab' entry is a {type(entry).__name__}, not a mapping")
    version = entry.get("format_version", 1)  # checkpoints written before versioning are version 1
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}, but this attnlab reads version "
                              f"{FORMAT_VERSION}; use the attnlab version that wrote it")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} has no 'state_dict' of model weights")


def _read(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of `path`, checked to be an attnlab checkpoint of our format version."""
    path = Path(path)
    _check_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    except _LOAD_ERRORS as error:
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({_first_line(error)})") from None
    _check_entry(path, checkpoint)
    return checkpoint


def _stored(path: Path, entry: dict[str, Any], key: str) -> Any:
    if key not in entry:
        raise CheckpointError(f"{path}: its 'attnlab' entry has no {key!r}; it cannot be rebuilt")
    return entry[key]


def _load_vocabulary(path: Path, vocab_model: Any) -> Vocabulary:
    """The checkpoint's sentencepiece model, or a CheckpointError naming both files."""
    if not isinstance(vocab_model, str):
        raise CheckpointError(f"{path}: its 'vocab_model' is {vocab_model!r}, not the path of a tokenizer")
    tokenizer = Path(vocab_model)
    if not tokenizer.exists():
        raise CheckpointError(f"{path}: its tokenizer {tokenizer} is missing (deleted, moved, or written on "
                              "another machine?); the checkpoint needs the tokenizer it was trained with")
    try:
        return Vocabulary(tokenizer)
    except RuntimeError as error:  # sentencepiece's words for an unreadable or foreign file
        raise CheckpointError(f"{path}: its tokenizer {tokenizer} is not a readable sentencepiece model "
                              f"({_first_line(error)})") from None
    except DataError:  # Vocabulary checks the special ids, as attnlab trains them
        raise CheckpointError(f"{path}: its tokenizer {tokenizer} does not use attnlab's special ids "
                              "(pad 0, unk 1, bos 2, eos 3)") from None


def _check_weights(path: Path, tokenizer: Vocabulary, model: Transformer, state: dict[str, torch.Tensor]) -> None:
    """The stored weights fit the model built from the stored config and tokenizer, so that
    load_state_dict cannot fail: the vocabulary first, as the likeliest change."""
    rows = state.get("tgt_embed.weight")
    if rows is not None and rows.size(0) != len(tokenizer):
        raise CheckpointError(f"{path}: its embeddings have {rows.size(0)} rows but its tokenizer {tokenizer.path} "
                              f"has {len(tokenizer)} tokens; the tokenizer file changed since training, "
                              "restore the one the run used")
    expected = model.state_dict()
    problems = [f"missing {k}" for k in sorted(expected.keys() - state.keys())]
    problems += [f"unexpected {k}" for k in sorted(state.keys() - expected.keys())]
    problems += [f"{k} {tuple(state[k].shape)} (config: {tuple(v.shape)})" for k, v in expected.items()
                 if k in state and state[k].shape != v.shape]
    if problems:  # the first few say enough
        problems = problems[:3] + ([f"{len(problems) - 3} more"] if len(problems) > 3 else [])
        raise CheckpointError(f"{path}: its weights do not fit its stored model config: {'; '.join(problems)}")


def load_checkpoint(path: str | Path) -> tuple[Transformer, Vocabulary, ExperimentConfig]:
    """The model (eval mode), its vocabulary and the run's config, from a checkpoint file."""
    path = Path(path)
    checkpoint = _read(path)
    entry = checkpoint["attnlab"]
    stored = _stored(path, entry, "config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: its stored config is a {type(stored).__name__}, not a mapping")
    config = ExperimentConfig.from_dict(stored, where=f"{path} (stored config)")  # ConfigError, naming the file
    vocab = _load_vocabulary(path, _stored(path, entry, "vocab_model"))
    model = build_model(config.model, len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    _check_weights(path, vocab, model, state)
    model.load_state_dict(state)
    return model.eval(), vocab, config


def average_checkpoints(paths: list[str | Path], output: str | Path) -> Path:
    """Mean of the parameters of several checkpoints of one run (the paper's Table 2 recipe:
    the last 5 for base, 20 for big). The rest of the first checkpoint is kept as it is."""
    if not paths:
        raise CheckpointError("no checkpoints to average; give checkpoint files, or a run folder with --last N")
    first = _read(paths[0])
    total = {k: v.double().clone() if v.is_floating_point() else v for k, v in first["state_dict"].items()}
    for path in paths[1:]:
        state = _read(path)["state_dict"]
        _check_same_parameters(paths[0], total, path, state)
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


def _check_same_parameters(first_path: str | Path, first: dict[str, torch.Tensor], path: str | Path,
                           state: dict[str, torch.Tensor]) -> None:
    """Only checkpoints of one model can be averaged: same parameter names and shapes."""
    if state.keys() != first.keys():
        differ = sorted(state.keys() ^ first.keys())
        raise CheckpointError(f"{path} has other parameters than {first_path} ({', '.join(differ[:3])}"
                              f"{', ...' if len(differ) > 3 else ''}); average checkpoints of one run only")
    for k, v in state.items():
        if v.shape != first[k].shape:
            raise CheckpointError(f"{path} has {k} of shape {tuple(v.shape)} but {first_path} of "
                                  f"{tuple(first[k].shape)}; average checkpoints of one run only")


def check_resumable(path: Path, batches_per_step: int) -> None:
    """A checkpoint resumes only with the batches per optimizer step it was trained with (any
    split of them into ranks and accumulation): checked before any compute, reading its small
    entries only (memory-mapped)."""
    from attnlab.data.datamodule import TranslationDataModule, global_batch_mismatch

    _check_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except _LOAD_ERRORS as error:
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({_first_line(error)})") from None
    stored = (checkpoint.get(TranslationDataModule.__qualname__) or {}).get("batches_per_step")
    if stored is not None and stored != batches_per_step:
        raise CheckpointError(f"cannot resume from {path}: {global_batch_mismatch(stored, batches_per_step)}")
