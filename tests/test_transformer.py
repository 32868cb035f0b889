import pytest
import torch

from attnlab.model import build_model, count_parameters
from conftest import PLACEMENTS, POSITIONALS, tiny_config

VOCAB, PAD, BOS = 40, 0, 2


def batch(b=3, s=7, t=6):
    src = torch.randint(4, VOCAB, (b, s))
    tgt = torch.randint(4, VOCAB, (b, t))
    tgt[:, 0] = BOS
    return src, tgt


def tiny_model(**overrides):
    model = build_model(tiny_config(**overrides), VOCAB, pad_id=PAD)
    if overrides.get("norm") == "batchnorm":  # running statistics of a few batches, not the initial 0 and 1
        with torch.no_grad():
            for _ in range(3):
                model(*batch())
    return model.eval()


# Every component variant passes the invariance tests: causality, padding, cached decoding.
ALL_VARIANTS = [dict(positional=p, norm_placement=n) for p in POSITIONALS for n in PLACEMENTS] + [
    dict(norm="batchnorm"), dict(norm="batchnorm", norm_placement="pre"),
    dict(attention_scale="none"), dict(attention_scale="dk"),
    dict(n_kv_heads=1), dict(n_kv_heads=2, positional="rope"), dict(n_kv_heads=1, positional="alibi"),
    dict(feed_forward="gated"), dict(feed_forward="gated", activation="silu", norm_placement="pre"),
    dict(mask_future_in_training=False),  # causal at inference, which is what these tests run
]
VARIANT_IDS = ["-".join(f"{v}" for v in variant.values()) for variant in ALL_VARIANTS]


def test_output_shape_and_pad_id():
    model = tiny_model()
    src, tgt = batch()
    assert model(src, tgt).shape == (3, 6, VOCAB)
    assert model.pad_id == PAD


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=VARIANT_IDS)
def test_future_target_tokens_never_change_earlier_logits(variant):
    model = tiny_model(**variant)
    src, tgt = batch()
    logits = model(src, tgt)
    for t in range(tgt.size(1) - 1):
        changed = tgt.clone()
        changed[:, t + 1 :] = torch.randint(4, VOCAB, changed[:, t + 1 :].shape)
        other = model(src, changed)
        assert torch.allclose(other[:, : t + 1], logits[:, : t + 1], atol=1e-5), f"leak into position {t}"
        assert not torch.allclose(other[:, t + 1 :], logits[:, t + 1 :], atol=1e-5)


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=VARIANT_IDS)
def test_appended_padding_does_not_change_real_logits(variant):
    model = tiny_model(**variant)
    src, tgt = batch()
    src[1, 4:] = PAD  # sentence 1 is shorter already
    logits = model(src, tgt)
    padded = model(torch.cat([src, torch.full((3, 5), PAD)], 1), torch.cat([tgt, torch.full((3, 4), PAD)], 1))
    assert torch.allclose(padded[:, : tgt.size(1)], logits, atol=1e-5)


@pytest.mark.parametrize("variant", ALL_VARIANTS, ids=VARIANT_IDS)
def test_cached_step_decoding_equals_full_forward(variant):
    model = tiny_model(**variant)
    src, tgt = batch()
    src[0, 5:] = PAD
    full = model(src, tgt)
    encoded, cache = model.encode(src), model.new_cache()
    steps = torch.cat([model.decode(tgt[:, i : i + 1], encoded, cache) for i in range(tgt.size(1))], dim=1)
    assert torch.allclose(steps, full, atol=1e-5)
    # A chunk of several new positions at once (prefix, then the rest) agrees too.
    encoded, cache = model.encode(src), model.new_cache()
    chunks = torch.cat([model.decode(tgt[:, :2], encoded, cache), model.decode(tgt[:, 2:], encoded, cache)], 1)
    assert torch.allclose(chunks, full, atol=1e-5)


def test_positions_matter_for_every_encoding_but_none():
    src, tgt = batch(b=1, s=6)
    swapped = src[:, [1, 0, 2, 3, 4, 5]]
    for positional in POSITIONALS:
        model = tiny_model(positional=positional)
        same = torch.allclose(model(src, tgt), model(swapped, tgt), atol=1e-5)
        assert same == (positional == "none"), positional


