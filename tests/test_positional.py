import math

import torch

from attnlab.model.positional import ALiBi, Rotary, alibi_slopes, sinusoid_table
from conftest import tiny_config


def test_sinusoid_table_is_the_paper_formula():
    table = sinusoid_table(50, 16)
    for pos in range(50):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert math.isclose(table[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)


def test_alibi_slopes_match_the_reference_construction():
    # Press et al. 2022: for 8 heads the slopes are 1/2, 1/4, ..., 1/256.
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # Not a power of two (6): the 4-head slopes, then every other slope of the 8-head sequence.
    four = [2.0 ** (-2 * (i + 1)) for i in range(4)]
    eight = [2.0 ** -(i + 1) for i in range(8)]
    assert torch.allclose(alibi_slopes(6), torch.tensor(four + eight[0::2][:2]))


def test_alibi_bias_is_minus_slope_times_distance():
    alibi = ALiBi(tiny_config(n_heads=4))
    bias = alibi.bias(3, 5, offset=2)  # queries at positions 2, 3, 4
    slopes = alibi_slopes(4)
    for h in range(4):
        for i in range(3):
            for j in range(5):
                assert math.isclose(bias[h, i, j].item(), -slopes[h].item() * abs(i + 2 - j), abs_tol=1e-6)


def test_rope_matches_complex_rotation():
    rope = Rotary(tiny_config(d_model=32, n_heads=2))  # d_k = 16
    x = torch.randn(2, 2, 5, 16)
    out = rope.rotate(x, offset=3)
    # Reference: pairs (x_2i, x_2i+1) as complex numbers times e^{i * pos * theta_i}.
    theta = torch.tensor([10000 ** (-2 * i / 16) for i in range(8)], dtype=torch.float64)
    pos = torch.arange(3, 8, dtype=torch.float64)
    z = torch.complex(x[..., 0::2].double(), x[..., 1::2].double())
    ref = z * torch.polar(torch.ones(5, 8, dtype=torch.float64), pos[:, None] * theta)
    assert torch.allclose(out[..., 0::2].double(), ref.real, atol=1e-5)
    assert torch.allclose(out[..., 1::2].double(), ref.imag, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    rope = Rotary(tiny_config())
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    near = (rope.rotate(q, 4) * rope.rotate(k, 1)).sum()
    far = (rope.rotate(q, 104) * rope.rotate(k, 101)).sum()
    assert torch.allclose(near, far, atol=1e-4)
    assert not torch.allclose(near, (rope.rotate(q, 4) * rope.rotate(k, 2)).sum(), atol=1e-4)
