"""Chapter 4 checks: the reference passes, and each typical mistake is rejected with its hint."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptlib import attention
from gptlib.attention import CausalSelfAttention
from gptlib.exercises import run_check
from gptlib.masking import causal_mask, masked_softmax


def _tril(T, diagonal=0, cols=None):
    return torch.ones(T, T if cols is None else cols, dtype=torch.bool).tril(diagonal=diagonal)


# ------------------------------------------------------------------ 4.1 attention_weights(q, k, mask)
def weights_factory(scale="sqrt", dim=-1, mask_mode="masked_softmax", hard_dk=None):
    def attention_weights(q, k, mask=None):
        s = q @ k.transpose(-2, -1)
        if scale == "sqrt":
            s = s / math.sqrt(hard_dk or q.shape[-1])
        elif scale == "dk":
            s = s / q.shape[-1]
        if mask is None or mask_mode == "ignored":
            return torch.softmax(s, dim=dim)
        if mask_mode == "masked_softmax":
            return masked_softmax(s, mask) if dim == -1 else torch.softmax(
                s.masked_fill(~mask, float("-inf")), dim=dim).nan_to_num(0.0)
        if mask_mode == "fill":         # -inf then softmax: NaN on a fully masked row
            return torch.softmax(s.masked_fill(~mask, float("-inf")), dim=dim)
        if mask_mode == "inverted":
            return masked_softmax(s, ~mask)
        if mask_mode == "after":
            return torch.softmax(s, dim=dim) * mask
        raise ValueError(mask_mode)
    return attention_weights


# ------------------------------------------------------------------ 4.2 scaled_dot_product_attention
def sdpa_factory(dropout="weights", weights_out="before", matmul=True):
    def scaled_dot_product_attention(q, k, v, mask=None, dropout_p=0.0):
        w = attention.attention_weights(q, k, mask)
        used = w
        if dropout_p > 0 and dropout == "weights":
            used = F.dropout(w, p=dropout_p, training=True)
        elif dropout_p > 0 and dropout == "not_inverted":
            used = w * (torch.rand_like(w) >= dropout_p)
        out = used @ v if matmul else used
        return out, (used if weights_out == "after" else w)
    return scaled_dot_product_attention


# ------------------------------------------------------------------ 4.3 attention_entropy
def entropy_factory(log=torch.log, sign=-1, reduce="sum", safe=True):
    def attention_entropy(w):
        terms = torch.special.xlogy(w, w) if safe and log is torch.log else w * log(
            w.clamp_min(1e-30) if safe else w)
        total = terms.sum(-1) if reduce == "sum" else terms.mean(-1)
        return sign * total
    return attention_entropy


# ------------------------------------------------------------------ 4.4 / 4.5 split and merge
def split_by_reshape(x, n_head):
    B, T, C = x.shape
    return x.reshape(B, n_head, T, C // n_head)


def split_interleaved(x, n_head):
    B, T, C = x.shape
    return x.view(B, T, C // n_head, n_head).permute(0, 3, 1, 2)


def split_hard_coded(x, n_head):
    B, T, C = x.shape
    return x.view(B, T, 3, C // 3).transpose(1, 2)


def split_no_transpose(x, n_head):
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head)


# ------------------------------------------------------------------ 4.6 _causal_mask_after
def mask_after_factory(diagonal_shift=0, square=False, device_ok=True):
    def causal_mask_after(past, T, device=None):
        cols = T if square else past + T
        return torch.ones(T, cols, dtype=torch.bool, device=device if device_ok else None).tril(
            diagonal=past + diagonal_shift)
    return causal_mask_after


def mask_after_ignoring_past(past, T, device=None):
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril()


# ------------------------------------------------------------------ 4.7 _attend_fused
def fused_factory(prefix="mask", dropout=True):
    def attend_fused(q, k, v, past=0, dropout_p=0.0):
        p = dropout_p if dropout else 0.0
        if past == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=prefix != "none", dropout_p=p)
        if prefix == "is_causal":       # aligns the triangle top-left when T_q < T_k
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        mask = None if prefix in ("none", "unmasked") else _tril(q.shape[-2], past, past + q.shape[-2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    return attend_fused


# ------------------------------------------------------------------ 4.8 CausalSelfAttention
class MergeNoTranspose(CausalSelfAttention):
    def forward(self, x, need_weights=False, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.reshape(B, T, C))


class SplitByReshape(CausalSelfAttention):
    def qkv(self, x):
        B, T, C = x.shape
        return tuple(t.reshape(B, self.n_head, T, C // self.n_head)
                     for t in self.c_attn(x).split(C, dim=-1))


class QKSwapped(CausalSelfAttention):
    def qkv(self, x):
        q, k, v = super().qkv(x)
        return k, q, v


class NoProjection(CausalSelfAttention):
    def forward(self, x, need_weights=False, cache=None):
        q, k, v = self.qkv(x)
        return attention.merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))


class NoCausalMask(CausalSelfAttention):
    def forward(self, x, need_weights=False, cache=None):
        q, k, v = self.qkv(x)
        w = attention.attention_weights(q, k)
        y = self.c_proj(attention.merge_heads(w @ v))
        return (y, w) if need_weights else y


class ExplicitPathUnmasked(CausalSelfAttention):
    """Right on the fast path; the explicit path (need_weights=True) forgets the mask."""
    def forward(self, x, need_weights=False, cache=None):
        if not need_weights:
            return super().forward(x, cache=cache)
        q, k, v = self.qkv(x)
        w = attention.attention_weights(q, k)
        return self.c_proj(attention.merge_heads(w @ v)), w


class IgnoresPast(CausalSelfAttention):
    """Builds the mask from T alone: right in one pass, wrong when queries follow a cache."""
    def forward(self, x, need_weights=False, cache=None):
        q, k, v = self.qkv(x)
        k, v, past = self._with_cache(k, v, cache)
        T = x.shape[1]
        mask = torch.ones(T, k.shape[2], dtype=torch.bool).tril()
        w = attention.attention_weights(q, k, mask)
        y = self.resid_dropout(self.c_proj(attention.merge_heads(self.attn_dropout(w) @ v)))
        return (y, w) if need_weights else y


class FunctionalDropout(CausalSelfAttention):
    """Drops with F.dropout(training=True): still random after .eval()."""
    def forward(self, x, need_weights=False, cache=None):
        y = super().forward(x, need_weights=need_weights, cache=cache)
        if need_weights:
            return F.dropout(y[0], p=self.dropout, training=True), y[1]
        return F.dropout(y, p=self.dropout, training=True)


class WeightsAfterDropout(CausalSelfAttention):
    def forward(self, x, need_weights=False, cache=None):
        if not need_weights:
            return super().forward(x, cache=cache)
        q, k, v = self.qkv(x)
        w = self.attn_dropout(attention.attention_weights(q, k, causal_mask(x.shape[1])))
        return self.resid_dropout(self.c_proj(attention.merge_heads(w @ v))), w


class NoBiasOption(CausalSelfAttention):
    def __init__(self, n_embd, n_head, dropout=0.0, bias=True, block_size=None):
        super().__init__(n_embd, n_head, dropout, True, block_size)


class HardCodedHeads(CausalSelfAttention):
    def __init__(self, n_embd, n_head, dropout=0.0, bias=True, block_size=None):
        super().__init__(n_embd, 4 if n_embd % 4 == 0 else n_head, dropout, bias, block_size)


class FusedDropoutInEval(CausalSelfAttention):
    """Hands the layer's dropout to the fused kernel in evaluation mode too."""
    def forward(self, x, need_weights=False, cache=None):
        if need_weights:
            return super().forward(x, need_weights=True, cache=cache)
        q, k, v = self.qkv(x)
        y = attention._attend_fused(q, k, v, 0, self.dropout)
        return self.resid_dropout(self.c_proj(attention.merge_heads(y)))


