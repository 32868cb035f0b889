"""Translating a split and scoring it with sacreBLEU (BLEU and chrF, with their signatures)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from sacrebleu.metrics import BLEU, CHRF

from attnlab.config import DecodeConfig
from attnlab.data.batching import TokenBatchSampler
from attnlab.data.encoded import EncodedSplit
from attnlab.data.tokenizer import Vocabulary
from attnlab.errors import DataError
from attnlab.model import Transformer, beam_search, greedy_search


@dataclass
class Scores:
    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str

    def as_dict(self) -> dict:
        return {"bleu": self.bleu, "chrf": self.chrf, "sacrebleu_signature": self.bleu_signature,
                "chrf_signature": self.chrf_signature}


def score(hypotheses: list[str], references: list[str]) -> Scores:
    """Corpus BLEU (13a tokenization, cased) and chrF on detokenized text."""
    bleu, chrf = BLEU(), CHRF()
    return Scores(bleu.corpus_score(hypotheses, [references]).score, chrf.corpus_score(hypotheses, [references]).score,
                  str(bleu.get_signature()), str(chrf.get_signature()))


class ValidationScorer:
    """BLEU/chrF of validation hypotheses given as token ids by dataset index (picklable, so it
    travels to spawned DDP workers)."""

    def __init__(self, vocab: Vocabulary, references: list[str]) -> None:
        self.vocab, self.references = vocab, references

    def __call__(self, hyps: dict[int, list[int]]) -> dict[str, float]:
        order = sorted(hyps)
        s = score(self.vocab.decode([hyps[i] for i in order]), [self.references[i] for i in order])
        return {"bleu": s.bleu, "chrf": s.chrf}


def position_limit(model: Transformer) -> int | None:
    """Most positions one sequence may take: the rows of a learned position table. Every other
    encoding (sinusoids grow on demand, rope, alibi, none) has no limit."""
    return model.config.max_positions if model.config.positional == "learned" else None


def check_lengths(model: Transformer, split: EncodedSplit, where: str | None = None,
                  indices: list[int] | None = None, targets: bool = False) -> None:
    """A DataError naming the first line (and a few more) too long for the model's position
    table, before any decoding starts. `where` defaults to the split's file (or its name);
    `targets` checks the target side too, as training and the validation loss would need."""
    limit = position_limit(model)
    if limit is None:
        return
    lengths = np.maximum(split.src_lengths, split.tgt_lengths) if targets else np.asarray(split.src_lengths)
    rows = np.arange(len(split)) if indices is None else np.asarray(indices, dtype=np.int64)
    too_long = rows[lengths[rows] > limit].tolist()  # vectorised: a training split has millions
    if too_long:
        first = too_long[0]
        where = where or ",".join(split.files[: 2 if targets else 1]) or split.name
        raise DataError(f"{where}: line {split.line_number(first)} is {_length(split, first, targets)} tokens long "
                        f"(end-of-sentence included), more than the model's learned position table holds "
                        f"(model.max_positions={limit}); shorten or split it{_others(split, too_long[1:])}")


def _length(split: EncodedSplit, i: int, targets: bool) -> int:
    return max(split.src_lengths[i], split.tgt_lengths[i]) if targets else split.src_lengths[i]


def _others(split: EncodedSplit, rows: list[int]) -> str:
    """A few line numbers of the other offenders: " (2 more too long: lines 5, 9)"."""
    if not rows:
        return ""
    numbers = ", ".join(str(split.line_number(i)) for i in rows[:5]) + (", ..." if len(rows) > 5 else "")
    return f" ({len(rows)} more too long: line{'s' if len(rows) > 1 else ''} {numbers})"


def _max_lengths(src: torch.Tensor, pad_id: int, decode: DecodeConfig) -> torch.Tensor:
    """(B,) output length limits as model.search computes them (eos included)."""
    return (decode.max_len_a * (src != pad_id).sum(1).float()).long() + decode.max_len_b


def _search(model: Transformer, src: torch.Tensor, decode: DecodeConfig) -> list[list[int]]:
    kwargs = dict(length_penalty_alpha=decode.length_penalty, max_len_a=decode.max_len_a, max_len_b=decode.max_len_b)
    if decode.beam_size == 1:
        return greedy_search(model, src, **kwargs).tokens
    return beam_search(model, src, beam_size=decode.beam_size, **kwargs).tokens


def search(model: Transformer, src: torch.Tensor, decode: DecodeConfig) -> list[list[int]]:
    """Best hypothesis per row of src. With a learned position table an output may not outgrow
    it: rows whose max_len_a * len + max_len_b exceeds the table are searched apart with their
    limit set to the table's size (max_len_a=0, max_len_b=size), the others unchanged."""
    limit = position_limit(model)
    if limit is None:
        return _search(model, src, decode)
    capped = _max_lengths(src, model.pad_id, decode) > limit
    if not capped.any():
        return _search(model, src, decode)
    at_limit = dataclasses.replace(decode, max_len_a=0.0, max_len_b=limit)
    if capped.all():
        return _search(model, src, at_limit)
    out: list[list[int]] = [[] for _ in range(src.size(0))]
    for rows, settings in ((capped.nonzero().flatten(), at_limit), ((~capped).nonzero().flatten(), decode)):
        for row, tokens in zip(rows.tolist(), _search(model, src[rows], settings)):
            out[row] = tokens
    return out


@torch.no_grad()
def translate(model: Transformer, split: EncodedSplit, vocab: Vocabulary, decode: DecodeConfig,
              max_tokens: int = 4096, indices: list[int] | None = None) -> list[str]:
    """Hypotheses for every sentence of `split` (or `indices`), in their original order. A
    source longer than a learned position table is a DataError before any decoding. Batches
    hold `decode.max_tokens` (else `max_tokens`) source tokens, the beam's copies included."""
    wanted = list(range(len(split))) if indices is None else list(indices)
    if not wanted:
        return []
    check_lengths(model, split, indices=wanted)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # Beam search holds beam_size rows per sentence: shrink the batch to keep memory flat.
    budget = max((decode.max_tokens or max_tokens) // decode.beam_size, max(split.src_lengths[i] for i in wanted))
    sampler = TokenBatchSampler([split.src_lengths[i] for i in wanted], [split.src_lengths[i] for i in wanted],
                                budget, shuffle=False)
    out: dict[int, str] = {}
    for batch in sampler:
        rows = [wanted[j] for j in batch]
        src = split.collate(rows)["src"].to(device)
        for row, text in zip(rows, vocab.decode(search(model, src, decode))):
            out[row] = text
    model.train(was_training)
    return [out[i] for i in wanted]
