"""Checks for Chapter 3 (the causal mask). Hand-written.

Each check runs the learner's code on probes where the usual mistakes give recognisably
different answers (diagonal excluded, one future token allowed, upper instead of lower triangle,
filling with 0 instead of -inf, masking after the softmax, softmax over the wrong axis, padding
masked on the wrong axis), compares the answer with what each mistake would give, and names the
mistake it recognises.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gptlib.exercises import CheckFailed, exercise, expect
from gptlib.masking import causal_mask, causal_padding_mask, masked_softmax, padding_mask

_HINT_DIAGONAL = ("the diagonal is excluded (j < i): a token may attend to itself, it is already "
                  "there; allow j <= i (the lower triangle *with* the diagonal)")
_HINT_ONE_AHEAD = ("off by one: position i may also see position i + 1, the very token it must "
                   "predict; allow only j <= i")
_HINT_UPPER = ("upper- instead of lower-triangular: rows are queries i, columns keys j, and "
               "query i may see keys j <= i (the lower triangle), not j >= i")
_HINT_INVERTED = ("your mask is True on the future: True must mean 'may attend', i.e. j <= i; "
                  "you returned the positions to hide")
_HINT_NO_MASK = "nothing is masked: query i must not see keys j > i"


def _patterns(T: int) -> dict[str, torch.Tensor]:
    """Masks that the usual mistakes produce, each with the hint that names it."""
    ones = torch.ones(T, T, dtype=torch.bool)
    return {_HINT_DIAGONAL: ones.tril(-1), _HINT_ONE_AHEAD: ones.tril(1), _HINT_UPPER: ones.triu(),
            _HINT_INVERTED: ones.triu(1), _HINT_NO_MASK: ones}


def _diagnose_mask(m: torch.Tensor, T: int) -> None:
    for hint, wrong in _patterns(T).items():
        if torch.equal(m, wrong) and not torch.equal(wrong, causal_mask(T)):
            raise CheckFailed(hint)


@exercise("3.1", "The causal mask")
def _(my_causal_mask):
    for T in (4, 7, 1):
        out = my_causal_mask(T)
        expect(isinstance(out, torch.Tensor), f"return a torch tensor, got {type(out).__name__}")
        expect(tuple(out.shape) == (T, T), f"for T={T} the mask must have shape ({T}, {T}), got {tuple(out.shape)}")
        values = out.detach().cpu()
        if values.dtype != torch.bool:
            expect(bool(((values == 0) | (values == 1)).all()),
                   "the mask must be a bool tensor (True = may attend), not scores or -inf values")
        _diagnose_mask(values != 0, T)
        expect(torch.equal(values != 0, causal_mask(T)),
               f"for T={T} the mask is wrong: entry [i, j] must be True exactly when j <= i")
        expect(out.dtype == torch.bool,
               f"the pattern is right but the dtype is {out.dtype}: return a bool tensor "
               "(compare positions with <=, or call .bool()) so masked_fill can use it")


def _softmax_masked(scores: torch.Tensor, allowed: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.softmax(scores.masked_fill(~allowed, float("-inf")), dim=dim)


def _weight_mistakes(scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the typical wrong recipes return on ``scores``, keyed by the hint that names each."""
    T = scores.shape[-1]
    allowed = causal_mask(T)
    p = _patterns(T)
    return {
        "masked positions were filled with 0 instead of -inf: exp(0) = 1, so the future still "
        "gets weight; fill with float('-inf') before the softmax":
            F.softmax(scores.masked_fill(~allowed, 0.0), dim=-1),
        "the mask was applied after the softmax: the future is 0 but rows no longer sum to one; "
        "mask the scores with -inf first, then take the softmax":
            F.softmax(scores, dim=-1).masked_fill(~allowed, 0.0),
        "the softmax runs over the wrong axis (the queries, dim=-2): each row i (one query) must "
        "sum to one over the keys, so use dim=-1":
            _softmax_masked(scores, allowed, dim=-2),
        _HINT_DIAGONAL: _softmax_masked(scores, p[_HINT_DIAGONAL]),
        _HINT_ONE_AHEAD: _softmax_masked(scores, p[_HINT_ONE_AHEAD]),
        _HINT_UPPER: _softmax_masked(scores, p[_HINT_UPPER]),
        _HINT_NO_MASK: F.softmax(scores, dim=-1),
    }


