"""Checks for Chapter 3 (the causal mask). Hand-written.

Each check runs the learner's code on probes where the usual mistakes give recognisably
different answers (diagonal excluded, one future token allowed, upper instead of lower triangle,
filling with 0 instead of -inf, masking after the softmax, softmax over the wrong axis, NaN on a
fully masked row, padding masked on the wrong axis), compares the answer with what each mistake
would give, and names the mistake it recognises. The references are small private ones written
here with ``torch.tril`` and ``F.softmax``, never gptlib's own masking functions (which the
learner's exported notebook may have written).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gptlib.exercises import CheckFailed, case_seed, exercise, expect

_HINT_DIAGONAL = ("the diagonal is excluded (j < i): a token may attend to itself, it is already "
                  "there; allow j <= i (the lower triangle *with* the diagonal)")
_HINT_ONE_AHEAD = ("off by one: position i may also see position i + 1, the very token it must "
                   "predict; allow only j <= i")
_HINT_UPPER = ("upper- instead of lower-triangular: rows are queries i, columns keys j, and "
               "query i may see keys j <= i (the lower triangle), not j >= i")
_HINT_INVERTED = ("your mask is True on the future: True must mean 'may attend', i.e. j <= i; "
                  "you returned the positions to hide")
_HINT_NO_MASK = "nothing is masked: query i must not see keys j > i"


# ---------------------------------------------------------------- private references
def _lower(T: int) -> torch.Tensor:
    """The causal mask: True where key j <= query i."""
    return torch.ones(T, T, dtype=torch.bool).tril()


def _softmax_ref(scores: torch.Tensor, allowed: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """F.softmax of the scores filled with -inf where not allowed; rows with no key give 0."""
    return F.softmax(scores.masked_fill(~allowed, float("-inf")), dim=dim).nan_to_num(0.0)


def _pad_ref(lengths, T: int, side: str = "right") -> torch.Tensor:
    lengths = torch.as_tensor(lengths)
    pos = torch.arange(T)
    if side == "right":
        return pos[None, :] < lengths[:, None]
    return pos[None, :] >= T - lengths[:, None]


def _causal_pad_ref(pad: torch.Tensor) -> torch.Tensor:
    return _lower(pad.shape[1])[None, None] & pad[:, None, None, :]


def _patterns(T: int) -> dict[str, torch.Tensor]:
    """Masks that the usual mistakes produce, each with the hint that names it."""
    ones = torch.ones(T, T, dtype=torch.bool)
    return {_HINT_DIAGONAL: ones.tril(-1), _HINT_ONE_AHEAD: ones.tril(1), _HINT_UPPER: ones.triu(),
            _HINT_INVERTED: ones.triu(1), _HINT_NO_MASK: ones}


def _diagnose_mask(m: torch.Tensor, T: int) -> None:
    for hint, wrong in _patterns(T).items():
        if torch.equal(m, wrong) and not torch.equal(wrong, _lower(T)):
            raise CheckFailed(hint)


def _tensor(out, what: str = "the result") -> torch.Tensor:
    expect(isinstance(out, torch.Tensor), f"return a torch tensor as {what}, got {type(out).__name__}")
    return out


# ---------------------------------------------------------------- 3.1
@exercise("3.1", "The causal mask", builds="gptlib.masking:causal_mask", tier="warm-up",
          difficulty=1, importance=3)
def _(causal_mask):
    for T in (4, 7, 1):
        out = _tensor(causal_mask(T))
        expect(tuple(out.shape) == (T, T), f"for T={T} the mask must have shape ({T}, {T}), got {tuple(out.shape)}")
        values = out.detach().cpu()
        if values.dtype != torch.bool:
            expect(bool(((values == 0) | (values == 1)).all()),
                   "the mask must be a bool tensor (True = may attend), not scores or -inf values")
        _diagnose_mask(values != 0, T)
        expect(torch.equal(values != 0, _lower(T)),
               f"for T={T} the mask is wrong: entry [i, j] must be True exactly when j <= i")
        expect(out.dtype == torch.bool,
               f"the pattern is right but the dtype is {out.dtype}: return a bool tensor "
               "(compare positions with <=, or call .bool()) so masked_fill can use it")
    out = _tensor(causal_mask(3, device="meta"))
    expect(out.device.type == "meta", f"causal_mask(3, device='meta') gave a tensor on {out.device}: "
                                      "create the mask on `device` (torch.ones(..., device=device))")
    for bad in (0, -2, 3.0):
        try:
            causal_mask(bad)
        except ValueError:
            continue
        except NotImplementedError:
            raise
        except Exception as err:
            raise CheckFailed(f"causal_mask({bad!r}) raised {type(err).__name__}: reject a T that is "
                              "not a positive int with a ValueError (positive_int(\"T\", T))") from None
        raise CheckFailed(f"causal_mask({bad!r}) was accepted: reject a T that is not a positive int "
                          "with a ValueError (positive_int(\"T\", T) does it)")


# ---------------------------------------------------------------- 3.2
def _mask_cases(seed: int):
    """(scores, mask) pairs: causal masks that broadcast, and a padding mask with empty rows."""
    g = torch.Generator().manual_seed(case_seed(seed))
    left = _causal_pad_ref(_pad_ref([2, 5, 0], 5, side="left"))
    return [
        (2.0 * torch.randn(6, 6, generator=g), _lower(6)),
        (2.0 * torch.randn(2, 3, 5, 5, generator=g), _lower(5)),
        (2.0 * torch.randn(3, 2, 5, 5, generator=g), left),            # (B, 1, T, T) over 2 heads
        (2.0 * torch.randn(1, 1, generator=g), _lower(1)),
    ]


def _run_on(candidate, scores: torch.Tensor, mask: torch.Tensor, what: str) -> torch.Tensor:
    """Call ``candidate(scores, mask)``; it must leave ``scores`` alone and keep its shape."""
    before = scores.clone()
    out = _tensor(candidate(scores, mask), what)
    expect(torch.equal(scores, before), "your function changed `scores` in place (masked_fill_?): "
                                        "use the out-of-place masked_fill, which returns a new tensor")
    expect(tuple(out.shape) == tuple(scores.shape),
           f"for scores of shape {tuple(scores.shape)} and a mask of shape {tuple(mask.shape)} return "
           f"{what} of the scores' shape, got {tuple(out.shape)}")
    return out


@exercise("3.2", "Mask the scores", builds="gptlib.masking:apply_mask", tier="warm-up",
          difficulty=1, importance=3)
def _(apply_mask):
    for scores, mask in _mask_cases(seed=2):
        out = _run_on(apply_mask, scores, mask, "masked scores")
        allowed = mask.expand_as(scores)
        if torch.allclose(out.float(), _softmax_ref(scores, allowed), atol=1e-5, equal_nan=True) or \
                torch.allclose(out.float(), F.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1),
                               atol=1e-5, equal_nan=True):
            raise CheckFailed("you returned weights: apply_mask returns the *scores* with disallowed "
                              "positions set to -inf; the softmax comes after")
        if bool(out[allowed].isneginf().all()) and (~allowed).any():
            raise CheckFailed("you hid the allowed positions: True in the mask means 'may attend', so "
                              "set -inf where the mask is False (~mask)")
        hidden = out[~allowed]
        if hidden.numel() and bool((hidden == 0).all()):
            raise CheckFailed("masked positions were filled with 0 instead of -inf: exp(0) = 1, so the "
                              "softmax would still give them weight; fill with float('-inf')")
        expect(bool(hidden.isneginf().all()),
               "every disallowed position (mask False) must be exactly -inf (float('-inf')), so that "
               "exp gives exactly 0 whatever the dtype; a large negative number is not enough")
        expect(torch.equal(out[allowed], scores[allowed]),
               "allowed positions (mask True) must keep their scores unchanged")


# ---------------------------------------------------------------- 3.3
def _weight_mistakes(scores: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the typical wrong recipes return on ``scores``, keyed by the hint that names each."""
    allowed = mask.expand_as(scores)
    out = {
        "masked positions were filled with 0 instead of -inf: exp(0) = 1, so disallowed keys still "
        "get weight; fill with float('-inf') before the softmax":
            F.softmax(scores.masked_fill(~allowed, 0.0), dim=-1),
        "the mask was applied after the softmax: disallowed keys are 0 but rows no longer sum to one; "
        "mask the scores with -inf first, then take the softmax":
            F.softmax(scores, dim=-1).masked_fill(~allowed, 0.0),
        "the softmax runs over the wrong axis (the queries, dim=-2): each row i (one query) must "
        "sum to one over the keys, so use dim=-1":
            _softmax_ref(scores, allowed, dim=-2),
        "nothing is masked: disallowed keys (mask False) must get weight 0": F.softmax(scores, dim=-1),
    }
    empty = ~allowed.any(dim=-1, keepdim=True)
    if empty.any():
        uniform = _softmax_ref(scores, allowed).masked_fill(empty, 1.0 / scores.shape[-1])
        out["a row with no allowed key must get all-zero weights; yours are uniform (1/T each): "
            "after the softmax, fill those rows with 0 as well"] = uniform
    return out


