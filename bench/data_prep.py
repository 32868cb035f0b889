"""Preparation time for a corpus and batching throughput.

    python bench/data_prep.py [--corpus multi30k] [--vocab-size 8000] [--max-tokens 4096]

Each stage is timed in a fresh, empty cache: fetch and verify every split from the mirror
($ATTNLAB_DATA_MIRROR or ../shared/data), clean, train the joint sentencepiece vocabulary,
encode, in memory; then `prepare` (the training split streamed into the cache as arrays, the
vocabulary reused), and `prepare` again with a warm cache (what every later run and every
parallel worker pays); then one epoch of token-budget batches, sampler and collation.
bench/prepare_at_scale.py measures the same at WMT14's scale.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from attnlab.config import DataConfig
from attnlab.data.batching import TokenBatchSampler
from attnlab.data.corpora import load_split
from attnlab.data.datamodule import EncodedSplit, prepare
from attnlab.data.fetch import cache_dir
from attnlab.data.tokenizer import train_vocabulary


def timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"{label:44} {time.perf_counter() - start:8.3f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="multi30k")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--max-tokens", type=int, default=4096)
    args = parser.parse_args()
    mirror = os.environ.get("ATTNLAB_DATA_MIRROR") or str(Path(__file__).resolve().parents[2] / "shared" / "data")

    with tempfile.TemporaryDirectory() as tmp:
        config = DataConfig(corpus=args.corpus, vocab_size=args.vocab_size, max_tokens=args.max_tokens,
                            cache_dir=tmp, mirror=mirror)
        print(f"{args.corpus}, vocabulary {args.vocab_size}, mirror {mirror}, cold cache")
        train = timed("fetch + verify + clean train", load_split, config, config.train_split, train=True)
        timed("fetch + verify valid and test splits", lambda: [load_split(config, s) for s in
                                                                (config.valid_split, *config.test_splits)])
        vocab = timed("train sentencepiece (both languages)", train_vocabulary, train.src + train.tgt,
                      cache_dir(tmp), args.vocab_size, config.vocab_type, config.seed)
        encoded = timed("encode train", EncodedSplit, train, vocab)
        timed("prepare(): the same, streamed into the cache", prepare, config)
        timed("prepare() again, warm cache (every later run)", prepare, config)

        sampler = TokenBatchSampler(encoded.src_lengths, encoded.tgt_lengths, args.max_tokens, seed=1)
        batches = timed("build one epoch of batches", list, sampler)
        start = time.perf_counter()
        tokens = 0
        for batch in batches:
            tokens += int((encoded.collate(batch)["tgt_out"] != 0).sum())
        seconds = time.perf_counter() - start
        padded = sum(len(b) * max(encoded.tgt_lengths[i] for i in b) for b in batches)
        print(f"{'collate one epoch':44} {seconds:8.3f} s")
        print(f"\n{len(train)} pairs, {len(batches)} batches of <= {args.max_tokens} tokens, "
              f"{tokens / seconds:,.0f} target tokens/s collated, target padding {1 - tokens / padded:.1%}")


if __name__ == "__main__":
    main()
