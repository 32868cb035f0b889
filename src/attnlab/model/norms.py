"""Normalisations and their placement around a sub-layer.

Placement is a wrapper, not a flag inside every layer:

    PostNorm (paper)                       PreNorm (Xiong et al. 2020, Nguyen & Salazar 2019)

    x ──┬──► Sublayer ─► Dropout ─┐        x ──┬──► Norm ─► Sublayer ─► Dropout ─┐
        └────────────────────────(+)─► Norm    └────────────────────────────────(+)─►

A pre-norm stack also needs one final Norm on its output (see `final_norm`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from attnlab.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * g (Zhang & Sennrich 2019): no mean subtraction, no bias."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.rms_norm(x, (x.size(-1),), self.weight, self.eps)


class ScaleNorm(nn.Module):
    """g * x / ||x|| with one learned scalar g, initialised to sqrt(d_model) (Nguyen & Salazar 2019)."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.tensor(float(d_model) ** 0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


NORMS: dict[str, Callable[[int, float], nn.Module]] = {
    "layernorm": lambda d, eps: nn.LayerNorm(d, eps=eps),
    "rmsnorm": RMSNorm,
    "scalenorm": ScaleNorm,
}


def build_norm(config: ModelConfig) -> nn.Module:
    return NORMS[config.norm](config.d_model, config.norm_eps)


class _Residual(nn.Module):
    """A sub-layer with its residual connection, dropout and norm; subclasses place the norm."""

    def __init__(self, sublayer: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.sublayer = sublayer
        self.norm = build_norm(config)
        self.dropout = nn.Dropout(config.dropout)


class PostNorm(_Residual):
    """x = Norm(x + Dropout(Sublayer(x, ...))): the paper's residual wiring."""

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.norm(x + self.dropout(self.sublayer(x, *args, **kwargs)))


class PreNorm(_Residual):
    """x = x + Dropout(Sublayer(Norm(x), ...)): only the query stream is normalised."""

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return x + self.dropout(self.sublayer(self.norm(x), *args, **kwargs))


PLACEMENTS: dict[str, type[nn.Module]] = {"post": PostNorm, "pre": PreNorm}


def residual(sublayer: nn.Module, config: ModelConfig) -> nn.Module:
    """Wrap a sub-layer in the configured residual + norm placement."""
    return PLACEMENTS[config.norm_placement](sublayer, config)


def final_norm(config: ModelConfig) -> nn.Module:
    """The norm after a whole stack: needed by pre-norm (its residual stream is never
    normalised otherwise), an identity for post-norm (the last sub-layer already normalised)."""
    return build_norm(config) if config.norm_placement == "pre" else nn.Identity()
