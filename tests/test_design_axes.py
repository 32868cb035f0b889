"""The axes behind the paper's design choices (issue 14): BatchNorm, the score scale, grouped
key/value heads, the gated feed-forward network, the unmasked decoder; their registries and
the statistics that show why each choice matters."""

import typing

import pytest
import torch

from attnlab import config as cfg
from attnlab.analysis.attention import SATURATED, attention_statistics, head_statistics
from attnlab.model import build_model, count_parameters
from attnlab.model.attention import ATTENTIONS, SCALES, MultiHeadAttention
from attnlab.model.layers import ACTIVATIONS, FEED_FORWARDS
from attnlab.model.norms import NORMS, PLACEMENTS, BatchNorm
from attnlab.model.positional import POSITIONAL
from conftest import tiny_config

VOCAB, PAD, BOS = 40, 0, 2


@pytest.mark.parametrize("choices, registry", [
    (cfg.Positional, POSITIONAL), (cfg.Norm, NORMS), (cfg.NormPlacement, PLACEMENTS), (cfg.Activation, ACTIVATIONS),
    (cfg.AttentionKind, ATTENTIONS), (cfg.AttentionScale, SCALES), (cfg.FeedForwardKind, FEED_FORWARDS)])
def test_each_axis_offers_exactly_what_its_registry_builds(choices, registry):
    assert set(typing.get_args(choices)) == set(registry)


