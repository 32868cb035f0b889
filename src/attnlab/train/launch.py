"""How this process was launched, and how its ranks come together without ever hanging.

A run of several processes starts in one of four ways, read from the environment as Lightning
reads it (its cluster environments):

    spawn      strategy ddp_spawn: this process starts the ranks itself, inside fit (one machine)
    lightning  strategy ddp: rank 0 starts local ranks 1..n-1 inside fit, each re-running
               `attnlab train <run folder>/config.yaml` (one machine)
    torchrun   torchrun started every rank, on one machine or many (RANK, WORLD_SIZE, ...)
    slurm      srun started every rank (SLURM_PROCID, SLURM_NTASKS, ...)

Rank 0 alone decides about the run folder (which checkpoint to resume, whether an old run is
moved aside) and alone writes it; the other ranks follow its `Plan`, handed over by broadcast
(torchrun, slurm: they join the process group before any data is prepared) or by environment
(lightning: rank 0 starts its children after deciding). Every mismatch a user can make (a world
size that `devices x num_nodes` does not explain, several nodes with nobody to start them, a
master nobody can reach) is a LaunchError within `train.rendezvous_timeout` seconds, never a
hang for torch's default half hour.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist

from attnlab.config import TrainConfig
from attnlab.errors import AttnlabError, ConfigError, LaunchError

Kind = Literal["single", "spawn", "lightning", "torchrun", "slurm"]
PLAN_ENV = "ATTNLAB_RUN_PLAN"  # rank 0's plan, inherited by the ranks Lightning's launcher starts
MEMORY_FRACTION_ENV = "ATTNLAB_GPU_MEMORY_FRACTION"  # set by `sweep run --workers-per-device K`: 1/K
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)  # torch's default: long validations and checkpoints
# What Lightning's launcher sets in rank 0's own environment; restored after the run, so a
# sweep worker's next trial starts clean.
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", PLAN_ENV)


@dataclass(frozen=True)
class Launch:
    """This process's place in the run: how it was started, its rank and the world's size."""

    kind: Kind
    world_size: int
    rank: int
    local_rank: int
    node_rank: int
    devices: int  # processes per node
    num_nodes: int
    device: str = "cpu"  # this rank's device, as Lightning picks it ("cuda:1" with devices: "1,3")

    @property
    def backend(self) -> str:
        return "nccl" if self.device.startswith("cuda") else "gloo"

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    @property
    def joins_early(self) -> bool:
        """Started by someone else (torchrun, srun, or rank 0 through Lightning): join the group
        before preparing data, so a missing peer is found in seconds and rank 0's plan arrives."""
        started_by_others = self.kind in ("torchrun", "slurm") or (self.kind == "lightning" and self.rank > 0)
        return self.world_size > 1 and started_by_others


@dataclass(frozen=True)
class Plan:
    """Rank 0's decisions about the run folder, followed by every rank."""

    resume_from: str | None = None
    move_aside: bool = False  # the folder holds an old run to keep aside (rank 0 moves it)
    error: str | None = None  # rank 0 refused the run: every rank stops with the same message


def _quiet_trainer(t: TrainConfig):
    """A bare Trainer: Lightning resolves accelerator, devices, strategy and cluster environment."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    quiet = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.ERROR)
    try:
        return pl.Trainer(accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
                          precision=t.precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False)
    except (MisconfigurationException, ValueError, TypeError, ImportError, RuntimeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"train: accelerator={t.accelerator!r}, devices={t.devices!r}, strategy={t.strategy!r}, "
                          f"num_nodes={t.num_nodes}: {first}") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)


def _external() -> tuple[str, int] | None:
    """(launcher, processes it started) when torchrun or srun started this process, in Lightning's order."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect():
        return "slurm", int(os.environ["SLURM_NTASKS"])
    if TorchElasticEnvironment.detect():
        return "torchrun", int(os.environ["WORLD_SIZE"])
    return None