class FusedNeverDrops(CausalSelfAttention):
    """Never hands the dropout to the fused kernel; resid_dropout is missing too."""
    def forward(self, x, need_weights=False, cache=None):
        if need_weights:
            return super().forward(x, need_weights=True, cache=cache)
        q, k, v = self.qkv(x)
        return self.c_proj(attention.merge_heads(attention._attend_fused(q, k, v)))


# ------------------------------------------------------------------ 4.9 the cache path
class PastAfterUpdate(CausalSelfAttention):
    def _with_cache(self, k, v, cache):
        if cache is None:
            return k, v, 0
        k, v = cache.update(k, v)
        return k, v, cache.length


class CacheNotRead(CausalSelfAttention):
    def _with_cache(self, k, v, cache):
        if cache is not None:
            cache.update(k, v)
        return k, v, 0


class CacheNeverUpdated(CausalSelfAttention):
    def _with_cache(self, k, v, cache):
        return k, v, 0 if cache is None else cache.length


# ------------------------------------------------------------------ 4.10 the naive decoder
class FixedDecoder(nn.Module):
    def __init__(self, vocab_size, block_size, n_embd, n_head, batch_first=True, mask="causal",
                 positions=True):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.attn = nn.MultiheadAttention(n_embd, n_head, batch_first=batch_first)
        self.head = nn.Linear(n_embd, vocab_size)
        self.mask, self.positions, self.batch_first = mask, positions, batch_first

    def forward(self, idx):
        B, T = idx.shape
        x = self.wte(idx)
        if self.positions:
            x = x + self.wpe(torch.arange(T))
        n = T if self.batch_first else B      # what the module takes for the sequence axis
        mask = {"causal": ~causal_mask(n), "none": None}[self.mask]
        y, _ = self.attn(x, x, x, attn_mask=mask)
        return self.head(x + y)


