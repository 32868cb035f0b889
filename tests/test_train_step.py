"""The training step's contract: no host reads between log steps, a time budget that stops the
run, a clock that survives a resume, and divergence reported with its first step."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from attnlab.config import ExperimentConfig
from attnlab.train.callbacks import TrainClock
from attnlab.train.module import TranslationModule
from attnlab.train.run import train

# Tensor methods that make the host wait for the device (on a GPU); on CPU they are cheap, so the
# test counts the calls made by attnlab's own code instead of timing them.
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__")


def tiny_run(tmp_path, cache, name="step", **train_values) -> ExperimentConfig:
    """Sixteen sentence pairs of a custom corpus: several batches per epoch, no download."""
    src = [f"sentence number {i} is here and it is {'long ' * (i % 5)}" for i in range(16)]
    tgt = [f"satz nummer {i} ist da und er ist {'lang ' * (i % 5)}" for i in range(16)]
    for lang, lines in (("en", src), ("de", tgt)):
        (tmp_path / f"t.{lang}").write_text("\n".join(lines) + "\n")
    files = {"train": f"{tmp_path}/t.en,{tmp_path}/t.de", "val": f"{tmp_path}/t.en,{tmp_path}/t.de"}
    data = {k: train_values.pop(k) for k in ("length_buckets",) if k in train_values}
    values = {"max_steps": 6, "peak_lr": 3e-3, "warmup_steps": 4, "threads": 1, "val_bleu": False,
              "attention_stats": False, "log_every_steps": 1000, **train_values}
    return ExperimentConfig.from_dict({
        "name": name, "output_dir": str(tmp_path / "runs"),
        "model": {"n_layers": 1, "d_model": 32, "d_ff": 64, "n_heads": 4, "dropout": 0.0},  # compiled = eager
        "data": {"corpus": "custom", "custom_files": files, "test_splits": [], "vocab_size": 320, "cache_dir": cache,
                 "max_tokens": 64, **data},
        "train": values, "decode": {"beam_size": 1, "max_len_b": 5},
        "logging": {"wandb": "disabled", "progress_bar": False, "quiet": True},
    })


def test_no_host_reads_inside_training_steps_between_log_steps(tmp_path, cache, monkeypatch):
    """Every tensor read that attnlab's code makes while a training step runs (the module's step
    and optimizer hooks, the clock's batch end) is counted: with no log step in the run, none."""
    inside, reads = [False], []

    def during(method):
        def wrapper(*args, **kwargs):
            inside[0] = True
            try:
                return method(*args, **kwargs)
            finally:
                inside[0] = False
        return wrapper

    for cls, name in ((TranslationModule, "training_step"), (TranslationModule, "on_before_optimizer_step"),
                      (TrainClock, "on_train_batch_end")):
        monkeypatch.setattr(cls, name, during(getattr(cls, name)))
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if inside[0] and f"{Path('attnlab')}" in caller and "tests" not in caller:
                reads.append(f"{_name} in {caller}:{sys._getframe(1).f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    result = train(tiny_run(tmp_path, cache))
    assert result["train_steps"] == 6
    assert reads == []


def test_a_training_time_budget_stops_the_run_and_the_clock_survives_a_resume(tmp_path, cache):
    config = tiny_run(tmp_path, cache, "budget", max_steps=10_000, max_train_minutes=1e-6, log_every_steps=1,
                      checkpoint_every_steps=1)
    result = train(config)
    assert result["train_steps"] == 1  # the budget is spent after the first step, and checked at every one
    stats = json.loads((Path(result["run_dir"]) / "train_stats.json").read_text())
    assert stats["train_seconds"] > 0 and stats["train_tokens"] > 0
    more = tiny_run(tmp_path, cache, "budget", max_steps=3, log_every_steps=1, checkpoint_every_steps=1)
    resumed = train(more)
    assert resumed["resumed_from"].endswith("step0000001.ckpt") and resumed["train_steps"] == 3
    after = json.loads((Path(result["run_dir"]) / "train_stats.json").read_text())
    assert after["train_seconds"] > stats["train_seconds"] and after["train_tokens"] > stats["train_tokens"]


def test_divergence_names_its_first_step_when_seen_at_a_log_step(tmp_path, cache):
    config = tiny_run(tmp_path, cache, "nan", peak_lr=1e6, warmup_steps=1, max_steps=40, log_every_steps=5,
                      val_every_steps=100)
    with pytest.raises(FloatingPointError, match=r"not finite .* since step \d+, seen at step \d+: the run "
                                                 r"diverged") as error:
        train(config)
    first, seen = map(int, re.search(r"since step (\d+), seen at step (\d+)", str(error.value)).groups())
    assert first <= seen and seen % 5 == 0  # found at the next log step


def test_divergence_in_the_last_steps_before_a_log_step_is_not_missed(tmp_path, cache):
    config = tiny_run(tmp_path, cache, "late", peak_lr=1e6, warmup_steps=1, max_steps=7, log_every_steps=50,
                      val_every_steps=100)
    with pytest.raises(FloatingPointError, match="the run diverged"):
        train(config)
    assert not (tmp_path / "runs" / "late" / "result.json").exists()


def test_length_buckets_repeat_shapes_and_leave_the_loss_unchanged():
    """Bucketed batches take one of a few shapes (length, rows), and padding them, rows of empty
    pairs included, changes neither the loss nor the token count."""
    from attnlab.config import TrainConfig
    from attnlab.data.batching import Buckets, TokenBatchSampler
    from attnlab.model import build_model
    from conftest import tiny_config

    class Split:  # the part of EncodedSplit that collate reads
        from attnlab.data.encoded import EncodedSplit

        collate = EncodedSplit.collate

        def __init__(self, n):
            g = torch.Generator().manual_seed(0)
            lengths = torch.randint(2, 40, (n,), generator=g).tolist()
            self.src = [[5 + (i + j) % 40 for j in range(k)] for i, k in enumerate(lengths)]
            self.tgt = [[5 + (i * j) % 40 for j in range(max(1, k - 3))] for i, k in enumerate(lengths)]

    split = Split(300)
    src_lengths, tgt_lengths = [len(s) + 1 for s in split.src], [len(t) + 1 for t in split.tgt]
    buckets = Buckets(max(src_lengths + tgt_lengths), 4, 256)
    assert len(buckets.boundaries) == 4 and buckets.boundaries[-1] == max(src_lengths + tgt_lengths)
    batches = list(TokenBatchSampler(src_lengths, tgt_lengths, 256, seed=1, buckets=buckets))
    shapes = {tuple(split.collate(b, buckets)["src"].shape) for b in batches}
    assert shapes <= {(buckets.rows(b), b) for b in buckets.boundaries}
    module = TranslationModule(build_model(tiny_config(), 50), TrainConfig(max_steps=1))
    for indices in batches[:5]:
        padded, plain = split.collate(indices, buckets), split.collate(indices)
        assert (padded["index"] >= 0).sum() == len(indices)
        with torch.no_grad():
            a, b = module._losses(padded), module._losses(plain)
        assert torch.allclose(a[0], b[0], atol=1e-5) and int(a[2]) == int(b[2])


@pytest.mark.slow
def test_a_compiled_run_trains_like_an_eager_one(tmp_path, cache):
    """train.compile on CPU (slow there, but it must give the same steps): the same losses."""
    from attnlab.train.history import read_history

    eager = train(tiny_run(tmp_path, cache, "eager", log_every_steps=1, max_steps=4, length_buckets=3))
    compiled = train(tiny_run(tmp_path, cache, "compiled", log_every_steps=1, max_steps=4, length_buckets=3,
                              compile="default"))

    def losses(result):
        return [h["train/loss"] for h in read_history(result["run_dir"]) if "train/loss" in h]

    assert len(losses(eager)) == 4
    assert losses(compiled) == pytest.approx(losses(eager), abs=1e-4)
