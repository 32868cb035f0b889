"""`attnlab sweep dashboard`: optuna-dashboard on a study's storage, read-only.

Safe beside running workers: SQLite is opened read-only (`mode=ro`), no table is created or
migrated, and every request that would write (optuna-dashboard can rename, delete, tell trials
and store notes) is refused with 405 before it reaches the storage, whatever the backend.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterable

READING = ("GET", "HEAD")
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080  # this machine only, unless asked


def read_only_url(url: str) -> str:
    """SQLite as a read-only URI (a writer's lock never waits on us); other URLs as they are."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return url
    return f"sqlite:///file:{parsed.database}?mode=ro&uri=true"


def read_only(app: Callable) -> Callable:
    """A WSGI app that passes reads to `app` and refuses every other method."""

    def guarded(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") in READING:
            return app(environ, start_response)
        body = json.dumps({"reason": "attnlab serves this study read-only: change it through `attnlab sweep`"})
        start_response("405 Method Not Allowed", [("Content-Type", "application/json"), ("Allow", ", ".join(READING))])
        return [body.encode()]

    return guarded


IMPORTANCES = re.compile(r"^/api/studies/(\d+)/param_importances$")


def without_parameters(app: Callable, storage) -> Callable:
    """Importances of a study whose trials have no parameters are none (an ablation study's
    rows are fixed, not suggested): optuna-dashboard 0.21 divides by zero there instead."""

    def guarded(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        match = IMPORTANCES.match(environ.get("PATH_INFO", ""))
        if match:
            study_id = int(match.group(1))
            try:
                trials = storage.get_all_trials(study_id, deepcopy=False)
                directions = storage.get_study_directions(study_id)
            except KeyError:
                return app(environ, start_response)
            if not any(t.params for t in trials):
                start_response("200 OK", [("Content-Type", "application/json")])
                return [json.dumps({"param_importances": [[] for _ in directions]}).encode()]
        return app(environ, start_response)

    return guarded


def dashboard_app(url: str) -> Callable:
    """optuna-dashboard's WSGI app on the storage at `url`, read-only."""
    import optuna_dashboard
    from optuna.storages import RDBStorage

    storage = RDBStorage(read_only_url(url), skip_table_creation=True, skip_compatibility_check=True)
    return read_only(without_parameters(optuna_dashboard.wsgi(storage), storage))


def dashboard_server(url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
    """A WSGI server of the read-only dashboard, quiet per request; port 0 picks a free one."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from attnlab.errors import ConfigError

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # no line per request
            pass

    app = dashboard_app(url)
    try:
        return make_server(host, port, app, handler_class=Quiet)
    except OSError as error:  # the port taken, an unknown host: the user's flags, not a bug
        raise ConfigError(f"--host {host} --port {port}: cannot serve there ({error.strerror or error}); "
                          "choose another --port (or --host)") from None


def serve(url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, announce: Callable = print) -> None:
    """Serve until Ctrl-C."""
    with dashboard_server(url, host, port) as server:
        announce(f"optuna-dashboard (read-only) on http://{host}:{server.server_port}/dashboard/ ; Ctrl-C stops it")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