def test_batchnorm_statistics_are_over_real_tokens_only_and_ignore_extra_padding():
    torch.manual_seed(0)
    norm = BatchNorm(6, momentum=0.5).train()
    x = torch.randn(3, 5, 6) * 3 + 1
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out = norm(x, keep)
    real = x[keep]  # (9, 6)
    mean, var = real.mean(0), real.var(0, unbiased=False)
    assert torch.allclose(out[keep], (real - mean) / torch.sqrt(var + norm.eps), atol=1e-5)
    assert torch.allclose(norm.running_mean, 0.5 * mean, atol=1e-6)
    assert torch.allclose(norm.running_var, 0.5 + 0.5 * real.var(0, unbiased=True), atol=1e-5)
    # More padding, holding anything at all, changes neither the outputs at real tokens nor the statistics.
    other = BatchNorm(6, momentum=0.5).train()
    padded = torch.cat([x, torch.randn(3, 4, 6) * 100], dim=1)
    padded_keep = torch.cat([keep, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    padded[~padded_keep] = torch.randn(int((~padded_keep).sum()), 6) * 100
    padded[:, :5][keep] = x[keep]
    assert torch.allclose(other(padded, padded_keep)[padded_keep], out[keep], atol=1e-5)
    assert torch.allclose(other.running_mean, norm.running_mean) and torch.allclose(other.running_var, norm.running_var)
    # Evaluation uses the running statistics: each token alone, whatever else is in the batch.
    norm.eval()
    assert torch.allclose(norm(x[:1], keep[:1]), norm(x, keep)[:1])


def test_batchnorm_spread_is_the_drift_of_batch_means_across_steps():
    norm = BatchNorm(4).train()
    assert norm.spread() is None
    steady = torch.ones(2, 3, 4)
    steady[0] = -1
    for _ in range(5):
        norm(steady)
    assert norm.spread() == pytest.approx(0.0, abs=1e-6)  # the same batch every step: no spread
    for shift in (0.0, 4.0, 0.0, 4.0):
        norm(steady + shift)
    assert norm.spread() > 0.5 and norm.moments.abs().sum() == 0  # read and reset
    model = build_model(tiny_config(norm="batchnorm"), VOCAB).train()
    assert model.batch_statistics_spread() is None
    for _ in range(2):
        model(torch.randint(4, VOCAB, (2, 5)), torch.randint(4, VOCAB, (2, 4)))
    assert model.batch_statistics_spread() >= 0


def test_no_score_scale_equals_an_explicit_softmax_of_qk():
    torch.manual_seed(0)
    attention = MultiHeadAttention(tiny_config(attention_scale="none")).eval()
    x = torch.randn(2, 5, 32)
    h, d = 4, 8
    q, k, v = attention.in_proj(x).split([h * d] * 3, dim=-1)
    q, k, v = (t.view(2, 5, h, d).transpose(1, 2) for t in (q, k, v))
    expected = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v  # no 1/sqrt(d_k)
    expected = attention.out_proj(expected.transpose(1, 2).reshape(2, 5, h * d))
    assert torch.allclose(attention(x), expected, atol=1e-5)
    scaled = MultiHeadAttention(tiny_config()).eval()
    scaled.load_state_dict(attention.state_dict())
    assert not torch.allclose(scaled(x), expected, atol=1e-3)
    assert SCALES["sqrt_dk"](64) == 1 / 8 and SCALES["dk"](64) == 1 / 64


def test_grouped_key_value_heads_share_keys_and_shrink_the_model_and_its_cache():
    default = build_model(tiny_config(), VOCAB)
    assert count_parameters(build_model(tiny_config(n_kv_heads=4), VOCAB)) == count_parameters(default)
    multi_query = build_model(tiny_config(n_kv_heads=1), VOCAB).eval()
    # Each attention layer loses 3 of 4 key heads and 3 of 4 value heads (d_k = d_v = 8, with biases).
    attention_layers = len(list(multi_query.attention_modules()))
    assert count_parameters(default) - count_parameters(multi_query) == attention_layers * 2 * 3 * 8 * (32 + 1)
    src, tgt = torch.randint(4, VOCAB, (2, 6)), torch.randint(4, VOCAB, (2, 5))
    encoded, cache = multi_query.encode(src), multi_query.new_cache()
    multi_query.decode(tgt[:, :3], encoded, cache)
    self_cache, cross_cache = cache.layers[0]
    assert self_cache.k.shape == (2, 1, 3, 8) and cross_cache.v.shape == (2, 1, 6, 8)
    with pytest.raises(cfg.ConfigError, match="n_kv_heads=3 must divide n_heads=4"):
        tiny_config(n_kv_heads=3)


@pytest.mark.parametrize("d_model, d_ff", [(512, 2048), (256, 1024), (32, 64), (64, 100)])
def test_a_gated_feed_forward_keeps_the_parameter_count_within_two_percent(d_model, d_ff):
    def ffn_parameters(kind):
        model = build_model(tiny_config(n_layers=1, d_model=d_model, d_ff=d_ff, feed_forward=kind), VOCAB)
        return sum(p.numel() for layer in (*model.encoder_layers, *model.decoder_layers)
                   for p in layer.feed_forward.sublayer.parameters())

    assert abs(ffn_parameters("gated") / ffn_parameters("standard") - 1) < 0.02


def test_an_unmasked_decoder_sees_the_future_while_training_only():
    model = build_model(tiny_config(mask_future_in_training=False), VOCAB)
    src, tgt = torch.randint(4, VOCAB, (2, 6)), torch.randint(4, VOCAB, (2, 5))
    changed = tgt.clone()
    changed[:, 3:] = (tgt[:, 3:] + 1) % (VOCAB - 4) + 4
    model.train()
    assert not torch.allclose(model(src, tgt)[:, :3], model(src, changed)[:, :3], atol=1e-5)  # it can copy
    model.eval()
    assert torch.allclose(model(src, tgt)[:, :3], model(src, changed)[:, :3], atol=1e-5)  # inference is causal


def test_score_spread_and_saturation_per_head():
    weights = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])  # one head, two queries
    scores = torch.tensor([[[[3.0, -1.0], [0.0, float("-inf")]]]])
    stats = head_statistics(weights, torch.ones(1, 2, dtype=torch.bool), scores)
    assert stats["saturation"].tolist() == [0.5]  # the first row's weight 1.0 > SATURATED
    assert stats["score_std"].tolist() == [pytest.approx((2.0 + 0.0) / 2)]  # std of (3, -1) is 2; one key: 0
    assert SATURATED == 0.9
    model = build_model(tiny_config(n_layers=1, d_k=64, d_v=8), VOCAB).eval()
    unscaled = build_model(tiny_config(n_layers=1, d_k=64, d_v=8, attention_scale="none"), VOCAB).eval()
    unscaled.load_state_dict(model.state_dict())  # the same weights: only the scale differs
    src, tgt = torch.randint(4, VOCAB, (3, 7)), torch.randint(4, VOCAB, (3, 6))
    base, large = attention_statistics(model, src, tgt), attention_statistics(unscaled, src, tgt)
    assert set(base["cross"]) == {"entropy", "confidence", "distance", "score_std", "saturation"}
    # Without 1/sqrt(d_k) the scores spread sqrt(64) = 8 times wider and the softmax saturates more.
    mean = lambda stats, stat: sum(map(sum, stats["encoder_self"][stat])) / 4  # noqa: E731
    assert mean(large, "score_std") == pytest.approx(8 * mean(base, "score_std"), rel=1e-4)
    assert mean(large, "saturation") >= mean(base, "saturation")
    assert mean(large, "entropy") < mean(base, "entropy")


def test_gradient_norms_per_layer_group_every_parameter_once():
    model = build_model(tiny_config(n_layers=2), VOCAB)
    groups = model.layer_groups()
    assert sorted(groups) == ["decoder_0", "decoder_1", "encoder_0", "encoder_1", "other"]
    assert sum(p.numel() for ps in groups.values() for p in ps) == count_parameters(model)