def resolve(t: TrainConfig) -> Launch:
    """The launch this process belongs to, checked before any compute: a ConfigError or
    LaunchError naming what to change for anything that would fail or hang later."""
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    trainer = _quiet_trainer(t)
    strategy = trainer.strategy
    devices, nodes = trainer.num_devices, trainer.num_nodes
    world = devices * nodes
    device = str(strategy.root_device)
    setting = f"train.devices={t.devices!r} x train.num_nodes={t.num_nodes}"
    external = _external()
    if external is not None:
        launcher, launched = external
        return _externally_started(launcher, launched, strategy, devices, nodes, device, setting)
    if nodes > 1:
        raise LaunchError(
            f"{setting}: this process was started alone, not by torchrun or srun, and nothing would start the other "
            f"{nodes - 1} node(s); it would wait for them for half an hour. Start one process per node with "
            f"`torchrun --nnodes {nodes} --node-rank K --nproc-per-node {devices} --master-addr HOST "
            "--master-port PORT -m attnlab.cli train ...` or `srun`, or set train.num_nodes=1")
    if world == 1:
        return Launch("single", 1, 0, 0, 0, 1, 1, device)
    if not isinstance(strategy.launcher, _SubprocessScriptLauncher):
        return Launch("spawn", world, 0, 0, 0, devices, 1, device)
    if "LOCAL_RANK" in os.environ and PLAN_ENV not in os.environ:
        # Lightning would take this process for one it started itself and start no other rank.
        raise LaunchError(f"LOCAL_RANK={os.environ['LOCAL_RANK']} is set, but no rank 0 of attnlab started this "
                          "process: unset LOCAL_RANK and start the run once (it starts the other local ranks), "
                          "or start every rank with torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return Launch("lightning", world, local_rank, local_rank, 0, devices, 1, device)


def _externally_started(launcher: str, launched: int, strategy, devices: int, nodes: int, device: str,
                        setting: str) -> Launch:
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.strategies import SingleDeviceStrategy
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    variable, program = ("SLURM_NTASKS", "srun") if launcher == "slurm" else ("WORLD_SIZE", "torchrun")
    world = 1 if isinstance(strategy, SingleDeviceStrategy) else devices * nodes
    if launched != world:
        outcome = ("each would train on its own and overwrite the same run folder" if world == 1 else
                   f"the ranks would wait for {world - launched} that nobody starts" if launched < world else
                   "the ranks could not agree on their number")
        raise LaunchError(
            f"{program} started {launched} process(es) ({variable}={launched}), but {setting} makes {world}: "
            f"{outcome}. Set train.devices to the processes per node and train.num_nodes to the nodes, so that "
            f"devices x num_nodes = {launched}")
    if launched == 1:
        return Launch("single", 1, 0, 0, 0, 1, 1, device)
    if not isinstance(strategy.launcher, _SubprocessScriptLauncher):
        raise LaunchError(f"train.strategy={strategy.__class__.__name__} starts its own processes, but {program} "
                          "already started them: use train.strategy=ddp (or auto)")
    env = strategy.cluster_environment
    if launcher == "slurm":
        try:
            SLURMEnvironment._validate_srun_variables()
            env.validate_settings(num_devices=devices, num_nodes=nodes)
        except (ValueError, RuntimeError) as error:
            raise LaunchError(f"srun and {setting} disagree: {error}") from None
    return Launch(launcher, world, env.global_rank(), env.local_rank(), env.node_rank(), devices, nodes,  # type: ignore[arg-type]
                  device)


def master_address(launch: Launch) -> tuple[str, int]:
    """Where rank 0 listens, as Lightning's cluster environment for this launch says (and exports)."""
    if launch.kind == "slurm":
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = SLURMEnvironment()
        return env.main_address, env.main_port  # sets MASTER_ADDR and MASTER_PORT too
    return os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))


def join(launch: Launch, timeout_s: float) -> None:
    """Join the process group: meet the other ranks within `timeout_s` (a LaunchError naming the
    master and what to check otherwise), then use torch's long default for collectives. Lightning
    finds the group initialised and uses it."""
    if dist.is_initialized():
        return
    address, port = master_address(launch)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = address, str(port)
    os.environ.setdefault("RANK", str(launch.rank))
    os.environ.setdefault("WORLD_SIZE", str(launch.world_size))
    deadline = time.monotonic() + timeout_s
    if launch.rank > 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        _wait_for_master(launch, address, port, timeout_s, deadline)
    try:
        store, _, _ = next(dist.rendezvous("env://", rank=launch.rank, world_size=launch.world_size,
                                           timeout=datetime.timedelta(seconds=max(1.0, deadline - time.monotonic()))))
    except (RuntimeError, ValueError, OSError) as error:  # DistStoreError / DistNetworkError
        raise LaunchError(_rendezvous_failure(launch, address, port, timeout_s, error)) from None
    store.set_timeout(COLLECTIVE_TIMEOUT)
    device = torch.device(launch.device) if launch.backend == "nccl" else None  # Lightning's pick, not local_rank
    if device is not None:
        torch.cuda.set_device(device)
    # The prefix init_process_group gives the store it creates itself: ranks that Lightning
    # joins (rank 0 under its launcher) must find the same keys.
    dist.init_process_group(launch.backend, store=dist.PrefixStore("default_pg", store), rank=launch.rank,
                            world_size=launch.world_size, timeout=COLLECTIVE_TIMEOUT, device_id=device)


def _wait_for_master(launch: Launch, address: str, port: int, timeout_s: float, deadline: float) -> None:
    """Until the deadline, try to open a connection to the master's store: torch's own client
    retries for about twice its timeout and prints C++ stack traces when it gives up."""
    error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=min(5.0, max(0.1, deadline - time.monotonic()))).close()
            return
        except OSError as failure:
            error = failure
            time.sleep(0.5)
    raise LaunchError(_rendezvous_failure(launch, address, port, timeout_s, error or TimeoutError("timed out")))


