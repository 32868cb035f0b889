"""Getting verified corpus files into the cache: from a local mirror or the public sources.

Parallel workers share one cache. Each file is produced under a file lock and written to a
temporary name, then renamed into place, so a reader never sees half a file and a crash or a
checksum failure leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from attnlab.data.registry import SplitFile
from attnlab.errors import DataError

MIRROR_ENV = "ATTNLAB_DATA_MIRROR"
CACHE_ENV = "ATTNLAB_CACHE"




def cache_dir(configured: str | os.PathLike | None = None) -> Path:
    """The cache root: the configured path, else $ATTNLAB_CACHE, else ~/.cache/attnlab."""
    root = (configured or os.environ.get(CACHE_ENV)
            or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attnlab")
    return Path(root).expanduser()


def mirror_location(configured: str | None = None) -> str | None:
    """A folder or http(s) URL laid out like `<corpus>/<split>.<lang>.gz`, or None for upstream."""
    return configured or os.environ.get(MIRROR_ENV) or None


@contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Write to a temporary file beside `path`, rename on success, delete on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def locked(path: Path) -> FileLock:
    """A lock beside `path`, held while it is produced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(location: str) -> bytes:
    if re.match(r"^https?://", location):
        try:
            with urllib.request.urlopen(location, timeout=60) as response:
                return response.read()
        except OSError as error:
            raise DataError(f"could not download {location}: {error}") from error
    try:
        return Path(location).read_bytes()
    except FileNotFoundError:
        raise DataError(f"missing file {location}") from None


def _join(base: str, relative: str) -> str:
    return base.rstrip("/") + "/" + relative


def _wit3_segments(archive: bytes, member: str) -> bytes:
    """Text of every <seg> in one XML member of a WIT3 archive, one per line, whitespace
    collapsed (as sacreBLEU does)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        xml = tar.extractfile(member).read().decode("utf-8")
    segments = re.findall(r"<seg[^>]*>(.*?)</seg>", xml)
    return "".join(" ".join(s.split()) + "\n" for s in segments).encode("utf-8")


def _fetch_text(spec: SplitFile, mirror: str | None) -> bytes:
    """The verified decompressed text of one file, from the mirror or the public source."""
    if mirror:
        where = _join(mirror, spec.mirror_path)
        raw = _read(where)
        if sha256(raw) != spec.sha256_gz:
            raise DataError(f"checksum mismatch for {where}: sha256 {sha256(raw)}, expected {spec.sha256_gz}")
        text = gzip.decompress(raw)
    else:
        where = spec.source.url
        raw = _read(where)
        if spec.source.kind == "gz":
            if sha256(raw) != spec.sha256_gz:
                raise DataError(f"checksum mismatch for {where}: sha256 {sha256(raw)}, expected {spec.sha256_gz}")
            text = gzip.decompress(raw)
        elif spec.source.kind == "wit3":
            text = _wit3_segments(raw, spec.source.member)
        else:
            text = raw
    if sha256(text) != spec.sha256_text:
        raise DataError(f"checksum mismatch for the text of {where}: sha256 {sha256(text)}, "
                        f"expected {spec.sha256_text}")
    return text


def fetch(spec: SplitFile, cache: Path, mirror: str | None = None) -> Path:
    """Path of the verified text of `spec` in the cache, fetching it once across processes."""
    target = cache / "corpora" / spec.corpus / f"{spec.split}.{spec.lang}"
    if target.exists():
        return target
    with locked(target):
        if not target.exists():  # another process may have finished while we waited
            text = _fetch_text(spec, mirror)
            with atomic_write(target) as f:
                f.write(text)
    return target
