"""Schedule, attention statistics on hand-made matrices, head importance, checkpoint averaging."""

import math

import pytest
import torch

from attnlab.analysis.attention import head_importance, head_statistics
from attnlab.model import build_model
from attnlab.train.schedule import noam_lr, noam_scheduler, scale_for_peak
from conftest import tiny_config


def test_noam_schedule_is_the_paper_formula():
    d, warmup = 512, 4000
    for step in (1, 100, 4000, 10_000, 100_000):
        assert noam_lr(step, d, warmup) == pytest.approx(d**-0.5 * min(step**-0.5, step * warmup**-1.5))
    assert noam_lr(4000, d, warmup) == pytest.approx(max(noam_lr(s, d, warmup) for s in range(1, 20_000, 7)), rel=1e-3)
    scale = scale_for_peak(1.5e-3, 256, 400)
    assert noam_lr(400, 256, 400, scale) == pytest.approx(1.5e-3)
    # Without the ramp: the peak from step 1 to the end of warm-up, then the same decay.
    assert [noam_lr(s, 256, 400, scale, ramp=False) for s in (1, 200, 400)] == pytest.approx([1.5e-3] * 3)
    assert noam_lr(1600, 256, 400, scale, ramp=False) == pytest.approx(noam_lr(1600, 256, 400, scale))


def test_scheduler_sets_the_rate_of_every_update():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1.0)
    scheduler = noam_scheduler(optimizer, 512, 10)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([noam_lr(s, 512, 10) for s in range(1, 21)])


def test_statistics_of_uniform_attention():
    weights = torch.full((2, 3, 5, 4), 0.25)  # every query spreads evenly over 4 keys
    stats = head_statistics(weights, torch.ones(2, 5, dtype=torch.bool))
    assert torch.allclose(stats["entropy"], torch.full((3,), math.log(4)))
    assert torch.allclose(stats["confidence"], torch.full((3,), 0.25))
    # mean over queries i=0..4 of mean_j |i - j|, j = 0..3
    expected = sum(sum(abs(i - j) for j in range(4)) / 4 for i in range(5)) / 5
    assert torch.allclose(stats["distance"], torch.full((3,), expected))


def test_statistics_of_one_hot_attention_and_query_masking():
    t = 6
    diagonal = torch.eye(t)[None, None]  # each query looks at itself
    first = torch.zeros(1, 1, t, t)
    first[..., 0] = 1.0  # each query looks at position 0: distance i
    weights = torch.cat([diagonal, first], dim=1)  # 2 heads
    real = torch.tensor([[True] * 4 + [False] * 2])  # the last two queries are padding
    stats = head_statistics(weights, real)
    assert stats["entropy"].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert stats["confidence"].tolist() == pytest.approx([1.0, 1.0])
    assert stats["distance"].tolist() == pytest.approx([0.0, (0 + 1 + 2 + 3) / 4])


def test_a_dead_head_has_zero_importance_and_live_heads_do_not():
    model = build_model(tiny_config(n_layers=1), 30).eval()
    attn = model.encoder_layers[0].self_attn.sublayer
    with torch.no_grad():  # head 2's values never reach the output
        attn.out_proj.weight[:, 2 * attn.d_v : 3 * attn.d_v] = 0.0
    src = torch.randint(4, 30, (4, 7))
    tgt_in = torch.randint(4, 30, (4, 5))
    tgt_out = torch.randint(4, 30, (4, 5))
    importance = head_importance(model, src, tgt_in, tgt_out)
    assert importance["encoder_self"][0][2] == pytest.approx(0.0, abs=1e-6)
    assert all(abs(v) > 1e-6 for h, v in enumerate(importance["encoder_self"][0]) if h != 2)
    assert len(importance["cross"]) == 1 and len(importance["decoder_self"][0]) == 4
    assert all(m.head_mask is None for _, _, m in model.attention_modules())
