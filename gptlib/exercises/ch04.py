"""Checks for Chapter 4 (multi-head attention). Hand-written.

The learner builds ``gptlib.attention`` in the chapter's exported cells; these checks never compare
with ``gptlib.attention`` itself (a learner's own export would pass against itself). They compare
with PyTorch (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` given the same
weights), with exact properties (shapes, rows summing to one, no future leak, head i holding
channels [i*h, (i+1)*h)) and with the small private references below. When an answer is wrong
they also compute what the usual mistakes would have produced (no scaling, softmax over the wrong
axis, a mask off by one, heads merged in the wrong order, ...) and, when the learner's answer is one
of them, name that mistake: first the property that broke, then where to look.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gptlib.exercises import CheckFailed, case_seed, exercise, expect

_ATOL = 1e-5


def _close(a, b, atol=_ATOL) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4, equal_nan=True))


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


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


# ------------------------------------------------------------------ private references
def _tril(T, diagonal=0, cols=None):
    return torch.ones(T, T if cols is None else cols, dtype=torch.bool).tril(diagonal=diagonal)


def _softmax_scores(q, k, scale=True, dim=-1, mask=None):
    """softmax(q k^T / sqrt(d_k)) with masked positions at -inf; a fully masked row gives zeros."""
    s = q @ k.transpose(-2, -1)
    if scale:
        s = s / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(s, dim=dim), nan=0.0)


def _split(x, n_head):
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).permute(0, 2, 1, 3)


def _merge(y):
    B, n_head, T, h = y.shape
    return y.permute(0, 2, 1, 3).reshape(B, T, n_head * h)


_NO_SCALE = ("the scores are not scaled: their spread grows with d_k (the size of the last "
             "dimension of q); divide q @ k^T by sqrt(d_k) before the softmax")
_SCALE_BY_DK = ("the scores are divided by d_k: the weights are too flat; divide by sqrt(d_k) "
                "(math.sqrt(q.shape[-1]))")
_WRONG_AXIS = ("the weights of each query do not sum to one over the keys: the softmax runs over "
               "the wrong axis; it must normalise the last axis (dim=-1), not dim=-2")
_MASK_INVERTED = ("weight goes exactly where the mask is False: True means attention is ALLOWED, "
                  "so hide the positions where mask is False")
_MASK_IGNORED = ("positions where the mask is False still get weight: the mask was ignored; hide "
                 "them (Chapter 3's masked_softmax) before the weights are normalised")
_MASK_AFTER = ("with a mask the rows no longer sum to one: the masked weights were set to 0 after "
               "the softmax; mask the scores before the softmax (Chapter 3's masked_softmax)")
_FULLY_MASKED_NAN = ("a query that may attend to nothing (a fully masked row, e.g. padding) gets "
                     "NaN weights: -inf everywhere in a row makes softmax divide 0 by 0; Chapter "
                     "3's masked_softmax gives such a row all-zero weights")
_HARD_CODED = ("right for one shape, wrong for another: something depends on a fixed size; read "
               "d_k (and every other size) from the tensors you are given")


# ----------------------------------------------------------------------------------- 4.1
def _weight_cases(g):
    """(q, k, mask) triples: several shapes and d_k, masks that are not just causal."""
    q = torch.randn(2, 3, 5, 16, generator=g) * 2
    k = torch.randn(2, 3, 7, 16, generator=g) * 2
    yield "q (2, 3, 5, 16), k (2, 3, 7, 16), no mask", q, k, None
    q = torch.randn(6, 5, generator=g) * 2
    k = torch.randn(6, 5, generator=g) * 2
    yield "q and k (6, 5), no mask", q, k, None
    T = 6
    q, k = (torch.randn(4, T, 8, generator=g) * 2 for _ in range(2))
    mask = _tril(T)
    mask[2, 0] = False      # not just causal: any boolean pattern must work
    yield "q and k (4, 6, 8) with a causal mask that also hides key 0 from query 2", q, k, mask
    q, k = (torch.randn(2, 2, T, 4, generator=g) * 2 for _ in range(2))
    yield "q and k (2, 2, 6, 4) with a (6, 6) causal mask (broadcast over batch and heads)", q, k, _tril(T)


_FROM_SCRATCH = ("F.scaled_dot_product_attention", "torch.nn.functional.scaled_dot_product_attention",
                 "nn.MultiheadAttention", "torch.nn.MultiheadAttention")


@exercise("4.1", "Attention weights", builds="gptlib.attention:attention_weights", tier="core",
          difficulty=2, importance=3, forbids=_FROM_SCRATCH)
def _(attention_weights):
    g = torch.Generator().manual_seed(case_seed(41))
    right_before = False    # a case already passed: a later failure points at a fixed size
    for what, q, k, mask in _weight_cases(g):
        got = attention_weights(q, k, mask)
        ref = _softmax_scores(q, k, mask=mask)
        expect(isinstance(got, torch.Tensor) and got.shape == ref.shape,
               f"for {what} the weights must have shape (..., T_q, T_k) = {tuple(ref.shape)}, "
               f"got {_shape(got)}")
        if _close(got, ref):
            right_before = True
            continue
        mistakes = {
            _NO_SCALE: lambda: _softmax_scores(q, k, scale=False, mask=mask),
            _SCALE_BY_DK: lambda: _softmax_scores(q * math.sqrt(q.shape[-1]) / q.shape[-1], k, mask=mask),
            _WRONG_AXIS: lambda: _softmax_scores(q, k, dim=-2, mask=mask),
        }
        if mask is not None:
            mistakes = {
                _MASK_IGNORED: lambda: _softmax_scores(q, k),
                _MASK_INVERTED: lambda: _softmax_scores(q, k, mask=~mask),
                _MASK_AFTER: lambda: _softmax_scores(q, k) * mask,
                **mistakes,
            }
        _diagnose(got, mistakes,
                  (f"{_HARD_CODED}. " if right_before else "") +
                  f"for {what} the weights differ from softmax(q @ k^T / sqrt(d_k)) over the keys"
                  + (" with the hidden positions at weight 0" if mask is not None else "")
                  + ": check each step on a small example")
    # The edge case of Chapter 3: a query that may attend to nothing.
    q, k = torch.randn(1, 3, 4, generator=g), torch.randn(1, 3, 4, generator=g)
    mask = torch.tensor([[False, False, False], [True, False, False], [True, True, True]])
    got = attention_weights(q, k, mask)
    expect(not torch.isnan(got).any(), _FULLY_MASKED_NAN)
    expect(_close(got, _softmax_scores(q, k, mask=mask)),
           "with a fully masked first row (mask[0] all False) the weights are wrong: that row must "
           "be all zeros and the other rows must still sum to one")


# ----------------------------------------------------------------------------------- 4.2
@exercise("4.2", "Scaled dot-product attention with dropout",
          builds="gptlib.attention:scaled_dot_product_attention", tier="warm-up", difficulty=1,
          importance=2, forbids=_FROM_SCRATCH)
def _(scaled_dot_product_attention):
    g = torch.Generator().manual_seed(case_seed(42))
    cases = [((2, 3, 5, 16), (2, 3, 7, 16), (2, 3, 7, 4), None),
             ((4, 6, 8), (4, 6, 8), (4, 6, 8), _tril(6))]
    for q_shape, k_shape, v_shape, mask in cases:
        q, k, v = (torch.randn(*s, generator=g) * 2 for s in (q_shape, k_shape, v_shape))
        out = scaled_dot_product_attention(q, k, v, mask)
        expect(isinstance(out, tuple) and len(out) == 2,
               f"return a pair (out, weights); got {type(out).__name__}")
        got_out, got_w = out
        ref_w = _softmax_scores(q, k, mask=mask)
        ref_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        expect(isinstance(got_w, torch.Tensor) and got_w.shape == ref_w.shape,
               f"for q {q_shape}, k {k_shape}, v {v_shape} the weights must have shape (..., T_q, "
               f"T_k) = {tuple(ref_w.shape)}, got {_shape(got_w)}")
        expect(_close(got_w, ref_w), f"for q {q_shape} the weights differ from attention_weights(q, "
               "k, mask): compute them with the function you wrote in Exercise 4.1")
        expect(isinstance(got_out, torch.Tensor) and got_out.shape == ref_out.shape,
               f"for v {v_shape} out must have shape (..., T_q, d_v) = {tuple(ref_out.shape)}, got "
               f"{_shape(got_out)}: each query's output is a weighted average of the rows of v")
        expect(_close(got_out, ref_out),
               f"for q {q_shape} the weights are right but out is not: out = weights @ v")
    # Dropout: with v the identity, out shows the weights that mixed the values.
    T = 8
    q, k = (torch.randn(3, T, 8, generator=g) for _ in range(2))
    eye = torch.eye(T).expand(3, T, T)
    ref_w = _softmax_scores(q, k, mask=_tril(T))
    p = 0.5
    torch.manual_seed(case_seed(0))
    used, weights = scaled_dot_product_attention(q, k, eye, _tril(T), dropout_p=p)
    expect(_close(weights, ref_w), "with dropout_p > 0 the returned weights must be the pattern "
           "before dropout (rows summing to one); drop only the copy that multiplies v")
    expect(not _close(used, ref_w), "with dropout_p = 0.5 nothing was dropped: apply dropout "
           "(F.dropout(weights, p=dropout_p)) to the weights before they mix the values")
    kept = used != 0
    expect(bool(kept.any()) and _close(used[kept], ref_w[kept] / (1 - p)),
           "with dropout_p = 0.5 the weights that survive must be scaled by 1 / (1 - p) = 2 "
           "(inverted dropout, what F.dropout does), so that their expectation is unchanged")
    torch.manual_seed(case_seed(0))
    a = scaled_dot_product_attention(q, k, eye, _tril(T))[0]
    b = scaled_dot_product_attention(q, k, eye, _tril(T), dropout_p=0.0)[0]
    expect(torch.equal(a, b) and _close(a, ref_w), "with dropout_p = 0 (the default) nothing may "
           "be dropped: out must be exactly weights @ v")


# ----------------------------------------------------------------------------------- 4.3
def _entropy(w):
    return -torch.special.xlogy(w, w).sum(-1)


@exercise("4.3", "Entropy of attention rows", builds="gptlib.attention:attention_entropy",
          tier="warm-up", difficulty=1, importance=1)
def _(attention_entropy):
    g = torch.Generator().manual_seed(case_seed(43))
    n = 8
    uniform = torch.full((2, n), 1.0 / n)
    got = attention_entropy(uniform)
    expect(isinstance(got, torch.Tensor) and got.shape == (2,),
           f"weights of shape (2, {n}) (two rows) must give one entropy per row, shape (2,); got "
           f"{_shape(got)}")
    if not _close(got, torch.full((2,), math.log(n))):
        _diagnose(got, {
            "uniform weights over 8 keys give log2(8) = 3: that is bits; the entropy is in nats, "
            "use the natural logarithm (log)": lambda: torch.full((2,), math.log2(n)),
            "uniform weights over 8 keys give -ln 8: the entropy is minus the sum of w log w":
                lambda: torch.full((2,), -math.log(n)),
            "uniform weights over 8 keys give the mean of -w log w, not its sum over the keys":
                lambda: torch.full((2,), math.log(n) / n),
        }, f"uniform weights over {n} keys must give ln {n} = {math.log(n):.4f} nats, got "
           f"{got.tolist()}")
    one_hot = torch.zeros(3, 5)
    one_hot[torch.arange(3), torch.tensor([0, 2, 4])] = 1.0
    got = attention_entropy(one_hot)
    expect(not torch.isnan(got).any(),
           "a row that puts all its weight on one key gives NaN: its other weights are 0, and "
           "0 * log 0 is NaN in floating point although its limit is 0; make those terms 0")
    expect(_close(got, torch.zeros(3)), f"a one-hot row must have entropy 0, got {got.tolist()}")
    # Causal attention rows (zeros above the diagonal), with batch and head dimensions.
    w = _softmax_scores(*(torch.randn(2, 3, 6, 4, generator=g) for _ in range(2)), mask=_tril(6))
    got = attention_entropy(w)
    expect(isinstance(got, torch.Tensor) and got.shape == (2, 3, 6),
           f"weights (2, 3, 6, 6) must give one entropy per query row, (2, 3, 6); got {_shape(got)}")
    expect(not torch.isnan(got).any(), "causal weights (zeros above the diagonal) give NaN: 0 * log 0 "
           "must count as 0")
    expect(_close(got, _entropy(w)), "on causal attention weights (2, 3, 6, 6) the entropies are "
           "wrong: each row's entropy is -sum_j w_j ln w_j, over the last axis (the keys)")


# ----------------------------------------------------------------------------------- 4.4
_SPLIT_RESHAPE = ("heads split wrongly: position t of head 0 does not hold x[:, t, :h]; "
                  "x.reshape(B, n_head, T, h) mixes positions and channels; cut the channels first "
                  "(B, T, n_head, h), then move the head axis forward")
_SPLIT_INTERLEAVED = ("head i does not hold channels [i*h, (i+1)*h): your heads take every "
                      "n_head-th channel; view the channels as (n_head, h), head first")


@exercise("4.4", "Split the channels into heads", builds="gptlib.attention:split_heads",
          tier="core", difficulty=2, importance=3)
def _(split_heads):
    g = torch.Generator().manual_seed(case_seed(44))
    for B, T, C, n_head in [(2, 5, 12, 3), (1, 7, 24, 4), (3, 4, 24, 6), (2, 3, 8, 1)]:
        x = torch.randn(B, T, C, generator=g)
        got = split_heads(x, n_head)
        h = C // n_head
        expect(isinstance(got, torch.Tensor) and got.shape == (B, n_head, T, h),
               f"x of shape {(B, T, C)} with n_head = {n_head} must give (B, n_head, T, C // n_head)"
               f" = {(B, n_head, T, h)}, got {_shape(got)}")
        if not torch.equal(got, _split(x, n_head)):
            _diagnose(got, {
                _SPLIT_RESHAPE: lambda: x.reshape(B, n_head, T, h),
                _SPLIT_INTERLEAVED: lambda: x.reshape(B, T, h, n_head).permute(0, 3, 1, 2),
            }, f"for x {(B, T, C)} and n_head = {n_head}, head i at position t must hold "
               f"x[:, t, i*h:(i+1)*h] with h = {h}")


# ----------------------------------------------------------------------------------- 4.5
_MERGE_NO_TRANSPOSE = ("heads merged in the wrong order: the output at position t is not made of "
                       "the heads' outputs at t; y.reshape(B, T, C) on (B, n_head, T, h) mixes "
                       "positions; bring the positions forward, (B, T, n_head, h), then reshape")
_MERGE_INTERLEAVED = ("heads merged in the wrong order: your channels interleave the heads "
                      "(head-size-major); channels [i*h, (i+1)*h) of position t must be head i's "
                      "output at t, exactly what split_heads cut")
_VIEW_HINT = ("`.view` needs a contiguous tensor and a transposed one is not: use .reshape, or "
              ".contiguous() before .view")


def _call_merge(merge_heads, y):
    try:
        return merge_heads(y)
    except RuntimeError as err:
        if "view" in str(err):
            raise CheckFailed(f"{_VIEW_HINT} (your code raised: {str(err).splitlines()[0]})") from None
        raise


@exercise("4.5", "Merge the heads", builds="gptlib.attention:merge_heads", tier="core",
          difficulty=2, importance=3)
def _(merge_heads):
    g = torch.Generator().manual_seed(case_seed(45))
    for B, n_head, T, h in [(2, 3, 5, 4), (1, 4, 7, 6), (3, 1, 4, 8)]:
        y = torch.randn(B, n_head, T, h, generator=g)
        got = _call_merge(merge_heads, y)
        expect(isinstance(got, torch.Tensor) and got.shape == (B, T, n_head * h),
               f"y of shape {(B, n_head, T, h)} must give (B, T, n_head * h) = {(B, T, n_head * h)}"
               f", got {_shape(got)}")
        if not torch.equal(got, _merge(y)):
            _diagnose(got, {
                _MERGE_NO_TRANSPOSE: lambda: y.reshape(B, T, n_head * h),
                _MERGE_INTERLEAVED: lambda: y.permute(0, 2, 3, 1).reshape(B, T, n_head * h),
            }, f"for y {(B, n_head, T, h)}, position t, channels [i*h, (i+1)*h) must hold "
               "y[:, i, t]: head i's output at t")
    # A non-contiguous input (what attention returns after a transpose) must work too.
    y_nc = torch.randn(2, 5, 3, 4, generator=g).transpose(1, 2)
    expect(torch.equal(_call_merge(merge_heads, y_nc), _merge(y_nc)),
           "your function is wrong on a non-contiguous input (what attention returns after a "
           "transpose): use .reshape, or .contiguous() before .view")


# ----------------------------------------------------------------------------------- 4.6
_PREFIX_IGNORED = ("the new queries ignore the earlier positions: with past = 3 cached positions, "
                   "query 0 (at position 3) must see keys 0..3, but yours sees only key 0; "
                   "shift the diagonal by past")
_PREFIX_AHEAD = ("off by one: new query i sees key past + i + 1, the token after itself; query i "
                 "(at position past + i) may see keys 0..past + i")
_PREFIX_SQUARE = ("the mask must have one column per key, past + T of them (the cached keys and "
                  "the new ones), and one row per new query")


@exercise("4.6", "The causal mask after a prefix", builds="gptlib.attention:_causal_mask_after",
          tier="core", difficulty=2, importance=2)
def _(causal_mask_after):
    for past, T in [(0, 5), (3, 4), (6, 1), (2, 6), (0, 1)]:
        got = causal_mask_after(past, T)
        ref = _tril(T, diagonal=past, cols=past + T)
        expect(isinstance(got, torch.Tensor) and tuple(got.shape) == (T, past + T),
               f"for past = {past}, T = {T} the mask must have shape (T, past + T) = "
               f"{(T, past + T)}, got {_shape(got)}" + ("" if past == 0 else f"; {_PREFIX_SQUARE}"))
        expect(got.dtype == torch.bool, f"the mask must be a bool tensor (True = may attend), got "
               f"{got.dtype}")
        if not torch.equal(got, ref):
            if torch.equal(got, _tril(T, 0, cols=past + T)):
                raise CheckFailed(_PREFIX_IGNORED)
            if torch.equal(got, _tril(T, past + 1, cols=past + T)):
                raise CheckFailed(_PREFIX_AHEAD)
            raise CheckFailed(f"for past = {past}, T = {T}: new query i is at position past + i "
                              f"and may attend to key j exactly when j <= past + i")
    got = causal_mask_after(2, 3, torch.device("meta"))
    expect(isinstance(got, torch.Tensor) and got.device.type == "meta",
           "the mask was not made on the device it was asked for: pass `device` on to every "
           "tensor you create, so the mask lives where the scores do")


# ----------------------------------------------------------------------------------- 4.7
_FUSED_TOP_LEFT = ("after a prefix (past = {past} cached positions, T = {T} new queries) new query "
                   "0 sees only key 0: is_causal=True aligns its triangle with the top-left corner "
                   "when there are fewer queries than keys; after a prefix pass attn_mask="
                   "_causal_mask_after(past, T) instead (is_causal only when past == 0)")
_FUSED_UNMASKED = ("after a prefix (past = {past}, T = {T}) new query i sees the keys after "
                   "position past + i: with several new queries the future must still be hidden; "
                   "pass attn_mask=_causal_mask_after(past, T)")
_FUSED_NOT_CAUSAL = ("without a prefix (past = 0) query i sees keys after i: the ordinary causal "
                     "mask is missing (is_causal=True)")


@exercise("4.7", "The fused kernel, after a prefix", builds="gptlib.attention:_attend_fused",
          tier="core", difficulty=2, importance=2)
def _(attend_fused):
    g = torch.Generator().manual_seed(case_seed(407))
    for B, H, past, T, h in [(2, 3, 0, 5, 4), (1, 2, 3, 4, 8), (2, 1, 6, 1, 4), (1, 4, 2, 6, 2)]:
        q = torch.randn(B, H, T, h, generator=g, dtype=torch.float64)
        k, v = (torch.randn(B, H, past + T, h, generator=g, dtype=torch.float64) for _ in range(2))
        where = f"q {(B, H, T, h)} after past = {past} positions (k and v {(B, H, past + T, h)})"
        got = attend_fused(q, k, v, past)
        ref = _softmax_scores(q, k, mask=_tril(T, diagonal=past, cols=past + T)) @ v
        expect(isinstance(got, torch.Tensor) and got.shape == ref.shape,
               f"{where}: the output must have the shape of q, {tuple(ref.shape)}; got {_shape(got)}")
        if not _close(got, ref, atol=1e-8):
            _diagnose(got, {
                _FUSED_TOP_LEFT.format(past=past, T=T):
                    lambda: _softmax_scores(q, k, mask=_tril(T, cols=past + T)) @ v,
                (_FUSED_UNMASKED if past else _FUSED_NOT_CAUSAL).format(past=past, T=T):
                    lambda: _softmax_scores(q, k) @ v,
            }, f"{where}: the output differs from softmax(q k^T / sqrt(d_k)) v with new query i "
               "seeing keys 0 .. past + i")
    # Dropout is handed on to the kernel (the kernel draws from torch's generator).
    q, k, v = (torch.randn(2, 2, 6, 4, generator=g) for _ in range(3))
    ref = _softmax_scores(q, k, mask=_tril(6)) @ v
    torch.manual_seed(case_seed(0))
    dropped = attend_fused(q, k, v, 0, 0.5)
    expect(not _close(dropped, ref), "with dropout_p = 0.5 nothing was dropped: pass dropout_p on "
           "to F.scaled_dot_product_attention")
    expect(_close(attend_fused(q, k, v, 0, 0.0), ref), "with dropout_p = 0 the output must be "
           "exactly the attention output (no dropout)")


# ----------------------------------------------------------------------------------- 4.8
class _ToyCache:
    """A layer's keys and values, as Chapter 7's cache keeps them (length, update)."""

    def __init__(self):
        self.length, self.k, self.v = 0, None, None

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        self.length = self.k.shape[2]
        return self.k, self.v


def _mha_like(layer, C, n_head):
    """nn.MultiheadAttention holding ``layer``'s weights (c_attn is its in-projection)."""
    bias = layer.c_attn.bias is not None
    mha = nn.MultiheadAttention(C, n_head, bias=bias, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(layer.c_attn.weight)
        mha.out_proj.weight.copy_(layer.c_proj.weight)
        if bias:
            mha.in_proj_bias.copy_(layer.c_attn.bias)
            mha.out_proj.bias.copy_(layer.c_proj.bias)
    return mha


def _layer_variant(layer, x, n_head, order=(0, 1, 2), split="ok", merge="ok", project=True,
                   causal=True, scale=True):
    """What a layer with one known mistake returns, with ``layer``'s own weights."""
    B, T, C = x.shape
    h = C // n_head
    parts = layer.c_attn(x).split(C, dim=-1)
    q, k, v = (parts[i] for i in order)
    if split == "ok":
        q, k, v = (_split(t, n_head) for t in (q, k, v))
    else:
        q, k, v = (t.reshape(B, n_head, T, h) for t in (q, k, v))
    y = _softmax_scores(q, k, scale=scale, mask=_tril(T) if causal else None) @ v
    if merge == "ok":
        y = _merge(y)
    elif merge == "no_transpose":
        y = y.reshape(B, T, C)
    else:
        y = y.permute(0, 2, 3, 1).reshape(B, T, C)
    return layer.c_proj(y) if project else y


def _diagnose_layer(got, layer, x, n_head, generic):
    _diagnose(got, {
        _MERGE_NO_TRANSPOSE: lambda: _layer_variant(layer, x, n_head, merge="no_transpose"),
        _MERGE_INTERLEAVED: lambda: _layer_variant(layer, x, n_head, merge="interleaved"),
        _SPLIT_RESHAPE: lambda: _layer_variant(layer, x, n_head, split="reshape"),
        ("the queries and keys are swapped: c_attn's output is q | k | v, in that order "
         "(channels [0, C) are q, [C, 2C) are k)"): lambda: _layer_variant(layer, x, n_head, order=(1, 0, 2)),
        "the output projection is missing: mix the merged heads with c_proj":
            lambda: _layer_variant(layer, x, n_head, project=False),
        ("there is no causal mask: position i sees the future; attend with "
         "_causal_mask_after(past, T)"): lambda: _layer_variant(layer, x, n_head, causal=False),
        _NO_SCALE: lambda: _layer_variant(layer, x, n_head, scale=False),
    }, generic)


@exercise("4.8", "Multi-head causal self-attention", builds="gptlib.attention:CausalSelfAttention",
          tier="core", difficulty=3, importance=3, forbids=_FROM_SCRATCH)
def _(CausalSelfAttention):
    torch.manual_seed(case_seed(47))
    g = torch.Generator().manual_seed(case_seed(47))
    for B, T, C, n_head in [(2, 6, 24, 4), (1, 9, 16, 1), (3, 5, 32, 8)]:
        layer = CausalSelfAttention(C, n_head).eval()
        where = f"CausalSelfAttention({C}, {n_head}) on x {(B, T, C)}"
        expect(isinstance(getattr(layer, "c_attn", None), nn.Linear)
               and layer.c_attn.weight.shape == (3 * C, C),
               f"{where}: c_attn must be nn.Linear(n_embd, 3 * n_embd), one projection for q | k | v")
        expect(isinstance(getattr(layer, "c_proj", None), nn.Linear)
               and layer.c_proj.weight.shape == (C, C),
               f"{where}: c_proj must be nn.Linear(n_embd, n_embd), the output projection")
        for name in ("attn_dropout", "resid_dropout"):
            expect(isinstance(getattr(layer, name, None), nn.Dropout),
                   f"{where}: the layer needs an nn.Dropout called {name}")
        expect(getattr(layer, "head_size", None) == C // n_head,
               f"{where}: head_size must be n_embd // n_head = {C // n_head}")
        x = torch.randn(B, T, C, generator=g)
        mha = _mha_like(layer, C, n_head)
        with torch.no_grad():
            ref, ref_w = mha(x, x, x, attn_mask=~_tril(T), average_attn_weights=False)
            got = layer(x)
            expect(isinstance(got, torch.Tensor) and got.shape == (B, T, C),
                   f"{where}: the output must have shape (B, T, C) = {(B, T, C)}, got {_shape(got)}")
            if not _close(got, ref):
                _diagnose_layer(got, layer, x, n_head,
                                f"{where}: the output differs from nn.MultiheadAttention with the "
                                "same weights; project with c_attn, split q | k | v into heads, "
                                "attend causally in each head, merge, then c_proj")
            out = layer(x, need_weights=True)
            expect(isinstance(out, tuple) and len(out) == 2,
                   f"{where}: forward(x, need_weights=True) must return a pair (y, weights)")
            y, w = out
            expect(isinstance(w, torch.Tensor) and w.shape == (B, n_head, T, T),
                   f"{where}: with need_weights=True the weights must have shape "
                   f"(B, n_head, T, T) = {(B, n_head, T, T)}, got {_shape(w)}")
            if not _close(w, ref_w):
                _diagnose(w, {
                    ("with need_weights=True query i puts weight on keys after i: attend with "
                     "the causal mask, _causal_mask_after(past, T)"):
                        lambda: _softmax_scores(*layer.qkv(x)[:2]),
                }, f"{where}: with need_weights=True the weights differ from nn.MultiheadAttention's"
                   " (one (T, T) pattern per head, rows summing to one)")
            expect(_close(y, ref), f"{where}: with need_weights=True the weights are right but y is "
                   "not: y = c_proj(merge_heads(weights @ v)), the same y as without the weights")
            # No future leak, whatever else: change the last position.
            x2 = x.clone()
            x2[:, -1] = torch.randn(B, C, generator=g)
            expect(_close(layer(x2)[:, :-1], got[:, :-1]),
                   f"{where}: changing the last token changed the outputs of earlier positions")
    # bias=False and the dropouts.
    layer = CausalSelfAttention(16, 2, bias=False)
    expect(layer.c_attn.bias is None and layer.c_proj.bias is None,
           "CausalSelfAttention(16, 2, bias=False) must build c_attn and c_proj without biases "
           "(nn.Linear(..., bias=bias))")
    layer = CausalSelfAttention(16, 2, dropout=0.5)
    expect(layer.attn_dropout.p == 0.5 and layer.resid_dropout.p == 0.5,
           "CausalSelfAttention(16, 2, dropout=0.5) must give attn_dropout and resid_dropout p = 0.5")
    x = torch.randn(2, 6, 16, generator=g)
    layer.train()
    _, w = layer(x, need_weights=True)
    expect(_close(w.sum(-1), torch.ones(2, 2, 6)), "in training mode with dropout the returned "
           "weights must be the pattern before dropout (rows summing to one); drop only the copy "
           "that multiplies v, with attn_dropout")
    a, _ = layer(x, need_weights=True)
    expect(not torch.equal(a, layer(x, need_weights=True)[0]),
           "with dropout = 0.5 in training mode two calls with need_weights=True gave the same "
           "output: apply attn_dropout to the weights and resid_dropout to the output")
    layer.eval()
    with torch.no_grad():
        expect(torch.equal(layer(x, need_weights=True)[0], layer(x, need_weights=True)[0]),
               "in evaluation mode (.eval()) the layer must be deterministic: use the layer's "
               "nn.Dropout modules, which switch off in .eval(), not F.dropout")
    # The cache path is Exercise 4.9; here the fused path's dropout, in training and evaluation.
    layer.train()
    torch.manual_seed(case_seed(0))
    a = layer(x)
    expect(not torch.equal(a, layer(x)), "with dropout = 0.5 in training mode two calls of "
           "forward(x) gave the same output: hand the layer's dropout to _attend_fused in training")
    layer.eval()
    with torch.no_grad():
        expect(_close(layer(x), layer(x, need_weights=True)[0]),
               "in evaluation mode the fused path (forward(x)) and the explicit path "
               "(need_weights=True) differ: no dropout in evaluation (pass dropout_p = 0 to "
               "_attend_fused when not self.training)")


# ----------------------------------------------------------------------------------- 4.9
_MASK_IGNORES_PAST = ("fed in pieces, new query 0 of a piece sees only key 0: the mask ignores "
                      "past; new query i sits at position past + i (attend with "
                      "_causal_mask_after(past, T), past = cache.length before the update)")
_CACHE_NOT_USED = ("fed in pieces, the new queries do not see the earlier positions: use the keys "
                   "and values that cache.update(k, v) returns (every position so far), not only "
                   "the new ones")


def _in_pieces(layer, x, splits, keys):
    """The layer's output when the piece (a, b) attends to the keys ``keys(a, b)`` gives (a range
    of positions and the (b - a, len) mask): the known mistakes of the cache path."""
    q, k, v = (t for t in layer.qkv(x))
    out = []
    for a, b in splits:
        start, mask = keys(a, b)
        out.append(_softmax_scores(q[:, :, a:b], k[:, :, start:b], mask=mask) @ v[:, :, start:b])
    return layer.c_proj(_merge(torch.cat(out, dim=2)))


@exercise("4.9", "The cache path", builds="gptlib.attention:CausalSelfAttention", tier="core",
          difficulty=2, importance=2, forbids=_FROM_SCRATCH)
def _(CausalSelfAttention):
    g = torch.Generator().manual_seed(case_seed(49))
    for C, n_head, splits in [(24, 3, [(0, 4), (4, 5), (5, 9)]), (16, 2, [(0, 1), (1, 3), (3, 7)])]:
        layer = CausalSelfAttention(C, n_head).eval().double()
        T = splits[-1][1]
        x = torch.randn(2, T, C, generator=g, dtype=torch.float64)
        mha = _mha_like(layer, C, n_head).double()
        with torch.no_grad():
            ref = mha(x, x, x, attn_mask=~_tril(T), need_weights=False)[0]
            for need_weights in (False, True):
                where = ("fed in pieces through a cache (positions " + ", then ".join(
                    f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in splits) + ")"
                    + (", with need_weights=True" if need_weights else ""))
                cache, pieces = _ToyCache(), []
                for a, b in splits:
                    try:
                        out = layer(x[:, a:b], need_weights=need_weights, cache=cache)
                    except (RuntimeError, ValueError) as err:
                        raise CheckFailed(
                            f"{where}, the piece at positions {a}-{b - 1} raised "
                            f"{type(err).__name__}: {str(err).splitlines()[0]}. The mask is "
                            "(T, past + T), one column per key: past must be the number of "
                            "positions cached before this call (cache.length read before "
                            "cache.update), and k, v those that cache.update returns") from None
                    pieces.append(out[0] if need_weights else out)
                got = torch.cat(pieces, dim=1)
                if _close(got, ref, atol=1e-8):
                    continue
                expect(cache.length == T, f"{where}: the cache holds {cache.length} positions at "
                       f"the end instead of {T}: hand every piece's keys and values to "
                       "cache.update(k, v)")
                _diagnose(got, {
                    f"{where}: {_CACHE_NOT_USED}": lambda: _in_pieces(
                        layer, x, splits, lambda a, b: (a, _tril(b - a))),
                    f"{where}: {_MASK_IGNORES_PAST}": lambda: _in_pieces(
                        layer, x, splits, lambda a, b: (0, _tril(b - a, cols=b))),
                }, f"{where}: the layer does not give what nn.MultiheadAttention gives on the whole "
                   "sequence: past is the number of positions cached before this call, and new "
                   "query i sits at position past + i")


# ----------------------------------------------------------------------------------- 4.10
_VOCAB, _BLOCK = 11, 8


@exercise("4.10", "Find the three bugs in a naive decoder", tier="stretch", difficulty=3,
          importance=2)
def _(Decoder):
    """Measured on the learner's decoder class ``Decoder(vocab_size, block_size, n_embd, n_head)``,
    whose forward maps idx (B, T) to logits (B, T, vocab_size)."""
    torch.manual_seed(case_seed(48))
    g = torch.Generator().manual_seed(case_seed(48))
    for n_embd, n_head, T in [(16, 2, 6), (24, 4, 8)]:
        model = Decoder(_VOCAB, _BLOCK, n_embd, n_head).eval()
        B = 3
        idx = torch.randint(0, _VOCAB, (B, T), generator=g)
        idx[:, 0], idx[:, 1] = 1, 2         # two different tokens first, for the order probe
        with torch.no_grad():
            logits = model(idx)
            expect(isinstance(logits, torch.Tensor) and logits.shape == (B, T, _VOCAB),
                   f"idx of shape {(B, T)} must give logits (B, T, vocab_size) = {(B, T, _VOCAB)}, "
                   f"got {_shape(logits)}")
            for changed, kept in ((slice(1, None), 0), (0, slice(1, None))):
                other = idx.clone()
                other[changed] = (idx[changed] + 1 + torch.arange(T) % 3) % _VOCAB
                expect(_close(model(other)[kept], logits[kept]),
                       f"changing sequence{'s 1 and 2' if kept == 0 else ' 0'} of the batch changed "
                       f"the logits of sequence{' 0' if kept == 0 else 's 1 and 2'}: the sequences "
                       "of a batch are mixing. What does nn.MultiheadAttention take as the first "
                       "dimension when batch_first=False?")
            future = idx.clone()
            future[:, -1] = (idx[:, -1] + 1) % _VOCAB
            expect(_close(model(future)[:, :-1], logits[:, :-1]),
                   "changing the last token changed the logits of earlier positions: the model sees "
                   "the future. nn.MultiheadAttention needs a causal attn_mask (True = blocked)")
            swapped = idx.clone()
            swapped[:, 0], swapped[:, 1] = idx[:, 1], idx[:, 0]
            expect(not _close(model(swapped)[:, -1], logits[:, -1]),
                   "swapping the first two tokens leaves the last position's logits unchanged: "
                   "without positions, causal attention sees a bag of earlier tokens; are the "
                   "position embeddings added to the token embeddings?")
