"""Attention statistics per attention kind, layer and head.

  entropy     -sum_j p_ij log p_ij, averaged over real query positions (nats)
  confidence  max_j p_ij, averaged over real queries (Voita et al. 2019)
  distance    sum_j p_ij |i - j|, averaged over real queries (for cross-attention, i and j are
              positions in different sentences: a measure of how far off the diagonal it looks)
  importance  validation loss with the head masked out minus the loss with every head
              (Michel et al. 2019, masking one head at a time)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.model.transformer import ATTENTION_KINDS, Transformer

STATS = ("entropy", "confidence", "distance")


def head_statistics(weights: Tensor, query_mask: Tensor) -> dict[str, Tensor]:
    """weights: (B, h, T_q, T_k) rows summing to 1; query_mask: (B, T_q) True for real queries.
    Returns entropy, confidence and distance per head, each (h,)."""
    t_q, t_k = weights.shape[-2:]
    q_pos = torch.arange(t_q, device=weights.device, dtype=weights.dtype)
    k_pos = torch.arange(t_k, device=weights.device, dtype=weights.dtype)
    distance = (q_pos[:, None] - k_pos[None, :]).abs()  # (T_q, T_k)
    per_query = {
        "entropy": -(weights * weights.clamp_min(1e-12).log()).sum(-1),  # (B, h, T_q)
        "confidence": weights.max(-1).values,
        "distance": (weights * distance).sum(-1),
    }
    mask = query_mask[:, None, :].to(weights.dtype)  # (B, 1, T_q)
    count = mask.sum() * 1.0
    return {name: (value * mask).sum(dim=(0, 2)) / count for name, value in per_query.items()}


@torch.no_grad()
def attention_statistics(model: Transformer, src: Tensor, tgt_in: Tensor) -> dict[str, Any]:
    """{kind: {stat: [layer][head] floats}} for one batch of real sentences."""
    was_training = model.training
    model.eval()
    _, weights = model(src, tgt_in, return_attention=True)
    model.train(was_training)
    queries = {"encoder_self": src != model.pad_id, "decoder_self": tgt_in != model.pad_id,
               "cross": tgt_in != model.pad_id}
    out: dict[str, Any] = {}
    for kind in ATTENTION_KINDS:
        per_layer = [head_statistics(w.float(), queries[kind]) for w in weights[kind]]
        out[kind] = {stat: [layer[stat].tolist() for layer in per_layer] for stat in STATS}
    return out


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
