"""Storage URLs: checked before anything is opened or created, passwords masked wherever a URL
is shown, and server faults (unreachable, refused password, missing database, no privilege)
turned into one-line StorageErrors."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from attnlab.errors import StorageError


def redact(url: str) -> str:
    """The URL with any password masked, for logs and reports."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - a malformed URL still must not leak its password
        return _mask_userinfo(url)
    if "@" in (parsed.host or ""):  # an unencoded `@` in the password: the rest would show as host
        return _mask_userinfo(url)
    if "password" in parsed.query:  # libpq also takes the password as a query parameter
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def _mask_userinfo(text: str) -> str:
    """For a string that is not a parsable URL: mask everything between the user's `:` and the
    last `@` (a password may itself hold `/`, `:` or `@`)."""
    at = text.rfind("@")
    scheme = re.match(r"[A-Za-z0-9+.-]*:?//", text)
    start = scheme.end() if scheme else 0
    colon = text.find(":", start, at)
    return text if at < 0 or colon < 0 else f"{text[:colon]}:***{text[at:]}"


# --- checking a URL before anything is opened ---------------------------------------------

# Only these: workers claim trials under a file lock (SQLite) or an advisory lock (PostgreSQL),
# and no other backend has such a lock here, so on it rows could run twice.
DRIVERS = {  # scheme -> driver -> (module to import, how to install it); the first is the default
    "sqlite": {"pysqlite": ("sqlite3", "a Python built with sqlite3")},
    "postgresql": {"psycopg": ("psycopg", "pip install 'attnlab[postgres]'"),
                   "psycopg2": ("psycopg2", "pip install psycopg2-binary")},
}
CONNECT_TIMEOUT_S = 10  # an unreachable PostgreSQL server is an error in seconds, not minutes


def check_storage_url(url: str, source: str = "--storage") -> str:
    """`url` itself if attnlab can use it; else a one-line StorageError naming what is wrong.

    Nothing is opened or created: the scheme, the driver and, for SQLite, the file's folder.
    Messages show the URL only through `redact`.
    """
    parsed = _parse(url, source)
    backend, _, driver = parsed.drivername.partition("+")
    where = f"{source} {redact(url)}"
    if backend not in DRIVERS:
        raise StorageError(f"{where}: {_unknown_scheme(backend)}")
    _check_driver(backend, driver, where)
    if "@" in (parsed.host or ""):
        raise StorageError(f"{where}: not a database URL; an `@` in the user or password must be written %40")
    if backend == "sqlite":
        _check_sqlite_file(parsed, where)
    elif parsed.port is not None and not 0 < parsed.port < 65536:
        raise StorageError(f"{where}: port {parsed.port} is not a TCP port (1-65535; PostgreSQL's is 5432)")
    return url


def _parse(url: str, source: str) -> Any:
    from sqlalchemy.engine import make_url

    if not url.strip():
        raise StorageError(f"{source} is empty; give a database URL, e.g. sqlite:///studies/study.db")
    try:
        return make_url(url)
    except Exception as error:  # ArgumentError, or ValueError for a bad port
        hint = "expected scheme://user:password@host:port/database or sqlite:///path/to/study.db"
        if "://" not in url and "@" not in url and url.strip():  # a bare path, so nothing secret
            hint = f"for an SQLite file write sqlite:///{url}"
        raise StorageError(f"{source} {redact(url)}: not a database URL; {hint}") from error


def _unknown_scheme(backend: str) -> str:
    valid = ", ".join(DRIVERS)
    close = difflib.get_close_matches(backend.lower(), list(DRIVERS), n=1, cutoff=0.6)
    if close:
        return f"unknown scheme {backend!r}; did you mean {close[0]!r}? (valid: {valid})"
    return f"unknown scheme {backend!r} (valid: {valid})"


def _check_driver(backend: str, driver: str, where: str) -> None:
    drivers = DRIVERS[backend]
    if driver and driver not in drivers:
        forms = ", ".join([backend] + [f"{backend}+{d}" for d in drivers])
        raise StorageError(f"{where}: unknown driver {driver!r} for {backend} (valid: {forms})")
    module, install = drivers[driver or next(iter(drivers))]
    if importlib.util.find_spec(module) is None:
        raise StorageError(f"{where}: the {backend} driver {module!r} is not installed ({install})")


