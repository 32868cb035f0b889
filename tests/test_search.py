import itertools

import pytest
import torch

from attnlab.model import beam_search, build_model, greedy_search
from attnlab.model.search import length_penalty
from conftest import tiny_config

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def model_and_source(vocab=40, seed=0, **overrides):
    torch.manual_seed(seed)
    model = build_model(tiny_config(**overrides), vocab, pad_id=PAD, bos_id=BOS, eos_id=EOS).eval()
    src = torch.randint(4, vocab, (4, 6))
    src[1, 3:] = PAD
    src[3, 5:] = PAD
    return model, src


def sequence_score(model, src_row, output, alpha):
    """log P(output + eos | src) / lp(len), from one full forward pass."""
    target = torch.tensor([output + [EOS]])
    tgt_in = torch.cat([torch.tensor([[BOS]]), target[:, :-1]], 1)
    log_probs = model(src_row[None], tgt_in).log_softmax(-1)
    total = log_probs.gather(-1, target[..., None]).sum().item()
    return total / length_penalty(float(target.size(1)), alpha), total


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "alibi"])
def test_beam_one_is_greedy(positional):
    model, src = model_and_source(positional=positional)
    greedy = greedy_search(model, src, max_len_b=8)
    beam = beam_search(model, src, beam_size=1, max_len_b=8)
    assert beam.tokens == greedy.tokens
    assert beam.scores == pytest.approx(greedy.scores, abs=1e-5)


def test_scores_are_the_model_length_normalised_log_probability():
    model, src = model_and_source()
    result = beam_search(model, src, beam_size=3, length_penalty_alpha=0.6, max_len_b=6)
    for i, output in enumerate(result.tokens):
        score, log_prob = sequence_score(model, src[i][src[i] != PAD], output, 0.6)
        assert result.scores[i] == pytest.approx(score, abs=1e-4)
        assert result.log_probs[i] == pytest.approx(log_prob, abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_beam_as_wide_as_the_search_space_is_exhaustive_search(seed):
    """Vocabulary {pad, unk, bos, eos, 4, 5}: outputs are up to 2 tokens from {unk, 4, 5} then
    eos (forced at length 3), 13 in all. A beam of 64 keeps every prefix, so it must return the
    exhaustive optimum, and therefore never score below greedy."""
    model, src = model_and_source(vocab=6, seed=seed)
    alpha, max_len = 0.6, 3
    beam = beam_search(model, src, beam_size=64, length_penalty_alpha=alpha, max_len_a=0, max_len_b=max_len)
    greedy = greedy_search(model, src, length_penalty_alpha=alpha, max_len_a=0, max_len_b=max_len)
    for i in range(src.size(0)):
        row = src[i][src[i] != PAD]
        candidates = [list(p) for n in range(max_len) for p in itertools.product([UNK, 4, 5], repeat=n)]
        assert len(candidates) == 13
        scored = [(sequence_score(model, row, c, alpha)[0], c) for c in candidates]
        best_score, best = max(scored)
        assert beam.tokens[i] == best
        assert beam.scores[i] == pytest.approx(best_score, abs=1e-4)
        assert beam.scores[i] >= greedy.scores[i] - 1e-5


def test_batched_search_equals_one_sentence_at_a_time():
    model, src = model_and_source()
    batched = beam_search(model, src, beam_size=4, max_len_b=7)
    for i in range(src.size(0)):
        alone = beam_search(model, src[i : i + 1, : int((src[i] != PAD).sum())], beam_size=4, max_len_b=7)
        assert alone.tokens[0] == batched.tokens[i]
        assert alone.scores[0] == pytest.approx(batched.scores[i], abs=1e-4)


def test_cache_does_not_change_the_search():
    model, src = model_and_source(positional="rope", norm_placement="pre")
    with_cache = beam_search(model, src, beam_size=4, max_len_b=7)
    without = beam_search(model, src, beam_size=4, max_len_b=7, use_cache=False)
    assert with_cache.tokens == without.tokens
    assert (greedy_search(model, src, max_len_b=7).tokens
            == greedy_search(model, src, max_len_b=7, use_cache=False).tokens)


def test_max_length_is_source_length_plus_b_and_never_special_tokens():
    model, src = model_and_source()
    # Make eos very unlikely so outputs run to the limit.
    with torch.no_grad():
        model.tgt_embed.weight[EOS] = (-10 * model.tgt_embed.weight[EOS].sign()
                                       * model.decoder_layers[-1].feed_forward.norm.weight.abs().mean())
    result = beam_search(model, src, beam_size=2, max_len_a=1.0, max_len_b=2)
    src_lengths = (src != PAD).sum(1).tolist()
    for output, n in zip(result.tokens, src_lengths):
        assert len(output) <= n + 2 - 1  # the last of n + 2 slots is eos
        assert not {PAD, BOS, EOS} & set(output)


def test_larger_beam_is_not_worse_on_average():
    """Beam search is a heuristic: per sentence a wider beam can lose to greedy. Over many
    random sentences it must win on average, or the search is broken."""
    model, _ = model_and_source(vocab=30, n_layers=1)
    src = torch.randint(4, 30, (32, 6))
    greedy = greedy_search(model, src, max_len_b=6)
    beam = beam_search(model, src, beam_size=4, max_len_b=6)
    assert sum(beam.scores) > sum(greedy.scores)
