"""Checks for Chapter 7 (sampling): temperature, top-k and top-p as probability distributions.

Hand-written. Each candidate takes logits of shape (batch, vocab_size) and returns the
probabilities to sample from; we compare with :func:`gptlib.sampling.next_token_probs` and,
when they differ, probe for the usual mistakes to name the likely one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gptlib.exercises import CheckFailed, exercise, expect
from gptlib.sampling import next_token_probs

_ATOL = 1e-5


def _logits(rows: int, vocab: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale


def _call(fn, logits, arg, what: str) -> torch.Tensor:
    try:
        out = fn(logits.clone(), arg)
    except ZeroDivisionError:
        raise CheckFailed(f"{what} divided by zero: handle this case before dividing") from None
    expect(isinstance(out, torch.Tensor), f"return a tensor of probabilities, got {type(out).__name__}")
    expect(tuple(out.shape) == tuple(logits.shape),
           f"return one probability per token: shape {tuple(logits.shape)}, got {tuple(out.shape)}")
    return out.detach().float()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, atol=_ATOL, rtol=1e-4))


def _sums_to_one(probs: torch.Tensor) -> bool:
    return bool(torch.isfinite(probs).all()) and _close(probs.sum(-1), torch.ones(probs.shape[:-1]))


def _expect_distribution(probs: torch.Tensor, logits: torch.Tensor, filtering: bool) -> None:
    if not torch.isfinite(probs).all():
        raise CheckFailed("your probabilities contain nan or inf" + (
            ": did a row end up with every token removed?" if filtering else ""))
    expect(bool((probs >= 0).all()), "probabilities cannot be negative: did you return logits "
           "instead of softmax probabilities?")
    if not _sums_to_one(probs):
        if probs.dim() == 2 and _close(probs.sum(0), torch.ones(probs.shape[1])):
            raise CheckFailed("softmax over the wrong axis: normalise over the vocabulary (dim=-1)")
        if filtering:
            raise CheckFailed("each row must sum to 1: after removing tokens, renormalise — "
                              "set the removed logits to -inf before the softmax, or divide the "
                              "kept probabilities by their sum")
        raise CheckFailed("each row must sum to 1: apply softmax over the last axis (dim=-1)")


@exercise("7.1", "Temperature")
def _(temperature_probs):
    logits = _logits(3, 10, seed=0)
    for t in (0.5, 1.0, 2.0):
        probs = _call(temperature_probs, logits, t, f"temperature={t}")
        ref = F.softmax(logits / t, dim=-1)
        if _close(probs, ref):
            continue
        if t != 1.0 and _close(probs, F.softmax(logits * t, dim=-1)):
            raise CheckFailed("you multiplied the logits by the temperature: divide them "
                              "(softmax(logits / T)), so T < 1 sharpens and T > 1 flattens")
        if _close(probs, logits / t):
            raise CheckFailed("you returned the scaled logits: return softmax(logits / T)")
        _expect_distribution(probs, logits, filtering=False)
        raise CheckFailed(f"at temperature {t} your probabilities differ from softmax(logits / T)")
    probs = _call(temperature_probs, logits, 0, "temperature=0")
    if not torch.isfinite(probs).all():
        raise CheckFailed("temperature=0 gives nan/inf: logits / 0 divides by zero. Handle T == 0 "
                          "on its own: probability 1 on the argmax of each row, 0 elsewhere")
    greedy = F.one_hot(logits.argmax(-1), logits.size(-1)).float()
    expect(_close(probs, greedy), "temperature=0 means greedy: probability 1 on the largest logit "
           "of each row, 0 elsewhere")
    ties = torch.tensor([[2.0, 5.0, 5.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    probs = _call(temperature_probs, ties, 0, "temperature=0")
    expect(_close(probs, torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])),
           "temperature=0 with tied largest logits: put all the probability on the first of "
           "them (as argmax does), not spread over the ties")


@exercise("7.2", "Top-k filter")
def _(top_k_probs):
    logits = _logits(4, 12, seed=1)
    for k in (1, 3, 5, 12):
        probs = _call(top_k_probs, logits, k, f"k={k}")
        ref = next_token_probs(logits, top_k=k)
        if _close(probs, ref):
            continue
        kept = (probs > 0).sum(-1)
        expect(not bool((kept == min(k + 1, 12)).all()) or k == 12,
               f"with k={k} you kept {k + 1} tokens per row: off by one — keep exactly k")
        expect(not bool((kept == k - 1).all()), f"with k={k} you kept {k - 1} tokens per row: "
               "off by one — keep exactly k")
        expect(bool((kept == k).all()), f"with k={k} keep exactly {k} tokens per row, "
               f"got {kept.tolist()}")
        if _close(probs, F.softmax(logits, -1) * (ref > 0)):
            raise CheckFailed("each row must sum to 1: you zeroed the removed probabilities after "
                              "the softmax but did not renormalise — set the removed logits to -inf "
                              "before the softmax, or divide by the kept mass")
        _expect_distribution(probs, logits, filtering=True)
        expect(bool(((probs > 0) == (ref > 0)).all()), f"with k={k} you kept the wrong tokens: "
               "keep the k *largest* logits of each row")
        raise CheckFailed(f"with k={k} the kept probabilities are wrong: renormalise with a softmax "
                          "over the kept logits")
    ties = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    probs = _call(top_k_probs, ties, 2, "k=2")
    kept = (probs > 0).sum().item()
    expect(kept == 2, f"logits [1, 3, 3, 3, 0] with k=2: you kept {kept} tokens. Keep exactly k, "
           "even when logits tie at the k-th place (a threshold like `logits >= kth_value` keeps "
           "every tie)")
    expect(_close(probs, torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0]])),
           "logits [1, 3, 3, 3, 0] with k=2: on ties keep the lower token ids (ids 1 and 2) — "
           "use a stable sort, torch.sort(..., stable=True)")


@exercise("7.3", "Top-p (nucleus) filter")
def _(top_p_probs):
    base = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    shuffled = base[:, [2, 0, 3, 1]]    # the same distribution, not sorted by id
    for logits, p, n_keep in ((base, 0.7, 2), (base, 0.45, 1), (base, 0.9, 3), (base, 1.0, 4),
                              (shuffled, 0.7, 2), (shuffled, 0.9, 3)):
        probs = _call(top_p_probs, logits, p, f"p={p}")
        ref = next_token_probs(logits, top_p=p)
        if _close(probs, ref):
            continue
        probs_in = F.softmax(logits, -1)[0].tolist()
        desc = f"probabilities {[round(v, 2) for v in probs_in]} with p={p}"
        if not torch.isfinite(probs).all() or (probs > 0).sum().item() == n_keep - 1:
            raise CheckFailed(f"{desc}: keep {n_keep} tokens. You dropped the token that crosses "
                              "the threshold: keep a token while the mass ranked *above* it is "
                              "still < p (so the most likely token is always kept)")
        if _close(probs, F.softmax(logits, -1) * (ref > 0)):
            raise CheckFailed("each row must sum to 1: you zeroed probabilities after the softmax "
                              "but did not renormalise — divide the kept probabilities by their sum")
        if logits is shuffled and (probs > 0).sum().item() != n_keep:
            raise CheckFailed(f"{desc}: keep {n_keep} tokens. Sort the tokens by probability "
                              "(descending) before the cumulative sum, then map back to token ids")
        _expect_distribution(probs, logits, filtering=True)
        raise CheckFailed(f"{desc}: keep the {n_keep} most likely tokens and renormalise "
                          f"(you kept {(probs > 0).sum().item()})")
    logits = _logits(3, 20, seed=2)
    for p in (0.3, 0.8, 0.95):
        probs = _call(top_p_probs, logits, p, f"p={p}")
        expect(_close(probs, next_token_probs(logits, top_p=p)),
               f"on random logits with p={p} your probabilities differ from the nucleus: sort by "
               "probability, keep tokens while the mass above them is < p, renormalise — row by row")
