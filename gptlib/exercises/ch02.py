"""Checks for Chapter 2 (embeddings and batches). Hand-written.

Each check probes the learner's function with inputs chosen so that the usual mistakes give
recognisably different answers, and names the mistake it sees.
"""
from __future__ import annotations

import math

import torch

from gptlib.embeddings import sinusoidal_encoding
from gptlib.exercises import CheckFailed, exercise, expect

_OVERRUN = ("some windows run past the end of data: a window starting at i needs data[i + block_size] "
            "for its last target, so starts must be < len(data) - block_size "
            "(torch.randint(len(data) - block_size, ...))")


def _batch(get_batch, data, block_size, batch_size, seed):
    try:
        out = get_batch(data, block_size, batch_size, generator=torch.Generator().manual_seed(seed))
    except NotImplementedError:
        raise
    except (IndexError, RuntimeError) as err:
        raise CheckFailed(f"{_OVERRUN}; your function raised {type(err).__name__}: {err}") from None
    expect(isinstance(out, tuple) and len(out) == 2, "return a tuple (x, y)")
    x, y = out
    expect(isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), "x and y must be torch tensors")
    expect(x.shape == (batch_size, block_size) and y.shape == (batch_size, block_size),
           f"x and y must both have shape (batch_size, block_size) = {(batch_size, block_size)}, "
           f"got {tuple(x.shape)} and {tuple(y.shape)}")
    expect(not x.is_floating_point() and not y.is_floating_point(), "x and y must hold integer token ids")
    return x.long(), y.long()


@exercise("2.1", "Random batches with shifted targets")
def _(get_batch):
    base, T, B = 1000, 8, 16
    data = torch.arange(base, base + 100)          # each id tells where it sits in the stream
    x, y = _batch(get_batch, data, T, B, seed=0)
    starts = x[:, 0] - base
    expect(torch.equal(x, data[starts[:, None] + torch.arange(T)]),
           "each row of x must be one contiguous window data[i : i + block_size]")
    shift = (y - x).unique().tolist()
    if torch.equal(x, y):
        raise CheckFailed("y equals x: the targets must be the inputs shifted by one, "
                          "y = data[i + 1 : i + block_size + 1]")
    if shift == [2]:
        raise CheckFailed("y is shifted by two tokens (off by one): the target at position t is "
                          "data[i + t + 1], so y = data[i + 1 : i + block_size + 1]")
    if shift == [-1]:
        raise CheckFailed("y is shifted the wrong way (it holds the previous token): "
                          "y = data[i + 1 : i + block_size + 1]")
    expect(shift == [1], "y[b, t] must be the token right after x[b, t] in data: "
                         "y = data[i + 1 : i + block_size + 1] for the same start i as x")
    # The generator, not the global random state, must decide the starts.
    torch.manual_seed(1)
    first, _ = _batch(get_batch, data, T, B, seed=123)
    torch.manual_seed(2)
    second, _ = _batch(get_batch, data, T, B, seed=123)
    expect(torch.equal(first, second),
           "the same generator seed gave different batches: draw the starts with "
           "torch.randint(..., generator=generator)")
    other, _ = _batch(get_batch, data, T, B, seed=124)
    expect(not torch.equal(first, other), "different seeds gave the same batch: the starts must be random")
    # Every valid window, and only valid windows, can be drawn.
    small = torch.arange(base, base + T + 3)        # valid starts: 0, 1, 2
    x, y = _batch(get_batch, small, T, 300, seed=5)
    seen = set((x[:, 0] - base).tolist())
    expect(max(seen) <= 2, _OVERRUN)
    expect(seen == {0, 1, 2}, f"with len(data) = block_size + 3 the starts 0, 1, 2 are all valid, but 300 "
                              f"draws only gave {sorted(seen)}: torch.randint's upper bound is exclusive, "
                              "use torch.randint(len(data) - block_size, ...)")


def _embed(one_hot_embed, idx, weight):
    try:
        out = one_hot_embed(idx, weight)
    except NotImplementedError:
        raise
    except RuntimeError as err:
        text = str(err)
        if "dtype" in text or "scalar type" in text or "not implemented for 'Long'" in text:
            raise CheckFailed("F.one_hot returns integers: convert the one-hot tensor to weight's dtype "
                              f"(.to(weight.dtype)) before the product ({err})") from None
        if "shape" in text or "size" in text or "mat1" in text:
            raise CheckFailed("the shapes do not fit: the one-hot tensor must have weight.shape[0] columns "
                              "(F.one_hot(idx, num_classes=weight.shape[0]); without num_classes it only "
                              f"goes up to the largest id present), and multiply by weight itself ({err})") from None
        raise
    expect(isinstance(out, torch.Tensor), "return a tensor")
    return out


