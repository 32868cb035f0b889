"""Ablation studies: validation, running every row once, resume, failures, workers, kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from attnlab.sweep.spec import StudyError, load_study
from attnlab.sweep.storage import enqueue_missing, open_study, storage_url, trial_key
from attnlab.sweep.worker import work

ROOT = Path(__file__).resolve().parents[1]


def tiny_study(tmp_path, mirror, rows, name="tiny", seeds=(1,), **base_train) -> Path:
    train = {"max_steps": 8, "peak_lr": 3e-3, "warmup_steps": 4, "val_every_steps": 8, "val_beam_size": 1,
             "threads": 1, "attention_stats": False, **base_train}
    document = {
        "study": name, "output_dir": str(tmp_path / "studies"), "seeds": list(seeds),
        "base": {"model": {"n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4},
                 "data": {"vocab_size": 500, "max_tokens": 1024, "max_train_sentences": 1000, "max_eval_sentences": 20,
                          "mirror": mirror, "cache_dir": str(tmp_path / "cache"), "test_splits": []},
                 "train": train, "decode": {"beam_size": 1, "max_len_b": 10},
                 "logging": {"wandb": "disabled", "progress_bar": False, "quiet": True}},
        "rows": rows,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def trials_by_key(study_path):
    study = load_study(study_path)
    ostudy = open_study(study, storage_url(study))
    out = {}
    for t in ostudy.get_trials(deepcopy=False):
        params = t.system_attrs.get("fixed_params") or t.params
        out.setdefault((params["row"], params["seed"]), []).append(t)  # the (row, seed) it was queued with
    return out


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch):
    monkeypatch.setenv("ATTNLAB_HEARTBEAT_S", "1")


def test_every_problem_of_a_study_file_is_reported_at_once(tmp_path, mirror):
    path = tiny_study(tmp_path, mirror, [
        {"id": "typo", "model": {"n_head": 2}},
        {"id": "choice", "model": {"positional": "sine"}},
        {"id": "shape", "model": {"n_heads": 3}},
        {"id": "same", "model": {"n_heads": 4}},  # n_heads 4 is the base: a duplicate of it
        {"id": "choice", "model": {"norm": "rmsnorm"}},
    ])
    document = yaml.safe_load(path.read_text())
    document["seeds"] = [1, 1]
    document["extra"] = True
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(StudyError) as error:
        load_study(path)
    text = "\n".join(error.value.problems)
    for expected in ["unknown key 'extra'", "row typo: unknown key 'model.n_head'", "did you mean 'model.n_heads'",
                     "row choice: model.positional='sine' must be one of", "n_heads=3 does not divide d_model=32",
                     "row 'same' is the same config as row 'base'", "row 'choice': duplicate id",
                     "seeds: [1, 1] must be a non-empty list of distinct integers"]:
        assert expected in text, expected
    assert len(error.value.problems) == 7  # the typo and its suggestion are one problem


def test_shipped_studies_are_valid():
    for path in sorted((ROOT / "ablations").glob("*.yaml")):
        study = load_study(path)
        assert study.rows and study.seeds, path


def test_rows_axes_and_seeds_expand_to_trials(tmp_path, mirror):
    path = tiny_study(tmp_path, mirror, [{"id": "pre", "model": {"norm_placement": "pre"}}], seeds=(1, 2))
    document = yaml.safe_load(path.read_text())
    document["axes"] = {"model.positional": ["rope", "alibi"], "model.norm": ["rmsnorm"]}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    study = load_study(path)
    assert [r.id for r in study.rows] == ["base", "pre", "positional=rope,norm=rmsnorm",
                                          "positional=alibi,norm=rmsnorm"]
    assert len(study.trials()) == 8
    config = study.trial_config(study.rows[2], 2)
    assert (config.model.positional, config.model.norm, config.train.seed) == ("rope", "rmsnorm", 2)
    assert config.name == "positional=rope,norm=rmsnorm-s2" and config.logging.group == "tiny"
    assert config.logging.job_type == "trial" and "model.positional=rope" in config.logging.tags


def test_study_runs_every_row_once_stores_results_and_resumes(tmp_path, mirror):
    path = tiny_study(tmp_path, mirror, [{"id": "heads1", "model": {"n_heads": 1}},
                                         {"id": "diverges", "train": {"peak_lr": 1.0e6, "warmup_steps": 1}}])
    study = load_study(path)
    url = storage_url(study)
    ostudy = open_study(study, url)
    assert enqueue_missing(ostudy, study, url) == 3
    assert work(study, url) == 3
    trials = trials_by_key(path)
    assert {k: [t.state.name for t in v] for k, v in trials.items()} == {
        ("base", 1): ["COMPLETE"], ("heads1", 1): ["COMPLETE"], ("diverges", 1): ["FAIL"]}
    complete = trials[("base", 1)][0]
    assert complete.value == complete.user_attrs["bleu"] and "sacrebleu_signature" in complete.user_attrs
    assert Path(complete.user_attrs["run_dir"], "result.json").exists()
    failed = trials[("diverges", 1)][0]
    assert failed.user_attrs["fail_kind"] == "diverged" and "diverged" in failed.user_attrs["fail_reason"]
    # Running again queues nothing: complete rows stay done, a diverged row is not retried.
    assert enqueue_missing(ostudy, study, url) == 0 and work(study, url) == 0
    assert enqueue_missing(ostudy, study, url, retry_failed=True) == 1


def test_cli_two_workers_share_an_sqlite_study(tmp_path, mirror):
    rows = [{"id": f"h{h}", "model": {"n_heads": h}} for h in (1, 2, 8)]
    path = tiny_study(tmp_path, mirror, rows, name="two")
    env = {**os.environ, "ATTNLAB_HEARTBEAT_S": "1"}
    out = subprocess.run([sys.executable, "-m", "attnlab.cli", "sweep", "run", str(path), "--workers", "2",
                          "--threads", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = trials_by_key(path)
    assert sorted(trials) == [("base", 1), ("h1", 1), ("h2", 1), ("h8", 1)]
    assert all([t.state.name for t in v] == ["COMPLETE"] for v in trials.values())
    workers = {t.user_attrs["worker"] for v in trials.values() for t in v}  # <host>-<pid>-<i>: apart on any machine
    assert len(workers) == 2 and {w.rsplit("-", 1)[1] for w in workers} == {"0", "1"}
    status = subprocess.run([sys.executable, "-m", "attnlab.cli", "sweep", "status", str(path)], env=env,
                            capture_output=True, text=True)
    assert "4 of 4 trials complete" in status.stdout
    export = tmp_path / "trials.csv"
    subprocess.run([sys.executable, "-m", "attnlab.cli", "sweep", "export", str(path), "-o", str(export)], check=True)

    frame = pd.read_csv(export)
    assert len(frame) == 4 and set(frame["state"]) == {"COMPLETE"} and "bleu" in frame


@pytest.mark.slow  # ~2 minutes: a 2,000-step row so that the kill lands mid-trial
def test_a_worker_killed_mid_trial_is_rerun_exactly_once(tmp_path, mirror):
    rows = [{"id": "slow", "train": {"max_steps": 2000, "val_every_steps": 2000, "checkpoint_every_steps": 20}}]
    path = tiny_study(tmp_path, mirror, rows, name="killed")
    document = yaml.safe_load(path.read_text())
    document["include_base"] = False  # only the slow row: the kill must land inside it
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    study = load_study(path)
    url = storage_url(study)
    enqueue_missing(open_study(study, url), study, url)
    env = {**os.environ, "ATTNLAB_HEARTBEAT_S": "1"}
    victim = subprocess.Popen([sys.executable, "-m", "attnlab.cli", "sweep", "worker", str(path), "--name", "victim"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    run_dir = tmp_path / "studies" / "killed"
    while time.time() < deadline and not list(run_dir.glob("*/checkpoints/step*.ckpt")):
        time.sleep(0.5)
    assert victim.poll() is None, "the trial ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert work(study, url, "rescuer") >= 1  # waits for the stale heartbeat, then reruns
    trials = trials_by_key(path)
    key = ("slow", 1)
    states = sorted(t.state.name for t in trials[key])
    assert states == ["COMPLETE", "FAIL"], states  # the killed attempt, and exactly one rerun
    assert list(trials) == [key]
    rerun = next(t for t in trials[key] if t.state.name == "COMPLETE")
    assert rerun.user_attrs["worker"] == "rescuer" and rerun.system_attrs.get("failed_trial") is not None
    assert "/checkpoints/step" in rerun.user_attrs["resumed_from"]  # it went on from the killed run's checkpoint



@pytest.mark.postgres
@pytest.mark.parametrize("workers", [2, 4])
def test_workers_share_a_postgresql_study_each_row_once(tmp_path, mirror, postgres_url, workers):
    import uuid

    from sqlalchemy.engine import make_url

    name = f"pg{workers}-{uuid.uuid4().hex[:8]}"
    rows = ([{"id": f"h{h}", "model": {"n_heads": h}} for h in (1, 2, 8)]
            + [{"id": "pre", "model": {"norm_placement": "pre"}}])
    path = tiny_study(tmp_path, mirror, rows, name=name, seeds=(1, 2))
    env = {**os.environ, "ATTNLAB_HEARTBEAT_S": "1", "ATTNLAB_STORAGE": postgres_url}
    out = subprocess.run([sys.executable, "-m", "attnlab.cli", "sweep", "run", str(path), "--workers", str(workers),
                          "--threads", "1"], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    password = make_url(postgres_url).password
    assert password and password not in out.stdout + out.stderr  # secrets never reach the logs
    assert "***" in out.stdout
    study = load_study(path)
    trials = {}
    for t in open_study(study, postgres_url).get_trials(deepcopy=False):
        trials.setdefault(trial_key(t), []).append(t.state.name)
    assert trials == {(row.id, seed): ["COMPLETE"] for row, seed in study.trials()}  # 10 trials, each once
    for run_dir in (tmp_path / "studies" / name).iterdir():
        if run_dir.is_dir():
            assert password not in (run_dir / "config.yaml").read_text()


class _FakeStrategy:
    @staticmethod
    def broadcast(value):
        return value


class _FakeTrainer:
    def __init__(self, loss):
        import torch

        self.callback_metrics = {"val/loss": torch.tensor(loss)}
        self.sanity_checking, self.is_global_zero, self.global_step = False, True, 10
        self.strategy, self.should_stop = _FakeStrategy(), False


def test_pruning_callback_stops_a_trial_worse_than_the_median():
    from attnlab.sweep.pruning import PruneOnValidation

    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for loss in (1.0, 1.2):  # finished trials that reached a low loss at step 10
        trial = study.ask()
        trial.report(loss, step=10)
        study.tell(trial, loss)
    good, bad = study.ask(), study.ask()
    trainer = _FakeTrainer(0.9)
    PruneOnValidation(good, "val/loss").on_validation_end(trainer, None)
    assert not trainer.should_stop
    assert PruneOnValidation(good, "val/loss").ending() is None
    trainer = _FakeTrainer(5.0)
    callback = PruneOnValidation(bad, "val/loss")
    callback.on_validation_end(trainer, None)
    assert trainer.should_stop
    ending = callback.ending()
    assert isinstance(ending, optuna.TrialPruned) and "pruned at step 10" in str(ending)


def test_tuning_study_runs_its_trial_budget(tmp_path, mirror):
    path = tiny_study(tmp_path, mirror, [], name="tune", val_every_steps=4, val_bleu=False)
    document = yaml.safe_load(path.read_text())
    document.update({"space": {"train.peak_lr": {"low": 1e-4, "high": 1e-2, "log": True},
                               "model.dropout": {"choices": [0.0, 0.2]}},
                     "n_trials": 3, "metric": "val_loss", "direction": "minimize", "pruner": "median"})
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    study = load_study(path)
    assert study.tuning and study.rows == ()
    from attnlab.sweep.worker import tune

    tune(study, storage_url(study))
    trials = open_study(study, storage_url(study)).get_trials(deepcopy=False)
    assert len(trials) == 3 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert complete and all(t.value == t.user_attrs["val_loss"] for t in complete)
    assert all(1e-4 <= t.params["train.peak_lr"] <= 1e-2 for t in trials)
    tune(study, storage_url(study))  # the budget is global: a second worker adds nothing
    assert len(open_study(study, storage_url(study)).get_trials(deepcopy=False)) == 3


def test_bad_search_space_is_reported(tmp_path, mirror):
    path = tiny_study(tmp_path, mirror, [], name="badspace")
    document = yaml.safe_load(path.read_text())
    document.update({"space": {"train.peak_lrr": {"low": 1e-4, "high": 1e-2}, "model.n_heads": {"choices": [4, 3]},
                               "model.dropout": [0.1]}, "n_trials": 0, "pruner": "asha"})
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(StudyError) as error:
        load_study(path)
    text = "\n".join(error.value.problems)
    for expected in ["unknown key 'train.peak_lrr'", "model.n_heads=3", "space.model.dropout: expected",
                     "n_trials: 0 must be a positive integer", "pruner='asha' must be one of"]:
        assert expected in text, expected


def test_paper_table3_study_is_the_papers_table():
    from attnlab.paper import table3_rows

    study = load_study(ROOT / "ablations" / "paper_table3.yaml")
    data = study.base.data  # the WMT14 training archives (issue 16), no hand-made files
    assert study.paper_table3
    assert (data.corpus, data.train_split, data.valid_split) == ("wmt14", "train", "newstest2013")
    ours = {row.id: row for row in study.rows}
    for paper in table3_rows():
        row = ours[paper.id]
        assert row.config.model == paper.model_config(), paper.id
        if "label_smoothing" in paper.train:
            assert row.config.train.label_smoothing == paper.train["label_smoothing"]
    assert ours["big"].config.train.max_steps == 300_000 and ours["base"].config.train.max_steps == 100_000


@pytest.mark.slow  # ~2 minutes, as the kill test
def test_ctrl_c_stops_cleanly_and_the_study_resumes(tmp_path, mirror):
    rows = [{"id": "long", "train": {"max_steps": 2000, "val_every_steps": 2000, "checkpoint_every_steps": 20}}]
    path = tiny_study(tmp_path, mirror, rows, name="interrupted")
    document = yaml.safe_load(path.read_text())
    document["include_base"] = False  # only the long row: Ctrl-C must land inside it
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    env = {**os.environ, "ATTNLAB_HEARTBEAT_S": "1"}
    # A shell that starts jobs in the background makes them ignore SIGINT, and children inherit
    # that: restore the default so the worker gets Ctrl-C as a terminal would deliver it.
    worker = subprocess.Popen([sys.executable, "-m", "attnlab.cli", "sweep", "run", str(path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_dir = tmp_path / "studies" / "interrupted"
    deadline = time.time() + 120
    while time.time() < deadline and not list(run_dir.glob("*/checkpoints/step*.ckpt")):
        time.sleep(0.5)
    assert worker.poll() is None, "the trial ended before it could be interrupted"
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=120) != 0
    trials = trials_by_key(path)
    interrupted = [t for v in trials.values() for t in v if t.state.name == "FAIL"]
    assert len(interrupted) == 1 and interrupted[0].user_attrs["fail_kind"] == "interrupted"
    assert not [t for v in trials.values() for t in v if t.state.name == "RUNNING"]  # nothing left hanging
    study = load_study(path)
    url = storage_url(study)
    assert enqueue_missing(open_study(study, url), study, url) == 1  # the interrupted row is queued again
    work(study, url)
    assert sorted(t.state.name for v in trials_by_key(path).values() for t in v) == ["COMPLETE", "FAIL"]


def test_a_study_runs_in_slices_and_a_trial_cut_off_resumes_from_its_checkpoint(tmp_path, mirror, monkeypatch,
                                                                                capsys):
    from attnlab.cli import main
    from attnlab.sweep.storage import claim
    from attnlab.sweep.worker import run_trial
    from attnlab.train.callbacks import STOP_AT_ENV

    path = tiny_study(tmp_path, mirror, [], name="slices", max_steps=6, val_every_steps=None)
    study = load_study(path)
    url = storage_url(study)
    ostudy = open_study(study, url)
    assert enqueue_missing(ostudy, study, url) == 1
    # The trial in progress when the slice's time runs out stops after its next step, checkpointed there.
    monkeypatch.setenv(STOP_AT_ENV, str(time.time()))
    run_trial(study, ostudy, claim(ostudy, url), "w")
    [cut] = trials_by_key(path)[("base", 1)]
    assert cut.state.name == "FAIL" and cut.user_attrs["fail_kind"] == "interrupted"
    assert "--max-minutes" in cut.user_attrs["fail_reason"] and "after step 1" in cut.user_attrs["fail_reason"]
    run_dir = tmp_path / "studies" / "slices" / "base-s1"
    assert [p.name for p in (run_dir / "checkpoints").glob("*.ckpt")] == ["step0000001.ckpt"]
    assert not (run_dir / "result.json").exists()
    # A slice whose time is up starts no trial; the cut one is queued again, not settled.
    assert enqueue_missing(ostudy, study, url) == 1
    assert work(study, url) == 0
    monkeypatch.delenv(STOP_AT_ENV)
    # The next slice resumes it from that checkpoint and finishes it.
    assert main(["sweep", "run", str(path), "--max-minutes", "10"]) == 0
    states = [t.state.name for t in trials_by_key(path)[("base", 1)]]
    assert sorted(states) == ["COMPLETE", "FAIL"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["resumed_from"].endswith("step0000001.ckpt") and result["train_steps"] == 6
    with pytest.raises(SystemExit) as exit_code:
        main(["sweep", "run", str(path), "--max-minutes", "0"])
    assert exit_code.value.code == 2 and "expected a positive number of minutes" in capsys.readouterr().err


def test_a_worker_prepares_the_data_once_for_trials_that_share_it(tmp_path, mirror, monkeypatch):
    from attnlab.data import datamodule

    calls = []
    prepare = datamodule._prepare
    monkeypatch.setattr(datamodule, "_prepare", lambda config: calls.append(config.vocab_size) or prepare(config))
    path = tiny_study(tmp_path, mirror, [{"id": "heads1", "model": {"n_heads": 1}},
                                         {"id": "vocab", "data": {"vocab_size": 400}}], max_steps=2)
    study = load_study(path)
    url = storage_url(study)
    enqueue_missing(open_study(study, url), study, url)
    assert work(study, url) == 3
    # Three trials, each asked three times (checks, prepare_data, setup): encoded once per data setting.
    assert sorted(calls) == [400, 500]
    assert datamodule._last is None  # outside the worker nothing is kept


def test_the_shipped_smoke_study_end_to_end(tmp_path, mirror):
    """ablations/smoke.yaml itself (the README's main job), on real Multi30k, W&B offline."""
    document = yaml.safe_load((ROOT / "ablations" / "smoke.yaml").read_text())
    document["output_dir"] = str(tmp_path / "studies")
    document["base"]["logging"]["wandb"] = "offline"
    document["base"]["data"].update({"mirror": mirror, "cache_dir": str(tmp_path / "cache")})
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "attnlab.cli", "sweep", "run", str(path)], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = trials_by_key(path)
    assert sorted(trials) == [("base", 1), ("heads1", 1), ("prenorm", 1)]
    for (row, _), [trial] in trials.items():
        assert trial.state.name == "COMPLETE" and trial.value == trial.user_attrs["bleu"]
        result = json.loads(Path(trial.user_attrs["run_dir"], "result.json").read_text())
        assert result["row"] == row and result["trial_number"] == trial.number and result["study"] == "smoke"
        assert trial.user_attrs["wandb_run_id"] == result["wandb_run_id"]
        from attnlab.train.wandb_offline import read_offline_run

        [offline] = Path(trial.user_attrs["run_dir"], "wandb").glob("offline-run-*")
        run = read_offline_run(offline)
        assert (run["run"]["group"], run["run"]["job_type"]) == ("smoke", "trial") and row in run["run"]["tags"]
        assert run["config"]["trial_number"] == trial.number and run["config"]["trial_id"] == trial._trial_id
    # ... and its report, as `make smoke` writes it: real scores, deltas, significance, figures.
    report = tmp_path / "report"
    out = subprocess.run([sys.executable, "-m", "attnlab.cli", "report", str(path), "--out", str(report)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    variants = pd.read_csv(report / "variants.csv").set_index("row")
    assert list(variants.index) == ["base", "heads1", "prenorm"] and (variants["seeds"] == 1).all()
    for row, [trial] in ((row, t) for (row, _), t in trials.items()):
        assert variants.loc[row, "bleu"] == pytest.approx(trial.user_attrs["bleu"])
    assert variants.loc["heads1", "delta"] == pytest.approx(
        variants.loc["heads1", "bleu"] - variants.loc["base", "bleu"])
    assert variants["p_value"].iloc[1:].between(0, 1).all()
    md = (report / "README.md").read_text()
    assert "3 of 3 trials complete." in md and "learning_curves.png" in md and "heads_prenorm.png" in md


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_trials_in_a_tuning_study_with_pruning(tmp_path, mirror):
    """Each trial over 2 CPU processes (ddp_spawn): the pruning callback runs in the spawned
    ranks, its decision reaches the worker through storage, and a pruned trial ends PRUNED."""
    from attnlab.sweep.worker import tune

    path = tiny_study(tmp_path, mirror, [], name="ddptune", max_steps=12, val_every_steps=3, val_bleu=False,
                      accelerator="cpu", devices=2, strategy="ddp_spawn")
    document = yaml.safe_load(path.read_text())
    document.update({"space": {"train.peak_lr": {"choices": [3e-3, 1e-7]}}, "n_trials": 4, "metric": "val_loss",
                     "direction": "minimize", "pruner": "median", "sampler": "random"})
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    study = load_study(path)
    # Three good trials first (the median pruner's startup trials), then a hopeless one.
    ostudy = open_study(study, storage_url(study))
    for lr in (3e-3, 3e-3, 3e-3, 1e-7):
        ostudy.enqueue_trial({"train.peak_lr": lr})
    tune(study, storage_url(study))
    trials = open_study(study, storage_url(study)).get_trials(deepcopy=False)
    states = [(t.params["train.peak_lr"], t.state.name) for t in trials]
    assert states == [(3e-3, "COMPLETE")] * 3 + [(1e-7, "PRUNED")], states  # barely trained: above the median
    assert all(t.intermediate_values for t in trials)


@pytest.mark.slow  # ~30 s on 2 cores: 8 worker processes
def test_eight_workers_on_one_sqlite_study_lose_and_repeat_no_trial(tmp_path, mirror):
    """Many writers on one SQLite file (Optuna issue #820: "database is locked"): 8 workers of one
    machine, 16 trials; each (row, seed) ends COMPLETE exactly once, none fails, each prints its
    fixed cost per trial."""
    rows = [{"id": f"h{h}", "model": {"n_heads": h}} for h in (1, 2, 8)]
    path = tiny_study(tmp_path, mirror, rows, name="eight", seeds=(1, 2, 3, 4), max_steps=2, val_every_steps=2,
                      val_bleu=False)
    env = {**os.environ, "ATTNLAB_HEARTBEAT_S": "2"}
    out = subprocess.run([sys.executable, "-m", "attnlab.cli", "sweep", "run", str(path), "--workers", "8",
                          "--threads", "1"], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "database is locked" not in out.stderr
    study = load_study(path)
    trials = {}
    for t in open_study(study, storage_url(study)).get_trials(deepcopy=False):
        trials.setdefault(trial_key(t), []).append(t.state.name)
    assert trials == {(row.id, seed): ["COMPLETE"] for row, seed in study.trials()}  # 16 trials, each once
    assert out.stdout.count("fixed cost") == 16


def test_sweep_sync_uploads_the_offline_runs_not_yet_synced(tmp_path, mirror, capfd):
    from attnlab.cli import main

    path = tiny_study(tmp_path, mirror, [{"id": "heads1", "model": {"n_heads": 1}}], max_steps=2)
    document = yaml.safe_load(path.read_text())
    document["base"]["logging"]["wandb"] = "offline"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    assert main(["sweep", "run", str(path)]) == 0
    runs = sorted((tmp_path / "studies" / "tiny").glob("*/wandb/offline-run-*"))
    assert len(runs) == 2
    [log] = runs[0].glob("*.wandb")
    log.with_suffix(".wandb.synced").touch()  # what `wandb sync` leaves once a run is uploaded
    capfd.readouterr()
    assert main(["sweep", "sync", str(path), "--dry-run"]) == 0
    captured = capfd.readouterr()
    assert "2 offline W&B runs, 1 already synced, 1 to upload" in captured.out
    assert "Would sync 1 run(s)" in captured.out + captured.err  # wandb's own dry run: only the pending one, no network