def _check_sqlite_file(parsed: Any, where: str) -> None:
    """The folder must exist and be writable: SQLite would otherwise fail late, or a typo
    would silently start a new, empty study somewhere."""
    database = parsed.database or ""
    if database in ("", ":memory:"):
        raise StorageError(f"{where}: an in-memory database keeps nothing between runs or workers; "
                           "give a file, e.g. sqlite:///studies/study.db")
    if database.startswith("file:"):  # an SQLite URI (?uri=true): its path is the driver's to read
        return
    path = Path(database).absolute()
    folder = path.parent
    if path.is_dir():
        raise StorageError(f"{where}: {path} is a folder, not a database file")
    if not folder.is_dir():
        raise StorageError(f"{where}: folder {folder} does not exist (attnlab does not create it; "
                           "check the path, or create the folder first)")
    if not os.access(folder, os.W_OK | os.X_OK):  # SQLite writes its journal beside the file
        raise StorageError(f"{where}: folder {folder} is not writable")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise StorageError(f"{where}: {path} is not readable and writable")


# --- server faults as one line ---------------------------------------------------------------


def _database_errors() -> tuple[type[BaseException], ...]:
    """What a server or driver raises: SQLAlchemy's DBAPI wrappers and the drivers' own errors.
    Nothing wider, so a bug in attnlab or Optuna keeps its traceback."""
    import sqlalchemy.exc

    errors: list[type[BaseException]] = [sqlalchemy.exc.DBAPIError]
    for module in ("psycopg", "psycopg2"):
        try:
            errors.append(importlib.import_module(module).Error)
        except ImportError:
            pass
    return tuple(errors)


@contextmanager
def storage_faults(url: str) -> Iterator[None]:
    """Re-raise a database error as a one-line StorageError (password masked, no SQL); the
    original stays as __cause__."""
    try:
        yield
    except _database_errors() as error:
        raise StorageError(f"storage {redact(url)}: {describe_fault(error, url)}") from error


def describe_fault(error: BaseException, url: str) -> str:
    """One line saying what the server refused and what to do: by SQLSTATE where the driver
    gives one, else by libpq's message (connection failures carry no SQLSTATE)."""
    from sqlalchemy.engine import make_url

    orig = getattr(error, "orig", None) or error
    parsed = make_url(url)
    if parsed.drivername.partition("+")[0] != "postgresql":  # SQLite: its own line says it all
        return f"{type(orig).__name__}: {_first_line(orig, parsed.password)}"
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or ""
    text = " ".join(str(orig).split())
    server = f"{parsed.host}:{parsed.port or 5432}" if parsed.host else "the local PostgreSQL socket"
    no_role = _says(text, 'role "') and _says(text, "does not exist")
    if state in ("28P01", "28000") or no_role or _says(text, "authentication failed", "no password supplied"):
        return (f"the server at {server} refused user {parsed.username!r}: wrong password, or no such role "
                "(check the user and password in the URL)")
    if state == "3D000" or (_says(text, 'database "') and _says(text, "does not exist")):
        return (f"database {parsed.database!r} does not exist on {server}; create it first, e.g. "
                f"`createdb -h {parsed.host or 'localhost'} -p {parsed.port or 5432} -U {parsed.username} "
                f"{parsed.database}`")
    if state == "42501" or _says(text, "permission denied"):
        return (f"user {parsed.username!r} lacks a privilege on database {parsed.database!r} "
                f"({_first_line(orig, parsed.password)}); attnlab needs CONNECT on the database and "
                "CREATE on its schema for a new study")
    unreachable = _unreachable_reason(text)
    if unreachable:
        return (f"cannot reach the PostgreSQL server at {server} ({unreachable}); is it running, "
                "and are the host and port right?")
    return f"{type(orig).__name__}: {_first_line(orig, parsed.password)}"


def _says(text: str, *phrases: str) -> bool:
    return any(phrase.lower() in text.lower() for phrase in phrases)


def _unreachable_reason(text: str) -> str | None:
    reasons = {"connection refused": "connection refused", "could not translate host name": "unknown host",
               "failed to resolve host": "unknown host", "name or service not known": "unknown host",
               "timeout expired": f"no answer within {CONNECT_TIMEOUT_S} s", "timed out": "timed out",
               "no route to host": "no route to host", "network is unreachable": "network unreachable",
               "no such file or directory": "no server socket"}
    return next((reason for phrase, reason in reasons.items() if _says(text, phrase)), None)


def _first_line(orig: BaseException, password: str | None) -> str:
    """The driver's own first line (no SQL, no LINE/caret lines), with the password masked in
    case a driver ever echoes it."""
    line = (str(orig).strip().splitlines() or [type(orig).__name__])[0].strip()
    return line.replace(password, "***") if password else line


# --- opening a study -------------------------------------------------------------------------