@exercise("3.3", "The masked softmax", builds="gptlib.masking:masked_softmax", tier="core",
          difficulty=2, importance=3)
def _(masked_softmax):
    for scores, mask in _mask_cases(seed=3):
        out = _run_on(masked_softmax, scores, mask, "weights").detach().float()
        want = _softmax_ref(scores, mask.expand_as(scores))
        if torch.allclose(out, want, atol=1e-5):
            continue
        for hint, wrong in _weight_mistakes(scores, mask).items():
            if torch.allclose(out, wrong, atol=1e-5, equal_nan=True):
                raise CheckFailed(hint)
        empty = ~mask.expand_as(scores).any(dim=-1)
        if out.isnan().any():
            where = empty.nonzero()[0].tolist() if empty.any() else None
            raise CheckFailed("your weights contain NaN" + (
                f": row {where} of this padded batch allows no key at all, and softmax of a row of "
                "-inf is 0/0. Find such rows from the mask (mask.any(dim=-1)) and give them zeros"
                if where else ""))
        allowed = mask.expand_as(scores)
        expect(bool((out[~allowed] == 0).all()), "disallowed keys (mask False) must get weight exactly 0")
        expect(torch.allclose(out.sum(-1)[~empty], torch.ones(int((~empty).sum())), atol=1e-5),
               "each row with an allowed key must sum to one over the keys (dim=-1)")
        expect(bool((out.sum(-1)[empty] == 0).all()), "a row with no allowed key must be all zeros")
        raise CheckFailed("the weights differ from softmax(scores masked with -inf, dim=-1): did you "
                          "scale or otherwise change the scores?")


