"""Normalisations and their placement around a sub-layer.

Placement is a wrapper, not a flag inside every layer:

    PostNorm (paper)                       PreNorm (Xiong et al. 2020, Nguyen & Salazar 2019)

    x ──┬──► Sublayer ─► Dropout ─┐        x ──┬──► Norm ─► Sublayer ─► Dropout ─┐
        └────────────────────────(+)─► Norm    └────────────────────────────────(+)─►

A pre-norm stack also needs one final Norm on its output (see `final_norm`). A norm whose
statistics span the batch (BatchNorm) gets the mask of real tokens too (`normalise`).
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


class BatchNorm(nn.Module):
    """Each feature normalised by its mean and variance over the batch's real tokens (Ioffe &
    Szegedy 2015, over tokens as in Shen et al. 2020), running estimates at evaluation. Padding
    never enters the statistics: masked sums, so the step needs no wait for the device. The
    batch means of every training step since the last `spread()` are summed on the device."""

    uses_padding_mask = True

    def __init__(self, d_model: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("running_mean", torch.zeros(d_model))
        self.register_buffer("running_var", torch.ones(d_model))
        # steps, sum of batch means, sum of their squares, per feature
        self.register_buffer("moments", torch.zeros(3, d_model), persistent=False)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """x: (B, T, d); keep: (B, T) True for real tokens (None: every position)."""
        if self.training:
            values = x.float()
            weight = torch.ones_like(values[..., :1]) if keep is None else keep[..., None].to(values.dtype)
            count = weight.sum()
            mean = (values * weight).sum((0, 1)) / count.clamp(min=1)
            var = ((values - mean) ** 2 * weight).sum((0, 1)) / count.clamp(min=1)
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
                self.moments += torch.stack([torch.ones_like(mean), mean, mean * mean])
        else:
            mean, var = self.running_mean, self.running_var
        return ((x.float() - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias).to(x.dtype)

    def spread(self) -> float | None:
        """How much the batch means moved across the training steps since the last call: their
        standard deviation over steps, in units of the running standard deviation, averaged
        over features (None before any step). Resets the sums; reads the device."""
        steps, total, squares = self.moments
        if float(steps[0]) < 2:
            return None
        mean = total / steps
        std = (squares / steps - mean * mean).clamp(min=0).sqrt()
        self.moments.zero_()
        return float((std * torch.rsqrt(self.running_var + self.eps)).mean())


NORMS: dict[str, Callable[[int, float], nn.Module]] = {
    "layernorm": lambda d, eps: nn.LayerNorm(d, eps=eps),
    "rmsnorm": RMSNorm,
    "scalenorm": ScaleNorm,
    "batchnorm": BatchNorm,
}


def build_norm(config: ModelConfig) -> nn.Module:
    return NORMS[config.norm](config.d_model, config.norm_eps)


def normalise(norm: nn.Module, x: Tensor, keep: Tensor | None) -> Tensor:
    """norm(x), with the mask of real tokens for a norm whose statistics span the batch."""
    return norm(x, keep) if getattr(norm, "uses_padding_mask", False) else norm(x)


class _Residual(nn.Module):
    """A sub-layer with its residual connection, dropout and norm; subclasses place the norm."""

    def __init__(self, sublayer: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.sublayer = sublayer
        self.norm = build_norm(config)
        self.dropout = nn.Dropout(config.dropout)


class PostNorm(_Residual):
    """x = Norm(x + Dropout(Sublayer(x, ...))): the paper's residual wiring. `keep`, the mask
    of real tokens, is the norm's; every other argument goes to the sub-layer."""

    def forward(self, x: Tensor, *args: Any, keep: Tensor | None = None, **kwargs: Any) -> Tensor:
        return normalise(self.norm, x + self.dropout(self.sublayer(x, *args, **kwargs)), keep)


class PreNorm(_Residual):
    """x = x + Dropout(Sublayer(Norm(x), ...)): only the query stream is normalised."""

    def forward(self, x: Tensor, *args: Any, keep: Tensor | None = None, **kwargs: Any) -> Tensor:
        return x + self.dropout(self.sublayer(normalise(self.norm, x, keep), *args, **kwargs))


PLACEMENTS: dict[str, type[nn.Module]] = {"post": PostNorm, "pre": PreNorm}


def residual(sublayer: nn.Module, config: ModelConfig) -> nn.Module:
    """Wrap a sub-layer in the configured residual + norm placement."""
    return PLACEMENTS[config.norm_placement](sublayer, config)


def final_norm(config: ModelConfig) -> nn.Module:
    """The norm after a whole stack: needed by pre-norm (its residual stream is never
    normalised otherwise), an identity for post-norm (the last sub-layer already normalised)."""
    return build_norm(config) if config.norm_placement == "pre" else nn.Identity()
