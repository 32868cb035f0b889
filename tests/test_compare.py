"""Comparing runs where researchers compare them: optuna-dashboard on a study (issue 15)."""

import io
import json
import signal
import socket
import subprocess
import sys
import time
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import yaml

from attnlab.sweep.dashboard import dashboard_app, read_only_url
from attnlab.sweep.spec import load_study
from attnlab.sweep.storage import open_study, storage_url


@pytest.fixture
def small_study(tmp_path):
    """A study with two complete trials, as a sweep would have stored them."""
    path = tmp_path / "compare.yaml"
    rows = [{"id": "A1", "model": {"n_heads": 1}}]
    path.write_text(yaml.safe_dump({"study": "compare", "output_dir": str(tmp_path / "studies"),
                                    "base": {"train": {"max_steps": 1}}, "rows": rows}))
    study = load_study(path)
    url = storage_url(study)
    ostudy = open_study(study, url)
    for row, bleu in (("base", 25.0), ("A1", 24.0)):
        ostudy.add_trial(optuna.trial.create_trial(value=bleu, user_attrs={"row": row, "seed": 1, "bleu": bleu}))
    return study, url, path


def call(app, path, method="GET"):
    environ = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, REQUEST_METHOD=method, **{"wsgi.input": io.BytesIO(b"")})
    status = {}
    body = b"".join(app(environ, lambda s, headers, exc=None: status.update(code=s)))
    return status["code"], body


def test_the_dashboard_lists_the_study_and_its_trials_and_writes_nothing(small_study, tmp_path):
    study, url, _ = small_study
    database = tmp_path / "studies" / "compare" / "study.db"
    before = database.read_bytes()
    assert read_only_url(url) == f"sqlite:///file:{database}?mode=ro&uri=true"
    app = dashboard_app(url)
    code, body = call(app, "/api/studies")
    assert code.startswith("200")
    [summary] = [s for s in json.loads(body)["study_summaries"] if s["study_name"] == "compare"]
    code, body = call(app, f"/api/studies/{summary['study_id']}")
    trials = json.loads(body)["trials"]
    assert sorted(t["values"][0] for t in trials) == [24.0, 25.0]
    assert {a["key"] for t in trials for a in t["user_attrs"]} >= {"row", "seed", "bleu"}
    code, body = call(app, f"/api/studies/{summary['study_id']}/param_importances")  # rows are not parameters
    assert code.startswith("200") and json.loads(body) == {"param_importances": [[]]}
    for method in ("POST", "PUT", "DELETE"):  # renaming, telling, deleting: refused before the storage
        assert call(app, f"/api/studies/{summary['study_id']}", method)[0].startswith("405")
    assert database.read_bytes() == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_dashboard_serves_the_study_to_a_browser(small_study, tmp_path, browser):
    _, _, path = small_study
    port = free_port()
    command = [sys.executable, "-m", "attnlab.cli", "sweep", "dashboard", str(path), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.3)
        browser.get(f"http://127.0.0.1:{port}/dashboard/")
        deadline = time.time() + 30
        while "compare" not in browser.find_element("tag name", "body").text and time.time() < deadline:
            time.sleep(0.3)
        assert "compare" in browser.find_element("tag name", "body").text
        browser.get(f"http://127.0.0.1:{port}/dashboard/studies/1")  # its history, trials, importances
        deadline = time.time() + 30
        while "History" not in browser.find_element("tag name", "body").text and time.time() < deadline:
            time.sleep(0.3)
        time.sleep(1)
        text = browser.find_element("tag name", "body").text
        assert "History" in text and "Failed" not in text
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}/dashboard/" in output and server.returncode == 0


def test_a_port_in_use_is_one_line_and_exit_2(small_study, capsys):
    from attnlab.cli import main

    _, _, path = small_study
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["sweep", "dashboard", str(path), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--port {port}: cannot serve there" in err[0]

