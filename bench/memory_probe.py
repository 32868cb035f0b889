"""Peak resident memory and speed of CPU training under different allocators / settings.

    python bench/memory_probe.py [--minutes 4] [--variant NAME=ENV=VALUE[,ENV=VALUE]] ...

Each variant trains the BASELINES model on Multi30k (bench/quality_multi30k.py's config) for
`--minutes` of pure training time in its own process with the given environment (for
example LD_PRELOAD of jemalloc or tcmalloc), then prints its peak RSS, its training tokens/s
and both as ratios against the first variant (the reference, glibc's malloc by default),
measured in the same run. Evaluation is cut to a few sentences: memory of training is what
grows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LIBS = "/usr/lib/x86_64-linux-gnu"
DEFAULT_VARIANTS = [
    "glibc=LD_PRELOAD=",  # cleared: the reference is the system's malloc
    f"jemalloc=LD_PRELOAD={LIBS}/libjemalloc.so.2",
    f"tcmalloc=LD_PRELOAD={LIBS}/libtcmalloc_minimal.so.4",
]

CHILD = """
import json, sys
sys.path.insert(0, {bench!r})
from quality_multi30k import config
from dataclasses import replace
from attnlab.train.run import train
cfg = config({minutes}, 100000, {out!r}, {mirror!r})
cfg = replace(cfg, data=replace(cfg.data, max_eval_sentences=20), logging=replace(cfg.logging, wandb="disabled"))
r = train(cfg, resume=False)
print("RESULT", json.dumps({{k: r[k] for k in ("peak_rss_mb", "train_tokens_per_s", "train_steps")}}))
"""


def parse(variant: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = variant.partition("=")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a)
    return name, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--variant", action="append", help="NAME=ENV=VALUE[,ENV=VALUE]; repeat; first = reference")
    args = parser.parse_args()
    mirror = os.environ.get("ATTNLAB_DATA_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    results = {}
    for name, env in map(parse, args.variant or DEFAULT_VARIANTS):
        with tempfile.TemporaryDirectory() as out:
            code = CHILD.format(bench=str(Path(__file__).parent), minutes=args.minutes, out=out, mirror=mirror)
            proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                                  capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        results[name] = json.loads(line[7:])
        r, ref = results[name], next(iter(results.values()))
        print(f"{name:>12}: peak RSS {r['peak_rss_mb']:7,.0f} MB ({r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x), "
              f"{r['train_tokens_per_s']:6,.0f} tok/s ({r['train_tokens_per_s'] / ref['train_tokens_per_s']:.2f}x), "
              f"{r['train_steps']} steps  {env or ''}", flush=True)


if __name__ == "__main__":
    main()
