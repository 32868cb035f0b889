"""Run training under tcmalloc or jemalloc when the system has one.

glibc's malloc keeps and fragments the many mid-sized buffers of training with varying batch
shapes: on the 2-core CPU machine a 40-minute Multi30k run grew to 6.6 GB and spent time in page
faults, where tcmalloc held ~2 GB (bench/memory_probe.py). A library can only replace malloc
before the process starts, so the CLI re-executes itself once with LD_PRELOAD set.

ATTNLAB_ALLOCATOR: "auto" (default: tcmalloc, else jemalloc, else the system's), "system", or
the path of a malloc library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from attnlab.errors import ConfigError

ENV = "ATTNLAB_ALLOCATOR"
CANDIDATES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def find_allocator(setting: str | None = None) -> str | None:
    """The library to preload for `setting` (see module doc), or None for the system's malloc."""
    setting = setting or os.environ.get(ENV, "auto")
    if setting == "system":
        return None
    if setting != "auto":
        if not Path(setting).is_file():
            raise ConfigError(f"{ENV}={setting!r}: no such file; use auto, system or a library path")
        return setting
    for names in CANDIDATES.values():
        for folder in LIB_DIRS:
            for name in names:
                if (Path(folder) / name).is_file():
                    return str(Path(folder) / name)
    return None


def active() -> str | None:
    """The preloaded malloc library of this process, if any."""
    preload = os.environ.get("LD_PRELOAD", "")
    return next((p for p in preload.split(":") if "malloc" in Path(p).name), None)


def reexec_with_allocator(argv: list[str] | None = None) -> None:
    """Replace this process by `python -m attnlab.cli argv` (argv None: the same command line,
    for scripts such as the benchmarks) with the allocator preloaded (once)."""
    if active() or os.environ.get(f"{ENV}_DONE") or not sys.platform.startswith("linux"):
        return
    library = find_allocator()
    if library is None:
        return
    env = {**os.environ, "LD_PRELOAD": ":".join(p for p in (library, os.environ.get("LD_PRELOAD")) if p),
           f"{ENV}_DONE": "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    command = [sys.executable, "-m", "attnlab.cli", *argv] if argv is not None else [sys.executable, *sys.orig_argv[1:]]
    os.execve(sys.executable, command, env)
