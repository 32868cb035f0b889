"""The Transformer and its swappable components."""

from attnlab.model.search import beam_search, greedy_search
from attnlab.model.transformer import DecoderCache, Encoded, Transformer, build_model, count_parameters

__all__ = ["Transformer", "build_model", "count_parameters", "DecoderCache", "Encoded", "greedy_search", "beam_search"]
