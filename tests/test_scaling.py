"""Several processes as users launch them (CPU processes on gloo): Lightning's launcher from the
CLI, torchrun "nodes", srun's environment, fail-fast launches, equivalence with gradient
accumulation, resuming on another number of ranks, and sweeps whose trials run DDP."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from attnlab.config import BATCHES_PER_STEP, ExperimentConfig, TrainConfig, without_placement
from attnlab.data.batching import TokenBatchSampler
from attnlab.errors import CheckpointError, ConfigError, LaunchError
from attnlab.train.history import read_history
from attnlab.train.launch import master_address, resolve
from attnlab.train.wandb_offline import read_offline_run

LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                    "TORCHELASTIC_RUN_ID", "ATTNLAB_RUN_PLAN")


@pytest.fixture(autouse=True)
def clean_launch_env(monkeypatch):
    """No launcher's variables from the test's own environment; whatever a test sets is undone."""
    for name in (*LAUNCH_VARIABLES, *[k for k in os.environ if k.startswith("SLURM_")]):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))  # one vocabulary for every run of this module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path, mirror, cache, name="run", **train) -> Path:
    values = dict(max_steps=7, peak_lr=3e-3, warmup_steps=5, val_every_steps=100, threads=1, log_every_steps=1,
                  attention_sample=16, accelerator="cpu", val_bleu=False)
    values.update(train)
    document = {
        "name": name, "output_dir": str(tmp_path / "runs"),
        "model": {"n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4, "dropout": 0.0},
        "data": {"vocab_size": 500, "max_tokens": 1024, "max_train_sentences": 2000, "max_eval_sentences": 40,
                 "mirror": mirror, "cache_dir": cache, "test_splits": []},
        "train": values, "decode": {"beam_size": 1, "max_len_b": 10},
        "logging": {"wandb": "offline", "progress_bar": False, "quiet": True},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def attnlab(*args, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnlab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def slurm_env(rank: int, tasks: int, nodes: int, job_id: str = "4321", nodelist: str = "127.0.0.1") -> dict[str, str]:
    """The variables srun sets for one task of a job with --nodes nodes, --ntasks-per-node tasks/nodes."""
    per_node = tasks // nodes
    return {"SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "attnlab", "SLURM_NTASKS": str(tasks),
            "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_NNODES": str(nodes), "SLURM_NODELIST": nodelist,
            "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node), "SLURM_NODEID": str(rank // per_node)}


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=False, map_location="cpu")["state_dict"]


def losses(run_dir: Path) -> list[float]:
    return [h["train/loss"] for h in read_history(run_dir) if "train/loss" in h]


# --- the launch, read from the environment ------------------------------------------------------

def test_slurm_variables_give_ranks_world_size_and_master(monkeypatch):
    """Task 3 of a 2-node x 2-task job: global rank 3, local rank 1, node 1, world 4; the master is
    the first node of the node list, on the port Lightning derives from the job id."""
    for key, value in slurm_env(3, tasks=4, nodes=2, job_id="123456", nodelist="gpu[07-08]").items():
        monkeypatch.setenv(key, value)
    launch = resolve(TrainConfig(max_steps=1, accelerator="cpu", devices=2, num_nodes=2, strategy="ddp"))
    assert (launch.kind, launch.rank, launch.local_rank, launch.node_rank, launch.world_size) == ("slurm", 3, 1, 1, 4)
    assert launch.joins_early and not launch.is_rank_zero
    assert master_address(launch) == ("gpu07", 15000 + 3456)


def test_torchrun_variables_give_ranks_and_world_size(monkeypatch):
    for key, value in {"TORCHELASTIC_RUN_ID": "x", "RANK": "1", "LOCAL_RANK": "0", "GROUP_RANK": "1",
                       "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(key, value)
    launch = resolve(TrainConfig(max_steps=1, accelerator="cpu", num_nodes=2))
    assert (launch.kind, launch.rank, launch.world_size, launch.num_nodes) == ("torchrun", 1, 2, 2)
    started = r"torchrun started 2 process\(es\) \(WORLD_SIZE=2\).*devices x num_nodes = 2"
    with pytest.raises(LaunchError, match=started):
        resolve(TrainConfig(max_steps=1, accelerator="cpu"))  # each would train alone into one folder
    with pytest.raises(LaunchError, match="use train.strategy=ddp"):
        resolve(TrainConfig(max_steps=1, accelerator="cpu", devices=2, strategy="ddp_spawn"))


def test_srun_and_the_config_must_agree(monkeypatch):
    for key, value in slurm_env(0, tasks=2, nodes=1).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(LaunchError, match=r"srun started 2 process\(es\) \(SLURM_NTASKS=2\)"):
        resolve(TrainConfig(max_steps=1, accelerator="cpu", devices=1))
    assert resolve(TrainConfig(max_steps=1, accelerator="cpu", devices=2)).world_size == 2


def test_a_stray_local_rank_is_refused(monkeypatch):
    """Lightning would take the process for a child it started and start no other rank."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(LaunchError, match="LOCAL_RANK=0 is set"):
        resolve(TrainConfig(max_steps=1, accelerator="cpu", devices=2, strategy="ddp"))


