"""Chapter 4 checks: the reference passes, and each typical mistake is rejected with its hint."""
import math

import pytest
import torch
import torch.nn.functional as F

from gptlib.attention import merge_heads, scaled_dot_product_attention, split_heads
from gptlib.exercises import run_check


def _tril(T, diagonal=0):
    return torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=diagonal)


# ------------------------------------------------------------------ 4.1 my_attention(q, k, v, mask)
def attn_ref(q, k, v, mask=None):
    return scaled_dot_product_attention(q, k, v, mask=mask)


def attn_factory(scale="sqrt", dim=-1, mask_mode="fill"):
    def attn(q, k, v, mask=None):
        s = q @ k.transpose(-2, -1)
        if scale == "sqrt":
            s = s / math.sqrt(q.shape[-1])
        elif scale == "dk":
            s = s / q.shape[-1]
        if mask is not None and mask_mode == "fill":
            s = s.masked_fill(~mask, float("-inf"))
        elif mask is not None and mask_mode == "inverted":
            s = s.masked_fill(mask, float("-inf"))
        w = torch.softmax(s, dim=dim)
        if mask is not None and mask_mode == "after":
            w = w * mask
        return w @ v, w
    return attn


# ------------------------------------------------------------------ 4.2 my_causal_attention(q, k, v)
def causal_factory(diagonal=0, use_mask=True, upper=False, fill=float("-inf"), scale=True, dim=-1):
    def attn(q, k, v):
        T = q.shape[-2]
        s = q @ k.transpose(-2, -1)
        if scale:
            s = s / math.sqrt(q.shape[-1])
        if use_mask:
            allowed = _tril(T, diagonal)
            if upper:
                allowed = allowed.T
            s = s.masked_fill(~allowed, fill)
        return torch.softmax(s, dim=dim) @ v
    return attn


# ------------------------------------------------------------------ 4.4 my_self_attention(...)
def self_attention_factory(merge="ok", split="ok", order=(0, 1, 2), project=True, causal=True):
    def fwd(x, c_attn, c_proj, n_head):
        B, T, C = x.shape
        h = C // n_head
        parts = c_attn(x).split(C, dim=-1)
        q, k, v = (parts[i] for i in order)
        if split == "ok":
            q, k, v = (split_heads(t, n_head) for t in (q, k, v))
        else:
            q, k, v = (t.reshape(B, n_head, T, h) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if merge == "ok":
            y = merge_heads(y)
        elif merge == "no_transpose":
            y = y.reshape(B, T, C)
        else:
            y = y.permute(0, 2, 3, 1).reshape(B, T, C)
        return c_proj(y) if project else y
    return fwd


# ------------------------------------------------------------------ the table
PASSING = [  # (exercise, candidate); the id names it
    pytest.param("4.1", attn_ref, id="4.1-library"),
    pytest.param("4.1", attn_factory(), id="4.1-reference"),
    pytest.param("4.2", causal_factory(), id="4.2-reference"),
    pytest.param("4.2", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
                 id="4.2-torch-sdpa"),
    pytest.param("4.3", merge_heads, id="4.3-library"),
    pytest.param("4.4", self_attention_factory(), id="4.4-reference"),
]

FAILING = [  # (exercise, candidate, a phrase its hint must contain); the id names the mistake
    pytest.param("4.1", attn_factory(scale=None), "sqrt(d_k)", id="4.1-unscaled"),
    pytest.param("4.1", attn_factory(scale="dk"), "you divided by d_k", id="4.1-divided-by-dk"),
    pytest.param("4.1", attn_factory(dim=-2), "wrong axis", id="4.1-softmax-over-queries"),
    pytest.param("4.1", attn_factory(mask_mode="ignored"), "mask was ignored", id="4.1-mask-ignored"),
    pytest.param("4.1", attn_factory(mask_mode="inverted"), "inverted", id="4.1-mask-inverted"),
    pytest.param("4.1", attn_factory(mask_mode="after"), "after the softmax", id="4.1-mask-after-softmax"),
    pytest.param("4.1", lambda q, k, v, mask=None: (attn_ref(q, k, v, mask)[1], attn_ref(q, k, v, mask)[1]),
                 "weights @ v", id="4.1-weights-not-applied"),
    pytest.param("4.1", lambda q, k, v, mask=None: attn_ref(q, k, v, mask)[0], "tuple (out, weights)",
                 id="4.1-no-weights"),
    pytest.param("4.2", causal_factory(diagonal=1), "position i can see position i+1",
                 id="4.2-one-future-token"),
    pytest.param("4.2", causal_factory(diagonal=-1), "cannot see itself", id="4.2-diagonal-excluded"),
    pytest.param("4.2", causal_factory(diagonal=-1, fill=-1e9), "cannot see itself",
                 id="4.2-diagonal-excluded-finite-fill"),
    pytest.param("4.2", causal_factory(use_mask=False), "no causal mask", id="4.2-no-mask"),
    pytest.param("4.2", causal_factory(upper=True), "upper triangle", id="4.2-upper-triangular"),
    pytest.param("4.2", causal_factory(scale=False), "sqrt(d_k)", id="4.2-unscaled"),
    pytest.param("4.2", causal_factory(dim=-2), "wrong axis", id="4.2-softmax-over-queries"),
    pytest.param("4.2", lambda q, k, v: (causal_factory()(q, k, v), None), "not a tuple", id="4.2-tuple"),
    pytest.param("4.3", lambda y: y.reshape(y.shape[0], y.shape[2], -1),
                 "transpose to (B, T, n_head, h) first", id="4.3-no-transpose"),
    pytest.param("4.3", lambda y: y.permute(0, 2, 3, 1).reshape(y.shape[0], y.shape[2], -1),
                 "interleave the heads", id="4.3-interleaved"),
    pytest.param("4.3", lambda y: y.transpose(1, 2).view(y.shape[0], y.shape[2], -1),
                 ".contiguous() before .view", id="4.3-view-without-contiguous"),
    pytest.param("4.3", lambda y: y.transpose(1, 2), "shape (B, T, n_head * h)", id="4.3-not-merged"),
    pytest.param("4.4", self_attention_factory(merge="no_transpose"), "heads merged in the wrong order",
                 id="4.4-merge-no-transpose"),
    pytest.param("4.4", self_attention_factory(merge="interleaved"), "interleave the heads",
                 id="4.4-merge-interleaved"),
    pytest.param("4.4", self_attention_factory(split="reshape"), "heads split wrongly",
                 id="4.4-split-by-reshape"),
    pytest.param("4.4", self_attention_factory(order=(1, 0, 2)), "q | k | v", id="4.4-q-k-swapped"),
    pytest.param("4.4", self_attention_factory(project=False), "output projection is missing",
                 id="4.4-no-projection"),
    pytest.param("4.4", self_attention_factory(causal=False), "no causal mask", id="4.4-no-causal-mask"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING)
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING)
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_unfinished_exercise_is_not_done():
    def todo(*args):
        raise NotImplementedError
    for eid in ("4.1", "4.2", "4.3", "4.4"):
        assert run_check(eid, todo).status == "not done"
