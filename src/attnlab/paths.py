"""Folders and files attnlab will write, checked before any compute is spent on what goes there."""

from __future__ import annotations

import os
from pathlib import Path

from attnlab.errors import ConfigError


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """`folder` exists as a writable folder or can be created (its nearest existing ancestor is a
    writable folder); a ConfigError naming `what` (the key or option that set it) otherwise."""
    path = Path(folder).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what}={str(folder)!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}={str(folder)!r}: {existing} is not writable")


def check_output_file(path: str | None, option: str) -> None:
    """An output file's folder must exist, and the path must not be a folder."""
    if path is None:
        return
    folder = Path(path).expanduser().absolute().parent
    if Path(path).is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    if not folder.is_dir():
        raise ConfigError(f"{option} {path}: folder {folder} does not exist")
