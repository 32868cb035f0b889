"""Encoder and decoder layers (section 3.1): sub-layers wrapped in the configured residual/norm."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.config import ModelConfig
from attnlab.model.attention import KVCache, MultiHeadAttention
from attnlab.model.norms import residual
from attnlab.model.positional import NoPosition

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, with d_ff inner units."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.linear1 = nn.Linear(config.d_model, config.d_ff)
        self.linear2 = nn.Linear(config.d_ff, config.d_model)
        self.activation = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, position: NoPosition) -> None:
        super().__init__()
        self.self_attn = residual(MultiHeadAttention(config, position), config)
        self.feed_forward = residual(FeedForward(config), config)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.self_attn(x, mask=mask)
        return self.feed_forward(x)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, position: NoPosition) -> None:
        super().__init__()
        self.self_attn = residual(MultiHeadAttention(config, position), config)
        self.cross_attn = residual(MultiHeadAttention(config), config)  # no positions across languages
        self.feed_forward = residual(FeedForward(config), config)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None,
        memory_mask: Tensor | None,
        cache: tuple[KVCache, KVCache] | None = None,
        offset: int = 0,
    ) -> Tensor:
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x = self.self_attn(x, mask=self_mask, cache=self_cache, offset=offset)
        x = self.cross_attn(x, memory, mask=memory_mask, cache=cross_cache)
        return self.feed_forward(x)