# ---------------------------------------------------------------- 3.4 and 3.5: toy models to probe
class _Probe(torch.nn.Module):
    """A toy sequence model: output at t = embedding(x[t]) + sum of embeddings of some other tokens."""

    def __init__(self, sees):
        super().__init__()
        self.sees = sees  # sees(t, T) -> positions whose tokens the output at t depends on
        self.emb = torch.nn.Embedding(16, 4)
        with torch.no_grad():
            g = torch.Generator().manual_seed(case_seed(0))
            self.emb.weight.copy_(torch.randn(16, 4, generator=g))

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


def _influence_pattern(sees, T: int) -> torch.Tensor:
    """[t, s] True where the probe's output at t depends on the token at s."""
    out = torch.eye(T, dtype=torch.bool)
    for t in range(T):
        out[t, list(sees(t, T))] = True
    return out


@exercise("3.4", "The influence matrix", builds="gptlib.masking:future_influence", tier="core",
          difficulty=3, importance=2)
def _(future_influence):
    x = torch.randint(0, 12, (3, 7), generator=torch.Generator().manual_seed(case_seed(1)))
    x[:, 1] = 0   # a perturbation that sets tokens to 0 changes nothing here
    probes = {"a running sum over the past": lambda t, T: range(t),
              "a model that sees the whole window": lambda t, T: range(T),
              "a model that leaks one step ahead": lambda t, T: [t + 1] if t + 1 < 7 else []}
    for name, sees in probes.items():
        out = _tensor(future_influence(_Probe(sees), x.clone()), "the influence matrix")
        expect(tuple(out.shape) == (7, 7), f"for a (B, T) = (3, 7) batch return a (T, T) = (7, 7) matrix, "
                                           f"got {tuple(out.shape)}")
        out = out.detach().cpu().float()
        expect(bool((out >= 0).all()), "the influence is a size of change: take the absolute difference "
                                       "before the largest one, so no entry is negative")
        got, want = out > 1e-6, _influence_pattern(sees, 7)
        if torch.equal(got, want):
            continue
        if torch.equal(got, want.T):
            raise CheckFailed(f"on {name} your matrix is transposed: row t is the output at position t, "
                              "column s the token that was changed, so entry [t, s] = how much output t "
                              "moves when token s changes")
        if torch.equal(got, want.triu(1)) or torch.equal(got, want & ~torch.ones(7, 7, dtype=torch.bool).tril()):
            raise CheckFailed("only the entries above the diagonal are filled: fill the whole matrix, every "
                              "output position t for every changed token s (the diagonal and the past too)")
        if not got[:, 1].any():
            raise CheckFailed("changing token 1 moved nothing: in this batch token 1 is 0 everywhere, so "
                              "setting it to 0 is no change; replace each token with a *different* id, e.g. "
                              "(x + 1) % vocab")
        t, s = (got != want).nonzero()[0].tolist()
        raise CheckFailed(f"on {name} the output at position {t} "
                          + ("depends on" if want[t, s] else "does not depend on")
                          + f" the token at position {s}, but your entry [{t}, {s}] is {out[t, s]:.3g}: "
                          "change one position s at a time and record, for every t, the largest absolute "
                          "change of the output at t")


