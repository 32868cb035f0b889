"""Attention statistics per attention kind, layer and head.

  entropy     -sum_j p_ij log p_ij, averaged over real query positions (nats)
  confidence  max_j p_ij, averaged over real queries (Voita et al. 2019)
  distance    sum_j p_ij |i - j|, averaged over real queries (for cross-attention, i and j are
              positions in different sentences: a measure of how far off the diagonal it looks)
  score_std   standard deviation of the pre-softmax scores over the keys a query may attend,
              averaged over real queries: large scores saturate the softmax (the reason for
              dividing by sqrt(d_k), section 3.2.1)
  saturation  share of real queries whose largest weight exceeds SATURATED (a near one-hot row,
              whose softmax gradient nearly vanishes)
  importance  validation loss with the head masked out minus the loss with every head
              (Michel et al. 2019, masking one head at a time)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.analysis import SATURATED, STATS
from attnlab.model.transformer import ATTENTION_KINDS, Transformer


def head_statistics(weights: Tensor, query_mask: Tensor, scores: Tensor | None = None) -> dict[str, Tensor]:
    """weights: (B, h, T_q, T_k) rows summing to 1; query_mask: (B, T_q) True for real queries;
    scores: the pre-softmax scores (-inf where masked), for score_std (NaN without them).
    Returns every statistic of STATS per head, each (h,)."""
    t_q, t_k = weights.shape[-2:]
    q_pos = torch.arange(t_q, device=weights.device, dtype=weights.dtype)
    k_pos = torch.arange(t_k, device=weights.device, dtype=weights.dtype)
    distance = (q_pos[:, None] - k_pos[None, :]).abs()  # (T_q, T_k)
    per_query = {
        "entropy": -(weights * weights.clamp_min(1e-12).log()).sum(-1),  # (B, h, T_q)
        "confidence": weights.max(-1).values,
        "distance": (weights * distance).sum(-1),
        "saturation": (weights.max(-1).values > SATURATED).to(weights.dtype),
        "score_std": _score_std(scores) if scores is not None else torch.full_like(weights[..., 0], float("nan")),
    }
    mask = query_mask[:, None, :].to(weights.dtype)  # (B, 1, T_q)
    count = mask.sum() * 1.0
    return {name: (value * mask).sum(dim=(0, 2)) / count for name, value in per_query.items()}


def _score_std(scores: Tensor) -> Tensor:
    """(B, h, T_q): the standard deviation of each query's finite scores."""
    finite = torch.isfinite(scores)
    n = finite.sum(-1).clamp(min=1)
    values = torch.where(finite, scores, 0.0)
    mean = values.sum(-1, keepdim=True) / n[..., None]
    return (torch.where(finite, (scores - mean) ** 2, 0.0).sum(-1) / n).sqrt()


@torch.no_grad()
def attention_statistics(model: Transformer, src: Tensor, tgt_in: Tensor) -> dict[str, Any]:
    """{kind: {stat: [layer][head] floats}} for one batch of real sentences."""
    was_training = model.training
    model.eval()
    per_layer: dict[str, list[dict[str, Tensor]]] = {kind: [] for kind in ATTENTION_KINDS}
    queries = {"encoder_self": src != model.pad_id, "decoder_self": tgt_in != model.pad_id,
               "cross": tgt_in != model.pad_id}
    for _, _, module in model.attention_modules():
        module.record_weights = True
    try:
        model(src, tgt_in)
        for kind, _, module in model.attention_modules():
            per_layer[kind].append(head_statistics(module.weights.float(), queries[kind], module.scores.float()))
    finally:
        for _, _, module in model.attention_modules():
            module.record_weights, module.weights, module.scores = False, None, None
        model.train(was_training)
    return {kind: {stat: [layer[stat].tolist() for layer in layers] for stat in STATS}
            for kind, layers in per_layer.items()}


def _loss(model: Transformer, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> float:
    logits = model(src, tgt_in)
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=model.pad_id).item()


@torch.no_grad()
def head_importance(model: Transformer, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> dict[str, Any]:
    """{"base_loss": float, kind: [layer][head] loss increase when that head alone is masked}."""
    was_training = model.training
    model.eval()
    base = _loss(model, src, tgt_in, tgt_out)
    out: dict[str, Any] = {"base_loss": base, **{kind: [] for kind in ATTENTION_KINDS}}
    for kind, _, module in model.attention_modules():
        row = []
        for head in range(module.n_heads):
            module.head_mask = torch.ones(module.n_heads, device=src.device)
            module.head_mask[head] = 0.0
            row.append(_loss(model, src, tgt_in, tgt_out) - base)
        module.head_mask = None
        out[kind].append(row)
    model.train(was_training)
    return out


def summarise(stats: dict[str, Any], importance: dict[str, Any] | None, top: int = 5) -> dict[str, Any]:
    """Means per kind and the heads whose masking costs the most (for result.json and reports)."""
    summary: dict[str, Any] = {}
    for kind in ATTENTION_KINDS:
        summary[kind] = {stat: float(torch.tensor(stats[kind][stat]).mean()) for stat in STATS}
    if importance is not None:
        ranked = sorted(((value, kind, layer, head) for kind in ATTENTION_KINDS
                         for layer, row in enumerate(importance[kind]) for head, value in enumerate(row)), reverse=True)
        summary["most_important_heads"] = [
            {"kind": kind, "layer": layer, "head": head, "loss_increase": value}
            for value, kind, layer, head in ranked[:top]]
    return summary


def rows(stats: dict[str, Any], importance: dict[str, Any] | None) -> list[list[Any]]:
    """One row per (kind, layer, head): a tidy table for W&B and CSV."""
    table = []
    for kind in ATTENTION_KINDS:
        for layer, entropies in enumerate(stats[kind]["entropy"]):
            for head in range(len(entropies)):
                values = [stats[kind][stat][layer][head] for stat in STATS]
                imp = importance[kind][layer][head] if importance is not None else None
                table.append([kind, layer, head, *values, imp])
    return table


TABLE_COLUMNS = ["kind", "layer", "head", *STATS, "importance"]
