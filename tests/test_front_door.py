"""The front door: every bad input a user can give the CLI ends in one clear line, exit code 2,
nothing written or changed; a study edited after its trials ran is refused, not misreported."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attnlab.cli import main
from conftest import snapshot
from test_sweep import tiny_study

ROOT = Path(__file__).resolve().parents[1]


def fails_cleanly(capsys, argv: list[str], *expected: str) -> str:
    """main(argv) exits 2 with `attnlab: error:` lines naming `expected`, and no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("attnlab: error:") and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


CONFIG = {"name": "r", "train": {"max_steps": 3}, "logging": {"wandb": "disabled"}}
STUDY = {"study": "s", "base": {"model": {"n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4},
                                "train": {"max_steps": 3}, "logging": {"wandb": "disabled"}},
         "rows": [{"id": "wide", "model": {"d_model": 64}}]}


def _with(document: dict, dotted: str, value) -> dict:
    out = yaml.safe_load(yaml.safe_dump(document))
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[leaf] = value
    return out


# (verb and options, file contents or None, words the message must hold)
CASES = {
    "config value of the wrong type": (["train", "{f}"], _with(CONFIG, "model.d_model", "512"),
                                       ["model.d_model='512' must be an integer", "c.yaml"]),
    "config value not a number": (["train", "{f}"], _with(CONFIG, "model.dropout", "high"),
                                  ["model.dropout='high' must be a number"]),
    "config misspelt key": (["train", "{f}"], _with(CONFIG, "train.max_step", 3), ["did you mean 'train.max_steps'"]),
    "config section not a mapping": (["train", "{f}"], _with(CONFIG, "model", 5), ["model must be a mapping"]),
    "config empty file": (["train", "{f}"], "", ["c.yaml: the file is empty"]),
    "config not YAML": (["train", "{f}"], "model: [1, 2\n", ["c.yaml is not valid YAML"]),
    "config a list": (["train", "{f}"], [1, 2], ["expected a mapping"]),
    "config missing file": (["train", "absent.yaml"], None, ["absent.yaml does not exist"]),
    "config unknown corpus": (["train", "{f}"], _with(CONFIG, "data.corpus", "multi30kk"),
                              ["unknown corpus 'multi30kk'; did you mean 'multi30k'?"]),
    "config unknown split": (["train", "{f}"], _with(CONFIG, "data.test_splits", ["test_2016_flikr"]),
                             ["no split 'test_2016_flikr'; did you mean 'test_2016_flickr'?"]),
    "config unknown language": (["train", "{f}"], _with(CONFIG, "data.src_lang", "fr"), ["no language 'fr'"]),
    "config cross-field": (["train", "{f}"], _with(CONFIG, "model.n_heads", 7), ["n_heads=7 does not divide"]),
    "--set unknown key": (["train", "{f}", "--set", "model.d_modle=3"], CONFIG,
                          ["--set model.d_modle=3: unknown key 'model.d_modle'; did you mean 'model.d_model'?"]),
    "--set wrong type": (["train", "{f}", "--set", "train.max_steps=many"], CONFIG,
                         ["--set train.max_steps=many", "must be an integer"]),
    "--set no equals": (["train", "{f}", "--set", "train.max_steps"], CONFIG, ["expected key=value"]),
    "--set model verb": (["model", "--set", "model.n_heads=0"], None, ["n_heads=0 must be a positive integer"]),
    "--set model verb other section": (["model", "--set", "train.max_steps=3"], None, ["takes only model.* fields"]),
    "--set data verb": (["data", "--set", "corpus=multi30kk"], None, ["unknown corpus 'multi30kk'"]),
    "study empty file": (["sweep", "run", "{f}"], "", ["s.yaml: the file is empty; a study needs `study: NAME`"]),
    "study without a name": (["sweep", "run", "{f}"], {k: v for k, v in STUDY.items() if k != "study"},
                             ["study: missing"]),
    "study wrong type in a row": (["sweep", "run", "{f}"], _with(STUDY, "rows.0.model.d_model", "512"),
                                  ["row wide: model.d_model='512' must be an integer"]),
    "study misspelt corpus": (["sweep", "run", "{f}"], _with(STUDY, "base.data.corpus", "mutli30k"),
                              ["base: DataConfig: unknown corpus 'mutli30k'"]),
    "study metric": (["sweep", "run", "{f}"], _with(STUDY, "metric", "blue"), ["metric='blue' must be one of"]),
    "study misspelt top key": (["sweep", "run", "{f}"], _with(STUDY, "seed", [1]), ["did you mean 'seeds'"]),
    "study --set": (["sweep", "run", "{f}", "--set", "model.n_head=2"], STUDY, ["--set model.n_head=2"]),
    "study tuning range": (["sweep", "run", "{f}"], _with(STUDY, "space", {"train.peak_lr": {"low": 1, "high": 0}}),
                           ["space.train.peak_lr: low=1 is above high=0"]),
    "status of a study never run": (["sweep", "status", "{f}"], STUDY, ["no results for study 's'"]),
    "report of a study never run": (["report", "{f}"], STUDY, ["no results for study 's'"]),
    "output_dir under a file": (["train", "{f}"], _with(CONFIG, "output_dir", "afile/runs"),
                                ["output_dir='afile/runs'", "is a file, not a folder"]),
    "cache_dir under a file": (["train", "{f}"], _with(CONFIG, "data.cache_dir", "afile/cache"),
                               ["data.cache_dir='afile/cache'", "is a file, not a folder"]),
    "study output_dir under a file": (["sweep", "run", "{f}"], _with(STUDY, "output_dir", "afile/x"),
                                      ["s.yaml: output_dir='afile/x'"]),
    "average onto one of its inputs": (["average", "afile", "afile2", "-o", "afile"], None,
                                       ["-o afile is one of the checkpoints to average"]),
    "no such accelerator": (["train", "{f}", "--set", "train.accelerator=mps"], CONFIG,  # Apple GPUs only
                            ["train: accelerator='mps'"]),
    "misspelt strategy": (["train", "{f}", "--set", "train.strategy=dpp"], CONFIG, ["strategy='dpp'"]),
    "study on a missing accelerator": (["sweep", "run", "{f}"], _with(STUDY, "base.train.accelerator", "mps"),
                                       ["train: accelerator='mps'"]),
    "report --out a file": (["report", "{f}", "--out", "afile"], STUDY, ["--out='afile'", "is a file"]),
    "config --fields unknown section": (["config", "--fields", "modle"], None, ["not a section"]),
    "evaluate output folder missing": (["evaluate", "x.ckpt", "--split", "val", "--output", "no/such/h.txt"], None,
                                       ["folder", "does not exist"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_and_changes_nothing(case, tmp_path, monkeypatch, capsys):
    argv, contents, expected = CASES[case]
    monkeypatch.chdir(tmp_path)
    name = "s.yaml" if argv[0] in ("sweep", "report") else "c.yaml"
    if contents is not None:
        (tmp_path / name).write_text(contents if isinstance(contents, str) else yaml.safe_dump(contents))
    (tmp_path / "afile").write_text("a file where a folder or a checkpoint belongs\n")
    before = snapshot(tmp_path)
    fails_cleanly(capsys, [a.replace("{f}", name) for a in argv], *expected)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("option", ["--workers=0", "--workers=-1", "--workers=two", "--threads=0"])
def test_counts_are_checked_before_anything_is_written(option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(STUDY))
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "run", "s.yaml", option])
    assert exit_.value.code == 2 and option.split("=")[0] in capsys.readouterr().err
    assert snapshot(tmp_path) == before  # no study folder, no database


def test_a_study_whose_data_cannot_be_had_stops_before_any_trial(tmp_path, monkeypatch, capsys):
    """`sweep run` prepares every row's data first: a missing mirror file is one line naming it,
    and no study folder or database is written."""
    monkeypatch.chdir(tmp_path)
    study = _with(STUDY, "base.data", {"mirror": str(tmp_path / "no-mirror"), "cache_dir": str(tmp_path.parent / "c")})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    before = snapshot(tmp_path)
    fails_cleanly(capsys, ["sweep", "run", "s.yaml"], f"missing file {tmp_path / 'no-mirror'}/multi30k/train.en.gz")
    assert snapshot(tmp_path) == before


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user errors are turned into one line; anything else is a bug and says where."""
    import attnlab.cli

    monkeypatch.setattr(attnlab.cli, "cmd_config", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["config"])


def test_config_fields_lists_type_default_and_doc(capsys):
    assert main(["config", "--fields", "model"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("d_model "))
    assert "int" in line and "512" in line and "Width of embeddings" in line
    assert main(["config", "--fields", "study"]) == 0
    assert "rows" in capsys.readouterr().out


def test_one_override_grammar_for_every_verb(tmp_path, capsys):
    """`--set model.n_heads=16` means the same in `model`, `train` and a study's base."""
    assert main(["model", "--set", "model.n_heads=16", "--set", "d_k=32"]) == 0
    assert "n_heads: 16" in capsys.readouterr().out
    from attnlab.cli import load_experiment
    from attnlab.sweep.spec import load_study

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    assert load_experiment(str(tmp_path / "c.yaml"), ["model.n_heads=16", "train.peak_lr=1e-3"]).model.n_heads == 16
    (tmp_path / "empty-section.yaml").write_text("name: r\ntrain:\n")  # `train:` alone is null in YAML
    assert load_experiment(str(tmp_path / "empty-section.yaml"), ["train.max_steps=3"]).train.max_steps == 3
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(STUDY))
    study = load_study(tmp_path / "s.yaml", ["model.n_heads=2"])
    assert {r.config.model.n_heads for r in study.rows} == {2}


def test_storage_url_leaves_the_command_line(monkeypatch):
    """W&B records the command line; a password given there must not be in it."""
    from attnlab.cli import storage_to_env

    monkeypatch.setenv("ATTNLAB_STORAGE", "")  # restored after the test: storage_to_env sets it
    url = "postgresql://u:hunter2@db.example/attnlab"
    assert storage_to_env(["sweep", "run", "s.yaml", "--storage", url, "--workers", "2"]) == [
        "sweep", "run", "s.yaml", "--workers", "2"]
    assert os.environ["ATTNLAB_STORAGE"] == url
    assert storage_to_env(["sweep", "worker", f"--storage={url}"]) == ["sweep", "worker"]


def test_worker_names_tell_machines_and_processes_apart():
    import socket

    from attnlab.sweep.commands import worker_name

    assert worker_name() == f"{socket.gethostname()}-{os.getpid()}"


def test_a_sentence_longer_than_the_position_table_fails_before_training(tmp_path, mirror, capsys):
    config = _with(CONFIG, "model", {"n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4,
                                     "positional": "learned", "max_positions": 12})
    config["output_dir"] = str(tmp_path / "runs")
    config["data"] = {"mirror": mirror, "cache_dir": str(tmp_path / "cache"), "vocab_size": 500,
                      "max_train_sentences": 300, "max_eval_sentences": 20}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    fails_cleanly(capsys, ["train", str(tmp_path / "c.yaml")], "train.en", "tokens long", "model.max_positions=12")
    assert not (tmp_path / "runs").exists()


# --- a study edited after its trials ran ---------------------------------------------------------

def _files(root: Path) -> dict:
    """The run folders and everything else but the study's database (its own bookkeeping)."""
    return {k: v for k, v in snapshot(root).items() if not k.endswith((".db", ".lock"))}


def _trials(path) -> list[tuple]:
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import open_study, storage_url

    study = load_study(path)
    return [(t.number, t.state.name, t.value, sorted(t.user_attrs.items(), key=str), dict(t.params))
            for t in open_study(study, storage_url(study)).get_trials(deepcopy=False)]


def _edit(path: Path, **row_models) -> None:
    document = yaml.safe_load(path.read_text())
    document["rows"] = [{"id": row_id, "model": model} for row_id, model in row_models.items()]
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_a_changed_row_is_refused_until_rerun_and_never_reported_under_its_new_definition(
        tmp_path, mirror, monkeypatch, capsys):
    monkeypatch.setenv("ATTNLAB_HEARTBEAT_S", "1")
    path = tiny_study(tmp_path, mirror, [{"id": "h1", "model": {"n_heads": 1}}])
    document = yaml.safe_load(path.read_text())
    document["include_base"] = False
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    assert main(["sweep", "run", str(path)]) == 0
    capsys.readouterr()
    _edit(path, h1={"n_heads": 2})  # the row now means something else
    stored, files = _trials(path), _files(tmp_path)
    for argv in (["sweep", "run", str(path)], ["sweep", "worker", str(path)], ["report", str(path)]):
        fails_cleanly(capsys, argv, "row 'h1' changed since its trials ran: model.n_heads 1 -> 2", "--rerun-changed")
        assert _trials(path) == stored and _files(tmp_path) == files

    _edit(path, h1={"n_heads": 2}, h8={"n_heads": 8})
    assert main(["sweep", "run", str(path), "--rerun-changed"]) == 0  # h1 again, h8 new
    trials = _trials(path)
    assert [t[1] for t in trials] == ["COMPLETE"] * 3 and trials[0] == stored[0]  # the old trial is kept as it was
    study_dir = tmp_path / "studies" / "tiny"
    assert (study_dir / "h1-s1.superseded-1" / "result.json").is_file()  # its run, never resumed by the new h1
    assert "n_heads: 2" in (study_dir / "h1-s1" / "config.yaml").read_text()
    assert main(["sweep", "status", str(path)]) == 0
    status = capsys.readouterr().out
    assert "superseded" in status and "2 of 2 trials complete" in status
    out = tmp_path / "report"
    assert main(["report", str(path), "--out", str(out), "--format", "csv"]) == 0
    import pandas as pd

    reported = pd.read_csv(out / "trials.csv")
    assert sorted(reported["number"]) == [1, 2]  # trial 0 ran h1 with one head: never in the report

    _edit(path, h1={"n_heads": 2}, h8={"n_heads": 8}, h4a={"n_heads": 4, "d_ff": 32})  # adding a row is normal
    assert main(["sweep", "run", str(path)]) == 0
    assert len(_trials(path)) == 4


@pytest.mark.postgres
def test_a_password_on_the_command_line_reaches_no_file(tmp_path, mirror, postgres_url):
    """`sweep run` / `sweep worker` with --storage on the command line, W&B offline: grep every
    file the study wrote (run folders, W&B run files, logs) for the password."""
    import uuid

    from sqlalchemy.engine import make_url

    name = f"secret-{uuid.uuid4().hex[:8]}"
    path = tiny_study(tmp_path, mirror, [{"id": "h1", "model": {"n_heads": 1}}], name=name)
    document = yaml.safe_load(path.read_text())
    document["base"]["logging"]["wandb"] = "offline"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "ATTNLAB_STORAGE"}
    env.update(ATTNLAB_HEARTBEAT_S="1", WANDB_MODE="offline")
    password = make_url(postgres_url).password
    outputs = ""
    for verb in ("run", "worker"):
        out = subprocess.run([sys.executable, "-m", "attnlab.cli", "sweep", verb, str(path), "--storage", postgres_url],
                             env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs += out.stdout + out.stderr
        if verb == "run":  # queue a new row for the worker to run
            from attnlab.sweep.spec import load_study
            from attnlab.sweep.storage import enqueue_missing, open_study

            _edit(path, h1={"n_heads": 1}, h2={"n_heads": 2})
            study = load_study(path)
            assert enqueue_missing(open_study(study, postgres_url), study, postgres_url) == 1
    assert password not in outputs
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in written) and any(p.name == "result.json" for p in written)
    leaks = [str(p) for p in written if password.encode() in p.read_bytes()]
    assert not leaks