@exercise("3.5", "A leak detector", builds="gptlib.masking:leaks_future", tier="warm-up",
          difficulty=1, importance=2)
def _(leaks_future):
    x = torch.randint(0, 12, (3, 8), generator=torch.Generator().manual_seed(case_seed(1)))
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


# ---------------------------------------------------------------- 3.6
@exercise("3.6", "Padding masks", builds="gptlib.masking:padding_mask", tier="core",
          difficulty=2, importance=2)
def _(padding_mask):
    for lengths, T in (([2, 5, 3], 5), ([1, 4], 6), ([0, 3], 3)):
        for side in ("right", "left"):
            given = torch.tensor(lengths) if side == "left" else list(lengths)
            out = _tensor(padding_mask(given, T, side=side), "the padding mask")
            B = len(lengths)
            expect(tuple(out.shape) == (B, T), f"for {B} sequences padded to T={T} return shape "
                                               f"{(B, T)}, got {tuple(out.shape)}")
            got = out.detach().cpu() != 0
            want = _pad_ref(lengths, T, side)
            if torch.equal(got, want):
                expect(out.dtype == torch.bool,
                       f"the pattern is right but the dtype is {out.dtype}: return a bool tensor")
                continue
            other = "left" if side == "right" else "right"
            if torch.equal(got, _pad_ref(lengths, T, other)):
                raise CheckFailed(f"with side={side!r} you padded on the {other}: "
                                  + ("right padding puts the tokens first (positions 0 .. L-1)"
                                     if side == "right" else
                                     "left padding puts the padding first, the tokens at the last L "
                                     "positions (position >= T - L)"))
            if torch.equal(got, ~want):
                raise CheckFailed("your mask is True at padding: True must mark the real tokens")
            shifted = _pad_ref([min(n + 1, T) for n in lengths], T, side)
            if torch.equal(got, shifted):
                raise CheckFailed(f"off by one for side={side!r}: a sequence of length L has exactly "
                                  "L real tokens, so compare with < L (right) or >= T - L (left)")
            raise CheckFailed(f"wrong mask for lengths {lengths}, T={T}, side={side!r}: row b must be "
                              f"True at exactly lengths[b] positions, e.g. row 0 should be "
                              f"{want[0].int().tolist()}, got {got[0].int().tolist()}")
    attention_mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    out = _tensor(padding_mask(attention_mask=attention_mask.clone()), "the padding mask")
    expect(out.dtype == torch.bool and torch.equal(out, attention_mask == 1),
           f"padding_mask(attention_mask=...) must return the same pattern as a bool tensor (True where the "
           f"attention_mask holds 1), got {out.int().tolist() if out.dim() == 2 else tuple(out.shape)} of "
           f"dtype {out.dtype}")
    out = _tensor(padding_mask(attention_mask=attention_mask, device="meta"), "the padding mask")
    expect(out.device.type == "meta", f"padding_mask(attention_mask=..., device='meta') returned a tensor on "
                                      f"{out.device}: put the mask on `device` when it is given")


