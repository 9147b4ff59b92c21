"""gptlib.ngram and gptlib.objectives: the count-based baseline and the three families' targets."""
import math

import pytest
import torch

from gptlib.ngram import NGramModel, bigram_counts, bigram_loss, bigram_probs
from gptlib.objectives import IGNORE_INDEX, attention_masks, masked_lm_targets


def _text(n=3000, vocab=6, seed=0):
    return torch.randint(vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _brute_force_loss(ids, n, k, vocab, train):
    counts, totals = {}, {}
    for t in range(n - 1, len(train)):
        ctx = tuple(train[t - n + 1:t].tolist())
        counts[ctx, int(train[t])] = counts.get((ctx, int(train[t])), 0) + 1
        totals[ctx] = totals.get(ctx, 0) + 1
    terms = []
    for t in range(n - 1, len(ids)):
        ctx = tuple(ids[t - n + 1:t].tolist())
        terms.append(math.log((counts.get((ctx, int(ids[t])), 0) + k) / (totals.get(ctx, 0) + k * vocab)))
    return -sum(terms) / len(terms)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ngram_loss_equals_brute_force_counting(n):
    train, val = _text(seed=1), _text(500, seed=2)
    model = NGramModel(6, n=n, k=0.5).fit(train)
    assert model.loss(val) == pytest.approx(_brute_force_loss(val, n, 0.5, 6, train), rel=1e-5)


def test_bigram_ngram_and_functions_agree():
    train, val = _text(seed=3), _text(400, seed=4)
    probs = bigram_probs(bigram_counts(train, 6), k=1.0)
    assert NGramModel(6, n=2, k=1.0).fit(train).loss(val) == pytest.approx(bigram_loss(probs, val), rel=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_next_probs_is_a_distribution_matching_log_probs(n):
    train = _text(seed=5)
    model = NGramModel(6, n=n, k=0.1).fit(train)
    context = train[:10]
    p = model.next_probs(context)
    assert p.shape == (6,) and p.sum().item() == pytest.approx(1.0, abs=1e-5)
    for token in range(6):
        seq = torch.cat([context, torch.tensor([token])])
        assert model.log_probs(seq)[-1].exp().item() == pytest.approx(p[token].item(), rel=1e-5)


def test_seen_marks_contexts_from_training():
    model = NGramModel(3, n=3).fit(torch.tensor([0, 1, 2, 0, 1, 2]))
    assert model.seen(torch.tensor([0, 1, 2, 2, 2])).tolist() == [True, True, False]


@pytest.mark.parametrize("kwargs, match", [(dict(vocab_size=5, n=0), "n >= 1"), (dict(vocab_size=5, k=0), "k > 0"),
                                           (dict(vocab_size=70000, n=5), "64-bit")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NGramModel(**kwargs)


def test_too_short_input_is_refused():
    model = NGramModel(4, n=3).fit(_text(50, vocab=4))
    with pytest.raises(ValueError, match="at least n=3"):
        model.loss(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="n - 1 = 2"):
        model.next_probs(torch.tensor([1]))


def test_masked_lm_scores_only_hidden_positions():
    ids = torch.arange(1, 201)
    inputs, targets = masked_lm_targets(ids, 0, rate=0.3, generator=torch.Generator().manual_seed(0))
    hidden = inputs == 0
    assert 0.2 < hidden.float().mean() < 0.4
    assert torch.equal(targets[hidden], ids[hidden]) and (targets[~hidden] == IGNORE_INDEX).all()


def test_attention_masks_of_the_three_families():
    assert attention_masks("encoder-only", 4)["self"].all()
    assert torch.equal(attention_masks("decoder-only", 4)["self"], torch.ones(4, 4, dtype=torch.bool).tril())
    ed = attention_masks("encoder-decoder", 3, 5)
    assert ed["encoder"].shape == (5, 5) and ed["cross"].shape == (3, 5) and ed["cross"].all()
    assert torch.equal(ed["decoder"], torch.ones(3, 3, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="needs S"):
        attention_masks("encoder-decoder", 3)
    with pytest.raises(ValueError, match="family must be"):
        attention_masks("bert", 3)
