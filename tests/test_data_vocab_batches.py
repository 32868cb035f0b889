"""Vocabulary, token-budget batches and the data module on real Multi30k."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from attnlab.config import DataConfig
from attnlab.data import tokenizer
from attnlab.data.batching import TokenBatchSampler
from attnlab.data.datamodule import TranslationDataModule, prepare


@pytest.fixture
def prepared(mirror, cache):
    return prepare(DataConfig(mirror=mirror, cache_dir=cache, vocab_size=4000))


def test_vocabulary_round_trip_on_real_sentences(prepared):
    vocab = prepared.vocab
    assert len(vocab) == 4000
    assert [vocab.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    for split in (prepared.train, prepared.valid, prepared.tests["test_2016_flickr"]):
        texts = split.src_text + split.tgt_text
        assert vocab.decode(vocab.encode(texts)) == texts  # cased, detokenized, exact
    assert vocab.decode([[2, *vocab.encode(["Ein Hund."])[0], 3, 0, 0]]) == ["Ein Hund."]  # specials dropped
    rare = "Ærøskøbing ☃ naïve"
    assert vocab.decode(vocab.encode([rare])) == [rare]  # byte fallback, no <unk>
    assert tokenizer.UNK_ID not in vocab.encode([rare])[0]


def test_vocabulary_is_cached_by_its_inputs(mirror, cache, monkeypatch):
    config = DataConfig(mirror=mirror, cache_dir=cache, vocab_size=2000)
    first = prepare(config).vocab.path
    calls = []
    real_train = tokenizer.spm.SentencePieceTrainer.train
    monkeypatch.setattr(tokenizer.spm.SentencePieceTrainer, "train", lambda **kw: calls.append(1) or real_train(**kw))
    assert prepare(config).vocab.path == first and calls == []  # same inputs: reused
    other_size = prepare(DataConfig(mirror=mirror, cache_dir=cache, vocab_size=2500)).vocab.path
    other_data = prepare(DataConfig(mirror=mirror, cache_dir=cache, vocab_size=2000, max_words=10)).vocab.path
    assert len({first, other_size, other_data}) == 3 and len(calls) == 2  # different inputs: retrained


def test_batches_respect_the_budget_and_cover_each_sentence_once(prepared):
    train = prepared.train
    sampler = TokenBatchSampler(train.src_lengths, train.tgt_lengths, max_tokens=2048, seed=7)
    batches = list(sampler)
    for batch in batches:
        assert len(batch) * max(train.src_lengths[i] for i in batch) <= 2048
        assert len(batch) * max(train.tgt_lengths[i] for i in batch) <= 2048
    assert sorted(i for b in batches for i in b) == list(range(len(train)))
    assert list(TokenBatchSampler(train.src_lengths, train.tgt_lengths, 2048, seed=7)) == batches  # deterministic
    sampler.set_epoch(1)
    again = list(sampler)
    assert again != batches and sorted(i for b in again for i in b) == list(range(len(train)))
    # Similar lengths together: padding is a small share of the budget.
    real = sum(train.tgt_lengths)
    padded = sum(len(b) * max(train.tgt_lengths[i] for i in b) for b in batches)
    assert real / padded > 0.95


@pytest.mark.parametrize("replicas", [2, 3])
def test_ranks_get_disjoint_batches_of_equal_number(prepared, replicas):
    valid = prepared.valid
    per_rank = [list(TokenBatchSampler(valid.src_lengths, valid.tgt_lengths, 1000, seed=3,
                                       num_replicas=replicas, rank=r)) for r in range(replicas)]
    assert len({len(batches) for batches in per_rank}) == 1
    seen = Counter(i for batches in per_rank for b in batches for i in b)
    assert sorted(seen) == list(range(len(valid))) and set(seen.values()) == {1}


def test_a_sentence_longer_than_the_budget_is_an_error():
    with pytest.raises(ValueError, match="max_tokens=10 is smaller than the longest sentence \\(12 tokens\\)"):
        TokenBatchSampler([3, 12], [4, 5], max_tokens=10)


def test_datamodule_batches(mirror, cache):
    data = TranslationDataModule(DataConfig(mirror=mirror, cache_dir=cache, vocab_size=4000, max_tokens=1024))
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["src"].shape[0] == batch["tgt_in"].shape[0] == batch["tgt_out"].shape[0]
    assert batch["tgt_in"].shape == batch["tgt_out"].shape
    assert batch["src"].numel() <= 1024 and batch["tgt_in"].numel() <= 1024
    assert (batch["tgt_in"][:, 0] == tokenizer.BOS_ID).all()
    assert (batch["tgt_in"][:, 1:] == batch["tgt_out"][:, :-1]).all()  # shifted by one
    lengths = (batch["tgt_out"] != 0).sum(1)
    assert (batch["tgt_out"].gather(1, (lengths - 1)[:, None]) == tokenizer.EOS_ID).all()
    assert len(data.val_dataloader()) > 0 and len(data.test_dataloader()) == 1


def test_parallel_workers_share_one_cache(mirror, tmp_path):
    """Two processes prepare the same data into one empty cache at once: both succeed with the
    same vocabulary file and nothing partial is left behind."""
    script = (
        "import sys; from attnlab.config import DataConfig; from attnlab.data.datamodule import prepare;"
        f"print(prepare(DataConfig(mirror={mirror!r}, cache_dir={str(tmp_path)!r}, vocab_size=3000)).vocab.path)"
    )
    workers = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0].strip() for w in workers]
    assert all(w.returncode == 0 for w in workers)
    assert outputs[0] == outputs[1] and Path(outputs[0]).exists()
    assert not list(tmp_path.rglob("*.part"))
    assert len(list((tmp_path / "vocab").glob("*.model"))) == 1


def test_too_small_a_vocabulary_is_a_clear_error(tmp_path, cache):
    from attnlab.data.fetch import DataError

    (tmp_path / "a.en").write_text("hello world\n")
    (tmp_path / "a.de").write_text("hallo welt\n")
    config = DataConfig(corpus="custom", custom_files={"train": f"{tmp_path}/a.en,{tmp_path}/a.de",
                                                       "val": f"{tmp_path}/a.en,{tmp_path}/a.de"},
                        test_splits=(), vocab_size=50, cache_dir=cache)
    with pytest.raises(DataError, match="cannot train a bpe vocabulary of 50: .*Vocabulary size is smaller"):
        prepare(config)
    assert not list((Path(cache) / "vocab").glob("*.model"))
