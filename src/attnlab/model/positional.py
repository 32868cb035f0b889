"""Positional encodings: one per encoder/decoder, owned by the Transformer and handed to its
self-attention layers at each call (so a learned table is one parameter, stored once).

Every encoding has three hooks (PositionalEncoding), each a no-op by default, so attention
never needs to know which encoding it got:
  embed(x, offset)         add something to the embeddings        (sinusoidal, learned)
  rotate(x, offset)        rotate query/key vectors                (rope)
  bias(t_q, t_k, offset)   an additive bias on attention scores    (alibi)
`offset` is the position of the first query (non-zero during incremental decoding).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from attnlab.config import ModelConfig


class PositionalEncoding(nn.Module):
    """The interface: the three hooks, each a no-op here."""

    def embed(self, x: Tensor, offset: int = 0) -> Tensor:
        return x

    def rotate(self, x: Tensor, offset: int = 0) -> Tensor:
        return x

    def bias(self, t_q: int, t_k: int, offset: int = 0) -> Tensor | None:
        return None


class NoPosition(PositionalEncoding):
    """No position information at all (the model sees a bag of tokens, the decoder's mask aside)."""


def sinusoid_table(n_positions: int, d_model: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...), as in section 3.5."""
    position = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)  # (P, 1)
    inv_freq = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d/2,)
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()


class Sinusoidal(PositionalEncoding):
    """The paper's fixed sinusoids, added to the (scaled) embeddings; grows on demand."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.register_buffer("table", sinusoid_table(config.max_positions, config.d_model), persistent=False)

    def embed(self, x: Tensor, offset: int = 0) -> Tensor:
        end = offset + x.size(1)
        if end > self.table.size(0):
            self.table = sinusoid_table(2 * end, self.d_model).to(self.table.device)
        return x + self.table[offset:end].to(x.dtype)


class Learned(PositionalEncoding):
    """A learned position embedding table (Table 3 row E, after Gehring et al. 2017)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.table = nn.Embedding(config.max_positions, config.d_model)
        nn.init.normal_(self.table.weight, std=config.d_model**-0.5)

    def embed(self, x: Tensor, offset: int = 0) -> Tensor:
        end = offset + x.size(1)
        if end > self.table.num_embeddings:
            raise ValueError(
                f"sequence of {end} positions exceeds max_positions={self.table.num_embeddings} "
                "of the learned position table; raise ModelConfig.max_positions"
            )
        return x + self.table.weight[offset:end].to(x.dtype)


class Rotary(PositionalEncoding):
    """RoPE (Su et al. 2021): rotate each pair (x_2i, x_2i+1) of q and k by pos * theta_i,
    theta_i = 10000^(-2i/d_k), so q.k depends only on the relative position."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d_k = config.key_dim
        self.register_buffer(
            "inv_freq", torch.pow(10000.0, -torch.arange(0, d_k, 2, dtype=torch.float32) / d_k), persistent=False
        )

    def rotate(self, x: Tensor, offset: int = 0) -> Tensor:
        # x: (B, h, T, d_k)
        t = x.size(-2)
        pos = torch.arange(offset, offset + t, device=x.device, dtype=torch.float32)
        angle = torch.outer(pos, self.inv_freq)  # (T, d_k/2)
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        even, odd = x[..., 0::2], x[..., 1::2]  # (B, h, T, d_k/2)
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


def alibi_slopes(n_heads: int) -> Tensor:
    """Head slopes of ALiBi (Press et al. 2022): the geometric sequence 2^(-8/n), 2^(-16/n), ...
    for a power of two; otherwise those of the nearest lower power of two, then every other
    slope of the next power of two."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    lower = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes)


class ALiBi(PositionalEncoding):
    """Attention with Linear Biases: score(i, j) -= slope_h * |i - j|. Symmetric, so the same
    bias serves the bidirectional encoder and (under its causal mask) the decoder."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(config.n_heads), persistent=False)

    def bias(self, t_q: int, t_k: int, offset: int = 0) -> Tensor:
        q_pos = torch.arange(offset, offset + t_q, device=self.slopes.device)
        k_pos = torch.arange(t_k, device=self.slopes.device)
        distance = (q_pos[:, None] - k_pos[None, :]).abs().float()  # (T_q, T_k)
        return -self.slopes[:, None, None] * distance  # (h, T_q, T_k)


POSITIONAL: dict[str, type[PositionalEncoding]] = {
    "sinusoidal": Sinusoidal,
    "learned": Learned,
    "rope": Rotary,
    "alibi": ALiBi,
    "none": NoPosition,
}


def build_positional(config: ModelConfig) -> PositionalEncoding:
    cls = POSITIONAL[config.positional]
    return cls() if cls is NoPosition else cls(config)