def test_symmetric_alibi_encoder_cannot_tell_a_source_from_its_mirror():
    """A known property of ALiBi's symmetric |i - j| bias in a bidirectional encoder."""
    src, tgt = batch(b=1, s=6)
    model = tiny_model(positional="alibi")
    assert torch.allclose(model(src, tgt), model(src.flip(1), tgt), atol=1e-5)


@pytest.mark.parametrize("d_k, d_v", [(4, 16), (16, 4), (3, 5)])
def test_d_k_d_v_independent_of_d_model_over_heads(d_k, d_v):
    model = tiny_model(n_heads=3, d_k=d_k, d_v=d_v)
    attn = model.encoder_layers[0].self_attn.sublayer
    assert attn.in_proj.weight.shape == (3 * (2 * d_k + d_v), 32)
    assert attn.out_proj.weight.shape == (32, 3 * d_v)
    src, tgt = batch()
    assert model(src, tgt).shape == (3, 6, VOCAB)


def test_attention_weights_on_request():
    model = tiny_model(n_layers=3, n_decoder_layers=2)
    src, tgt = batch()
    src[0, 4:] = PAD
    logits, weights = model(src, tgt, return_attention=True)
    assert torch.allclose(logits, model(src, tgt), atol=1e-5)  # explicit path == fused path
    assert [len(weights[k]) for k in ("encoder_self", "decoder_self", "cross")] == [3, 2, 2]
    assert weights["encoder_self"][0].shape == (3, 4, 7, 7)
    assert weights["cross"][1].shape == (3, 4, 6, 7)
    for kind in weights:
        for w in weights[kind]:
            assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
    assert (weights["cross"][0][0, :, :, 4:] == 0).all()  # padding gets no attention
    assert (weights["decoder_self"][0].triu(1) == 0).all()  # nor does the future
    assert all(m.weights is None and not m.record_weights for _, _, m in model.attention_modules())


def test_tie_embeddings_modes_share_the_right_matrices():
    all_ = tiny_model(tie_embeddings="all")
    assert all_.src_embed.weight is all_.tgt_embed.weight is all_.output_weight
    dec = tiny_model(tie_embeddings="decoder")
    assert dec.src_embed.weight is not dec.tgt_embed.weight and dec.tgt_embed.weight is dec.output_weight
    none = tiny_model(tie_embeddings="none")
    assert none.output_weight is not none.tgt_embed.weight
    per_matrix = VOCAB * 32
    assert count_parameters(dec) - count_parameters(all_) == per_matrix
    assert count_parameters(none) - count_parameters(all_) == 2 * per_matrix


def test_base_model_parameter_count_by_hand():
    """Paper base, 37,000 shared vocabulary: embedding + 6 encoder + 6 decoder layers, biases and
    LayerNorms counted, no final norm (post-LN), tied output projection."""
    d, ff, v = 512, 2048, 37000
    attention = 4 * d * d + 4 * d
    feed_forward = 2 * d * ff + ff + d
    norm = 2 * d
    expected = v * d + 6 * (attention + feed_forward + 2 * norm) + 6 * (2 * attention + feed_forward + 3 * norm)
    with torch.device("meta"):
        model = build_model(tiny_config(n_layers=6, d_model=512, d_ff=2048, n_heads=8), v)
    assert count_parameters(model) == expected == 63_082_496


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "scalenorm"])
def test_every_norm_trains_a_step(norm):
    model = build_model(tiny_config(norm=norm, norm_placement="pre"), VOCAB).train()
    src, tgt = batch()
    loss = torch.nn.functional.cross_entropy(model(src, tgt).flatten(0, 1), tgt.flatten())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_overfits_a_fixed_batch():
    """The whole model can learn: a fixed batch is memorised to near-zero loss."""
    model = build_model(tiny_config(n_layers=1, d_model=64, d_ff=128), VOCAB).train()
    src, tgt = batch(b=4, s=6, t=6)
    target = torch.cat([tgt[:, 1:], torch.full((4, 1), 3)], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(src, tgt).flatten(0, 1), target.flatten())
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
