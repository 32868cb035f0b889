"""Multi-head attention with d_k and d_v independent of d_model / h (paper Table 3 rows A, B).

    MultiHead(Q, K, V) = Concat(head_1..head_h) W^O,  head_i = softmax(Q W_i^Q (K W_i^K)^T / sqrt(d_k)) V W_i^V

Two paths: `scaled_dot_product_attention` (fast, fused) by default, and an explicit softmax
that keeps the weights when `record_weights` is on (for attention statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnlab.config import ModelConfig
from attnlab.model.positional import NoPosition


@dataclass
class KVCache:
    """Projected keys and values of one attention layer, kept across decoding steps.
    Self-attention appends one step at a time; cross-attention fills it once from the memory."""

    k: Tensor | None = None  # (B, h, S, d_k)
    v: Tensor | None = None  # (B, h, S, d_v)

    def reorder(self, index: Tensor) -> None:
        """Keep the rows `index` (beam search re-ranks hypotheses every step)."""
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class MultiHeadAttention(nn.Module):
    def __init__(self, config: ModelConfig, position: NoPosition | None = None) -> None:
        super().__init__()
        self.n_heads, self.d_k, self.d_v = config.n_heads, config.key_dim, config.value_dim
        # W^Q, W^K, W^V stacked in one matrix (one GEMM for self-attention), like nn.MultiheadAttention.
        self.in_proj = nn.Linear(config.d_model, self.n_heads * (2 * self.d_k + self.d_v))
        self.out_proj = nn.Linear(self.n_heads * self.d_v, config.d_model)
        # The strategy is owned (and moved between devices) by the Transformer; kept out of
        # this module's registry so a learned table is stored once, not once per layer.
        self.__dict__["position"] = position if position is not None else NoPosition()
        self.dropout = config.attention_dropout
        self.record_weights = False
        self.weights: Tensor | None = None  # (B, h, T_q, T_k) of the last call, when recorded
        self.head_mask: Tensor | None = None  # (h,) multiplies each head's output (head importance)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: Tensor, d: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, d).transpose(1, 2)  # (B, h, T, d)

    def _project(self, x: Tensor, memory: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        q_size = self.n_heads * self.d_k
        if memory is None:  # self-attention: one projection of x
            q, k, v = self.in_proj(x).split([q_size, q_size, self.n_heads * self.d_v], dim=-1)
        else:  # cross-attention: queries from x, keys and values from the encoder output
            w, b = self.in_proj.weight, self.in_proj.bias
            q = F.linear(x, w[:q_size], b[:q_size])
            k, v = F.linear(memory, w[q_size:], b[q_size:]).split([q_size, self.n_heads * self.d_v], dim=-1)
        return self._split(q, self.d_k), self._split(k, self.d_k), self._split(v, self.d_v)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        offset: int = 0,
    ) -> Tensor:
        """x: (B, T, d_model) queries; memory: (B, S, d_model) for cross-attention, else None.
        mask: bool, broadcastable to (B, h, T, T_k), True where a query may attend.
        cache: keys/values of earlier steps; offset: position of x[:, 0] (for rope/alibi)."""
        if cache is not None and memory is not None and cache.k is not None:
            q = self._split(F.linear(x, self.in_proj.weight[: self.n_heads * self.d_k],
                                     self.in_proj.bias[: self.n_heads * self.d_k]), self.d_k)
            k, v = cache.k, cache.v
        else:
            q, k, v = self._project(x, memory)
            q, k = self.position.rotate(q, offset), self.position.rotate(k, offset)
            if cache is not None:
                if memory is None and cache.k is not None:
                    k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
                cache.k, cache.v = k, v
        mask = self._with_bias(mask, q, k.size(2), offset)
        dropout = self.dropout if self.training else 0.0
        if self.record_weights:
            out = self._explicit(q, k, v, mask, dropout)
        elif q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
            # On CPU the fused (flash) kernel's bf16 backward is ~4.6x slower than its fp32 one
            # (measured with bench/train_throughput.py); the plain math kernel is faster there.
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, h, T, d_v)
        if self.head_mask is not None:
            out = out * self.head_mask.to(out.dtype)[None, :, None, None]
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_v))

    def _with_bias(self, mask: Tensor | None, q: Tensor, t_k: int, offset: int) -> Tensor | None:
        """Merge a score bias (alibi) with the boolean mask into one additive float mask."""
        bias = self.position.bias(q.size(2), t_k, offset)
        if bias is None:
            return mask
        bias = bias.to(q.dtype).unsqueeze(0)  # (1, h, T, T_k)
        return bias if mask is None else bias.masked_fill(~mask, float("-inf"))

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float) -> Tensor:
        scores = q @ k.transpose(-2, -1) / self.d_k**0.5  # (B, h, T, T_k)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        weights = scores.softmax(dim=-1)
        self.weights = weights.detach()
        return F.dropout(weights, dropout, self.training) @ v
