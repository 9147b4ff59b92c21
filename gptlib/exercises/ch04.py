"""Checks for Chapter 4 (multi-head attention). Hand-written.

Each check compares the learner's code with gptlib's reference on random inputs. When the answer
is wrong, it also computes what the usual mistakes would have produced (no scaling, softmax over
the wrong axis, a mask off by one, heads merged in the wrong order, ...) and, if the learner's
answer matches one of them, names that mistake.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from gptlib.attention import CausalSelfAttention, merge_heads, scaled_dot_product_attention
from gptlib.exercises import CheckFailed, exercise, expect

_ATOL = 1e-5


def _close(a, b) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), atol=_ATOL, rtol=1e-4, equal_nan=True))


def _diagnose(got: torch.Tensor, mistakes: dict[str, Callable[[], torch.Tensor]],
              generic: str) -> None:
    """Raise CheckFailed naming the first known mistake that reproduces ``got``."""
    for hint, make in mistakes.items():
        try:
            if _close(got, make()):
                raise CheckFailed(hint)
        except CheckFailed:
            raise
        except Exception:   # a mistake that cannot be computed for these shapes: skip it
            continue
    raise CheckFailed(generic)


def _softmax_scores(q, k, scale=True, dim=-1, mask=None):
    s = q @ k.transpose(-2, -1)
    if scale:
        s = s / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=dim)


def _tril(T, diagonal=0):
    return torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=diagonal)


_NO_SCALE = ("the scores are not scaled: divide q @ k^T by sqrt(d_k) (the size of the last "
             "dimension of q) before the softmax")
_SCALE_BY_DK = "you divided by d_k; divide by sqrt(d_k) (math.sqrt(q.shape[-1]))"
_WRONG_AXIS = ("softmax over the wrong axis: each query's weights over the keys must sum to one, "
               "so use softmax(scores, dim=-1) (the last axis), not dim=-2")
_MASK_INVERTED = ("the mask is inverted: True means attention is ALLOWED, so fill the positions "
                  "where mask is False (masked_fill(~mask, -inf))")
_MASK_IGNORED = "the mask was ignored: fill positions where mask is False with -inf before the softmax"
_MASK_AFTER = ("the mask was applied after the softmax (weights set to 0): the remaining weights no "
               "longer sum to one; fill the scores with -inf before the softmax")


# ----------------------------------------------------------------------------------- 4.1
@exercise("4.1", "Scaled dot-product attention")
def _(my_attention):
    g = torch.Generator().manual_seed(41)
    q = torch.randn(2, 3, 5, 16, generator=g) * 2
    k = torch.randn(2, 3, 7, 16, generator=g) * 2
    v = torch.randn(2, 3, 7, 4, generator=g)
    out = my_attention(q, k, v)
    expect(isinstance(out, tuple) and len(out) == 2, "return a tuple (out, weights)")
    got_out, got_w = out
    ref_out, ref_w = scaled_dot_product_attention(q, k, v)
    expect(isinstance(got_w, torch.Tensor) and got_w.shape == ref_w.shape,
           f"weights must have shape (..., T_q, T_k) = {tuple(ref_w.shape)}, got "
           f"{tuple(got_w.shape) if isinstance(got_w, torch.Tensor) else type(got_w).__name__}")
    expect(isinstance(got_out, torch.Tensor) and got_out.shape == ref_out.shape,
           f"out must have shape (..., T_q, d_v) = {tuple(ref_out.shape)}; did you multiply the "
           f"weights by v (weights @ v)?")
    if not _close(got_w, ref_w):
        _diagnose(got_w, {
            _NO_SCALE: lambda: _softmax_scores(q, k, scale=False),
            _SCALE_BY_DK: lambda: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], dim=-1),
            _WRONG_AXIS: lambda: _softmax_scores(q, k, dim=-2),
        }, "the weights differ from softmax(q @ k^T / sqrt(d_k), dim=-1); check each step on a "
           "small example")
    expect(_close(got_out, ref_out), "the weights are right but out is not: out = weights @ v")

    T = 6
    q, k, v = (torch.randn(4, T, 8, generator=g) * 2 for _ in range(3))
    mask = _tril(T)
    mask[2, 0] = False      # not just causal: any boolean pattern must work
    got_out, got_w = my_attention(q, k, v, mask=mask)
    ref_out, ref_w = scaled_dot_product_attention(q, k, v, mask=mask)
    if not _close(got_w, ref_w):
        def masked_after():
            w = _softmax_scores(q, k) * mask
            return w
        _diagnose(got_w, {
            _MASK_IGNORED: lambda: _softmax_scores(q, k),
            _MASK_INVERTED: lambda: _softmax_scores(q, k, mask=~mask),
            _MASK_AFTER: masked_after,
            _NO_SCALE: lambda: _softmax_scores(q, k, scale=False, mask=mask),
            _WRONG_AXIS: lambda: _softmax_scores(q, k, dim=-2, mask=mask),
        }, "with a mask the weights are wrong: positions where mask is False must get weight 0 "
           "and each row must still sum to one")
    expect(_close(got_out, ref_out), "with a mask, out must still be weights @ v")


# ----------------------------------------------------------------------------------- 4.2
_OFF_BY_ONE_AHEAD = ("mask off by one: position i can see position i+1 (torch.tril(..., diagonal=1)); "
                     "it must see 0..i only, so use diagonal=0")
_OFF_BY_ONE_SELF = ("mask off by one: position i cannot see itself (torch.tril(..., diagonal=-1) or "
                    "triu instead of tril); position i must see 0..i, itself included — otherwise "
                    "the first row is all -inf and becomes NaN")
_NO_MASK = "there is no causal mask: every position sees the future; keep only j <= i (torch.tril)"
_UPPER = ("the mask keeps the upper triangle (torch.triu): position i sees the future i..T-1; "
          "keep the lower triangle, j <= i (torch.tril)")


@exercise("4.2", "Causal attention with your own mask")
def _(my_causal_attention):
    g = torch.Generator().manual_seed(42)
    T = 7
    q, k, v = (torch.randn(2, 3, T, 8, generator=g) * 2 for _ in range(3))
    got = my_causal_attention(q, k, v)
    ref, _ = scaled_dot_product_attention(q, k, v, mask=_tril(T))
    expect(isinstance(got, torch.Tensor), "return only the output tensor (..., T, d), not a tuple")
    expect(got.shape == ref.shape, f"the output must have shape {tuple(ref.shape)}, got {tuple(got.shape)}")
    if not _close(got, ref):
        if torch.isnan(got).any():
            raise CheckFailed(_OFF_BY_ONE_SELF if torch.isnan(got[..., 0, :]).all() else
                              "the output has NaNs: a row of the scores is all -inf")

        def attend(mask, scale=True, dim=-1):
            return _softmax_scores(q, k, scale=scale, dim=dim, mask=mask) @ v
        _diagnose(got, {
            _OFF_BY_ONE_AHEAD: lambda: attend(_tril(T, 1)),
            _OFF_BY_ONE_SELF: lambda: torch.softmax(
                (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~_tril(T, -1), -1e9),
                dim=-1) @ v,
            _NO_MASK: lambda: attend(None),
            _UPPER: lambda: attend(_tril(T).T),
            _NO_SCALE: lambda: attend(_tril(T), scale=False),
            _WRONG_AXIS: lambda: attend(_tril(T), dim=-2),
        }, "the output differs from causal attention; position i must average the values of "
           "positions 0..i with weights softmax(q_i . k_j / sqrt(d_k))")
    # The future must not leak, whatever else: change the last position's key and value.
    k2, v2 = k.clone(), v.clone()
    k2[..., -1, :] += 5.0
    v2[..., -1, :] -= 5.0
    got2 = my_causal_attention(q, k2, v2)
    expect(torch.allclose(got[..., :-1, :], got2[..., :-1, :], atol=_ATOL), _OFF_BY_ONE_AHEAD)


# ----------------------------------------------------------------------------------- 4.3
_MERGE_NO_TRANSPOSE = ("heads merged in the wrong order: y.reshape(B, T, C) on (B, n_head, T, h) "
                       "mixes positions; transpose to (B, T, n_head, h) first "
                       "(y.transpose(1, 2)), then reshape")
_MERGE_INTERLEAVED = ("heads merged in the wrong order: your channels interleave the heads "
                      "(head-size-major); channels [i*h, (i+1)*h) must be head i: use "
                      "y.transpose(1, 2).reshape(B, T, n_head * h)")


_VIEW_HINT = ("`.view` needs a contiguous tensor and a transposed one is not: use .reshape, or "
              ".contiguous() before .view")


def _merge(my_merge_heads, y):
    try:
        return my_merge_heads(y)
    except RuntimeError as err:
        if "view" in str(err):
            raise CheckFailed(f"{_VIEW_HINT} (your code raised: {str(err).splitlines()[0]})") from None
        raise


@exercise("4.3", "Merge the heads")
def _(my_merge_heads):
    g = torch.Generator().manual_seed(43)
    B, n_head, T, h = 2, 3, 5, 4
    y = torch.randn(B, n_head, T, h, generator=g)
    got = _merge(my_merge_heads, y)
    ref = merge_heads(y)
    expect(isinstance(got, torch.Tensor) and got.shape == ref.shape,
           f"the result must have shape (B, T, n_head * h) = {tuple(ref.shape)}, got "
           f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
    if not torch.equal(got, ref):
        _diagnose(got, {
            _MERGE_NO_TRANSPOSE: lambda: y.reshape(B, T, n_head * h),
            _MERGE_INTERLEAVED: lambda: y.permute(0, 2, 3, 1).reshape(B, T, n_head * h),
        }, "position t, channels [i*h, (i+1)*h) must hold y[:, i, t]: head i's output at t")
    # A non-contiguous input (as attention produces after a transpose) must work too.
    y_nc = torch.randn(B, T, n_head, h, generator=g).transpose(1, 2)
    expect(torch.equal(_merge(my_merge_heads, y_nc), merge_heads(y_nc)),
           "your function is wrong on a non-contiguous input (what attention returns after a "
           "transpose): use .reshape, or .contiguous() before .view")


# ----------------------------------------------------------------------------------- 4.4
@exercise("4.4", "Multi-head causal self-attention")
def _(my_self_attention):
    torch.manual_seed(44)
    g = torch.Generator().manual_seed(44)
    B, T, C, n_head = 2, 6, 24, 4
    ref_layer = CausalSelfAttention(C, n_head).eval()
    x = torch.randn(B, T, C, generator=g)
    with torch.no_grad():
        got = my_self_attention(x, ref_layer.c_attn, ref_layer.c_proj, n_head)
        ref = ref_layer(x)
    expect(isinstance(got, torch.Tensor) and got.shape == ref.shape,
           f"the output must have shape (B, T, C) = {tuple(ref.shape)}, got "
           f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
    if _close(got, ref):
        return
    h = C // n_head

    def variant(order=(0, 1, 2), split_ok=True, merge="ok", project=True, causal=True, scale=True):
        with torch.no_grad():
            parts = ref_layer.c_attn(x).split(C, dim=-1)
            q, k, v = (parts[i] for i in order)
            if split_ok:
                q, k, v = (t.view(B, T, n_head, h).transpose(1, 2) for t in (q, k, v))
            else:
                q, k, v = (t.reshape(B, n_head, T, h) for t in (q, k, v))
            mask = _tril(T) if causal else None
            y = _softmax_scores(q, k, scale=scale, mask=mask) @ v
            if merge == "ok":
                y = y.transpose(1, 2).reshape(B, T, C)
            elif merge == "no_transpose":
                y = y.reshape(B, T, C)
            else:
                y = y.permute(0, 2, 3, 1).reshape(B, T, C)
            return ref_layer.c_proj(y) if project else y

    _diagnose(got, {
        _MERGE_NO_TRANSPOSE: lambda: variant(merge="no_transpose"),
        _MERGE_INTERLEAVED: lambda: variant(merge="interleaved"),
        ("heads split wrongly: x.reshape(B, n_head, T, h) mixes positions; view as "
         "(B, T, n_head, h) and then transpose(1, 2)"): lambda: variant(split_ok=False),
        ("q, k and v come out of c_attn in the order q | k | v: "
         "q, k, v = c_attn(x).split(C, dim=-1)"): lambda: variant(order=(1, 0, 2)),
        "the output projection is missing: return c_proj(merged heads)": lambda: variant(project=False),
        _NO_MASK: lambda: variant(causal=False),
        _NO_SCALE: lambda: variant(scale=False),
    }, "the output differs from CausalSelfAttention with the same weights: project with c_attn, "
       "split q|k|v into heads, causal attention per head, merge, then c_proj")