# ---------------------------------------------------------------- 3.7
def _mask_mistakes(pad: torch.Tensor) -> dict[str, torch.Tensor]:
    B, T = pad.shape
    causal = _lower(T)[None, None]
    return {
        "padding keys are not masked: a real token must not attend to padding, so also require that "
        "key j is real (index the padding mask as pad[:, None, None, :])": causal.expand(B, 1, T, T),
        "the causal part is missing: padding alone still lets query i see keys j > i":
            pad[:, None, None, :].expand(B, 1, T, T),
        "padding was masked on the query axis (rows): with right padding and the causal mask "
        "that hides whole rows and nothing else; mask padded *keys* (columns) instead, indexing "
        "the (B, T) padding mask as pad[:, None, None, :]; padded queries may still look at "
        "the real tokens before them":
            causal & pad[:, None, :, None],
    }


@exercise("3.7", "Causal and padding together", builds="gptlib.masking:causal_padding_mask",
          tier="core", difficulty=2, importance=3)
def _(causal_padding_mask):
    for lengths, T, side in (([2, 4, 1], 4, "left"), ([2, 5, 3], 5, "right"), ([1, 4], 4, "right"),
                             ([6], 6, "right")):
        pad = _pad_ref(lengths, T, side)
        out = _tensor(causal_padding_mask(pad.clone()), "the mask")
        B = len(lengths)
        if tuple(out.shape) == (B, T, T):
            raise CheckFailed(f"shape {tuple(out.shape)} lacks the head dim: return (B, 1, T, T) = "
                              f"{(B, 1, T, T)} so the mask broadcasts over the attention heads")
        expect(tuple(out.shape) == (B, 1, T, T),
               f"for {B} sequences of padded length {T} return shape {(B, 1, T, T)}, got {tuple(out.shape)}")
        got = out.detach().cpu() != 0
        want = _causal_pad_ref(pad)
        if not torch.equal(got, want):
            for hint, wrong in _mask_mistakes(pad).items():
                if torch.equal(got, wrong):
                    raise CheckFailed(hint)
            for b, n in enumerate(lengths):
                if n == T:   # an unpadded sequence must get the plain causal mask
                    _diagnose_mask(got[b, 0], T)
            raise CheckFailed(f"wrong mask for {side} padding with lengths {lengths}, T={T}: entry "
                              "[b, 0, i, j] must be True exactly when j <= i and token j of sequence b "
                              "is real (pad[b, j])")
        expect(out.dtype == torch.bool, f"the pattern is right but the dtype is {out.dtype}: return a bool tensor")
    for bad, what in ((torch.ones(2, 4, dtype=torch.long), "a 0/1 integer tensor"),
                      (torch.ones(4, dtype=torch.bool), "a 1-D bool tensor")):
        try:
            causal_padding_mask(bad)
        except ValueError:
            continue
        except NotImplementedError:
            raise
        except Exception:
            pass
        raise CheckFailed(f"{what} was not rejected with a ValueError: pad must be a (B, T) bool "
                          "tensor (turn an attention_mask into one with padding_mask first)")


# ---------------------------------------------------------------- 3.8 (stretch)
def _offset_ref(weights: torch.Tensor) -> torch.Tensor:
    T = weights.shape[-1]
    out = torch.zeros(weights.shape[:-1], dtype=weights.dtype)
    for i in range(T):
        for j in range(T):
            out[..., i] += weights[..., i, j] * (j - i)
    return out


@exercise("3.8", "Where does the cheater look?", tier="stretch", difficulty=2, importance=1)
def _(mean_attention_offset):
    g = torch.Generator().manual_seed(case_seed(7))
    full = F.softmax(torch.randn(2, 3, 6, 6, generator=g), dim=-1)        # looks everywhere
    causal = _softmax_ref(torch.randn(5, 5, generator=g), _lower(5))
    ahead = torch.zeros(4, 4)
    ahead[torch.arange(3), torch.arange(1, 4)] = 1.0                       # one step ahead
    ahead[3, 3] = 1.0
    for w in (ahead, causal, full):
        out = _tensor(mean_attention_offset(w.clone()), "the offsets")
        expect(tuple(out.shape) == tuple(w.shape[:-1]),
               f"for weights of shape {tuple(w.shape)} return one offset per query, shape "
               f"{tuple(w.shape[:-1])}, got {tuple(out.shape)}")
        want = _offset_ref(w)
        if torch.allclose(out.float(), want, atol=1e-5):
            continue
        if torch.allclose(out.float(), -want, atol=1e-5):
            raise CheckFailed("the sign is flipped: a query that looks at the next position (j = i + 1) "
                              "must have offset +1, so weigh j - i, not i - j")
        if w is ahead:
            raise CheckFailed(f"weights that put all of query i's weight on key i + 1 must give offset "
                              f"+1 for every query but the last (0 there); got {out.tolist()}")
        raise CheckFailed("the offsets differ from sum_j w[..., i, j] * (j - i) (sum over the keys, the "
                          "last dim): weigh each key's offset by its weight, do not average the offsets")


