"""Quality per CPU budget on Multi30k en->de, against ../shared/BASELINES.md.

    python bench/quality_multi30k.py [--minutes 40] [--every-steps 150] [--out runs/bench-quality]

The BASELINES sizes (d_model 256, 3+3 layers, 4 heads, d_ff 1024, joint BPE 8,000, bf16
autocast, peak lr 1.5e-3 at step 400, batches of <= 4,096 tokens, 2 threads, seed 1) trained
for `--minutes` of pure training time (validation not counted, as in the baseline). A
checkpoint every `--every-steps` records its training seconds; afterwards every checkpoint
is scored on test_2016_flickr with beam 4, which gives the training minutes needed to reach
the baseline's 35.25 BLEU. Also printed: peak resident memory, tokens/s, and the validation
BLEU (greedy) curve, and the test BLEU of the average of the last 5 periodic checkpoints (the
paper's Table 2 recipe). Runs under tcmalloc/jemalloc when installed (attnlab/allocator.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from attnlab.allocator import active, reexec_with_allocator
from attnlab.config import ExperimentConfig
from attnlab.data.corpora import load_split
from attnlab.data.encoded import EncodedSplit
from attnlab.train.checkpoints import average_checkpoints, load_checkpoint, step_checkpoints
from attnlab.train.evaluation import score, translate
from attnlab.train.run import train

BASELINE_TEST_BLEU = 35.25


def config(minutes: float, every: int, out: str, mirror: str) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "name": "multi30k-quality", "output_dir": out,
        "model": {"n_layers": 3, "d_model": 256, "n_heads": 4, "d_ff": 1024},
        "data": {"vocab_size": 8000, "max_tokens": 4096, "mirror": mirror, "test_splits": ["test_2016_flickr"]},
        "train": {"max_train_minutes": minutes, "peak_lr": 1.5e-3, "warmup_steps": 400, "precision": "bf16-mixed",
                  "threads": 2, "val_every_steps": every, "checkpoint_every_steps": every, "keep_checkpoints": 1000,
                  "val_beam_size": 1, "seed": 1},
        "decode": {"beam_size": 4, "length_penalty": 0.6},
        "logging": {"wandb": "offline", "progress_bar": False, "quiet": True, "tags": ["bench"]},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--every-steps", type=int, default=150)
    parser.add_argument("--out", default="runs/bench-quality")
    args = parser.parse_args()
    reexec_with_allocator()  # tcmalloc/jemalloc when installed, as the attnlab command does
    print(f"allocator: {active() or 'system malloc'}", flush=True)
    mirror = os.environ.get("ATTNLAB_DATA_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    cfg = config(args.minutes, args.every_steps, args.out, mirror)
    result = train(cfg, resume=False)
    print(json.dumps({k: result[k] for k in ("bleu", "val_ppl", "params", "train_steps", "train_seconds",
                                             "train_tokens_per_s", "peak_rss_mb", "wall_s")}, indent=2))
    print(f"test_2016_flickr beam 4: {result['splits']['test_2016_flickr']['bleu']:.2f} BLEU "
          f"({result['splits']['test_2016_flickr']['sacrebleu_signature']})")

    from attnlab.train.wandb_offline import read_offline_run

    [offline] = list((Path(result["run_dir"]) / "wandb").glob("offline-run-*"))
    history = read_offline_run(offline)["history"]
    curve = [(int(h["trainer/global_step"]), h["val/bleu"]) for h in history if "val/bleu" in h]
    print("validation BLEU (greedy) by step: " + ", ".join(f"{s}: {b:.2f}" for s, b in curve))

    print(f"\n{'step':>6} {'train min':>9} {'test BLEU (beam 4)':>19} {'decode s':>9}")
    reached = None
    for path in step_checkpoints(Path(result["run_dir"]) / "checkpoints"):
        minutes = torch.load(path, map_location="cpu", weights_only=False)["throughput"]["seconds"] / 60
        model, vocab, run_cfg = load_checkpoint(path)
        split = EncodedSplit(load_split(run_cfg.data, "test_2016_flickr"), vocab)
        start = time.perf_counter()
        bleu = score(translate(model, split, vocab, run_cfg.decode), split.tgt_text).bleu
        print(f"{path.stem.removeprefix('step'):>6} {minutes:9.1f} {bleu:19.2f} {time.perf_counter() - start:9.1f}")
        if reached is None and bleu >= BASELINE_TEST_BLEU:
            reached = minutes
    # The paper's recipe (Table 2): the average of the last 5 checkpoints.
    periodic = [p for p in step_checkpoints(Path(result["run_dir"]) / "checkpoints")
                if int(p.stem.removeprefix("step")) % args.every_steps == 0]
    last = periodic[-5:]
    model, vocab, run_cfg = load_checkpoint(average_checkpoints(last, Path(result["run_dir"]) / "averaged.ckpt"))
    split = EncodedSplit(load_split(run_cfg.data, "test_2016_flickr"), vocab)
    averaged = score(translate(model, split, vocab, run_cfg.decode), split.tgt_text).bleu
    print(f"average of the last {len(last)} checkpoints ({', '.join(p.stem for p in last)}): "
          f"test_2016_flickr beam 4 = {averaged:.2f}")
    print(f"\ntraining minutes to reach the baseline's {BASELINE_TEST_BLEU}: "
          f"{'not reached' if reached is None else f'{reached:.1f}'}; peak RSS {result['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
