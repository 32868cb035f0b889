"""The encoder-decoder Transformer (Vaswani et al. 2017, figure 1) with pluggable components."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

from attnlab.config import ModelConfig
from attnlab.model.attention import Attention, KVCache
from attnlab.model.layers import DecoderLayer, EncoderLayer
from attnlab.model.norms import BatchNorm, final_norm, normalise
from attnlab.model.positional import build_positional

ATTENTION_KINDS = ("encoder_self", "decoder_self", "cross")


@dataclass
class DecoderCache:
    """Keys/values of every decoder layer (self, cross) and how many target positions they hold."""

    layers: list[tuple[KVCache, KVCache]]
    offset: int = 0

    def reorder(self, index: Tensor) -> None:
        for self_cache, cross_cache in self.layers:
            self_cache.reorder(index)
            cross_cache.reorder(index)


@dataclass
class Encoded:
    """Encoder output and the mask of real (non-pad) source tokens."""

    memory: Tensor  # (B, S, d_model)
    src_mask: Tensor  # (B, 1, 1, S) bool, True for real tokens
    src_lengths: Tensor = field(default_factory=lambda: torch.empty(0))  # (B,)

    def index_select(self, index: Tensor) -> Encoded:
        return Encoded(self.memory.index_select(0, index), self.src_mask.index_select(0, index),
                       self.src_lengths.index_select(0, index))


def causal_mask(t_q: int, t_k: int, device: torch.device) -> Tensor:
    """(T_q, T_k) bool, True where query i (the last T_q of T_k positions) may see key j."""
    offset = t_k - t_q
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=offset)


class Embedding(nn.Module):
    """Token embedding, optionally scaled by sqrt(d_model) (section 3.4)."""

    def __init__(self, vocab_size: int, config: ModelConfig, pad_id: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab_size, config.d_model) * config.d_model**-0.5)
        with torch.no_grad():
            self.weight[pad_id].zero_()
        self.scale = config.d_model**0.5 if config.scale_embeddings else 1.0

    def forward(self, tokens: Tensor) -> Tensor:
        return nn.functional.embedding(tokens, self.weight) * self.scale


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int = 0, bos_id: int = 2, eos_id: int = 3) -> None:
        super().__init__()
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id={pad_id} is outside the vocabulary of {vocab_size}")
        self.config, self.vocab_size = config, vocab_size
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.tgt_embed = Embedding(vocab_size, config, pad_id)
        self.src_embed = self.tgt_embed if config.tie_embeddings == "all" else Embedding(vocab_size, config, pad_id)
        self.encoder_position = build_positional(config)
        self.decoder_position = build_positional(config)
        self.encoder_layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        # (kind, layer, module) of every attention layer, in ATTENTION_KINDS order per stack; a
        # tuple, not a ModuleList: the modules are registered once, inside their layers.
        self.attention_layers: tuple[tuple[str, int, Attention], ...] = tuple(
            (kind, i, module) for stack in (self.encoder_layers, self.decoder_layers)
            for i, layer in enumerate(stack) for kind, module in layer.attentions.items())
        self.encoder_norm, self.decoder_norm = final_norm(config), final_norm(config)
        self.dropout = nn.Dropout(config.dropout)
        # The pre-softmax projection shares the target embedding unless tie_embeddings="none".
        self.output_proj = None if config.tie_embeddings != "none" else nn.Parameter(
            torch.randn(vocab_size, config.d_model) * config.d_model**-0.5)

    @property
    def output_weight(self) -> Tensor:
        return self.tgt_embed.weight if self.output_proj is None else self.output_proj

    # -- encoder -------------------------------------------------------------------------
    def encode(self, src: Tensor) -> Encoded:
        """src: (B, S) token ids, right-padded with pad_id."""
        keep = src != self.pad_id  # (B, S)
        mask = keep[:, None, None, :]  # (B, 1, 1, S)
        x = self.dropout(self.encoder_position.embed(self.src_embed(src)))
        for layer in self.encoder_layers:
            x = layer(x, mask, keep, self.encoder_position)
        return Encoded(normalise(self.encoder_norm, x, keep), mask, keep.sum(1))

    # -- decoder -------------------------------------------------------------------------
    def new_cache(self) -> DecoderCache:
        return DecoderCache([(KVCache(), KVCache()) for _ in self.decoder_layers])

    def decode(self, tgt_in: Tensor, encoded: Encoded, cache: DecoderCache | None = None) -> Tensor:
        """tgt_in: (B, T) target tokens (shifted right, starting with bos). With a cache, tgt_in
        holds only the new positions and the cache the earlier ones. Returns logits (B, T, V)."""
        t = tgt_in.size(1)
        offset = cache.offset if cache is not None else 0
        keep = None
        if cache is None:  # full sequence: causal and key padding
            keep = tgt_in != self.pad_id
            self_mask = keep[:, None, None, :]
            if self.config.mask_future_in_training or not self.training:
                self_mask = causal_mask(t, t, tgt_in.device) & self_mask
        else:  # generated prefixes hold no padding; one new step sees every cached key
            self_mask = None if t == 1 else causal_mask(t, offset + t, tgt_in.device)
        x = self.dropout(self.decoder_position.embed(self.tgt_embed(tgt_in), offset))
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, encoded.memory, self_mask, encoded.src_mask,
                      cache.layers[i] if cache is not None else None, offset, keep, self.decoder_position)
        if cache is not None:
            cache.offset += t
        return nn.functional.linear(normalise(self.decoder_norm, x, keep), self.output_weight)  # (B, T, V)

    def forward(self, src: Tensor, tgt_in: Tensor, return_attention: bool = False):
        """Logits (B, T, V) for every target position; with return_attention also a dict
        {encoder_self, decoder_self, cross: [per layer (B, h, T_q, T_k)]} of attention weights."""
        if not return_attention:
            return self.decode(tgt_in, self.encode(src))
        with self.recording_attention() as weights:
            logits = self.decode(tgt_in, self.encode(src))
        return logits, weights

    # -- what training logs ----------------------------------------------------------------
    def layer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by layer, for gradient norms per layer: encoder_<i>, decoder_<i>, and
        other (embeddings, position tables, final norms); each shared matrix once."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, parameter in self.named_parameters():
            stack, _, rest = name.partition("_layers.")
            group = f"{stack}_{rest.split('.')[0]}" if rest and stack in ("encoder", "decoder") else "other"
            groups.setdefault(group, []).append(parameter)
        return groups

    def batch_statistics_spread(self) -> float | None:
        """For BatchNorm: how much its batch means moved across the training steps since the
        last call (BatchNorm.spread), averaged over every BatchNorm; None without any. Reads
        the device."""
        spreads = [s for m in self.modules() if isinstance(m, BatchNorm) and (s := m.spread()) is not None]
        return sum(spreads) / len(spreads) if spreads else None

    # -- attention weights ---------------------------------------------------------------
    def attention_modules(self) -> Iterator[tuple[str, int, Attention]]:
        """(kind, layer index, module) for every attention layer."""
        yield from self.attention_layers

    @contextmanager
    def recording_attention(self) -> Iterator[dict[str, list[Tensor]]]:
        """Switch every attention layer to the explicit path; the yielded dict is filled on exit."""
        weights: dict[str, list[Tensor]] = {kind: [] for kind in ATTENTION_KINDS}
        for _, _, module in self.attention_layers:
            module.record_weights, module.weights = True, None
        try:
            yield weights
        finally:
            for kind, _, module in self.attention_layers:
                if module.weights is not None:
                    weights[kind].append(module.weights)
                module.record_weights, module.weights, module.scores = False, None, None


def build_model(config: ModelConfig, vocab_size: int, pad_id: int = 0, bos_id: int = 2, eos_id: int = 3) -> Transformer:
    """The model for `config` over a joint vocabulary of `vocab_size` tokens."""
    return Transformer(config, vocab_size, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared matrix counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