def test_launches_without_distribution():
    assert resolve(TrainConfig(max_steps=1, accelerator="cpu")).kind == "single"
    spawn = resolve(TrainConfig(max_steps=1, accelerator="cpu", devices=2, strategy="ddp_spawn"))
    assert (spawn.kind, spawn.world_size, spawn.joins_early) == ("spawn", 2, False)
    lightning = resolve(TrainConfig(max_steps=1, accelerator="cpu", devices=2, strategy="ddp"))
    assert (lightning.kind, lightning.rank, lightning.joins_early) == ("lightning", 0, False)


# --- fail fast ------------------------------------------------------------------------------------

def test_several_nodes_started_as_one_plain_process_fail_at_once(tmp_path, mirror, shared_cache):
    config = write_config(tmp_path, mirror, shared_cache)
    start = time.monotonic()
    out = attnlab("train", config, "--set", "train.num_nodes=2")
    assert out.returncode == 2 and time.monotonic() - start < 60
    [line] = out.stderr.strip().splitlines()
    assert "train.num_nodes=2" in line and "torchrun --nnodes 2" in line and "srun" in line
    assert not (tmp_path / "runs").exists()  # nothing written


def test_a_rank_that_cannot_reach_the_master_fails_in_time(tmp_path, mirror, shared_cache):
    """Rank 1 of an srun job whose master never comes; then rank 0 whose peer never comes."""
    config = write_config(tmp_path, mirror, shared_cache)
    port = free_port()
    for rank, expected in ((1, f"rank 1 of 2 could not reach the master at 127.0.0.1:{port} within 3 s"),
                           (0, "rank 0 of 2 waited 3 s at 127.0.0.1")):
        start = time.monotonic()
        out = attnlab("train", config, "--set", "train.rendezvous_timeout=3", "--set", "train.num_nodes=2",
                      env={**slurm_env(rank, tasks=2, nodes=2), "MASTER_PORT": str(port)}, timeout=120)
        assert out.returncode == 2, out.stderr[-2000:]
        assert expected in out.stderr and "train.rendezvous_timeout" in out.stderr
        assert time.monotonic() - start < 30
    assert not (tmp_path / "runs").exists()


# --- batches and definitions --------------------------------------------------------------------

