"""Preparing a training corpus at WMT14 scale: time and peak memory per million pairs.

    python bench/prepare_at_scale.py [--pairs 1000000] [--vocab-size 37000] [--no-reference]

A synthetic en-de corpus with WMT14's shape is written first: sentence lengths log-normal
around 19 words (mean ~23, like Europarl and CommonCrawl), German ~5% shorter in words and
longer in letters, Zipf-distributed word types (250k English, 400k German, umlauts and ß),
and CommonCrawl-like dirt (1% empty sides, 1% length mismatches, 0.1% over 250 words).
Each measurement runs in a fresh process, so its peak RSS is its own:

- attnlab, cold: `prepare_train` in an empty cache: stream-clean into text files, learn the
  joint BPE from a sample of `data.vocab_sample` sentences, encode on all cores in chunks,
  write the id arrays;
- attnlab, warm: what every later run pays: `prepare_train` from the cache (memory-mapped)
  and one epoch of token-budget batches;
- reference (the in-memory way attnlab did it before, and most notebooks do): read and clean
  into Python lists, learn the same vocabulary, encode into lists of lists.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WMT14_PAIRS = 4_520_620  # Europarl v7 + CommonCrawl + News Commentary v9, before cleaning


def _types(rng: np.random.Generator, n: int, letters: str, mean: float) -> np.ndarray:
    alphabet = np.array(list(letters))
    return np.array(["".join(rng.choice(alphabet, k)) for k in np.clip(rng.poisson(mean, n), 1, 24)])


def write_corpus(folder: Path, pairs: int, seed: int = 0) -> tuple[Path, Path]:
    """The synthetic corpus as train.en / train.de, written in blocks to keep memory flat."""
    rng = np.random.default_rng(seed)
    languages = {"en": (_types(rng, 250_000, "etaoinshrdlucmfwypvbgkjqxz", 4.0), 1.1),
                 "de": (_types(rng, 400_000, "enisratdhulcgmobwfkzvpüäößjyqx", 5.5), 1.05)}
    weights = {lang: (p := 1 / np.arange(1, len(types) + 1) ** a) / p.sum() for lang, (types, a) in languages.items()}
    paths = folder / "train.en", folder / "train.de"
    with open(paths[0], "w", encoding="utf-8") as en, open(paths[1], "w", encoding="utf-8") as de:
        for start in range(0, pairs, 100_000):
            n = min(100_000, pairs - start)
            words = {"en": np.clip(np.rint(rng.lognormal(np.log(19), 0.65, n)), 1, 400).astype(int)}
            words["de"] = np.clip(np.rint(words["en"] * rng.lognormal(-0.05, 0.2, n)), 1, 400).astype(int)
            dirt = rng.random(n)
            words["de"][dirt < 0.01] = 0  # an empty side
            mismatch = (dirt >= 0.01) & (dirt < 0.02)
            words["de"][mismatch] = words["en"][mismatch] * 5 + 3  # a sentence and not its translation
            words["en"][(dirt >= 0.02) & (dirt < 0.021)] = 300  # over data.max_words
            for lang, out in (("en", en), ("de", de)):
                types = languages[lang][0]
                ids = rng.choice(len(types), int(words[lang].sum()), p=weights[lang])
                ends = np.cumsum(words[lang])
                out.writelines(" ".join(types[ids[e - k : e]]) + (" .\n" if k else "\n")
                               for e, k in zip(ends, words[lang]))
    return paths


def _config(corpus: Path, cache: Path, vocab_size: int):
    from attnlab.config import DataConfig

    files = f"{corpus / 'train.en'},{corpus / 'train.de'}"
    return DataConfig(corpus="custom", custom_files={"train": files, "val": files}, valid_split="val",
                      test_splits=(), vocab_size=vocab_size, cache_dir=str(cache), max_tokens=25_000)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(stage: str, corpus: Path, cache: Path, vocab_size: int) -> dict:
    """One measurement, in this (fresh) process."""
    from attnlab.data.batching import TokenBatchSampler
    from attnlab.data.encoded import prepare_train

    config = _config(corpus, cache, vocab_size)
    base, start = _rss_mb(), time.perf_counter()
    if stage == "reference":
        from attnlab.data.corpora import load_split
        from attnlab.data.tokenizer import train_vocabulary

        train = load_split(config, "train", train=True)
        vocab = train_vocabulary(train.src + train.tgt, cache, vocab_size, sample=config.vocab_sample)
        src, tgt = vocab.sp.encode(train.src, out_type=int), vocab.sp.encode(train.tgt, out_type=int)
        pairs = len(src) if len(src) == len(tgt) else -1
    else:
        _, split = prepare_train(config)
        pairs = len(split)
        if stage == "warm":
            ready = time.perf_counter() - start
            batches = len(TokenBatchSampler(split.src_lengths, split.tgt_lengths, config.max_tokens, seed=1))
            return {"seconds": time.perf_counter() - start, "prepare_seconds": ready, "batches": batches,
                    "peak_rss_mb": _rss_mb(), "base_rss_mb": base, "pairs": pairs}
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": _rss_mb(), "base_rss_mb": base, "pairs": pairs}


def _run(stage: str, corpus: Path, cache: Path, vocab_size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--stage", stage, "--corpus", str(corpus), "--cache", str(cache),
                          "--vocab-size", str(vocab_size)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--vocab-size", type=int, default=37_000)
    parser.add_argument("--no-reference", action="store_true", help="skip the in-memory reference (RAM-hungry)")
    parser.add_argument("--stage", choices=("cold", "warm", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(measure(args.stage, args.corpus, args.cache, args.vocab_size)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        start = time.perf_counter()
        paths = write_corpus(corpus, args.pairs)
        size = sum(p.stat().st_size for p in paths)
        print(f"synthetic corpus: {args.pairs:,} pairs, {size / 1e6:,.0f} MB, written in "
              f"{time.perf_counter() - start:.0f} s; {os.cpu_count()} cores; vocabulary {args.vocab_size:,} BPE")
        rows = {"attnlab, cold": _run("cold", corpus, Path(tmp) / "cache", args.vocab_size),
                "attnlab, warm": _run("warm", corpus, Path(tmp) / "cache", args.vocab_size)}
        if not args.no_reference:
            rows["reference (lists)"] = _run("reference", corpus, Path(tmp) / "reference-cache", args.vocab_size)
    per = 1e6 / args.pairs
    print(f"\n{'':20} {'seconds':>9} {'s / M pairs':>12} {'peak RSS MB':>12} {'(after imports)':>16}")
    for name, row in rows.items():
        print(f"{name:20} {row['seconds']:9.1f} {row['seconds'] * per:12.1f} {row['peak_rss_mb']:12,.0f} "
              f"{row['base_rss_mb']:16,.0f}")
    cold, warm = rows["attnlab, cold"], rows["attnlab, warm"]
    print(f"\n{cold['pairs']:,} pairs kept; warm start: prepare {warm['prepare_seconds']:.2f} s + one epoch of "
          f"{warm['batches']:,} batches = {warm['seconds']:.2f} s")
    if "reference (lists)" in rows:
        ref = rows["reference (lists)"]
        print(f"attnlab / reference: cold time {cold['seconds'] / ref['seconds']:.2f}x, peak RSS "
              f"{cold['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x; warm start {warm['seconds'] / ref['seconds']:.3f}x "
              "the reference's preparation (which it pays on every run)")
    growth = cold["peak_rss_mb"] - cold["base_rss_mb"]
    print(f"cold preparation: peak RSS {growth:,.0f} MB over its imports, {growth * per:,.0f} MB per million pairs "
          "(the vocabulary's sample, most of it, is bounded by data.vocab_sample, not by the corpus)")

if __name__ == "__main__":
    main()
