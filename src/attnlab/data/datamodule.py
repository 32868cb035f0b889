"""From a DataConfig to batches of token ids: preparation, datasets and the LightningDataModule."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from attnlab.config import DataConfig
from attnlab.data.batching import Buckets, TokenBatchSampler
from attnlab.data.corpora import load_split
from attnlab.data.encoded import EncodedSplit, prepare_train
from attnlab.data.fetch import CACHE_ENV, MIRROR_ENV
from attnlab.data.tokenizer import Vocabulary
from attnlab.errors import CheckpointError


@dataclass
class Prepared:
    """Everything `prepare` produced: the vocabulary and the encoded splits."""

    vocab: Vocabulary
    train: EncodedSplit
    valid: EncodedSplit
    tests: dict[str, EncodedSplit] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Sentences kept and dropped per reason, tokens per split, tokens per sentence."""
        splits = [("train", self.train), ("valid", self.valid)] + [("test", t) for t in self.tests.values()]
        out: dict[str, Any] = {"vocab_size": len(self.vocab), "vocab_model": str(self.vocab.path),
                               "train_prepared": str(self.train.src.folder or ""), "splits": []}
        for role, split in splits:
            n = max(len(split), 1)
            src_tokens, tgt_tokens = int(split.src_lengths.sum()), int(split.tgt_lengths.sum())
            out["splits"].append({
                "role": role, "split": split.name, "sentences": len(split), "dropped": dict(split.dropped),
                "src_tokens": src_tokens, "tgt_tokens": tgt_tokens,
                "src_tokens_per_sentence": round(src_tokens / n, 2),
                "tgt_tokens_per_sentence": round(tgt_tokens / n, 2),
                "max_src_tokens": int(split.src_lengths.max(initial=0)),
                "max_tgt_tokens": int(split.tgt_lengths.max(initial=0)),
            })
        return out


# Inside reuse_prepared(): the settings and splits of the last `prepare`, else None.
_last: list[tuple[str, Prepared]] | None = None


@contextlib.contextmanager
def reuse_prepared() -> Iterator[None]:
    """Within it, `prepare` with the same data settings returns the splits it built before
    instead of reading and encoding them again: one run asks three times (its checks,
    Lightning's prepare_data and setup), a sweep worker once per trial of the same data. Only
    the last settings' splits are kept, so memory stays that of one run's data."""
    global _last
    if _last is not None:  # nested: the outer one keeps them
        yield
        return
    _last = []
    try:
        yield
    finally:
        _last = None


BATCHING = ("max_tokens", "length_buckets")
"""DataConfig fields that shape batches only: the prepared data does not depend on them."""


def settings_key(config: DataConfig) -> str:
    """What `prepare` reads: the data settings but the batching ones, and where files come from."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in BATCHING}
    where = {k: os.environ.get(k) for k in (CACHE_ENV, MIRROR_ENV)}
    return json.dumps([fields, where], sort_keys=True, default=str)


def prepare(config: DataConfig) -> Prepared:
    """Fetch and check every split, train (or reuse) the joint vocabulary, encode. Every input
    error surfaces here, before any training."""
    if _last is None:
        return _prepare(config)
    key = settings_key(config)
    if not _last or _last[0][0] != key:
        _last[:] = [(key, _prepare(config))]
    return _last[0][1]


def _prepare(config: DataConfig) -> Prepared:
    vocab, train = prepare_train(config)  # a DataError if cleaning leaves nothing
    valid = load_split(config, config.valid_split)
    tests = {name: load_split(config, name) for name in config.test_splits}
    return Prepared(vocab, train, EncodedSplit(valid, vocab),
                    {name: EncodedSplit(split, vocab) for name, split in tests.items()})


def global_batch_mismatch(stored: int, here: int) -> str:
    """Why a checkpoint cannot be resumed with another number of batches per optimizer step."""
    return (f"its run took {stored} batches per optimizer step (ranks x train.accumulate_grad_batches) and this "
            f"launch takes {here}: resuming would change the global batch (and a position mid-epoch has no "
            f"equivalent). Resume with devices x num_nodes x accumulate_grad_batches = {stored} (e.g. on 1 rank with "
            f"--set train.accumulate_grad_batches={stored}), or start over with --restart")


class TranslationDataModule(pl.LightningDataModule):
    """Token-budget batches for Lightning. Use Trainer(use_distributed_sampler=False): the batch
    sampler already gives each rank its own batches."""

    def __init__(self, config: DataConfig, num_workers: int = 0) -> None:
        super().__init__()
        self.config, self.num_workers = config, num_workers
        self.data: Prepared | None = None
        self._resume: tuple[int, int, int | None] | None = None

    def prepare_data(self) -> None:
        prepare(self.config)  # rank 0 only: downloads and the vocabulary land in the shared cache

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = prepare(self.config)  # every rank: cached, so this only reads and encodes

    @property
    def vocab(self) -> Vocabulary:
        assert self.data is not None, "call setup() first"
        return self.data.vocab

    def _loader(self, split: EncodedSplit, shuffle: bool, distributed: bool, accumulate: int = 1) -> DataLoader:
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if (distributed and trainer) else (1, 0)
        buckets = None
        if self.config.length_buckets and len(split):
            longest = int(max(split.src_lengths.max(), split.tgt_lengths.max()))
            buckets = Buckets(longest, self.config.length_buckets, self.config.max_tokens)
        sampler = TokenBatchSampler(split.src_lengths, split.tgt_lengths, self.config.max_tokens, shuffle=shuffle,
                                    seed=self.config.seed, num_replicas=replicas, rank=rank, accumulate=accumulate,
                                    buckets=buckets)
        # Its own generator: creating an iterator must not draw from the global RNG, or dropout
        # masks after a resume would differ from those of an uninterrupted run.
        generator = torch.Generator().manual_seed(self.config.seed)
        return DataLoader(split, batch_sampler=sampler, collate_fn=functools.partial(split.collate, buckets=buckets),
                          num_workers=self.num_workers, generator=generator)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.data.train, shuffle=True, distributed=True,
                              accumulate=self.trainer.accumulate_grad_batches if self.trainer else 1)
        if self._resume is not None:
            epoch, done, per_step = self._resume
            if per_step not in (None, loader.batch_sampler.batches_per_step):
                raise CheckpointError(global_batch_mismatch(per_step, loader.batch_sampler.batches_per_step))
            loader.batch_sampler.resume = (epoch, done)
        return loader

    def state_dict(self) -> dict[str, int]:
        """Saved in checkpoints: where in the epoch training stopped (batches done by all ranks),
        so a resumed run skips the batches it already trained on instead of seeing them twice,
        on any number of ranks that keeps the batches per step."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        world, accumulate = self.trainer.world_size, self.trainer.accumulate_grad_batches
        # `processed`, not `completed`: a checkpoint written in on_train_batch_end comes before
        # Lightning counts that batch as completed, yet the batch has been trained on.
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed * world,
                "batches_per_step": world * accumulate, "world_size": world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        done = state["batches_done"]
        if "batches_per_step" not in state and self.trainer is not None:
            # Written before positions counted every rank: it counted this rank's batches, and
            # can only have been written on as many ranks as resume it (or one).
            done *= self.trainer.world_size
        self._resume = (state["epoch"], done, state.get("batches_per_step"))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data.valid, shuffle=False, distributed=True)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(split, shuffle=False, distributed=True) for split in self.data.tests.values()]
