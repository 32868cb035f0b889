"""Greedy and beam search, batched over sentences, with the key/value cache.

Score of a finished hypothesis y (GNMT, Wu et al. 2016; tensor2tensor's form):
    log P(y | x) / lp(|y|),   lp(n) = ((5 + n) / 6) ** alpha,   |y| counts the final eos.
At max length (max_len_a * source length + max_len_b) eos is forced. A sentence is done when
it has `beam_size` finished hypotheses (fairseq's rule), so beam 1 is exactly greedy search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.model.transformer import DecoderCache, Encoded, Transformer


@dataclass
class Hypotheses:
    """Best hypothesis per sentence: tokens without bos/eos, length-normalised score, log P."""

    tokens: list[list[int]]
    scores: list[float]
    log_probs: list[float]


def length_penalty(length: Tensor | float, alpha: float) -> Tensor | float:
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(encoded: Encoded, max_len_a: float, max_len_b: int) -> Tensor:
    """(B,) most tokens (eos included) each sentence may generate."""
    return (max_len_a * encoded.src_lengths.float()).long() + max_len_b


def _next_log_probs(model: Transformer, tokens: Tensor, encoded: Encoded, cache: DecoderCache | None,
                    force_eos: Tensor) -> Tensor:
    """(N, V) log-probabilities of the next token; pad and bos banned, eos forced where asked."""
    step_in = tokens[:, -1:] if cache is not None else tokens  # without a cache: rerun the prefix
    logits = model.decode(step_in, encoded, cache)[:, -1].float()
    log_probs = logits.log_softmax(dim=-1)
    log_probs[:, [model.pad_id, model.bos_id]] = float("-inf")
    if force_eos.any():
        eos = log_probs[force_eos, model.eos_id].clone()
        log_probs[force_eos] = float("-inf")
        log_probs[force_eos, model.eos_id] = eos
    return log_probs


@torch.no_grad()
def greedy_search(model: Transformer, src: Tensor, length_penalty_alpha: float = 0.6, max_len_a: float = 1.0,
                  max_len_b: int = 50, use_cache: bool = True) -> Hypotheses:
    """Pick the most probable token at every step. src: (B, S) right-padded token ids."""
    encoded = model.encode(src)
    b = src.size(0)
    limit = max_lengths(encoded, max_len_a, max_len_b)
    cache = model.new_cache() if use_cache else None
    tokens = torch.full((b, 1), model.bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(b, dtype=torch.bool, device=src.device)
    log_prob = torch.zeros(b, device=src.device)
    length = torch.zeros(b, dtype=torch.long, device=src.device)
    for step in range(int(limit.max())):
        log_probs = _next_log_probs(model, tokens, encoded, cache, force_eos=limit <= step + 1)
        best_log_prob, best = log_probs.max(dim=-1)
        best = best.masked_fill(finished, model.pad_id)
        log_prob += best_log_prob.masked_fill(finished, 0.0)
        length += (~finished).long()
        finished |= best == model.eos_id
        tokens = torch.cat([tokens, best[:, None]], dim=1)
        if finished.all():
            break
    out = [row[1 : 1 + n - 1].tolist() for row, n in zip(tokens, length.tolist())]  # drop bos and eos
    scores = log_prob / length_penalty(length.float(), length_penalty_alpha)
    return Hypotheses(out, scores.tolist(), log_prob.tolist())


@torch.no_grad()
def beam_search(model: Transformer, src: Tensor, beam_size: int = 4, length_penalty_alpha: float = 0.6,
                max_len_a: float = 1.0, max_len_b: int = 50, use_cache: bool = True) -> Hypotheses:
    """Keep the `beam_size` best prefixes per sentence. src: (B, S) right-padded token ids.
    Rows are (sentence, beam) pairs; finished sentences leave the batch."""
    k, b, device = beam_size, src.size(0), src.device
    encoded = model.encode(src)
    limit = max_lengths(encoded, max_len_a, max_len_b)
    sentence = torch.arange(b, device=device)  # original index of each active sentence
    rows = sentence.repeat_interleave(k)  # (B*K,)
    encoded, limit_rows = encoded.index_select(rows), limit[rows]
    cache = model.new_cache() if use_cache else None
    tokens = torch.full((b * k, 1), model.bos_id, dtype=torch.long, device=device)
    # Only beam 0 is alive at first, so the K beams do not start as K copies.
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, float, list[int]]]] = [[] for _ in range(b)]

    for step in range(int(limit.max())):
        n_active = sentence.numel()
        log_probs = _next_log_probs(model, tokens, encoded, cache, force_eos=limit_rows <= step + 1)
        vocab = log_probs.size(-1)
        candidates = (scores.view(-1, 1) + log_probs).view(n_active, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)  # (B, 2K)
        beam, token = top_index // vocab, top_index % vocab
        is_eos = token == model.eos_id
        rank = torch.arange(top_scores.size(1), device=device).expand_as(top_scores)

        # eos among the K best candidates ends a hypothesis.
        ends = is_eos & (rank < k) & torch.isfinite(top_scores)
        normaliser = float(length_penalty(step + 1.0, length_penalty_alpha))
        for i, j in ends.nonzero().tolist():
            prefix = tokens[i * k + beam[i, j]].tolist()[1:]
            finished[int(sentence[i])].append((float(top_scores[i, j]) / normaliser, float(top_scores[i, j]), prefix))

        # The K best candidates that are not eos go on (eos ones sort last and stay dead).
        keep = (rank + is_eos.long() * top_scores.size(1)).argsort(dim=-1)[:, :k]  # (B, K)
        scores = top_scores.gather(1, keep).masked_fill(is_eos.gather(1, keep), float("-inf"))
        source_row = (torch.arange(n_active, device=device)[:, None] * k + beam.gather(1, keep)).view(-1)
        tokens = torch.cat([tokens[source_row], token.gather(1, keep).view(-1, 1)], dim=1)

        done = torch.tensor([len(finished[int(s)]) >= k for s in sentence], device=device)
        done |= ~torch.isfinite(scores).any(dim=1)
        active = (~done).nonzero().view(-1)
        if active.numel() == 0:
            break
        # Reorder the surviving rows in one gather: beam reranking and dropping done sentences.
        row_index = source_row.view(n_active, k)[active].view(-1)
        keep_rows = (active[:, None] * k + torch.arange(k, device=device)).view(-1)
        sentence, scores, tokens = sentence[active], scores[active], tokens[keep_rows]
        limit_rows, encoded = limit_rows[keep_rows], encoded.index_select(row_index)
        if cache is not None:
            cache.reorder(row_index)

    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]
    return Hypotheses([h[2] for h in best], [h[0] for h in best], [h[1] for h in best])