# ---------------------------------------------------------------- 3.9 (stretch)
class _PrefixSum(torch.nn.Module):
    """Output at t: the sum of the embeddings of tokens 0..t plus the embedding of token t:
    blind to the order of the prefix, not to which token is last."""

    def __init__(self, vocab: int, weighted: bool = False):
        super().__init__()
        self.emb = torch.randn(vocab, 3, generator=torch.Generator().manual_seed(case_seed(vocab)))
        self.weighted = weighted

    def forward(self, idx):
        e = self.emb[idx]                                               # (B, T, 3)
        if self.weighted:       # token j weighs j + 1: the order matters
            e = e * torch.arange(1, idx.shape[1] + 1, dtype=e.dtype)[None, :, None]
        return e.cumsum(dim=1) + self.emb[idx]


def _shuffle_seed(T: int) -> int:
    """A generator seed, from ``case_seed(1)`` on, whose ``randperm(T - 1)`` moves some token (the
    weighted model must move) and whose ``randperm(T)`` moves the last one (shuffling the whole
    row must show)."""
    seed = case_seed(1)
    def perm(n):
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    while torch.equal(perm(T - 1), torch.arange(T - 1)) or perm(T)[-1] == T - 1:
        seed += 1
    return seed


@exercise("3.9", "Does the order of the prefix matter?", builds="gptlib.masking:prefix_shuffle_change",
          tier="stretch", difficulty=2, importance=2)
def _(prefix_shuffle_change):
    vocab = 13
    for B, T in [(3, 8), (1, 6)]:
        x = torch.arange(B * T).reshape(B, T) % vocab                   # distinct tokens in a row
        where = f"on a batch of shape {(B, T)}"
        seed = _shuffle_seed(T)
        bag = prefix_shuffle_change(_PrefixSum(vocab), x, torch.Generator().manual_seed(seed))
        expect(isinstance(bag, (float, int)) or (isinstance(bag, torch.Tensor) and bag.numel() == 1),
               f"return one number (a float), the largest change; got {type(bag).__name__}")
        if float(bag) > 1e-5:
            raise CheckFailed(
                f"{where}, a model whose last output is the sum of its prefix plus its last token "
                f"moved by {float(bag):.3g}: it sees the prefix as a bag, so shuffling the first "
                "T - 1 tokens must change nothing there. Keep the last token in place, and compare "
                "the outputs at the last position only (index -1), not at every position")
        order = prefix_shuffle_change(_PrefixSum(vocab, weighted=True), x,
                                      torch.Generator().manual_seed(seed))
        if float(order) < 1e-3:
            raise CheckFailed(
                f"{where}, a model that weighs each token by its position did not move: the prefix "
                "was not shuffled. Put x[:, :T - 1] in the order torch.randperm(T - 1, "
                "generator=generator) gives, then append the last token")
        ref = _PrefixSum(vocab, weighted=True)
        perm = torch.randperm(T - 1, generator=torch.Generator().manual_seed(seed))
        want = (ref(torch.cat([x[:, perm], x[:, -1:]], 1))[:, -1] - ref(x)[:, -1]).abs().max()
        expect(abs(float(order) - float(want)) < 1e-4 * max(1.0, float(want)),
               f"{where}, the change is {float(order):.4g} instead of {float(want):.4g}: return the "
               "largest absolute change (max of |difference|) of the last position's output, over "
               "the batch and the features, with the order torch.randperm(T - 1, generator=generator)"
               " gives")
