"""Chapter 0 checks: each reference passes and each typical mistake is rejected with its hint."""
import math

import pytest
import torch

from gptlib.exercises import run_check
from gptlib.ngram import NGramModel, bigram_counts, bigram_loss, bigram_probs, context_ids
from gptlib.objectives import IGNORE_INDEX, attention_masks, masked_lm_targets, next_token_targets


def _choose_by_training_loss(train_ids, val_ids, vocab_size, orders, k=1.0):
    return min(orders, key=lambda n: NGramModel(vocab_size, n=n, k=k).fit(train_ids).loss(train_ids))


def _choose_worst(train_ids, val_ids, vocab_size, orders, k=1.0):
    return max(orders, key=lambda n: NGramModel(vocab_size, n=n, k=k).fit(train_ids).loss(val_ids))


def _choose(train_ids, val_ids, vocab_size, orders, k=1.0):
    return min(orders, key=lambda n: NGramModel(vocab_size, n=n, k=k).fit(train_ids).loss(val_ids))


def _context_digits_reversed(ids, n, vocab_size):
    count = len(ids) - n + 1
    context = torch.zeros(count, dtype=torch.long)
    for j in reversed(range(n - 1)):
        context = context * vocab_size + ids[j:j + count]
    return context


def _context_with_target(ids, n, vocab_size):
    count = len(ids) - n + 1
    context = torch.zeros(count, dtype=torch.long)
    for j in range(1, n):
        context = context * vocab_size + ids[j:j + count]
    return context


def _masked_inplace(ids, mask_id, rate=0.15, generator=None):
    chosen = torch.rand(len(ids), generator=generator) < rate
    targets = ids.masked_fill(~chosen, IGNORE_INDEX)
    return ids.masked_fill_(chosen, mask_id), targets


def _masked_targets_everywhere(ids, mask_id, rate=0.15, generator=None):
    chosen = torch.rand(len(ids), generator=generator) < rate
    return ids.masked_fill(chosen, mask_id), ids.clone()


def _mask_in_targets(ids, mask_id, rate=0.15, generator=None):
    chosen = torch.rand(len(ids), generator=generator) < rate
    return ids.clone(), ids.masked_fill(chosen, mask_id)


class _NoKV(NGramModel):
    def log_probs(self, ids):
        context, pair = self._keys(ids)
        together = self._lookup(self.pairs, self.pair_counts, pair)
        alone = self._lookup(self.contexts, self.context_counts, context)
        return ((together + self.k) / (alone + self.k)).log()


class _NeighbourLookup(NGramModel):
    @staticmethod
    def _lookup(keys, counts, query):
        return counts[torch.searchsorted(keys, query).clamp(max=len(keys) - 1)]


class _LastTokenOnly(NGramModel):
    def next_probs(self, context):
        return super().next_probs(torch.cat([torch.zeros(self.n, dtype=torch.long), context[-1:]]))


class _UnnormalisedNext(NGramModel):
    def next_probs(self, context):
        return super().next_probs(context) * 2


def _masks(causal_encoder=False, bidirectional_decoder=False, cross="ok"):
    def candidate(family, T, S=None):
        masks = attention_masks(family, T, S)
        if causal_encoder and "self" in masks and family == "encoder-only":
            masks["self"] = masks["self"].tril()
        if bidirectional_decoder and family == "decoder-only":
            masks["self"] = torch.ones(T, T, dtype=torch.bool)
        if family == "encoder-decoder" and cross == "transposed":
            masks["cross"] = masks["cross"].T
        if family == "encoder-decoder" and cross == "causal":
            masks["cross"] = masks["cross"].tril()
        return masks
    return candidate


PASSING = [("0.5", NGramModel), ("0.8", attention_masks), ("0.1", bigram_counts), ("0.2", bigram_probs), ("0.3", bigram_loss), ("0.4", context_ids),
           ("0.6", next_token_targets), ("0.7", masked_lm_targets), ("0.9", _choose)]

