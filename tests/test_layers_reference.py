"""Our layers against torch.nn's reference layers with copied weights."""

import pytest
import torch
from torch import nn

from attnlab.model.layers import DecoderLayer, EncoderLayer
from attnlab.model.transformer import causal_mask
from conftest import tiny_config


def copy_attention(ours, theirs: nn.MultiheadAttention) -> None:
    ours.in_proj.weight.data.copy_(theirs.in_proj_weight)
    ours.in_proj.bias.data.copy_(theirs.in_proj_bias)
    ours.out_proj.weight.data.copy_(theirs.out_proj.weight)
    ours.out_proj.bias.data.copy_(theirs.out_proj.bias)


def copy_feed_forward(ours, theirs) -> None:
    ours.linear1.load_state_dict(theirs.linear1.state_dict())
    ours.linear2.load_state_dict(theirs.linear2.state_dict())


def randomise_norms(module: nn.Module) -> None:
    """LayerNorms start at (1, 0); random affine parameters make the copy test meaningful."""
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def padded_batch(b=3, t=7, d=32):
    x = torch.randn(b, t, d)
    pad = torch.zeros(b, t, dtype=torch.bool)
    pad[0, 5:] = True
    pad[2, 3:] = True
    return x, pad


@pytest.mark.parametrize("placement", ["post", "pre"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_torch(placement, activation):
    config = tiny_config(norm_placement=placement, activation=activation)
    ref = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation=activation, batch_first=True,
                                     norm_first=placement == "pre")
    randomise_norms(ref)
    ours = EncoderLayer(config)
    copy_attention(ours.self_attn.sublayer, ref.self_attn)
    copy_feed_forward(ours.feed_forward.sublayer, ref)
    ours.self_attn.norm.load_state_dict(ref.norm1.state_dict())
    ours.feed_forward.norm.load_state_dict(ref.norm2.state_dict())

    x, pad = padded_batch()
    expected = ref(x, src_key_padding_mask=pad)
    got = ours(x, (~pad)[:, None, None, :])
    assert torch.allclose(got[~pad], expected[~pad], atol=1e-5)


@pytest.mark.parametrize("placement", ["post", "pre"])
def test_decoder_layer_matches_torch(placement):
    config = tiny_config(norm_placement=placement)
    ref = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True, norm_first=placement == "pre")
    randomise_norms(ref)
    ours = DecoderLayer(config)
    copy_attention(ours.self_attn.sublayer, ref.self_attn)
    copy_attention(ours.cross_attn.sublayer, ref.multihead_attn)
    copy_feed_forward(ours.feed_forward.sublayer, ref)
    for wrapper, norm in [(ours.self_attn, ref.norm1), (ours.cross_attn, ref.norm2), (ours.feed_forward, ref.norm3)]:
        wrapper.norm.load_state_dict(norm.state_dict())

    x, tgt_pad = padded_batch(t=6)
    memory, mem_pad = padded_batch(t=8)
    causal = causal_mask(6, 6, x.device)
    expected = ref(x, memory, tgt_mask=~causal, tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=mem_pad)
    got = ours(x, memory, causal & ~tgt_pad[:, None, None, :], ~mem_pad[:, None, None, :])
    assert torch.allclose(got[~tgt_pad], expected[~tgt_pad], atol=1e-5)