def decoder_factory(**bugs):
    def make(vocab_size, block_size, n_embd, n_head):
        return FixedDecoder(vocab_size, block_size, n_embd, n_head, **bugs)
    return make


def decoder_mask_gets_padding_convention(vocab_size, block_size, n_embd, n_head):
    class Inverted(FixedDecoder):
        def forward(self, idx):
            B, T = idx.shape
            x = self.wte(idx) + self.wpe(torch.arange(T))
            y, _ = self.attn(x, x, x, attn_mask=torch.ones(T, T, dtype=torch.bool).triu(1).T)
            return self.head(x + y)
    return Inverted(vocab_size, block_size, n_embd, n_head)


# ------------------------------------------------------------------ the table
PASSING = [  # (exercise, candidate); the id names it
    pytest.param("4.1", attention.attention_weights, id="4.1-library"),
    pytest.param("4.1", weights_factory(), id="4.1-reference"),
    pytest.param("4.2", attention.scaled_dot_product_attention, id="4.2-library"),
    pytest.param("4.2", sdpa_factory(), id="4.2-reference"),
    pytest.param("4.3", attention.attention_entropy, id="4.3-library"),
    pytest.param("4.3", entropy_factory(), id="4.3-xlogy"),
    pytest.param("4.4", attention.split_heads, id="4.4-library"),
    pytest.param("4.4", lambda x, n: x.unflatten(-1, (n, -1)).transpose(1, 2), id="4.4-unflatten"),
    pytest.param("4.5", attention.merge_heads, id="4.5-library"),
    pytest.param("4.5", lambda y: y.transpose(1, 2).flatten(2), id="4.5-flatten"),
    pytest.param("4.6", attention._causal_mask_after, id="4.6-library"),
    pytest.param("4.6", mask_after_factory(), id="4.6-reference"),
    pytest.param("4.7", attention._attend_fused, id="4.7-library"),
    pytest.param("4.7", fused_factory(), id="4.7-reference"),
    pytest.param("4.8", CausalSelfAttention, id="4.8-library"),
    pytest.param("4.9", CausalSelfAttention, id="4.9-library"),
    pytest.param("4.10", decoder_factory(), id="4.10-reference"),
]