FAILING = [
    pytest.param("0.1", lambda ids, V: bigram_counts(ids, V).T, "swapped", id="0.1-transposed"),
    pytest.param("0.1", lambda ids, V: bigram_counts(ids, V).float(), "torch.long", id="0.1-float"),
    pytest.param("0.1", lambda ids, V: bigram_counts(torch.cat([ids, ids[-1:]]), V), "adjacent pairs",
                 id="0.1-one-pair-too-many"),
    pytest.param("0.1", lambda ids, V: torch.bincount(ids[::2][:-1] * V + ids[1::2][:len(ids[::2]) - 1],
                                                       minlength=V * V).view(V, V)[:V, :V]
                 if len(ids) > 2 else bigram_counts(ids, V), "overlapping", id="0.1-non-overlapping"),
    pytest.param("0.2", lambda c, k=1.0: (c.float() + k) / (c.float() + k).sum(0, keepdim=True), "columns",
                 id="0.2-columns"),
    pytest.param("0.2", lambda c, k=1.0: (c.float() + k) / c.float().sum(1, keepdim=True), "numerator only",
                 id="0.2-k-numerator-only"),
    pytest.param("0.2", lambda c, k=1.0: (c + k) // (c + k).sum(1, keepdim=True), "whole numbers",
                 id="0.2-integer-division"),
    pytest.param("0.3", lambda p, ids: -p[ids[1:], ids[:-1]].log().mean().item(), "swapped", id="0.3-swapped"),
    pytest.param("0.3", lambda p, ids: -p[ids[:-1], ids[1:]].log().sum().item(), "sum", id="0.3-sum"),
    pytest.param("0.3", lambda p, ids: -p[ids[:-1], ids[1:]].log2().mean().item(), "bits", id="0.3-bits"),
    pytest.param("0.3", lambda p, ids: -p[ids[:-1], ids[1:]].log().mean(), "Python float", id="0.3-tensor"),
    pytest.param("0.4", _context_digits_reversed, "wrong order", id="0.4-digits-reversed"),
    pytest.param("0.4", _context_with_target, "without the target itself", id="0.4-with-target"),
    pytest.param("0.4", lambda ids, n, V: context_ids(ids, n, V)[1:], "entries", id="0.4-too-short"),
    pytest.param("0.5", _NoKV, "lacks k * V", id="0.5-no-kV"),
    pytest.param("0.5", _NeighbourLookup, "neighbour", id="0.5-neighbour-count"),
    pytest.param("0.5", _LastTokenOnly, "last n - 1 tokens", id="0.5-wrong-context"),
    pytest.param("0.5", _UnnormalisedNext, "sum to one", id="0.5-unnormalised"),
    pytest.param("0.8", _masks(causal_encoder=True), "encoder is bidirectional", id="0.8-causal-encoder"),
    pytest.param("0.8", _masks(bidirectional_decoder=True), "see the future", id="0.8-bidirectional-decoder"),
    pytest.param("0.8", _masks(cross="transposed"), "queries are the", id="0.8-cross-transposed"),
    pytest.param("0.8", _masks(cross="causal"), "hides some input", id="0.8-cross-causal"),
    pytest.param("0.6", lambda ids: (ids, ids), "shift them", id="0.6-unshifted"),
    pytest.param("0.6", lambda ids: (ids[1:], ids[:-1]), "wrong way", id="0.6-wrong-way"),
    pytest.param("0.6", lambda ids: (ids[:-1], ids[:-1]), "shift them", id="0.6-targets-are-inputs"),
    pytest.param("0.7", _masked_inplace, "modified", id="0.7-in-place"),
    pytest.param("0.7", _masked_targets_everywhere, "every position", id="0.7-targets-everywhere"),
    pytest.param("0.7", _mask_in_targets, "into the targets", id="0.7-mask-in-targets"),
    pytest.param("0.9", _choose_by_training_loss, "largest n", id="0.9-training-loss"),
    pytest.param("0.9", _choose_worst, "lowest at n", id="0.9-worst"),
    pytest.param("0.9", lambda *args, **kw: 2, "lowest at n", id="0.9-always-2"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING)
def test_reference_passes(exercise_id, candidate):
    result = run_check(exercise_id, candidate)
    assert result.status == "passed", result.message


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING)
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


@pytest.mark.parametrize("exercise_id", ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"])
def test_unsolved_exercises_report_not_done(exercise_id):
    def todo(*args, **kwargs):
        raise NotImplementedError
    assert run_check(exercise_id, todo).status == "not done"