@exercise("3.2", "Causal attention weights")
def _(causal_attention_weights):
    g = torch.Generator().manual_seed(3)
    for shape in ((2, 3, 5, 5), (6, 6), (1, 1)):
        scores = 2.0 * torch.randn(*shape, generator=g)
        before = scores.clone()
        out = causal_attention_weights(scores)
        expect(isinstance(out, torch.Tensor) and tuple(out.shape) == shape,
               f"for scores of shape {shape} return weights of the same shape, got "
               f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        expect(torch.equal(scores, before), "your function changed `scores` in place (masked_fill_?): "
                                            "use the out-of-place masked_fill")
        out = out.detach().float()
        want = masked_softmax(scores, causal_mask(shape[-1]))
        if torch.allclose(out, want, atol=1e-5):
            continue
        for hint, wrong in _weight_mistakes(scores).items():
            if torch.allclose(out, wrong, atol=1e-5, equal_nan=True):
                raise CheckFailed(hint)
        expect(not out.isnan().any(), "your weights contain NaN: is a whole row masked? only keys j > i "
                                      "are masked, so every row keeps at least its diagonal")
        future = ~causal_mask(shape[-1])
        expect(bool((out[..., future] == 0).all()), "future weights (key j > query i) must be exactly 0")
        expect(torch.allclose(out.sum(-1), torch.ones(out.shape[:-1]), atol=1e-5),
               "each row (one query, summing over the keys, dim=-1) must sum to one")
        raise CheckFailed("the weights differ from softmax(scores masked with -inf for j > i, dim=-1): "
                          "did you scale or otherwise change the scores?")


def _mask_mistakes(lengths: list[int], T: int) -> dict[str, torch.Tensor]:
    pad = padding_mask(lengths, T)
    causal = causal_mask(T)[None, None]
    B = len(lengths)
    return {
        "padding keys are not masked: a real token must not attend to padding, so also require "
        "j < lengths[b] (index the padding mask as [:, None, None, :])": causal.expand(B, 1, T, T),
        "the causal part is missing: padding alone still lets query i see keys j > i":
            pad[:, None, None, :].expand(B, 1, T, T),
        "padding was masked on the query axis (rows): with right padding and the causal mask "
        "that hides whole rows and nothing else; mask padded *keys* (columns) instead, indexing "
        "the (B, T) padding mask as pad[:, None, None, :]; padded queries may still look at "
        "the real tokens before them":
            causal & pad[:, None, :, None],
        "off by one in the lengths: a sequence of length L has real tokens at 0 .. L-1, so use "
        "j < lengths[b], not j <= lengths[b]":
            causal & padding_mask([min(n + 1, T) for n in lengths], T)[:, None, None, :],
    }


@exercise("3.3", "Causal and padding together")
def _(my_causal_padding_mask):
    for lengths, T in (([2, 5, 3], 5), ([1, 4], 4), ([6], 6)):
        out = my_causal_padding_mask(lengths, T)
        B = len(lengths)
        expect(isinstance(out, torch.Tensor), f"return a torch tensor, got {type(out).__name__}")
        if tuple(out.shape) in ((B, T, T),):
            raise CheckFailed(f"shape {tuple(out.shape)} lacks the head dim: return (B, 1, T, T) = "
                              f"{(B, 1, T, T)} so the mask broadcasts over the attention heads")
        expect(tuple(out.shape) == (B, 1, T, T),
               f"for {B} sequences of padded length {T} return shape {(B, 1, T, T)}, got {tuple(out.shape)}")
        got = out.detach().cpu() != 0
        want = causal_padding_mask(padding_mask(lengths, T))
        if not torch.equal(got, want):
            for hint, wrong in _mask_mistakes(lengths, T).items():
                if torch.equal(got, wrong):
                    raise CheckFailed(hint)
            for b, n in enumerate(lengths):
                if n == T:   # an unpadded sequence must get the plain causal mask
                    _diagnose_mask(got[b, 0], T)
            raise CheckFailed(f"wrong mask for lengths {lengths}, T={T}: entry [b, 0, i, j] must be "
                              "True exactly when j <= i and j < lengths[b]")
        expect(out.dtype == torch.bool, f"the pattern is right but the dtype is {out.dtype}: return a bool tensor")


class _Probe(torch.nn.Module):
    """A toy sequence model: output at t = embedding(x[t]) + sum of embeddings of some other tokens."""

    def __init__(self, sees):
        super().__init__()
        self.sees = sees  # sees(t, T) -> positions whose tokens the output at t depends on
        self.emb = torch.nn.Embedding(16, 4)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(16, 4, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        T = x.shape[1]
        e = self.emb(x % 16)
        return torch.stack([e[:, [t] + list(self.sees(t, T))].sum(1) for t in range(T)], dim=1)


_CAUSAL_PROBES = {
    "a running sum over the past": lambda t, T: range(t),
    "a model that looks only at the current token": lambda t, T: (),
}
_LEAKY_PROBES = {
    "sees the whole window": lambda t, T: range(T),
    "leaks only one step ahead (t sees t + 1)": lambda t, T: [t + 1] if t + 1 < T else [],
    "leaks only two steps ahead (t sees t + 2)": lambda t, T: [t + 2] if t + 2 < T else [],
    "leaks only at position 2, from position 5": lambda t, T: [5] if t == 2 else [],
    "leaks only at position 0, from position 1": lambda t, T: [1] if t == 0 else [],
}


def _verdict(leaks_future, model, x) -> bool:
    out = leaks_future(model, x.clone())
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        out = bool(out)
    expect(isinstance(out, bool), f"return True or False, got {type(out).__name__}")
    return out


@exercise("3.4", "A leak detector")
def _(leaks_future):
    x = torch.randint(0, 12, (3, 8), generator=torch.Generator().manual_seed(1))
    x[:, 1] = 0   # a perturbation that sets tokens to 0 changes nothing here
    for name, sees in _CAUSAL_PROBES.items():
        expect(not _verdict(leaks_future, _Probe(sees), x),
               f"your detector says {name} leaks, but it is causal: after changing the token at "
               "position t, compare only the outputs at positions before t (the output at t itself "
               "may change)")
    for name, sees in _LEAKY_PROBES.items():
        expect(_verdict(leaks_future, _Probe(sees), x),
               f"your detector missed a model that {name}: change each position t in turn (to a "
               "different token) and compare the outputs at every position before t")
