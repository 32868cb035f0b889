"""What a sweep costs beyond training, and the smoke study's wall time with 1 and 2 workers.

    python bench/sweep_overhead.py [--trials 4] [--skip-smoke]

Overhead per trial, each part as a difference of two measured runs of identical 1-step trials:
  storage   (queue, claim, heartbeat, results as user attributes)  sweep, W&B off  - plain train()
  W&B       (offline run: init, logging, tables, images, finish)    sweep, W&B on   - sweep, W&B off
  process   (a worker process: interpreter, torch, Lightning, W&B, Optuna imports)
Then `attnlab sweep run ablations/smoke.yaml` with --workers 1 and --workers 2 (fresh folders).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_study(folder: Path, trials: int, wandb: str, name: str) -> Path:
    document = yaml.safe_load((ROOT / "ablations" / "smoke.yaml").read_text())
    document["study"], document["output_dir"] = name, str(folder)
    document["base"]["train"].update({"max_steps": 1, "val_every_steps": 1, "attention_stats": False})
    document["base"]["data"]["max_eval_sentences"] = 2
    document["base"]["logging"]["wandb"] = wandb
    document["rows"] = [{"id": f"r{i}", "train": {"warmup_steps": 10 + i}} for i in range(trials - 1)]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def per_trial_sweep(path: Path) -> float:
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import enqueue_missing, open_study, storage_url
    from attnlab.sweep.worker import work

    study = load_study(path)
    url = storage_url(study)
    start = time.perf_counter()
    enqueue_missing(open_study(study, url), study, url)
    n = work(study, url)
    return (time.perf_counter() - start) / n


def per_trial_plain(path: Path) -> float:
    from attnlab.sweep.spec import load_study
    from attnlab.train.run import train

    study = load_study(path)
    start = time.perf_counter()
    for row, seed in study.trials():
        config = study.trial_config(row, seed)
        train(dataclasses.replace(config, output_dir=str(Path(config.output_dir) / "plain")))
    return (time.perf_counter() - start) / len(study.trials())


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--skip-smoke", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("ATTNLAB_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        per_trial_plain(tiny_study(folder, 1, "disabled", "warm"))  # data, vocabulary, imports: warm
        plain = per_trial_plain(tiny_study(folder, args.trials, "disabled", "plain"))
        no_wandb = per_trial_sweep(tiny_study(folder, args.trials, "disabled", "sweep"))
        with_wandb = per_trial_sweep(tiny_study(folder, args.trials, "offline", "sweepwandb"))
        process = timed([sys.executable, "-c", "import attnlab.sweep.worker, attnlab.train.run"])
        print(f"per trial of 1 training step ({args.trials} trials each):")
        print(f"  plain train()           {plain:6.2f} s")
        print(f"  storage (sweep - plain) {no_wandb - plain:6.2f} s")
        print(f"  W&B offline             {with_wandb - no_wandb:6.2f} s")
        print(f"  worker process start    {process:6.2f} s (once per worker, not per trial)")
        if args.skip_smoke:
            return
        for workers in (1, 2):
            study = yaml.safe_load((ROOT / "ablations" / "smoke.yaml").read_text())
            study["output_dir"] = str(folder / f"smoke{workers}")
            path = folder / f"smoke{workers}.yaml"
            path.write_text(yaml.safe_dump(study, sort_keys=False))
            seconds = timed([sys.executable, "-m", "attnlab.cli", "sweep", "run", str(path), "--workers", str(workers)])
            print(f"smoke study, {workers} worker(s): {seconds:6.1f} s wall")
            shutil.rmtree(folder / f"smoke{workers}", ignore_errors=True)


if __name__ == "__main__":
    main()