def test_a_run_folder_is_resumed_only_by_its_own_config(tmp_path, mirror, capsys):
    """Rerunning with a longer budget resumes; with another model it is refused before anything
    is written; --restart keeps the old run beside the new one."""
    config = {"name": "r", "output_dir": str(tmp_path / "runs"),
              "model": {"n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4, "dropout": 0.0},
              "data": {"mirror": mirror, "cache_dir": str(tmp_path / "cache"), "vocab_size": 500,
                       "max_train_sentences": 300, "max_eval_sentences": 10, "test_splits": []},
              "train": {"max_steps": 2, "warmup_steps": 1, "threads": 1, "val_bleu": False, "attention_stats": False},
              "decode": {"beam_size": 1, "max_len_b": 5},
              "logging": {"wandb": "disabled", "progress_bar": False, "quiet": True}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 0
    run = tmp_path / "runs" / "r"
    assert main(["train", str(path), "--set", "train.max_steps=3"]) == 0  # a longer budget resumes
    assert '"train_steps": 3' in (run / "result.json").read_text()
    before = snapshot(tmp_path / "runs")
    fails_cleanly(capsys, ["train", str(path), "--set", "model.n_heads=2"],
                  f"{run} holds a run of another config (model.n_heads 4 -> 2)", "--restart")
    assert snapshot(tmp_path / "runs") == before
    assert main(["train", str(path), "--set", "model.n_heads=2", "--restart"]) == 0
    assert (tmp_path / "runs" / "r.superseded-1" / "result.json").is_file()
    assert "n_heads: 2" in (run / "config.yaml").read_text()


def test_a_tuning_study_whose_base_changed_is_refused(tmp_path):
    """No training needed: one stored trial, then the base changes under it."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from attnlab.errors import StudyError
    from attnlab.sweep import definitions
    from attnlab.sweep.spec import load_study

    path = ROOT / "sweeps" / "smoke_tune.yaml"
    study = load_study(path)
    ostudy = optuna.create_study(storage=f"sqlite:///{tmp_path / 'db.sqlite'}", study_name=study.name)
    definitions.check(ostudy, study)
    ostudy.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0, params={"train.peak_lr": 1e-3},
                                  distributions={"train.peak_lr": FloatDistribution(1e-5, 1e-2, log=True)}))
    definitions.check(ostudy, load_study(path, ["train.threads=1"]))  # not a change of what trials compute
    for changed in (["train.max_steps=81"], ["model.n_layers=2"]):
        with pytest.raises(StudyError, match="base or space changed since its trials ran: (train|model)"):
            definitions.check(ostudy, load_study(path, changed), rerun_changed=True)
