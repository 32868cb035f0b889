"""Storage faults: one line `attnlab: error: ...`, exit 2, the password never shown, nothing
created; and opening a study is safe when several workers start at the same moment."""

import multiprocessing
import os
import socket
import uuid
from pathlib import Path

import pytest
import yaml

from attnlab.cli import main
from attnlab.errors import StorageError
from attnlab.sweep import urls
from attnlab.sweep.spec import load_study
from attnlab.sweep.storage import open_study
from attnlab.sweep.urls import check_storage_url, redact

SECRET = "hunter2-xyzzy"  # no message may contain it, whatever the fault


def tiny_study(tmp_path: Path, name: str = "errs", **extra) -> Path:
    """A study file that loads without data: status and report never train."""
    document = {"study": name, "output_dir": str(tmp_path / "studies"), "seeds": [1],
                "base": {"model": {"n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4}},
                "rows": [{"id": "h2", "model": {"n_heads": 2}}], **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*")}


def assert_one_line_error(rc: int, out: str, err: str, *secrets: str) -> str:
    assert rc == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("attnlab: error: "), err
    for secret in (SECRET, *secrets):
        assert secret not in out + err, err
    return err


def cli_fault(tmp_path, capsys, monkeypatch, url: str, verb: tuple[str, ...] = ("sweep", "status"), *secrets: str):
    """Run a verb against `url` from inside tmp_path; the error line, after checking that it is one
    line without the password and that nothing on disk changed (no SQLite file, no folder)."""
    monkeypatch.chdir(tmp_path)  # a relative path that slipped through would land here, and be seen
    path = tiny_study(tmp_path)
    capsys.readouterr()
    before = snapshot(tmp_path)
    rc = main([*verb, str(path), "--storage", url])
    out, err = capsys.readouterr()
    assert snapshot(tmp_path) == before
    return assert_one_line_error(rc, out, err, *secrets)


URL_FAULTS = [
    ("postgress://attnlab:{secret}@db.example/attnlab",
     "--storage postgress://attnlab:***@db.example/attnlab: unknown scheme 'postgress'; "
     "did you mean 'postgresql'? (valid: sqlite, postgresql)"),
    ("postgres://attnlab:{secret}@db.example/attnlab", "unknown scheme 'postgres'; did you mean 'postgresql'?"),
    ("sqllite:///{tmp}/study.db", "unknown scheme 'sqllite'; did you mean 'sqlite'?"),
    ("mysql://attnlab:{secret}@db.example/attnlab", "unknown scheme 'mysql' (valid: sqlite, postgresql)"),
    ("{tmp}/study.db", "not a database URL; for an SQLite file write sqlite:///{tmp}/study.db"),
    ("postgresql//attnlab:{secret}@db.example/attnlab", "postgresql//attnlab:***@db.example/attnlab: not a database"),
    ("postgresql://attnlab:{secret}@db.example:port/attnlab", "attnlab:***@db.example:port/attnlab: not a database"),
    ("postgresql://attnlab:{secret}@db.example:99999/attnlab", "port 99999 is not a TCP port"),
    ("postgresql://attnlab:p@{secret}@db.example/attnlab",  # an unencoded @: the rest would pass for the host
     "postgresql://attnlab:***@db.example/attnlab: not a database URL; an `@` in the user or password must be"),
    ("postgresql+asyncpg://attnlab:{secret}@db.example/attnlab", "unknown driver 'asyncpg' for postgresql"),
    ("sqlite:///{tmp}/missing/deeper/study.db", "folder {tmp}/missing/deeper does not exist"),
    ("sqlite:///missing/study.db", "folder {tmp}/missing does not exist"),
    ("sqlite:///{tmp}", "{tmp} is a folder, not a database file"),
    ("sqlite://", "an in-memory database keeps nothing"),
]


@pytest.mark.parametrize("url, message", URL_FAULTS, ids=[u.split(':')[0] for u, _ in URL_FAULTS])
def test_a_bad_url_is_one_line_without_the_password_and_creates_nothing(tmp_path, capsys, monkeypatch, url, message):
    fill = {"secret": SECRET, "tmp": tmp_path}
    err = cli_fault(tmp_path, capsys, monkeypatch, url.format(**fill))
    assert message.format(**fill) in err


@pytest.mark.parametrize("verb", [("sweep", "run"), ("sweep", "best"), ("report",)])
def test_every_verb_checks_the_url_first(tmp_path, capsys, monkeypatch, verb):
    err = cli_fault(tmp_path, capsys, monkeypatch, f"postgress://attnlab:{SECRET}@db.example/attnlab", verb)
    assert "unknown scheme 'postgress'" in err


def test_the_environment_and_the_study_file_urls_are_checked_too(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNLAB_STORAGE", f"sqlite:///{tmp_path}/nowhere/study.db")  # how `run` hands it to workers
    path = tiny_study(tmp_path)
    before = snapshot(tmp_path)
    err = assert_one_line_error(main(["sweep", "status", str(path)]), *capsys.readouterr())
    assert f"folder {tmp_path}/nowhere does not exist" in err
    assert snapshot(tmp_path) == before
    monkeypatch.delenv("ATTNLAB_STORAGE")
    path = tiny_study(tmp_path, "typo", storage=f"postgress://attnlab:{SECRET}@db.example/attnlab")
    before = snapshot(tmp_path)
    err = assert_one_line_error(main(["sweep", "status", str(path)]), *capsys.readouterr())
    assert f"{path}: storage postgress://attnlab:***@db.example/attnlab: unknown scheme" in err
    assert snapshot(tmp_path) == before


def test_an_unwritable_folder_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    url = f"sqlite:///{folder}/study.db"
    real_access = os.access
    monkeypatch.setattr(urls.os, "access", lambda p, mode: real_access(p, mode) and Path(p) != folder)
    with pytest.raises(StorageError, match=f"folder {folder} is not writable"):
        check_storage_url(url)
    monkeypatch.undo()
    folder.chmod(0o500)  # the real thing, where permissions apply (not as root)
    try:
        if not os.access(folder, os.W_OK):
            with pytest.raises(StorageError, match="is not writable"):
                check_storage_url(url)
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


def test_a_good_url_is_returned_as_given(tmp_path):
    for url in (f"sqlite:///{tmp_path}/study.db", "postgresql://u:pw@db.example:5432/attnlab",
                "postgresql+psycopg://u:p%40ss@db.example/attnlab?connect_timeout=3"):
        assert check_storage_url(url) == url
    assert not list(tmp_path.iterdir())


def test_redact_masks_the_password_even_in_a_malformed_url():
    assert redact(f"postgresql://u:{SECRET}@h/db") == "postgresql://u:***@h/db"
    assert redact(f"postgresql://u:{SECRET}@h:port/db") == "postgresql://u:***@h:port/db"
    assert redact(f"postgresql//u:{SECRET}@h/db") == "postgresql//u:***@h/db"
    assert redact(f"u:se/cr:et@{SECRET}@h/db") == "u:***@h/db"
    assert redact(f"postgresql://u:p@{SECRET}@h/db") == "postgresql://u:***@h/db"
    assert SECRET not in redact(f"postgresql://u@h/db?password={SECRET}")
    assert redact("studies/x.db") == "studies/x.db"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_named_with_its_port(tmp_path, capsys, monkeypatch):
    pytest.importorskip("psycopg")
    port = free_port()
    err = cli_fault(tmp_path, capsys, monkeypatch, f"postgresql://attnlab:{SECRET}@127.0.0.1:{port}/attnlab")
    assert f"cannot reach the PostgreSQL server at 127.0.0.1:{port} (connection refused)" in err


# --- PostgreSQL: a real server refusing -----------------------------------------------------



def with_parts(url: str, **parts) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(**parts).render_as_string(hide_password=False)


@pytest.mark.postgres
def test_a_wrong_password_is_one_line(tmp_path, capsys, monkeypatch, postgres_url):
    from sqlalchemy.engine import make_url

    real = make_url(postgres_url)
    err = cli_fault(tmp_path, capsys, monkeypatch, with_parts(postgres_url, password=SECRET), ("sweep", "status"),
                    real.password)
    assert f"refused user {real.username!r}: wrong password, or no such role" in err


@pytest.mark.postgres
def test_a_missing_database_is_named_with_createdb(tmp_path, capsys, monkeypatch, postgres_url):
    from sqlalchemy.engine import make_url

    name = f"attnlab_missing_{uuid.uuid4().hex[:8]}"
    err = cli_fault(tmp_path, capsys, monkeypatch, with_parts(postgres_url, database=name), ("sweep", "status"),
                    make_url(postgres_url).password)
    assert f"database {name!r} does not exist" in err and "createdb -h" in err and name in err


@pytest.fixture
def fresh_schema(postgres_url):
    """A new, empty schema in the test database, first on the search path of the URL it yields
    (a fresh database for Optuna without needing CREATEDB); dropped afterwards."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(postgres_url)
    made = []

    def make(grant_create: bool = True) -> str:
        schema = f"attnlab_t_{uuid.uuid4().hex[:10]}"
        with admin.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
            if not grant_create:  # the owner gives up its own right to create in it
                connection.execute(sqlalchemy.text(f"REVOKE CREATE ON SCHEMA {schema} FROM CURRENT_USER"))
        made.append(schema)
        return with_parts(postgres_url, query={"options": f"-csearch_path={schema}"})

    make.objects = lambda: _objects_in(admin, made[-1])
    yield make
    with admin.begin() as connection:
        for schema in made:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    admin.dispose()


def _objects_in(engine, schema: str) -> int:
    import sqlalchemy

    with engine.connect() as connection:
        return connection.execute(sqlalchemy.text(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            "        WHERE n.nspname = :s)"
            " + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = :s)"),
            {"s": schema}).scalar()


@pytest.mark.postgres
def test_permission_denied_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, postgres_url, fresh_schema):
    from sqlalchemy.engine import make_url

    url = fresh_schema(grant_create=False)
    err = cli_fault(tmp_path, capsys, monkeypatch, url, ("sweep", "run"), make_url(postgres_url).password)
    assert "lacks a privilege" in err and "permission denied for schema attnlab_t_" in err
    assert fresh_schema.objects() == 0  # no table or type half-made


def _open_at_once(study, urls: list[str], barrier, results) -> None:
    """One worker: for each storage, wait for the others and open the study at the same moment."""
    for round_, url in enumerate(urls):
        barrier.wait(timeout=120)
        try:
            open_study(study, url)
            results.put((round_, "ok"))
        except BaseException as error:  # noqa: BLE001 - reported to the parent, which asserts on it
            results.put((round_, f"{type(error).__name__}: {str(error).splitlines()[0][-300:]}"))


def open_together(study_path: Path, urls: list[str], workers: int = 4) -> list[list[str]]:
    """What each of `workers` fresh processes got opening the study on each storage in turn (by
    round, not by URL: the test password stays out of assertion messages)."""
    context = multiprocessing.get_context("spawn")  # fresh processes, as `sweep run --workers` starts them
    barrier, results = context.Barrier(workers), context.Queue()
    study = load_study(study_path)  # once: checking a study builds its models, slow in 4 processes on 2 cores
    processes = [context.Process(target=_open_at_once, args=(study, urls, barrier, results)) for _ in range(workers)]
    for p in processes:
        p.start()
    outcomes: list[list[str]] = [[] for _ in urls]
    for _ in range(workers * len(urls)):
        round_, outcome = results.get(timeout=300)
        outcomes[round_].append(outcome)
    for p in processes:
        p.join(timeout=60)
    return outcomes


@pytest.mark.postgres
def test_workers_starting_together_on_a_fresh_postgresql_database_all_open_the_study(tmp_path, fresh_schema):
    """Without a lock around creating Optuna's tables, 1-3 of 4 crash (UniqueViolation on the
    `studydirection` type, or DuplicateTable); three fresh schemas make the race near certain."""
    import optuna

    urls = [fresh_schema() for _ in range(3)]
    outcomes = open_together(tiny_study(tmp_path, "together"), urls)
    assert outcomes == [["ok"] * 4] * len(urls)
    for url in urls:
        assert optuna.get_all_study_names(storage=url) == ["together"]


def test_workers_starting_together_on_a_fresh_sqlite_file_all_open_the_study(tmp_path):
    import optuna

    urls = [f"sqlite:///{tmp_path}/study{i}.db" for i in range(3)]  # without the file lock: "table studies
    assert open_together(tiny_study(tmp_path, "together"), urls) == [["ok"] * 4] * 3  # already exists", ...
    for url in urls:
        assert optuna.get_all_study_names(storage=url) == ["together"]
