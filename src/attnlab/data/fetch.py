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

from attnlab.data.registry import Component, SplitFile
from attnlab.errors import DataError

MIRROR_ENV = "ATTNLAB_DATA_MIRROR"
CACHE_ENV = "ATTNLAB_CACHE"
CHUNK = 1 << 20  # archives are streamed: hundreds of MB never sit in memory




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


# -- training archives (wmt14) ---------------------------------------------------------------
def _open(location: str):
    """A binary stream of a URL or a local file; a DataError naming it when it cannot be opened."""
    if re.match(r"^https?://", location):
        try:
            return urllib.request.urlopen(location, timeout=60)
        except OSError as error:
            raise DataError(f"could not download {location}: {error}") from error
    try:
        return open(location, "rb")
    except FileNotFoundError:
        raise DataError(f"missing file {location}") from None


def fetch_archive(corpus: str, component: Component, cache: Path, mirror: str | None = None) -> Path:
    """The component's archive in the cache, checked by size and sha256 while it streams in;
    a short, long or altered archive is refused and leaves no file behind."""
    target = cache / "archives" / corpus / component.file_name
    if target.exists():
        return target
    where = _join(mirror, f"{corpus}/{component.file_name}") if mirror else component.url
    with locked(target):
        if target.exists():
            return target
        digest, size = hashlib.sha256(), 0
        with atomic_write(target) as out, _open(where) as stream:
            try:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    if size > component.size:
                        break
                    out.write(chunk)
            except OSError as error:  # a connection cut mid-way
                raise DataError(f"could not download {where}: {error}") from error
            if size != component.size:
                raise DataError(f"{where}: {'more than ' if size > component.size else ''}{size:,} bytes, expected "
                                f"{component.size:,} ({component.name}): a truncated or different archive; nothing "
                                "kept, run again to fetch it anew")
            if digest.hexdigest() != component.sha256:
                raise DataError(f"checksum mismatch for {where}: sha256 {digest.hexdigest()}, expected "
                                f"{component.sha256} ({component.name}); nothing kept")
    return target


def fetch_component(corpus: str, component: Component, lang: str, cache: Path, mirror: str | None = None) -> Path:
    """One side of a component as plain text in the cache, extracted from its checked archive
    (streamed, atomic, under the lock) and its line count checked."""
    target = cache / "corpora" / corpus / "components" / f"{component.name}.{lang}"
    if target.exists():
        return target
    archive = fetch_archive(corpus, component, cache, mirror)
    member = component.members[lang]
    with locked(target):
        if target.exists():
            return target
        lines = 0
        with atomic_write(target) as out:
            try:
                with tarfile.open(archive, mode="r:gz") as tar:
                    source = tar.extractfile(member)
                    if source is None:
                        raise KeyError(member)
                    while chunk := source.read(CHUNK):
                        lines += chunk.count(b"\n")
                        out.write(chunk)
            except KeyError:
                raise DataError(f"{archive}: no member {member!r} ({component.name}, {lang})") from None
            except (tarfile.TarError, OSError, EOFError) as error:
                raise DataError(f"{archive}: cannot be read as a .tgz ({error}); delete it and run again") from None
            if lines != component.lines:
                raise DataError(f"{archive}:{member} has {lines:,} lines, expected {component.lines:,} "
                                f"({component.name}); nothing kept")
    return target
