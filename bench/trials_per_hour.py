"""Trials per hour with K workers per device, against K = 1, in one run.

    python bench/trials_per_hour.py                         (CPU: tiny trials, K = 1, 2, 4, 8 workers)
    python bench/trials_per_hour.py --gpu --model multi30k --steps 300 --trials 16   (one GPU: the real number)

For each K a fresh study of `--trials` trials (seeds of one row) runs with `attnlab sweep run`:
on a GPU `--devices 0 --workers-per-device K`, on CPU `--workers K` with cores / K threads each.
Printed per K: wall seconds, trials per hour, the ratio to K = 1, and the median fixed cost per
trial (train() to the first step, end of training to result.json) that the workers reported.
The corpus comes from $ATTNLAB_DATA_MIRROR or ../shared/data; the vocabulary is prepared once,
before the first K, so every K finds it cached.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

MODELS = {"tiny": {"n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4},
          "multi30k": {"n_layers": 3, "d_model": 256, "d_ff": 1024, "n_heads": 4}}


def study(folder: Path, name: str, args: argparse.Namespace, mirror: str, cache: str) -> Path:
    document = {
        "study": name, "output_dir": str(folder / "studies"), "seeds": list(range(1, args.trials + 1)),
        "base": {"model": MODELS[args.model],
                 "data": {"vocab_size": 8000 if args.model == "multi30k" else 500, "max_tokens": args.tokens,
                          "mirror": mirror, "cache_dir": cache, "test_splits": [],
                          "max_eval_sentences": args.eval_sentences},
                 "train": {"max_steps": args.steps, "peak_lr": 1e-3, "warmup_steps": max(1, args.steps // 5),
                           "val_every_steps": args.steps, "val_beam_size": 1, "attention_sample": 16,
                           **({"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"} if args.gpu else
                              {"accelerator": "cpu"})},
                 "decode": {"beam_size": 4},
                 "logging": {"wandb": "disabled", "progress_bar": False, "quiet": True}},
        "rows": [],
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def fixed_costs(path: Path) -> list[float]:
    from attnlab.sweep.spec import load_study
    from attnlab.sweep.storage import open_existing, storage_url

    loaded = load_study(path)
    out = []
    for trial in open_existing(loaded, storage_url(loaded)).get_trials(deepcopy=False):
        fixed = trial.user_attrs.get("fixed_seconds") or {}
        if None not in (fixed.get("start_to_first_step"), fixed.get("training_end_to_result")):
            out.append(fixed["start_to_first_step"] + fixed["training_end_to_result"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="1,2,4,8", help="workers per device to compare (the first is the reference)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1024, help="data.max_tokens")
    parser.add_argument("--eval-sentences", type=int, default=40)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--gpu", action="store_true", help="share GPU 0 (--workers-per-device K)")
    args = parser.parse_args()
    mirror = os.environ.get("ATTNLAB_DATA_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    folder = Path(tempfile.mkdtemp(prefix="trials-per-hour-"))
    cache = str(folder / "cache")
    cores = os.cpu_count() or 1
    first = study(folder, "warm", argparse.Namespace(**{**vars(args), "trials": 1}), mirror, cache)
    subprocess.run([sys.executable, "-m", "attnlab.cli", "sweep", "run", str(first)], check=True,
                   capture_output=True)  # the vocabulary and encoded corpus, once
    print(f"{args.trials} trials of {args.steps} steps, {args.model} model, "
          f"{'GPU 0 shared by K workers' if args.gpu else f'{cores} CPU cores shared by K workers'}")
    print(f"{'K':>3} {'wall s':>8} {'trials/h':>9} {'vs K=1':>7} {'fixed s (median)':>17}")
    reference = None
    for k in (int(x) for x in args.ks.split(",")):
        path = study(folder, f"k{k}", args, mirror, cache)
        placement = ["--devices", "0", "--workers-per-device", str(k)] if args.gpu else \
            ["--workers", str(k), "--threads", str(max(1, cores // k))]
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "attnlab.cli", "sweep", "run", str(path), *placement],
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(f"{k:>3} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        per_hour = args.trials / wall * 3600
        reference = reference or per_hour
        costs = fixed_costs(path)
        median = f"{statistics.median(costs):.2f}" if costs else "-"
        print(f"{k:>3} {wall:8.1f} {per_hour:9.0f} {per_hour / reference:7.2f} {median:>17}")


if __name__ == "__main__":
    main()