def _rendezvous_failure(launch: Launch, address: str, port: int, timeout_s: float, error: BaseException) -> str:
    cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
    where = f"{address}:{port}"
    if launch.rank == 0:
        return (f"rank 0 of {launch.world_size} waited {timeout_s:g} s at {where} for the other ranks and not all "
                f"came ({cause}): start all {launch.world_size} processes (train.devices={launch.devices} per node x "
                f"train.num_nodes={launch.num_nodes}), or raise train.rendezvous_timeout if they start slowly")
    return (f"rank {launch.rank} of {launch.world_size} could not reach the master at {where} within {timeout_s:g} s "
            f"({cause}): check that rank 0 runs and that MASTER_ADDR / --master-addr names a host this machine "
            "reaches on that port, or raise train.rendezvous_timeout if rank 0 starts slowly")


def share(launch: Launch, plan: Plan | None) -> Plan:
    """Rank 0's plan on every rank (rank 0 passes its own; the others pass None)."""
    if launch.kind == "lightning":  # rank 0 hands it to the children it starts (children_run)
        return plan if launch.rank == 0 else Plan(**json.loads(os.environ[PLAN_ENV]))
    if launch.joins_early:
        box = [plan]
        dist.broadcast_object_list(box, src=0)
        plan = box[0]
    return plan


@contextlib.contextmanager
def all_or_none(launch: Launch) -> Iterator[None]:
    """Ranks started together (torchrun, srun) prepare their data apart: one that fails (its node
    cannot reach the corpus, say) tells the others, and every rank stops with its message
    instead of waiting in the first collective. Lightning's children are watched by rank 0."""
    if not (launch.kind in ("torchrun", "slurm") and dist.is_initialized()):
        yield
        return
    error: AttnlabError | None = None
    try:
        yield
    except AttnlabError as failure:
        error = failure
    reports: list[str | None] = [None] * launch.world_size
    dist.all_gather_object(reports, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if failed:
        rank, report = failed[0]
        raise LaunchError(f"rank {rank} stopped before training: {report}")


@contextlib.contextmanager
def children_run(launch: Launch, config_path: Path, plan: Plan, trainer: pl.Trainer,
                 threads: int | None) -> Iterator[None]:
    """Around rank 0's fit under Lightning's launcher: the children it starts inherit its plan
    through the environment, and the command it re-executes for them is `attnlab train <run
    folder>/config.yaml`, the resolved config rank 0 wrote, whatever verb started rank 0 (a sweep
    worker's children must train its trial, not claim trials). The command comes from sys.argv
    (Lightning's documented behaviour), so only when the main program is attnlab's CLI; a user's
    own script is re-run as Lightning always does. Afterwards the process is as it was (a sweep
    worker runs the next trial in it): environment, threads, and no child left behind."""
    saved = {k: os.environ.get(k) for k in (*LAUNCHER_ENV, "OMP_NUM_THREADS")}
    argv, torch_threads = list(sys.argv), torch.get_num_threads()
    if launch.kind == "lightning" and launch.rank == 0:
        os.environ[PLAN_ENV] = json.dumps(asdict(plan))
        if threads:  # Lightning's launcher would otherwise set cores / devices threads, here and in the children
            os.environ["OMP_NUM_THREADS"] = str(threads)
        if _main_is_attnlab():
            sys.argv[1:] = ["train", str(config_path)]
    failed = True
    try:
        yield
        failed = False
    finally:
        sys.argv[:] = argv
        if launch.world_size > 1 and launch.rank == 0:
            if launch.kind == "lightning":  # ddp_spawn joins its processes itself
                _reap_children(trainer, failed)
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            torch.set_num_threads(torch_threads)


def _reap_children(trainer: pl.Trainer, failed: bool, grace_s: float = 60.0) -> None:
    """Lightning watches the children it started and SIGKILLs this process when one exits with
    an error, even after fit: a sweep worker would die with its next trial. Taking them off the
    list it watches stops that; then they are waited for (after a failure, killed: they may wait
    in a collective for a rank that left)."""
    children = list(getattr(trainer.strategy.launcher, "procs", None) or [])
    if not children:
        return
    trainer.strategy.launcher.procs.clear()  # the watcher's own list: it now sees no child
    for child in children:
        if failed:
            child.kill()
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _main_is_attnlab() -> bool:
    import __main__

    spec = getattr(__main__, "__spec__", None)
    return (spec is not None and spec.name == "attnlab.cli") or Path(sys.argv[0]).name == "attnlab"


def gpu_memory_share() -> float | None:
    """This process's share of each GPU's memory when workers share one (1/K), else None."""
    text = os.environ.get(MEMORY_FRACTION_ENV)
    if not text:
        return None
    try:
        fraction = float(text)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction <= 1:
        raise ConfigError(f"${MEMORY_FRACTION_ENV}={text!r}: expected a fraction in (0, 1]")
    return fraction


def limit_gpu_memory() -> float | None:
    """Hold this process to its share of each visible GPU's memory: beyond it torch raises
    OutOfMemoryError instead of starving the other workers. Returns the share."""
    fraction = gpu_memory_share()
    if fraction is not None and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


def leave() -> None:
    """Destroy the process group of a finished run, so the next run in this process (a sweep
    worker's next trial) starts a new one instead of reusing one whose peers are gone."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
