"""Attention layers: multi-head attention with d_k and d_v independent of d_model / h (paper
Table 3 rows A, B), grouped key/value heads and a choice of score scale.

    MultiHead(Q, K, V) = Concat(head_1..head_h) W^O,  head_i = softmax(s Q W_i^Q (K W_i^K)^T) V W_i^V

with s = 1/sqrt(d_k) in the paper (`attention_scale`). Two paths: `scaled_dot_product_attention`
(fast, fused) by default, and an explicit softmax that keeps the scores and weights when
`record_weights` is on (for attention statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnlab.config import ModelConfig
from attnlab.model.positional import NoPosition, PositionalEncoding

NO_POSITION = NoPosition()  # cross-attention: no positions across languages


@dataclass
class KVCache:
    """Projected keys and values of one attention layer, kept across decoding steps.
    Self-attention appends one step at a time; cross-attention fills it once from the memory."""

    k: Tensor | None = None  # (B, key/value heads, S, d_k)
    v: Tensor | None = None  # (B, key/value heads, S, d_v)

    def reorder(self, index: Tensor) -> None:
        """Keep the rows `index` (beam search re-ranks hypotheses every step)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class Attention(nn.Module):
    """What the statistics and head-importance code rely on, whatever an attention computes:

      n_heads         query heads (h)
      record_weights  when True, forward keeps `weights` (B, h, T_q, T_k; rows sum to 1) and
                      `scores` (the same shape, before the softmax, -inf where masked) of its call
      head_mask       None, or (h,) multiplying each head's output (head importance)

    forward(x, memory=None, mask=None, cache=None, offset=0, position=None) -> (B, T, d_model)."""

    def __init__(self, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.record_weights = False
        self.weights: Tensor | None = None
        self.scores: Tensor | None = None
        self.head_mask: Tensor | None = None


class MultiHeadAttention(Attention):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.n_heads)
        self.d_k, self.d_v, self.kv_heads = config.key_dim, config.value_dim, config.kv_heads
        self.scale = SCALES[config.attention_scale](self.d_k)
        # W^Q, W^K, W^V stacked in one matrix (one GEMM for self-attention), like nn.MultiheadAttention.
        self.in_proj = nn.Linear(config.d_model, self.n_heads * self.d_k + self.kv_heads * (self.d_k + self.d_v))
        self.out_proj = nn.Linear(self.n_heads * self.d_v, config.d_model)
        self.dropout = config.attention_dropout
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: Tensor, heads: int, d: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, d).transpose(1, 2)  # (B, heads, T, d)

    def _queries(self, x: Tensor) -> Tensor:
        q_size = self.n_heads * self.d_k
        return self._split(F.linear(x, self.in_proj.weight[:q_size], self.in_proj.bias[:q_size]),
                           self.n_heads, self.d_k)

    def _project(self, x: Tensor, memory: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        sizes = [self.n_heads * self.d_k, self.kv_heads * self.d_k, self.kv_heads * self.d_v]
        if memory is None:  # self-attention: one projection of x
            q, k, v = self.in_proj(x).split(sizes, dim=-1)
        else:  # cross-attention: queries from x, keys and values from the encoder output
            w, b = self.in_proj.weight, self.in_proj.bias
            q = F.linear(x, w[: sizes[0]], b[: sizes[0]])
            k, v = F.linear(memory, w[sizes[0]:], b[sizes[0]:]).split(sizes[1:], dim=-1)
        return (self._split(q, self.n_heads, self.d_k), self._split(k, self.kv_heads, self.d_k),
                self._split(v, self.kv_heads, self.d_v))

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        offset: int = 0,
        position: PositionalEncoding | None = None,
    ) -> Tensor:
        """x: (B, T, d_model) queries; memory: (B, S, d_model) for cross-attention, else None.
        mask: bool, broadcastable to (B, h, T, T_k), True where a query may attend.
        cache: keys/values of earlier steps; offset: position of x[:, 0] (for rope/alibi);
        position: the encoding that rotates q/k or biases scores (self-attention)."""
        position = position if position is not None else NO_POSITION
        if cache is not None and memory is not None and cache.k is not None:
            q, k, v = self._queries(x), cache.k, cache.v
        else:
            q, k, v = self._project(x, memory)
            q, k = position.rotate(q, offset), position.rotate(k, offset)
            if cache is not None:
                if memory is None and cache.k is not None:
                    k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
                cache.k, cache.v = k, v
        mask = self._with_bias(mask, position, q, k.size(2), offset)
        dropout = self.dropout if self.training else 0.0
        grouped = self.kv_heads != self.n_heads
        if self.record_weights:
            out = self._explicit(q, k, v, mask, dropout)
        elif q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
            # On CPU the fused (flash) kernel's bf16 backward is ~4.6x slower than its fp32 one
            # (measured with bench/train_throughput.py); the plain math kernel is faster there.
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale,
                                                     enable_gqa=grouped)
        else:  # (B, h, T, d_v)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale,
                                                 enable_gqa=grouped)
        if self.head_mask is not None:
            out = out * self.head_mask.to(out.dtype)[None, :, None, None]
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_v))

    def _with_bias(self, mask: Tensor | None, position: PositionalEncoding, q: Tensor, t_k: int,
                   offset: int) -> Tensor | None:
        """Merge a score bias (alibi) with the boolean mask into one additive float mask."""
        bias = position.bias(q.size(2), t_k, offset)
        if bias is None:
            return mask
        bias = bias.to(q.dtype).unsqueeze(0)  # (1, h, T, T_k)
        return bias if mask is None else bias.masked_fill(~mask, float("-inf"))

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float) -> Tensor:
        group = self.n_heads // self.kv_heads  # query heads i*group..(i+1)*group-1 share key/value head i
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-2, -1) * self.scale  # (B, h, T, T_k)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        weights = scores.softmax(dim=-1)
        self.scores, self.weights = scores.detach(), weights.detach()
        return F.dropout(weights, dropout, self.training) @ v


# What the scores QK^T are multiplied by, given d_k (ModelConfig.attention_scale).
SCALES: dict[str, Callable[[int], float]] = {
    "sqrt_dk": lambda d_k: 1 / math.sqrt(d_k),
    "none": lambda d_k: 1.0,
    "dk": lambda d_k: 1 / d_k,
}

ATTENTIONS: dict[str, type[Attention]] = {"multi_head": MultiHeadAttention}


def build_attention(config: ModelConfig) -> Attention:
    return ATTENTIONS[config.attention](config)