@exercise("2.2", "Embedding by one-hot product")
def _(one_hot_embed):
    g = torch.Generator().manual_seed(0)
    square = torch.randn(5, 5, generator=g)
    idx = torch.tensor([[0, 3, 1], [4, 4, 2]])
    out = _embed(one_hot_embed, idx, square)
    expect(out.shape == (2, 3, 5), f"the output must have shape idx.shape + (C,) = (2, 3, 5), got {tuple(out.shape)}")
    if torch.allclose(out.to(square.dtype), square.T[idx], atol=1e-6) and not torch.allclose(out, square[idx]):
        raise CheckFailed("you multiplied by weight.T: row i of weight (not column i) is token i's vector, "
                          "so compute one_hot @ weight")
    expect(torch.allclose(out.to(square.dtype), square[idx], atol=1e-6),
           "the result must equal weight[idx]: one_hot(idx, V) (shape ..., V) @ weight (V, C)")
    tall = torch.randn(7, 3, generator=g)
    idx = torch.tensor([[1, 0, 2, 1]])              # the largest id (2) is below V - 1 = 6
    out = _embed(one_hot_embed, idx, tall)
    expect(out.shape == (1, 4, 3), f"the output must have shape idx.shape + (C,) = (1, 4, 3), got {tuple(out.shape)}")
    expect(torch.allclose(out.to(tall.dtype), tall[idx], atol=1e-6),
           "wrong values when the vocabulary is larger than the ids used: one_hot needs num_classes=weight.shape[0]")
    wide = torch.randn(6, 4, generator=g, dtype=torch.float64)
    out = _embed(one_hot_embed, torch.tensor([5, 0, 3]), wide)
    expect(out.dtype == torch.float64, f"with a float64 weight the result must be float64 (got {out.dtype}): "
                                       "use .to(weight.dtype), not .float()")
    expect(out.shape == (3, 4) and torch.equal(out, wide[torch.tensor([5, 0, 3])]),
           "a 1-D idx of length 3 must give a (3, C) result equal to weight[idx]")


def _variants(T: int, d: int) -> dict[str, torch.Tensor]:
    """The sinusoidal table as usual mistakes would compute it, keyed by the hint for each."""
    t = torch.arange(T, dtype=torch.float64)[:, None]
    two_i = torch.arange(0, d, 2, dtype=torch.float64)
    col = torch.arange(d, dtype=torch.float64)

    def interleave(sin_part, cos_part):
        out = torch.empty(T, d, dtype=torch.float64)
        out[:, 0::2], out[:, 1::2] = sin_part, cos_part
        return out

    right = t / 10000 ** (two_i / d)
    half = t / 10000 ** ((two_i / 2) / d)
    per_col = t / 10000 ** (col / d)
    times = t * 10000 ** (two_i / d)
    return {
        "sin and cos are swapped: even columns (0, 2, 4, ...) hold sin, odd columns hold cos":
            interleave(torch.cos(right), torch.sin(right)),
        "wrong frequency exponent: pair i uses 10000 ** (2i / n_embd), where 2i is the even column index "
        "(torch.arange(0, n_embd, 2)); you used i / n_embd":
            interleave(torch.sin(half), torch.cos(half)),
        "wrong frequency exponent: a sin column and the cos column after it share one frequency, "
        "10000 ** (2i / n_embd) with 2i the even column index; you gave each column its own exponent":
            interleave(torch.sin(per_col[:, 0::2]), torch.cos(per_col[:, 1::2])),
        "divide the position by 10000 ** (2i / n_embd) (frequencies fall along the embedding); "
        "you multiplied":
            interleave(torch.sin(times), torch.cos(times)),
        "interleave the pairs: column 2i is sin and column 2i + 1 is cos, not all sines then all cosines":
            torch.cat([torch.sin(right), torch.cos(right)], dim=1),
    }


@exercise("2.3", "Sinusoidal encoding")
def _(sinusoidal):
    for T, d in ((16, 8), (7, 6)):
        out = sinusoidal(T, d)
        expect(isinstance(out, torch.Tensor), "return a torch tensor")
        expect(out.shape == (T, d), f"sinusoidal({T}, {d}) must have shape ({T}, {d}), got {tuple(out.shape)}")
        expect(out.is_floating_point(), "the table must be a float tensor")
        ref = sinusoidal_encoding(T, d).double()
        out = out.double()
        if torch.allclose(out, ref, atol=1e-5):
            continue
        for hint, wrong in _variants(T, d).items():
            if torch.allclose(out, wrong, atol=1e-5):
                raise CheckFailed(hint)
        expect(torch.allclose(out[0, 0::2], torch.zeros(d // 2, dtype=out.dtype), atol=1e-6)
               and torch.allclose(out[0, 1::2], torch.ones(d // 2, dtype=out.dtype), atol=1e-6),
               "row 0 (position 0) must be sin(0) = 0 in even columns and cos(0) = 1 in odd columns")
        raise CheckFailed(f"values differ from PE(t, 2i) = sin(t / 10000 ** (2i / n_embd)), "
                          f"PE(t, 2i + 1) = cos(...): e.g. PE(1, 0) should be sin(1) = {math.sin(1):.4f}, "
                          f"got {out[1, 0]:.4f}")
