"""Decoding speed: batched beam search with the key/value cache against the same search
recomputing the whole prefix every step (no cache), in one process on the same sentences.

    python bench/decode_speed.py [--checkpoint runs/x/checkpoints/stepN.ckpt] [--sentences 200] [--beam 4]

With a checkpoint, it translates test_2016_flickr of the run's corpus; without one, a randomly
initialised BASELINES-sized model (d_model 256, 3+3 layers) translates Multi30k test sentences;
its outputs run to the maximum length (source + 50), which makes the uncached search's
quadratic cost, and so the speed-up, larger than with a trained model. Prints sentences/s
and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from attnlab.config import DataConfig, ModelConfig
from attnlab.data.corpora import load_split
from attnlab.data.datamodule import EncodedSplit, prepare
from attnlab.model import beam_search, build_model
from attnlab.train.checkpoints import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, vocab, config = load_checkpoint(args.checkpoint)
        data = config.data
    else:
        mirror = os.environ.get("ATTNLAB_DATA_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
        data = DataConfig(mirror=mirror, vocab_size=8000)
        vocab = prepare(data).vocab
        torch.manual_seed(1)
        model = build_model(ModelConfig(n_layers=3, d_model=256, n_heads=4, d_ff=1024), len(vocab)).eval()
    split = EncodedSplit(load_split(data, "test_2016_flickr"), vocab)
    order = sorted(range(min(args.sentences, len(split))), key=lambda i: split.src_lengths[i])
    budget = args.max_tokens // args.beam
    batches, batch = [], []
    for i in order:  # length-sorted batches of <= budget source tokens, the same for both variants
        if batch and (len(batch) + 1) * split.src_lengths[i] > budget:
            batches.append(batch)
            batch = []
        batch.append(i)
    batches.append(batch)

    timings = {}
    outputs = {}
    for use_cache in (True, False, True):  # cached twice: first run warms up
        start = time.perf_counter()
        found = []
        for b in batches:
            found += beam_search(model, split.collate(b)["src"], beam_size=args.beam, use_cache=use_cache).tokens
        timings[use_cache] = time.perf_counter() - start
        outputs[use_cache] = found
    n = sum(len(b) for b in batches)
    assert outputs[True] == outputs[False], "cached and uncached search disagree"
    print(f"{n} sentences, beam {args.beam}, {len(batches)} batches, {args.threads} threads")
    print(f"with cache:    {n / timings[True]:8.2f} sentences/s ({timings[True]:.1f} s)")
    print(f"without cache: {n / timings[False]:8.2f} sentences/s ({timings[False]:.1f} s)")
    print(f"speed-up:      {timings[False] / timings[True]:8.2f}x (same hypotheses)")


if __name__ == "__main__":
    main()
