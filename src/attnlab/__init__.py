"""attnlab: ablation studies of the Transformer from "Attention Is All You Need"."""

__version__ = "0.1.0"
