"""The paper's learning-rate schedule (section 5.3):

    lrate = scale * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)

linear warmup, then decay with the inverse square root of the step. `scale` is 1 in the paper;
small data and small batches usually need another (set it directly or by the peak value).
Without the ramp (`ramp=False`) the rate holds its peak until warmup_steps and then decays
the same way: the warm-up ablation, everything else kept.
"""

from __future__ import annotations

import torch


def noam_lr(step: int, d_model: int, warmup_steps: int, scale: float = 1.0, ramp: bool = True) -> float:
    step = max(step, 1)
    rising = step * warmup_steps**-1.5 if ramp else warmup_steps**-0.5
    return scale * d_model**-0.5 * min(step**-0.5, rising)


def scale_for_peak(peak_lr: float, d_model: int, warmup_steps: int) -> float:
    """The scale at which the schedule reaches `peak_lr` at the end of warmup."""
    return peak_lr / noam_lr(warmup_steps, d_model, warmup_steps)


def noam_scheduler(optimizer: torch.optim.Optimizer, d_model: int, warmup_steps: int,
                   scale: float = 1.0, ramp: bool = True) -> torch.optim.lr_scheduler.LambdaLR:
    """Multiplies the optimizer's base lr (set it to 1.0) by the schedule; step 0 is the first update."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lambda i: noam_lr(i + 1, d_model, warmup_steps, scale, ramp))