def test_two_ranks_and_accumulating_two_batches_train_on_the_same_steps():
    lengths = [3 + (i * 7) % 23 for i in range(301)]
    one = list(TokenBatchSampler(lengths, lengths, 60, seed=3, accumulate=2))
    ranks = [list(TokenBatchSampler(lengths, lengths, 60, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(one) % 2 == 0 and len(ranks[0]) == len(ranks[1]) == len(one) // 2
    for step in range(len(one) // 2):
        assert [one[2 * step], one[2 * step + 1]] == [ranks[0][step], ranks[1][step]]
    resumed = TokenBatchSampler(lengths, lengths, 60, seed=3, num_replicas=2, rank=1)
    resumed.resume = (0, 6)  # three steps done by both ranks
    assert list(resumed) == ranks[1][3:]


def test_a_definition_holds_the_batches_per_step_not_their_split():
    def definition(**train):
        return ExperimentConfig(train=TrainConfig(max_steps=1, **train)).definition()

    assert definition(devices=2, strategy="ddp") == definition(devices=1, accumulate_grad_batches=2)
    assert definition(devices=2, num_nodes=2)[BATCHES_PER_STEP] == 4
    assert definition(devices=1) != definition(devices=2)
    assert definition()[BATCHES_PER_STEP] == "auto x 1 x 1"
    stored = {"train.devices": 2, "train.accumulate_grad_batches": 1, "train.num_nodes": 1, "train.strategy": "ddp"}
    assert without_placement(stored) == {BATCHES_PER_STEP: 2} == without_placement(without_placement(stored))


def test_resuming_with_other_batches_per_step_is_refused(tmp_path):
    from attnlab.train.checkpoints import check_resumable

    checkpoint = tmp_path / "step0000003.ckpt"
    torch.save({"TranslationDataModule": {"epoch": 0, "batches_done": 6, "batches_per_step": 2, "world_size": 2}},
               checkpoint)
    check_resumable(checkpoint, 2)
    with pytest.raises(CheckpointError, match="took 2 batches per optimizer step .* this launch takes 1.*"
                                              "accumulate_grad_batches=2"):
        check_resumable(checkpoint, 1)


def test_device_groups_for_trials_over_several_devices():
    from attnlab.sweep.commands import worker_devices

    class Row:
        def __init__(self, devices):
            self.config = ExperimentConfig(train=TrainConfig(max_steps=1, devices=devices, strategy="ddp"))

    class Study:
        def __init__(self, devices):
            self.rows, self.base = [Row(devices)], None

    assert worker_devices(Study(1), "0,1,2", 4) == ["0", "1", "2", "0"]
    assert worker_devices(Study(2), "0,1,2,3", 2) == ["0,1", "2,3"]
    assert worker_devices(Study(1), None, 1) == [None] and worker_devices(Study(1), None, 3) == [None] * 3
    with pytest.raises(ConfigError, match="--workers 2 x train.devices 2 .* needs 4 devices"):
        worker_devices(Study(2), "0,1", 2)
    # --workers-per-device K: K workers on each device (or each group of a DDP trial's devices)
    assert worker_devices(Study(1), "0,1", 1, per_device=2) == ["0", "0", "1", "1"]
    assert worker_devices(Study(2), "0,1,2,3", 1, per_device=2) == ["0,1", "0,1", "2,3", "2,3"]
    assert worker_devices(Study(1), None, 1, per_device=3) == [None] * 3
    with pytest.raises(ConfigError, match="--workers 3 and --workers-per-device 2 disagree: the latter starts 4"):
        worker_devices(Study(1), "0,1", 3, per_device=2)


def test_workers_that_do_not_fit_the_devices_are_refused_before_the_study_is_opened(tmp_path):
    from test_sweep import tiny_study

    path = tiny_study(tmp_path, "", [], name="placement")
    out = attnlab("sweep", "run", path, "--devices", "0,1", "--workers", "3", "--workers-per-device", "2")
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert "--workers 3 and --workers-per-device 2 disagree" in line
    assert not [p for p in (tmp_path / "studies").rglob("*") if p.is_file()]  # no study database, no run folder


def test_a_share_of_the_gpu_memory_and_out_of_memory_trials(monkeypatch):
    """K workers per device each get 1/K of its memory; a trial beyond it fails, not settled."""
    from attnlab.sweep.worker import out_of_memory_reason
    from attnlab.train.launch import MEMORY_FRACTION_ENV, limit_gpu_memory

    assert limit_gpu_memory() is None
    monkeypatch.setenv(MEMORY_FRACTION_ENV, "0.25")
    assert limit_gpu_memory() == 0.25  # and applied to every visible GPU, where there is one
    assert "0.25 of the memory" in out_of_memory_reason() and "fewer workers per device" in out_of_memory_reason()
    monkeypatch.setenv(MEMORY_FRACTION_ENV, "2")
    with pytest.raises(ConfigError, match=r"expected a fraction in \(0, 1\]"):
        limit_gpu_memory()


# --- real launches --------------------------------------------------------------------------------

@pytest.mark.ddp
def test_lightning_launcher_from_the_cli(tmp_path, mirror, shared_cache):
    """`attnlab train CONFIG --set train.strategy=ddp --set train.devices=2`, ending between
    validations (the final checkpoint is saved by both ranks together): one result, one W&B run,
    both ranks in one run folder with the same allocator, identical weights at the end."""
    config = write_config(tmp_path, mirror, shared_cache, val_every_steps=3)
    out = attnlab("train", config, "--set", "train.strategy=ddp", "--set", "train.devices=2", "--restart")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "run"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["train_steps"] == 7 and result["world_size"] == 2
    assert result["weights_max_rank_difference"] == 0.0
    ranks = result["launch"]["ranks"]
    assert result["launch"]["kind"] == "lightning" and [r["rank"] for r in ranks] == [0, 1]
    assert len({r["pid"] for r in ranks}) == 2 and {r["run_dir"] for r in ranks} == {str(run_dir)}
    assert {r["allocator"] for r in ranks} == {result["allocator"]}
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["step0000003.ckpt",
                                                                              "step0000006.ckpt", "step0000007.ckpt"]
    [offline] = list((run_dir / "wandb").glob("offline-run-*"))  # rank 1 logged nothing
    assert read_offline_run(offline)["exit_code"] == 0
    assert not list(tmp_path.glob("runs/run.superseded-*"))  # --restart on a fresh folder, not by rank 1


@pytest.mark.slow
@pytest.mark.ddp
def test_two_torchrun_nodes_on_one_machine(tmp_path, mirror, shared_cache):
    config = write_config(tmp_path, mirror, shared_cache)
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "attnlab.cli", "train", str(config),
               "--set", "train.num_nodes=2"]
    nodes = [subprocess.Popen([*command[:3], "--node-rank", str(k), *command[3:]], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    run_dir = tmp_path / "runs" / "run"
    result = json.loads((run_dir / "result.json").read_text())
    stats = json.loads((run_dir / "train_stats.json").read_text())
    assert stats["world_size"] == 2 and result["weights_max_rank_difference"] == 0.0
    assert result["launch"]["kind"] == "torchrun" and result["launch"]["num_nodes"] == 2
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
@pytest.mark.ddp
def test_two_srun_tasks(tmp_path, mirror, shared_cache):
    """Two processes with the variables srun gives the tasks of a 2-node job (both on this machine)."""
    config = write_config(tmp_path, mirror, shared_cache)
    env = {"MASTER_PORT": str(free_port())}
    command = [sys.executable, "-m", "attnlab.cli", "train", str(config), "--set", "train.num_nodes=2"]
    tasks = [subprocess.Popen(command, env={**os.environ, **env, **slurm_env(r, tasks=2, nodes=2)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    result = json.loads((tmp_path / "runs" / "run" / "result.json").read_text())
    assert result["launch"]["kind"] == "slurm" and result["world_size"] == 2
    assert [r["rank"] for r in result["launch"]["ranks"]] == [0, 1]


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_equal_one_process_accumulating_and_resume_on_one_rank(tmp_path, mirror, shared_cache):
    """Dropout off. A 1-process run accumulating 2 batches, and a 2-rank run stopped at step 3 and
    resumed on 1 process accumulating 2: the same training losses at every step, the same
    weights at the end (summation order aside). Resuming on 1 rank without accumulating is refused."""
    config = write_config(tmp_path, mirror, shared_cache, checkpoint_every_steps=3)
    out = attnlab("train", config, "--set", "name=one", "--set", "train.accumulate_grad_batches=2")
    assert out.returncode == 0, out.stderr[-3000:]
    out = attnlab("train", config, "--set", "name=two", "--set", "train.strategy=ddp", "--set", "train.devices=2",
                  "--set", "train.max_steps=3")
    assert out.returncode == 0, out.stderr[-3000:]
    refused = attnlab("train", config, "--set", "name=two")
    assert refused.returncode == 2 and f"{BATCHES_PER_STEP} 2 -> 1" in refused.stderr
    out = attnlab("train", config, "--set", "name=two", "--set", "train.accumulate_grad_batches=2")
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    assert json.loads((two / "result.json").read_text())["resumed_from"].endswith("step0000003.ckpt")
    stats = [json.loads((run / "train_stats.json").read_text()) for run in (one, two)]
    assert stats[0]["train_tokens"] == stats[1]["train_tokens"]  # counted on from every rank's total
    assert len(losses(one)) == 7
    assert losses(two) == pytest.approx(losses(one), abs=1e-5)
    a, b = weights(one / "checkpoints" / "step0000007.ckpt"), weights(two / "checkpoints" / "step0000007.ckpt")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow
@pytest.mark.ddp
def test_a_data_error_on_one_node_stops_every_node(tmp_path, mirror, shared_cache):
    """srun task 1 cannot read the corpus (no mirror, an empty cache): both tasks stop at once,
    task 0 naming task 1's error, instead of waiting in the first collective."""
    config = write_config(tmp_path, mirror, shared_cache)
    env = {"MASTER_PORT": str(free_port())}
    command = [sys.executable, "-m", "attnlab.cli", "train", str(config), "--set", "train.num_nodes=2"]
    broken = ["--set", f"data.mirror={tmp_path / 'nothing'}", "--set", f"data.cache_dir={tmp_path / 'empty'}"]
    tasks = [subprocess.Popen(command + (broken if r else []), env={**os.environ, **env, **slurm_env(r, 2, 2),
                                                                   "ATTNLAB_DATA_MIRROR": str(tmp_path / "nothing")},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [task.communicate(timeout=180)[1] for task in tasks]
    assert [task.returncode for task in tasks] == [2, 2], outputs
    assert "rank 1 stopped before training: DataError" in outputs[0]


def study_file(tmp_path, mirror, cache, name, **train) -> Path:
    values = {"max_steps": 6, "peak_lr": 3e-3, "warmup_steps": 4, "val_every_steps": 3, "val_beam_size": 1,
              "threads": 1, "attention_stats": False, "accelerator": "cpu", "devices": 2, "strategy": "ddp", **train}
    document = {
        "study": name, "output_dir": str(tmp_path / "studies"), "seeds": [1],
        "base": {"model": {"n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4},
                 "data": {"vocab_size": 500, "max_tokens": 1024, "max_train_sentences": 1000, "max_eval_sentences": 20,
                          "mirror": mirror, "cache_dir": cache, "test_splits": []},
                 "train": values, "decode": {"beam_size": 1, "max_len_b": 10},
                 "logging": {"wandb": "disabled", "progress_bar": False, "quiet": True}},
        "rows": [{"id": "h1", "model": {"n_heads": 1}}],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.ddp
def test_a_study_whose_trials_each_run_ddp_over_two_devices(tmp_path, mirror, shared_cache):
    """`sweep run --devices 0,1` with train.strategy: ddp, devices: 2: one worker, each trial over
    both devices (2 CPU processes here); the re-executed ranks train the trial, never claim one."""
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import open_study, storage_url

    path = study_file(tmp_path, mirror, shared_cache, "ddpstudy")
    out = attnlab("sweep", "run", path, "--devices", "0,1", timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    study = load_study(path)
    trials = open_study(study, storage_url(study)).get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]  # base and h1, once each
    for t in trials:
        result = json.loads((Path(t.user_attrs["run_dir"]) / "result.json").read_text())
        assert result["world_size"] == 2 and result["launch"]["kind"] == "lightning"
        assert {r["cuda_visible_devices"] for r in result["launch"]["ranks"]} == {"0,1"}


@pytest.mark.slow
@pytest.mark.ddp
def test_a_diverging_ddp_trial_fails_and_the_worker_goes_on(tmp_path, mirror, shared_cache):
    """Lightning kills the main process when a child it started exits with an error; a sweep
    worker must survive its DDP trial's failure (both ranks diverge) and run the next trial."""
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import open_study, storage_url

    path = study_file(tmp_path, mirror, shared_cache, "diverge", val_bleu=False)
    document = yaml.safe_load(path.read_text())
    document["rows"] = [{"id": "explodes", "train": {"peak_lr": 1.0e6, "warmup_steps": 1}},
                        {"id": "fine", "model": {"n_heads": 1}}]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    out = attnlab("sweep", "run", path, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    study = load_study(path)
    trials = {t.user_attrs["row"]: t for t in open_study(study, storage_url(study)).get_trials(deepcopy=False)}
    assert trials["explodes"].state.name == "FAIL" and trials["explodes"].user_attrs["fail_kind"] == "diverged"
    assert trials["fine"].state.name == "COMPLETE" and trials["base"].state.name == "COMPLETE"


@pytest.mark.slow
@pytest.mark.ddp
def test_pruning_reaches_the_ranks_lightning_starts(tmp_path, mirror, shared_cache):
    """A tuning study whose trials run under Lightning's launcher (strategy ddp): rank 0 alone has
    the pruning callback; its decision stops both ranks at the same step, and the trial ends PRUNED."""
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import open_study, storage_url

    path = study_file(tmp_path, mirror, shared_cache, "ddptune", max_steps=9, val_bleu=False)
    document = yaml.safe_load(path.read_text())
    document.pop("rows")
    document.update({"space": {"train.peak_lr": {"choices": [3e-3, 1e-7]}}, "n_trials": 4, "metric": "val_loss",
                     "direction": "minimize", "pruner": "median", "sampler": "random"})
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    study = load_study(path)
    ostudy = open_study(study, storage_url(study))
    for lr in (3e-3, 3e-3, 3e-3, 1e-7):  # the median pruner's three startup trials, then a hopeless one
        ostudy.enqueue_trial({"train.peak_lr": lr})
    out = attnlab("sweep", "run", path, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = open_study(study, storage_url(study)).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["PRUNED"], [t.user_attrs for t in trials]
    [pruned] = [p for p in (tmp_path / "studies" / "ddptune").iterdir() if p.name.startswith("t3")]
    assert max(h["step"] for h in read_history(pruned)) == 3  # both ranks stopped after the first validation


def run_single_device_study(tmp_path, mirror, cache, name, *options):
    """`attnlab sweep run` of a 2-trial study on one device each; (stdout, [(trial, launch)])."""
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import open_study, storage_url

    path = study_file(tmp_path, mirror, cache, name, devices=1, strategy="auto", val_bleu=False)
    out = attnlab("sweep", "run", path, *options, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    study = load_study(path)
    trials = open_study(study, storage_url(study)).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    return out.stdout, [(t, json.loads((Path(t.user_attrs["run_dir"]) / "result.json").read_text())["launch"])
                        for t in trials]


@pytest.mark.slow
@pytest.mark.ddp
def test_one_trial_per_device(tmp_path, mirror, shared_cache):
    """`sweep run --workers 2 --devices 0,1` with trials on one device: worker i sees device i only."""
    _, trials = run_single_device_study(tmp_path, mirror, shared_cache, "perdevice", "--workers", "2",
                                        "--devices", "0,1")
    for trial, launch in trials:
        worker_index = trial.user_attrs["worker"].rsplit("-", 1)[1]
        assert launch["kind"] == "single" and launch["cuda_visible_devices"] == worker_index


@pytest.mark.slow
@pytest.mark.ddp
def test_workers_per_device_share_one_device(tmp_path, mirror, shared_cache):
    """`sweep run --devices 0 --workers-per-device 2`: two workers on device 0, each with half its memory."""
    stdout, trials = run_single_device_study(tmp_path, mirror, shared_cache, "shared", "--devices", "0",
                                             "--workers-per-device", "2")
    assert "2 workers per device, each limited to 1/2 of its memory" in stdout
    for _, launch in trials:
        assert launch["cuda_visible_devices"] == "0" and launch["gpu_memory_fraction"] == 0.5


def test_a_trial_out_of_gpu_memory_fails_and_is_queued_again(tmp_path, monkeypatch):
    import attnlab.train.run
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import claim, enqueue_missing, open_study, storage_url
    from attnlab.sweep.worker import run_trial
    from test_sweep import tiny_study

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(attnlab.train.run, "train", out_of_memory)
    study = load_study(tiny_study(tmp_path, "", [], name="oom"))
    url = storage_url(study)
    ostudy = open_study(study, url)
    assert enqueue_missing(ostudy, study, url) == 1
    run_trial(study, ostudy, claim(ostudy, url), "w")
    [trial] = ostudy.get_trials(deepcopy=False)
    assert trial.state.name == "FAIL" and trial.user_attrs["fail_kind"] == "out_of_memory"
    assert "fewer workers per device" in trial.user_attrs["fail_reason"]
    assert enqueue_missing(ostudy, study, url) == 1  # not a settled failure: the next run tries again


def test_a_field_added_since_a_study_ran_does_not_change_its_rows():
    from attnlab.config import ModelConfig, stored_definition

    new = ExperimentConfig(train=TrainConfig(max_steps=1)).definition()
    old = {k: v for k, v in new.items() if k not in ("model.attention_scale", "model.n_kv_heads")}  # an older study
    assert stored_definition(old, new) == new
    assert stored_definition({**new, "decode.max_tokens": None}, new) == new  # a field that no longer defines runs
    unscaled = ExperimentConfig(train=TrainConfig(max_steps=1), model=ModelConfig(attention_scale="none")).definition()
    assert stored_definition(old, unscaled) != unscaled  # a non-default value of the new field is a change
