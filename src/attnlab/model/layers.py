"""Encoder and decoder layers (section 3.1): sub-layers wrapped in the configured residual/norm,
and the position-wise feed-forward networks they use.

Each layer lists its attention modules (`attentions`: kind -> module) so the Transformer can
reach them without knowing how the residual wrappers hold them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.config import ModelConfig
from attnlab.model.attention import Attention, KVCache, build_attention
from attnlab.model.norms import residual
from attnlab.model.positional import PositionalEncoding

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


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


def gated_width(d_ff: int) -> int:
    """Inner width of a gated FFN with the parameters of a standard one of width d_ff: three
    matrices instead of two, so 2/3 of it (Shazeer 2020)."""
    return max(1, round(2 * d_ff / 3))


class GatedFeedForward(nn.Module):
    """FFN(x) = (act(x W_1 + b_1) * (x V + c)) W_2 + b_2 (GLU variants, Shazeer 2020: relu gives
    ReGLU, gelu GEGLU, silu SwiGLU), W_1 and V in one matrix."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.inner = gated_width(config.d_ff)
        self.linear1 = nn.Linear(config.d_model, 2 * self.inner)
        self.linear2 = nn.Linear(self.inner, config.d_model)
        self.activation = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.linear1(x).chunk(2, dim=-1)
        return self.linear2(self.dropout(self.activation(gate) * value))


FEED_FORWARDS: dict[str, type[nn.Module]] = {"standard": FeedForward, "gated": GatedFeedForward}


def build_feed_forward(config: ModelConfig) -> nn.Module:
    return FEED_FORWARDS[config.feed_forward](config)


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        attention = build_attention(config)
        self.self_attn = residual(attention, config)
        self.feed_forward = residual(build_feed_forward(config), config)
        self.attentions: dict[str, Attention] = {"encoder_self": attention}

    def forward(self, x: Tensor, mask: Tensor | None, keep: Tensor | None = None,
                position: PositionalEncoding | None = None) -> Tensor:
        """keep: (B, S) True for real tokens (for a norm over the batch)."""
        x = self.self_attn(x, mask=mask, position=position, keep=keep)
        return self.feed_forward(x, keep=keep)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self_attention, cross_attention = build_attention(config), build_attention(config)
        self.self_attn = residual(self_attention, config)
        self.cross_attn = residual(cross_attention, config)  # no positions across languages
        self.feed_forward = residual(build_feed_forward(config), config)
        self.attentions: dict[str, Attention] = {"decoder_self": self_attention, "cross": cross_attention}

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None,
        memory_mask: Tensor | None,
        cache: tuple[KVCache, KVCache] | None = None,
        offset: int = 0,
        keep: Tensor | None = None,
        position: PositionalEncoding | None = None,
    ) -> Tensor:
        self_cache, cross_cache = cache if cache is not None else (None, None)
        x = self.self_attn(x, mask=self_mask, cache=self_cache, offset=offset, position=position, keep=keep)
        x = self.cross_attn(x, memory, mask=memory_mask, cache=cross_cache, keep=keep)
        return self.feed_forward(x, keep=keep)
