"""Batches by token budget: sentences of similar length together, batch order shuffled by seed.

A batch holds at most `max_tokens` tokens on each side counting padding (batch size x longest
sentence), the paper's "batches of about 25,000 source and 25,000 target tokens".

An optimizer step takes `batches_per_step` = ranks x accumulate_grad_batches batches. The epoch's
batches are split until their count is a multiple of it, shuffled, and dealt to the ranks in
turn: nothing is dropped or repeated, every step is full, and the list depends on the product
only, so 2 ranks and 1 process accumulating 2 batches train on exactly the same steps.
"""

from __future__ import annotations

import math
import random
from typing import Iterator, Sequence

import numpy as np
import torch

from attnlab.errors import ConfigError


class Buckets:
    """A few padded lengths, so that batch shapes repeat (torch.compile, CUDA graphs): a batch
    whose longest sentence (either side) has L tokens is padded on both sides to the first
    boundary >= L, and to the `max_tokens // boundary` rows a full batch of that length has.
    Boundaries are spaced geometrically from 8 tokens to the longest sentence, multiples of 8."""

    def __init__(self, longest: int, count: int, max_tokens: int) -> None:
        low = min(8, longest)
        raw = [low * (longest / low) ** (k / max(count - 1, 1)) for k in range(count)] if count > 1 else [longest]
        rounded = sorted({min(8 * math.ceil(b / 8), longest, max_tokens) for b in raw} | {longest})
        self.boundaries = [b for b in rounded if b >= low]
        self.max_tokens = max_tokens

    def length(self, n: int) -> int:
        return next(b for b in self.boundaries if b >= n)

    def rows(self, length: int) -> int:
        return self.max_tokens // length


def token_batches(src_lengths: Sequence[int], tgt_lengths: Sequence[int], max_tokens: int,
                  seed: int | None = None, buckets: Buckets | None = None) -> list[list[int]]:
    """Greedy packing of sentence indices sorted by (target, source) length; with a seed, ties
    are broken randomly so batches differ from epoch to epoch. With buckets, a batch's cost is
    its padded length."""
    src, tgt = np.asarray(src_lengths, dtype=np.int64), np.asarray(tgt_lengths, dtype=np.int64)
    # By target, then source length, then (with a seed) a random draw per sentence: a stable sort
    # of the packed lengths, after sorting by the draws (faster than np.lexsort on millions).
    order = np.arange(len(src))
    if seed is not None:
        rng = random.Random(seed)
        order = np.argsort(np.fromiter((rng.random() for _ in range(len(src))), float, len(src)), kind="stable")
    packed = tgt * (int(src.max(initial=0)) + 1) + src
    if packed.max(initial=0) < 1 << 16:
        packed = packed.astype(np.uint16)  # numpy's stable sort is then a radix sort
    order = order[np.argsort(packed[order], kind="stable")]
    src, tgt = src[order], tgt[order]
    batches, start = [], 0
    while start < len(order):
        # Sentence j joins if (its place + 1) x the padded longest so far fits. Targets are sorted,
        # so the longest target is the last one's, and no batch has more rows than `room`.
        room = min(len(order) - start, max_tokens // max(int(tgt[start]), 1) + 1)
        longest = np.maximum(np.maximum.accumulate(src[start : start + room]), tgt[start : start + room])
        if buckets is not None:
            longest = np.asarray(buckets.boundaries)[np.searchsorted(buckets.boundaries, longest)]
        over = np.flatnonzero(np.arange(1, room + 1) * longest > max_tokens)
        end = start + (max(int(over[0]), 1) if len(over) else room)  # a batch holds at least one
        batches.append(order[start:end].tolist())
        start = end
    return batches


def split_to_multiple(batches: list[list[int]], multiple: int) -> list[list[int]]:
    """Halve the largest batches until the count is a multiple of `multiple`."""
    batches = list(batches)
    while len(batches) % multiple:
        largest = max(range(len(batches)), key=lambda j: len(batches[j]))
        if len(batches[largest]) < 2:
            raise ConfigError(f"{len(batches)} single-sentence batches cannot fill steps of {multiple} batches "
                              "(ranks x train.accumulate_grad_batches); raise data.max_tokens or use fewer devices")
        b = batches.pop(largest)
        batches += [b[: len(b) // 2], b[len(b) // 2 :]]
    return batches


class TokenBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields lists of dataset indices; call `set_epoch` (Lightning does) for a new order."""

    def __init__(self, src_lengths: Sequence[int], tgt_lengths: Sequence[int], max_tokens: int,
                 shuffle: bool = True, seed: int = 1, num_replicas: int = 1, rank: int = 0,
                 accumulate: int = 1, buckets: Buckets | None = None) -> None:
        src_lengths, tgt_lengths = np.asarray(src_lengths), np.asarray(tgt_lengths)
        longest = int(max(src_lengths.max(initial=0), tgt_lengths.max(initial=0)))
        if longest > max_tokens:
            raise ConfigError(f"data.max_tokens={max_tokens} is smaller than the longest sentence ({longest} tokens); "
                              "raise data.max_tokens or lower data.max_words")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} is not in [0, num_replicas={num_replicas})")
        self.src_lengths, self.tgt_lengths = src_lengths, tgt_lengths
        self.max_tokens, self.shuffle, self.seed = max_tokens, shuffle, seed
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        self.batches_per_step = num_replicas * accumulate
        self.buckets = buckets
        self._cached: tuple[int, list[list[int]]] | None = None
        self.resume: tuple[int, int] | None = None  # (epoch, batches done by all ranks) after a restart

    @property
    def sampler(self) -> TokenBatchSampler:
        # Lightning calls set_epoch on `dataloader.batch_sampler.sampler`, not on the batch sampler.
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self._make_batches())
        return self._cached[1]

    def _make_batches(self) -> list[list[int]]:
        seed = self.seed * 100_003 + self.epoch if self.shuffle else None
        batches = token_batches(self.src_lengths, self.tgt_lengths, self.max_tokens, seed, self.buckets)
        batches = split_to_multiple(batches, self.batches_per_step)
        if self.shuffle:
            random.Random(seed).shuffle(batches)
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        if self.resume is not None and self.resume[0] == self.epoch:
            # A run resumed mid-epoch continues where it stopped; the position is a whole number
            # of steps, so it falls on the same place of every rank's share.
            batches = batches[self.resume[1] // self.num_replicas :]
            self.resume = None
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches())
