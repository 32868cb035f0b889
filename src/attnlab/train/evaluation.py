"""Translating a split and scoring it with sacreBLEU (BLEU and chrF, with their signatures)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sacrebleu.metrics import BLEU, CHRF

from attnlab.config import DecodeConfig
from attnlab.data.batching import TokenBatchSampler
from attnlab.data.datamodule import EncodedSplit
from attnlab.data.tokenizer import Vocabulary
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


def search(model: Transformer, src: torch.Tensor, decode: DecodeConfig) -> list[list[int]]:
    kwargs = dict(length_penalty_alpha=decode.length_penalty, max_len_a=decode.max_len_a, max_len_b=decode.max_len_b)
    if decode.beam_size == 1:
        return greedy_search(model, src, **kwargs).tokens
    return beam_search(model, src, beam_size=decode.beam_size, **kwargs).tokens


@torch.no_grad()
def translate(model: Transformer, split: EncodedSplit, vocab: Vocabulary, decode: DecodeConfig,
              max_tokens: int = 4096, indices: list[int] | None = None) -> list[str]:
    """Hypotheses for every sentence of `split` (or `indices`), in their original order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    wanted = list(range(len(split))) if indices is None else list(indices)
    # Beam search holds beam_size rows per sentence: shrink the batch to keep memory flat.
    budget = max(max_tokens // decode.beam_size, max(split.src_lengths[i] for i in wanted))
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