FAILING = [  # (exercise, candidate, a phrase its hint must contain); the id names the mistake
    pytest.param("4.1", weights_factory(scale=None), "sqrt(d_k)", id="4.1-unscaled"),
    pytest.param("4.1", weights_factory(scale="dk"), "divided by d_k", id="4.1-divided-by-dk"),
    pytest.param("4.1", weights_factory(hard_dk=16), "right for one shape", id="4.1-hard-coded-dk"),
    pytest.param("4.1", weights_factory(dim=-2), "wrong axis", id="4.1-softmax-over-queries"),
    pytest.param("4.1", weights_factory(mask_mode="ignored"), "mask was ignored", id="4.1-mask-ignored"),
    pytest.param("4.1", weights_factory(mask_mode="inverted"), "ALLOWED", id="4.1-mask-inverted"),
    pytest.param("4.1", weights_factory(mask_mode="after"), "after the softmax",
                 id="4.1-mask-after-softmax"),
    pytest.param("4.1", weights_factory(mask_mode="fill"), "fully masked row", id="4.1-nan-on-padding"),
    pytest.param("4.1", lambda q, k, mask=None: q @ k.transpose(-2, -1), "differ from softmax",
                 id="4.1-scores-not-weights"),
    pytest.param("4.2", lambda q, k, v, mask=None, dropout_p=0.0: attention.attention_weights(q, k, mask) @ v,
                 "pair (out, weights)", id="4.2-no-weights"),
    pytest.param("4.2", sdpa_factory(matmul=False), "weighted average of the rows of v", id="4.2-weights-not-applied"),
    pytest.param("4.2", sdpa_factory(dropout=None), "nothing was dropped", id="4.2-dropout-ignored"),
    pytest.param("4.2", sdpa_factory(dropout="not_inverted"), "1 / (1 - p)", id="4.2-dropout-not-inverted"),
    pytest.param("4.2", sdpa_factory(weights_out="after"), "before dropout",
                 id="4.2-returns-dropped-weights"),
    pytest.param("4.3", entropy_factory(safe=False, log=torch.log), "0 * log 0", id="4.3-nan-on-zeros"),
    pytest.param("4.3", entropy_factory(log=torch.log2), "bits", id="4.3-log2"),
    pytest.param("4.3", entropy_factory(sign=1), "minus the sum", id="4.3-sign"),
    pytest.param("4.3", entropy_factory(reduce="mean"), "mean of -w log w", id="4.3-mean-not-sum"),
    pytest.param("4.3", lambda w: entropy_factory()(w.transpose(-2, -1)) if w.dim() > 2 else entropy_factory()(w),
                 "over the last axis", id="4.3-wrong-axis"),
    pytest.param("4.4", split_by_reshape, "mixes positions", id="4.4-reshape-without-transpose"),
    pytest.param("4.4", split_interleaved, "every n_head-th channel", id="4.4-interleaved"),
    pytest.param("4.4", split_no_transpose, "(B, n_head, T, C // n_head)", id="4.4-no-transpose"),
    pytest.param("4.4", split_hard_coded, "n_head = 4", id="4.4-hard-coded-three-heads"),
    pytest.param("4.5", lambda y: y.reshape(y.shape[0], y.shape[2], -1), "mixes positions",
                 id="4.5-no-transpose"),
    pytest.param("4.5", lambda y: y.permute(0, 2, 3, 1).reshape(y.shape[0], y.shape[2], -1),
                 "interleave the heads", id="4.5-interleaved"),
    pytest.param("4.5", lambda y: y.transpose(1, 2).view(y.shape[0], y.shape[2], -1),
                 ".contiguous() before .view", id="4.5-view-without-contiguous"),
    pytest.param("4.5", lambda y: y.transpose(1, 2), "(B, T, n_head * h)", id="4.5-not-merged"),
    pytest.param("4.6", mask_after_ignoring_past, "ignore the earlier positions", id="4.6-past-ignored"),
    pytest.param("4.6", mask_after_factory(diagonal_shift=1), "off by one", id="4.6-one-ahead"),
    pytest.param("4.6", mask_after_factory(square=True), "past + T", id="4.6-square"),
    pytest.param("4.6", mask_after_factory(device_ok=False), "device", id="4.6-device-ignored"),
    pytest.param("4.6", lambda past, T, device=None: _tril(T, past, past + T).float(), "bool",
                 id="4.6-float-mask"),
    pytest.param("4.7", fused_factory(prefix="is_causal"), "top-left corner", id="4.7-is-causal-after-a-prefix"),
    pytest.param("4.7", fused_factory(prefix="unmasked"), "future must still be hidden",
                 id="4.7-no-mask-after-a-prefix"),
    pytest.param("4.7", fused_factory(prefix="none"), "ordinary causal mask is missing", id="4.7-never-masked"),
    pytest.param("4.7", fused_factory(dropout=False), "nothing was dropped", id="4.7-dropout-ignored"),
    pytest.param("4.8", MergeNoTranspose, "mixes positions", id="4.8-merge-no-transpose"),
    pytest.param("4.8", SplitByReshape, "heads split wrongly", id="4.8-split-by-reshape"),
    pytest.param("4.8", QKSwapped, "q | k | v", id="4.8-q-k-swapped"),
    pytest.param("4.8", NoProjection, "output projection is missing", id="4.8-no-projection"),
    pytest.param("4.8", NoCausalMask, "no causal mask", id="4.8-no-causal-mask"),
    pytest.param("4.8", ExplicitPathUnmasked, "with need_weights=True query i puts weight on keys after i",
                 id="4.8-explicit-path-unmasked"),
    pytest.param("4.8", FunctionalDropout, "deterministic", id="4.8-dropout-in-eval"),
    pytest.param("4.8", WeightsAfterDropout, "before dropout", id="4.8-returns-dropped-weights"),
    pytest.param("4.8", NoBiasOption, "bias=False", id="4.8-bias-ignored"),
    pytest.param("4.8", HardCodedHeads, "head_size must be n_embd // n_head", id="4.8-hard-coded-heads"),
    pytest.param("4.8", FusedDropoutInEval, "no dropout in evaluation", id="4.8-fused-dropout-in-eval"),
    pytest.param("4.8", FusedNeverDrops, "gave the same output", id="4.8-fused-path-never-drops"),
    pytest.param("4.9", IgnoresPast, "the mask ignores past", id="4.9-mask-ignores-the-cache"),
    pytest.param("4.9", PastAfterUpdate, "cache.length read before", id="4.9-past-read-after-update"),
    pytest.param("4.9", CacheNotRead, "do not see the earlier positions", id="4.9-cache-not-read"),
    pytest.param("4.9", CacheNeverUpdated, "cache.update(k, v)", id="4.9-cache-never-updated"),
    pytest.param("4.10", decoder_factory(batch_first=False, mask="none", positions=False),
                 "sequences of a batch are mixing", id="4.10-the-naive-decoder"),
    pytest.param("4.10", decoder_factory(batch_first=False), "sequences of a batch are mixing",
                 id="4.10-batch-first-still-false"),
    pytest.param("4.10", decoder_factory(mask="none"), "sees the future", id="4.10-no-causal-mask"),
    pytest.param("4.10", decoder_mask_gets_padding_convention, "sees the future",
                 id="4.10-mask-convention-inverted"),
    pytest.param("4.10", decoder_factory(positions=False), "bag of earlier tokens", id="4.10-positions-not-added"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING)
def test_reference_passes(exercise_id, candidate):
    result = run_check(exercise_id, candidate)
    assert result.status == "passed", result.message


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING)
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_unfinished_exercise_is_not_done():
    def todo(*args, **kwargs):
        raise NotImplementedError
    for eid in ("4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8", "4.9", "4.10"):
        assert run_check(eid, todo).status == "not done"


def test_checks_leave_the_global_random_stream_alone():
    """The checks run in the middle of the chapter: the cells after them draw the same numbers."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for eid, candidate in (("4.2", attention.scaled_dot_product_attention),
                           ("4.8", CausalSelfAttention), ("4.9", CausalSelfAttention),
                           ("4.10", decoder_factory())):
        assert run_check(eid, candidate).passed
    assert torch.equal(torch.rand(3), expected)
