"""Checks for Chapter 2 (embeddings and batches). Hand-written.

Each check probes the learner's function with inputs chosen so that the usual mistakes give
recognisably different answers, and names the mistake it sees. The references are private ones
written here (torch.randint windows, nn.Embedding-style lookups, the sinusoidal formula), never
gptlib's own data and embedding functions, which the learner's exported notebook may have written.
Random tables, ids and generator seeds, and a drawn case after the written ones, come from
``case_seed``, so the grader's cases are not the notebook's.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from gptlib.exercises import CheckFailed, case_seed, exercise, expect

_OVERRUN = ("some windows run past the end of data: a window starting at i needs data[i + block_size] "
            "for its last target, so starts must be < len(data) - block_size "
            "(torch.randint(len(data) - block_size, ...))")


def _batch(get_batch, data, block_size, batch_size, seed):
    """get_batch's (x, y) with a generator seeded from ``case_seed(seed)``, shapes and dtypes checked."""
    try:
        out = get_batch(data, block_size, batch_size, generator=torch.Generator().manual_seed(case_seed(seed)))
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


# ---------------------------------------------------------------- 2.1
_NOT_IDS = [  # (data, what it is, why it is not a stream of token ids)
    ([1.5, 2.0], "a list of floats", "token ids are integers"),
    (torch.tensor([1.0, 2.0]), "a float tensor of whole numbers", "token ids are integers, not floats"),
    (torch.tensor([True, False, True]), "a bool tensor", "booleans are not token ids (and torch.bool "
     "is not floating point: test it on its own)"),
    (torch.zeros(2, 3, dtype=torch.long), "a (2, 3) tensor", "a stream is 1-D"),
    ([[1, 2], [3, 4]], "a nested list", "a stream is 1-D"),
    ([], "an empty list", "there are no ids"),
    (torch.zeros(0, dtype=torch.long), "an empty long tensor", "there are no ids"),
    ([1, "a"], "the list [1, 'a']", "'a' is not a token id"),
    (None, "None", "None is not a stream of ids"),
    ([4, -2, 7], "a list with -2", "token ids are >= 0"),
    ("abc", "the string 'abc'", "letters are not token ids"),
]


@exercise("2.1", "What counts as a token stream", builds="gptlib.data:as_token_tensor", tier="warm-up",
          difficulty=1, importance=2)
def _(as_token_tensor):
    import numpy as np
    rng = random.Random(case_seed(21))
    drawn = [rng.randrange(50257) for _ in range(rng.randrange(1, 9))]   # GPT-2's ids
    for data, what in (([3, 1, 2], "a list"), ((3, 1, 2), "a tuple"), (range(3, 0, -1), "a range"),
                       (np.array([3, 1, 2], dtype=np.int32), "an int32 NumPy array"),
                       (torch.tensor([3, 1, 2], dtype=torch.int16), "an int16 tensor"),
                       (torch.tensor([3, 1, 2]), "a long tensor"), ([0], "a one-id list"),
                       (drawn, "a list of drawn ids"),
                       (torch.tensor(drawn, dtype=torch.int32), "an int32 tensor of drawn ids")):
        want = [int(v) for v in data]
        out = as_token_tensor(data)
        expect(isinstance(out, torch.Tensor), f"as_token_tensor({what}) must return a torch tensor, "
                                              f"got {type(out).__name__}")
        expect(out.dim() == 1 and out.tolist() == want,
               f"as_token_tensor({what} {list(want)}) must give the 1-D tensor of the same ids, got {out}")
        expect(out.dtype == torch.long, f"as_token_tensor({what}) gave dtype {out.dtype}: return torch.long "
                                        "ids (.long()), whatever integer type came in")
    for data, what, why in _NOT_IDS:
        try:
            out = as_token_tensor(data)
        except ValueError:
            continue
        except NotImplementedError:
            raise
        except Exception as err:
            raise CheckFailed(f"as_token_tensor({what}) raised {type(err).__name__}: {why}, and every "
                              "such input must raise ValueError naming the problem (turn the "
                              "conversion's own error into a ValueError)") from None
        raise CheckFailed(f"as_token_tensor({what}) returned {out!r} instead of raising ValueError: "
                          f"{why}")


# ---------------------------------------------------------------- 2.2
@exercise("2.2", "A deterministic split", builds="gptlib.data:train_val_split", tier="warm-up",
          difficulty=1, importance=2)
def _(train_val_split):
    rng = random.Random(case_seed(22))
    drawn = (rng.randrange(20, 2000), rng.randrange(1, 50) / 100)     # both parts non-empty
    for n, fraction in ((100, 0.1), (10, 0.25), (7, 0.3), (1000, 0.5), drawn):
        data = torch.arange(500, 500 + n)
        out = train_val_split(data, fraction)
        expect(isinstance(out, tuple) and len(out) == 2, "return a tuple (train, val)")
        train, val = out
        expect(isinstance(train, torch.Tensor) and isinstance(val, torch.Tensor), "return two tensors")
        n_train = int(n * (1.0 - fraction))
        expect(len(train) + len(val) == n, f"the parts of a {n}-token stream have {len(train)} + "
                                           f"{len(val)} tokens: every token goes to exactly one part")
        if torch.equal(torch.cat([val, train]), data):
            raise CheckFailed("the validation part comes first: train on the head of the stream and hold "
                              "out the tail, train = data[:n_train], val = data[n_train:]")
        expect(torch.equal(torch.cat([train, val]), data),
               "the parts must be the head and the tail of the stream, in order: no shuffling")
        expect(len(train) == n_train,
               f"with {n} tokens and val_fraction={fraction} the training part must hold "
               f"int({n} * (1 - {fraction})) = {n_train} tokens, got {len(train)}: compute n_train "
               "with int(len(data) * (1 - val_fraction)), which rounds down")
        expect(train.untyped_storage().data_ptr() == data.untyped_storage().data_ptr(),
               "the parts must be views of data (slices), not copies: drop .clone()")
    for n, fraction, why in ((1, 0.1, "the training part would be empty"),
                             (10, 1e-17, "1 - val_fraction rounds to 1.0 in floating point, so the "
                                         "validation part would be empty")):
        try:
            out = train_val_split(torch.arange(n), fraction)
        except ValueError:
            continue
        raise CheckFailed(f"train_val_split of {n} token(s) with val_fraction={fraction} returned parts of "
                          f"{[len(p) for p in out]} tokens: {why}; raise ValueError when either part "
                          "is empty")


# ---------------------------------------------------------------- 2.3
@exercise("2.3", "Random batches with shifted targets", builds="gptlib.data:get_batch", tier="core",
          difficulty=2, importance=3)
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
    torch.manual_seed(case_seed(1))
    first, _ = _batch(get_batch, data, T, B, seed=123)
    torch.manual_seed(case_seed(2))
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
    # The very starts of torch.randint(len(data) - block_size, (batch_size,), generator=generator).
    for n, T, B in ((100, 8, 16), (40, 5, 7)):
        data = torch.arange(base, base + n)
        x, y = _batch(get_batch, data, T, B, seed=11)
        starts = torch.randint(n - T, (B,), generator=torch.Generator().manual_seed(case_seed(11)))
        expect(torch.equal(x - base, starts[:, None] + torch.arange(T)),
               "the windows are right, but not the ones torch.randint(len(data) - block_size, "
               "(batch_size,), generator=generator) draws: use exactly that call (once, for all the "
               "starts), so that a seed gives the same batches as everyone else's")
    x, y = get_batch(data, 5, 3, generator=torch.Generator().manual_seed(case_seed(0)), device="meta")
    expect(x.device.type == "meta" and y.device.type == "meta",
           f"get_batch(..., device='meta') returned tensors on {x.device} and {y.device}: move x and y "
           "to `device` when it is given")
    # The last rule of _check_stream: block_size + 1 tokens hold one window, block_size tokens none.
    T = 6
    for n in (T, T - 2):
        try:
            out = get_batch(torch.arange(base, base + n), T, 2,
                            generator=torch.Generator().manual_seed(case_seed(0)))
        except ValueError:
            continue
        except (IndexError, RuntimeError) as err:
            out = f"{type(err).__name__} ({err})"
        raise CheckFailed(f"get_batch on a stream of {n} tokens with block_size={T} gave {out}: a window "
                          "needs block_size inputs plus one more token for the last target, so "
                          "_check_stream must raise ValueError when len(data) < block_size + 1")
    try:
        x, y = _batch(get_batch, torch.arange(base, base + T + 1), T, 4, seed=0)
    except ValueError as err:
        raise CheckFailed(f"a stream of block_size + 1 = {T + 1} tokens holds exactly one window, but "
                          f"get_batch raised ValueError ({err}): raise only when len(data) <= block_size") from None
    expect(torch.equal(x, torch.arange(base, base + T).expand(4, T)),
           "a stream of block_size + 1 tokens holds one window: every row must be data[0 : block_size]")


# ---------------------------------------------------------------- 2.4
def _eval_windows(n: int, T: int) -> torch.Tensor:
    """The starts iter_batches must use: 0, T, 2T, ... while a window's last target exists."""
    return torch.arange(0, n - T, T)


@exercise("2.4", "Evaluation batches", builds="gptlib.data:iter_batches", tier="core",
          difficulty=2, importance=2)
def _(iter_batches):
    base = 2000
    rng = random.Random(case_seed(24))
    T = rng.randrange(2, 10)             # not 1: its right windows 0, 1, 2, ... would look like overlapping ones
    drawn = (rng.randrange(T + 1, 12 * T), T, rng.randrange(1, 6))
    for n, T, B in ((42, 8, 3), (41, 8, 3), (40, 8, 2), (100, 7, 4), drawn):
        data = torch.arange(base, base + n)
        try:
            batches = list(iter_batches(data, T, B))
        except NotImplementedError:
            raise
        except (IndexError, RuntimeError) as err:
            raise CheckFailed(f"with len(data) = {n} and block_size = {T} some window runs past the end of data "
                              f"({type(err).__name__}: {err}): a window starting at i needs data[i + block_size], "
                              "so take only the starts with i + block_size < len(data)") from None
        starts = _eval_windows(n, T)
        expect(all(isinstance(b, tuple) and len(b) == 2 for b in batches), "yield (x, y) tuples")
        expect(all(x.shape[1:] == (T,) for x, _ in batches),
               f"each x must be (windows, block_size) = (..., {T})")
        expect(all(y.shape == x.shape for x, y in batches),
               f"with len(data) = {n} and block_size = {T} a batch has y of another shape than x: its last "
               "window runs past the end of data, so take only the starts with i + block_size < len(data)")
        xs = torch.cat([x for x, _ in batches]) if batches else torch.empty(0, T, dtype=torch.long)
        ys = torch.cat([y for _, y in batches]) if batches else torch.empty(0, T, dtype=torch.long)
        got = (xs[:, 0] - base).tolist()
        if len(got) > 1 and got[1] - got[0] == 1:
            raise CheckFailed("your windows overlap (they start at 0, 1, 2, ...): evaluation windows start "
                              "at 0, block_size, 2 * block_size, ..., so every target is scored once")
        full = len(starts) // B * B
        if full < len(starts) and got == starts.tolist()[:full]:
            raise CheckFailed(f"{len(starts)} windows in batches of {B} leave a last batch of "
                              f"{len(starts) - full}, and you dropped it: yield it too, smaller, so that every "
                              "window is scored (the windows that are left)")
        if got == starts.tolist()[:-1]:
            raise CheckFailed(f"with len(data) = {n} and block_size = {T} the window starting at "
                              f"{starts[-1].item()} is complete (its last target is data[{starts[-1].item() + T}]) "
                              "but you left it out: take every start i with i + block_size < len(data), "
                              "torch.arange(0, len(data) - block_size, block_size)")
        expect(got == starts.tolist(),
               f"with len(data) = {n} and block_size = {T} the windows must start at {starts.tolist()}, "
               f"got {got}: every start i = 0, block_size, 2 * block_size, ... with i + block_size < len(data)")
        expect(torch.equal(xs - base, starts[:, None] + torch.arange(T)) and torch.equal(ys, xs + 1),
               "each x must be the window data[i : i + block_size] and y the same window shifted by one")
        sizes = [len(x) for x, _ in batches]
        want = [min(B, len(starts) - k) for k in range(0, len(starts), B)]
        expect(sizes == want, f"{len(starts)} windows in batches of {B} must come as batches of sizes "
                              f"{want}, got {sizes}: the last batch holds the windows that are left")
    data = torch.arange(base, base + 100)
    expect(len(list(iter_batches(data, 4, 3, max_batches=2))) == 2,
           "max_batches=2 must stop after two batches")
    x, _ = next(iter(iter_batches(data, 4, 3, device="meta")))
    expect(x.device.type == "meta", "iter_batches(..., device='meta') must yield batches on the meta device")


def _embed(one_hot_embed, idx, weight):
    try:
        out = one_hot_embed(idx, weight)
    except NotImplementedError:
        raise
    except RuntimeError as err:
        text = str(err)
        if "dtype" in text or "scalar type" in text or "not implemented for 'Long'" in text:
            raise CheckFailed("the one-hot tensor and weight have different dtypes: make the one-hot "
                              f"tensor in weight's dtype (.to(weight.dtype)) before the product ({err})") from None
        if "shape" in text or "size" in text or "mat1" in text:
            raise CheckFailed("the shapes do not fit: the one-hot tensor must have V = weight.shape[0] "
                              "columns (not just up to the largest id present), and multiply by weight "
                              f"itself ({err})") from None
        raise
    expect(isinstance(out, torch.Tensor), "return a tensor")
    return out


# ---------------------------------------------------------------- 2.5
@exercise("2.5", "Embedding by one-hot product", builds="gptlib.embeddings:one_hot_embed",
          tier="warm-up", difficulty=1, importance=2,
          forbids=("F.one_hot", "torch.nn.functional.one_hot", "F.embedding"))
def _(one_hot_embed):
    g = torch.Generator().manual_seed(case_seed(0))
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
           "wrong values when the vocabulary is larger than the ids used: the one-hot tensor needs "
           "V = weight.shape[0] columns (num_classes=weight.shape[0]), not just up to the largest id")
    wide = torch.randn(6, 4, generator=g, dtype=torch.float64)
    out = _embed(one_hot_embed, torch.tensor([5, 0, 3]), wide)
    expect(out.dtype == torch.float64, f"with a float64 weight the result must be float64 (got {out.dtype}): "
                                       "use .to(weight.dtype), not .float()")
    expect(out.shape == (3, 4) and torch.equal(out, wide[torch.tensor([5, 0, 3])]),
           "a 1-D idx of length 3 must give a (3, C) result equal to weight[idx]")


# ---------------------------------------------------------------- 2.6
def _make_embedding(TokenEmbedding, *args, **kwargs):
    try:
        return TokenEmbedding(*args, **kwargs)
    except AttributeError as err:
        if "init_std" not in str(err):
            raise
        raise CheckFailed(f"TokenEmbedding{args} raised AttributeError ({err}): nn.Embedding's __init__ "
                          "calls reset_parameters, so self.init_std must be set before "
                          "super().__init__(...)") from None


@exercise("2.6", "GPT-2's initialisation of the token table", builds="gptlib.embeddings:TokenEmbedding",
          tier="warm-up", difficulty=1, importance=2)
def _(TokenEmbedding):
    from torch import nn
    V, C = 300, 64
    emb = _make_embedding(TokenEmbedding, V, C)
    expect(isinstance(emb, nn.Embedding), "TokenEmbedding must stay a subclass of nn.Embedding")
    params = {k: tuple(p.shape) for k, p in emb.named_parameters()}
    expect(params == {"weight": (V, C)}, f"TokenEmbedding({V}, {C}) must have one parameter, weight of shape "
                                         f"({V}, {C}), found {params}: pass the sizes to nn.Embedding's __init__")
    w = emb.weight.detach()
    expect(abs(w.mean().item()) < 0.003 and 0.018 < w.std().item() < 0.022,
           f"a fresh TokenEmbedding({V}, {C}) must be normal with mean 0 and std init_std = 0.02 (GPT-2's), "
           f"got mean {w.mean().item():.4f} and std {w.std().item():.4f}"
           + (": that is PyTorch's default N(0, 1); draw from a normal with std self.init_std in "
              "reset_parameters" if w.std().item() > 0.5 else ""))
    wide = _make_embedding(TokenEmbedding, V, C, init_std=0.5).weight.detach()
    if 0.015 < wide.std().item() < 0.025:
        raise CheckFailed("TokenEmbedding(..., init_std=0.5) gave std 0.02: use self.init_std, set before "
                          "super().__init__(...) (which calls reset_parameters), not the constant INIT_STD")
    expect(0.45 < wide.std().item() < 0.55, f"TokenEmbedding(..., init_std=0.5) must have std 0.5, "
                                            f"got {wide.std().item():.3f}")
    with torch.no_grad():
        emb.weight.fill_(1.0)
    emb.reset_parameters()
    expect(0.018 < emb.weight.detach().std().item() < 0.022,
           "reset_parameters() must draw the whole table again from a normal with std self.init_std")
    idx = torch.tensor([[0, V - 1, 7], [7, 7, 2]])
    expect(torch.equal(emb(idx), emb.weight[idx]), "the forward must stay nn.Embedding's lookup: "
                                                   "emb(idx) == emb.weight[idx]")


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


# ---------------------------------------------------------------- 2.8
def _sinusoidal_ref(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    angle = torch.arange(T, dtype=torch.float64)[:, None] / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(T, d)


@exercise("2.8", "Sinusoidal encoding", builds="gptlib.embeddings:sinusoidal_encoding", tier="core",
          difficulty=2, importance=2)
def _(sinusoidal):
    rng = random.Random(case_seed(28))
    for T, d in ((16, 8), (7, 6), (rng.randrange(1, 33), 2 * rng.randrange(1, 17))):
        out = sinusoidal(T, d)
        expect(isinstance(out, torch.Tensor), "return a torch tensor")
        expect(out.shape == (T, d), f"sinusoidal({T}, {d}) must have shape ({T}, {d}), got {tuple(out.shape)}")
        expect(out.is_floating_point(), "the table must be a float tensor")
        ref = _sinusoidal_ref(T, d)
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
    out = sinusoidal(6, 4, base=100.0)
    expect(torch.allclose(out.double(), _sinusoidal_ref(6, 4, 100.0), atol=1e-5),
           "with base=100.0 the angles must be t / 100 ** (2i / n_embd): use the `base` argument, not a "
           "hard-coded 10000")
    try:
        out = sinusoidal(4, 5)
    except ValueError:
        out = None
    except NotImplementedError:
        raise
    except Exception as err:
        out = f"{type(err).__name__} ({err})"
    if out is not None:
        raise CheckFailed(f"sinusoidal(4, 5) gave {out if isinstance(out, str) else 'a table'}: an odd "
                          "n_embd cannot be cut into (sin, cos) pairs; raise ValueError first")
    expect(sinusoidal(5, 4).dtype == torch.float32,
           f"return a float32 table (compute in float64, then .float()), got {sinusoidal(5, 4).dtype}")


# ---------------------------------------------------------------- 2.7
def _call_positions(pos, x, start, block_size):
    try:
        return pos(x) if start == 0 else pos(x, start)
    except ValueError as err:
        raise CheckFailed(f"positions {start} .. {start + x.shape[1] - 1} all exist in a table of "
                          f"block_size={block_size} rows, but you raised ValueError ({err}): a window may "
                          "end exactly at the last row, so raise only when start + T > block_size") from None


def _must_refuse(pos, x, start, block_size):
    try:
        pos(x, start)
    except ValueError:
        return
    raise CheckFailed(f"a window of T={x.shape[1]} tokens from start={start} needs positions up to "
                      f"{start + x.shape[1] - 1}, which a table of block_size={block_size} rows does not "
                      "have: raise ValueError (with a message that says so) instead of returning fewer rows")


@exercise("2.7", "Learned positions", builds="gptlib.embeddings:PositionalEmbedding", tier="core",
          difficulty=2, importance=3)
def _(PositionalEmbedding):
    block_size, C, V = 8, 6, 13
    pos = PositionalEmbedding(block_size, C)
    params = dict(pos.named_parameters())
    expect("weight" in params and tuple(params["weight"].shape) == (block_size, C),
           f"PositionalEmbedding({block_size}, {C}) must have a trainable parameter named weight of shape "
           f"({block_size}, {C}), found {({k: tuple(v.shape) for k, v in params.items()})}: wrap the table in "
           "nn.Parameter and assign it to self.weight")
    std = PositionalEmbedding(512, 64).weight.std().item()
    expect(0.015 < std < 0.025, f"a fresh table must be normal with std init_std = 0.02 (GPT-2's), got std "
                                f"{std:.3f}: fill it with nn.init.normal_(..., std=self.init_std)")
    expect(PositionalEmbedding(256, 32, init_std=0.5).weight.std().item() > 0.4,
           "init_std=0.5 gave a table with a much smaller std: use self.init_std, not a constant")
    with torch.no_grad():
        pos.weight.copy_(torch.arange(block_size * C, dtype=torch.float32).view(block_size, C))
    tok_weight = torch.randn(V, C, generator=torch.Generator().manual_seed(case_seed(0)))
    g = torch.Generator().manual_seed(case_seed(4))
    for B, T, start in ((2, 5, 0), (3, 3, 4), (1, block_size, 0), (2, 1, block_size - 1)):
        idx = torch.randint(V, (B, T), generator=g)
        out = _call_positions(pos, idx, start, block_size)
        expect(isinstance(out, torch.Tensor), "forward must return a tensor")
        if tuple(out.shape) == (B, T, C):
            raise CheckFailed(f"for a (B, T) = {(B, T)} input return the (T, n_embd) = {(T, C)} table, not "
                              "one copy per sequence: broadcasting adds it to every sequence of the batch")
        expect(tuple(out.shape) == (T, C), f"for a (B, T) = {(B, T)} input with start={start} return "
                                           f"(T, n_embd) = {(T, C)}, got {tuple(out.shape)}: T is x.shape[1]")
        if start and torch.equal(out, pos.weight[:T]):
            raise CheckFailed(f"with start={start} you returned the rows of positions 0 .. {T - 1}: return "
                              f"the rows of positions start .. start + T - 1 = {start} .. {start + T - 1}")
        expect(torch.equal(out, pos.weight[start:start + T]),
               f"with T={T} and start={start} return rows {start} .. {start + T - 1} of self.weight, the "
               "vectors of the positions (not of the token ids)")
        expect(out.requires_grad, "the positions must keep their gradient: return a slice of self.weight "
                                  "(no .detach(), no .data, no new tensor)")
        same = _call_positions(pos, torch.zeros(B, T, C), start, block_size)
        expect(torch.equal(same, out), "a (B, T, C) input (embeddings) must give the same rows as (B, T) ids: "
                                       "read T from x.shape[1]")
        h = F.embedding(idx, tok_weight) + out                  # what the GPT adds up
        expect(torch.equal(h, tok_weight[idx] + pos.weight[start:start + T][None]),
               "tok(idx) + pos(idx, start) must give token vector + position vector at every position")
    _must_refuse(pos, torch.zeros(1, block_size + 1, dtype=torch.long), 0, block_size)
    _must_refuse(pos, torch.zeros(1, 3, dtype=torch.long), block_size - 2, block_size)


# ---------------------------------------------------------------- 2.9
@exercise("2.9", "Similarity between positions", builds="gptlib.embeddings:position_similarity",
          tier="warm-up", difficulty=1, importance=1)
def _(position_similarity):
    g = torch.Generator().manual_seed(case_seed(5))
    weight = (torch.randn(6, 4, generator=g, dtype=torch.float64) * torch.arange(1, 7)[:, None]).requires_grad_()
    rows = [weight[s].detach().float() for s in range(6)]
    dots = torch.tensor([[float(a @ b) for b in rows] for a in rows])
    cos = torch.tensor([[float(a @ b / (a.norm() * b.norm())) for b in rows] for a in rows])
    out = position_similarity(weight)
    expect(isinstance(out, torch.Tensor), "return a tensor")
    if tuple(out.shape) == (4, 4):
        raise CheckFailed("you compared the embedding dimensions (w.T @ w, shape (n_embd, n_embd)); compare "
                          "the positions: w @ w.T, shape (T, T)")
    expect(tuple(out.shape) == (6, 6), f"a (6, 4) table must give a (6, 6) matrix, got {tuple(out.shape)}")
    expect(not out.requires_grad, "return the matrix without gradient: start from weight.detach()")
    expect(out.dtype == torch.float32, f"return float32 (.float()), got {out.dtype}")
    if torch.allclose(out, dots, atol=1e-4):
        raise CheckFailed("normalize=True (the default) must give cosine similarities: scale each position "
                          "vector to length one first (F.normalize(w, dim=-1))")
    expect(torch.allclose(out, cos, atol=1e-5),
           "normalize=True must give the cosine similarity of positions s and t at [s, t]: normalise each "
           "row (each position, dim=-1), not each column")
    raw = position_similarity(weight, normalize=False)
    expect(torch.allclose(raw, dots, atol=1e-4), "normalize=False must give the plain dot products w @ w.T")


# ---------------------------------------------------------------- 2.10 (stretch)
def _prefix_pool_ref(scores: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    out = torch.empty(values.shape, dtype=torch.float64)
    for t in range(scores.shape[1]):
        w = torch.softmax(scores[:, : t + 1].double(), dim=-1)
        out[:, t] = (w[..., None] * values[:, : t + 1].double()).sum(dim=1)
    return out


@exercise("2.10", "A causal model without positions", tier="stretch", difficulty=2, importance=2)
def _(prefix_pool):
    g = torch.Generator().manual_seed(case_seed(8))
    for B, T, C in ((2, 5, 3), (1, 1, 4), (3, 7, 2)):
        scores, values = 3 * torch.randn(B, T, generator=g), torch.randn(B, T, C, generator=g)
        out = prefix_pool(scores.clone(), values.clone())
        expect(isinstance(out, torch.Tensor) and tuple(out.shape) == (B, T, C),
               f"for (B, T) scores and (B, T, C) values = {(B, T)}, {(B, T, C)} return (B, T, C) = {(B, T, C)}, "
               f"got {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        want = _prefix_pool_ref(scores, values)
        out = out.double()
        if torch.allclose(out, want, atol=1e-5):
            continue
        expect(not out.isnan().any(), "your output has NaN: row t pools tokens 0 .. t, the token t itself "
                                      "included, so no row is empty")
        full = (torch.softmax(scores.double(), -1)[..., None] * values.double()).sum(1, keepdim=True)
        if T > 1 and torch.allclose(out, full.expand_as(out), atol=1e-5):
            raise CheckFailed("every position pools the whole window: row t must pool only tokens 0 .. t "
                              "(mask the keys j > t before the softmax)")
        if torch.allclose(out[:, -1], want[:, -1], atol=1e-5):
            raise CheckFailed("the last row is right but earlier rows are not: the weights of row t must be a "
                              "softmax over the prefix 0 .. t only, so they sum to one over the prefix")
        if not torch.allclose(out[:, 0], values[:, 0].double(), atol=1e-5):
            raise CheckFailed("row 0 must be values[:, 0] (token 0 pools only itself, with weight 1): did you "
                              "leave out token t itself, or shift the rows?")
        raise CheckFailed("row t must be the sum over j <= t of softmax(scores[:, 0..t])[j] * values[:, j]: "
                          "did you forget the softmax, or average the values with equal weights?")


# ---------------------------------------------------------------- 2.11
def _chars(text: str) -> list[int]:
    return [ord(c) for c in text]


@exercise("2.11", "Packing documents", builds="gptlib.shards:pack_documents", tier="core",
          difficulty=1, importance=3)
def _(pack_documents):
    eot = 7
    rng = random.Random(case_seed(211))
    drawn = ["".join(rng.choice("ab z\n") for _ in range(rng.randrange(0, 5))) for _ in range(rng.randrange(1, 7))]
    for docs in (["ab", "c", "def"], ["ab", "", "c"], ["", "x", ""], ["solo"], ["a\nb", "", "", "z"], drawn):
        want = []
        for k, doc in enumerate(docs):
            want += ([eot] if k else []) + _chars(doc)
        got = pack_documents(docs, _chars, eot)
        expect(isinstance(got, list) or hasattr(got, "__len__"), "return the list of ids")
        got = [int(i) for i in got]
        if got == want:
            continue
        n = sum(1 for i in got if i == eot)
        if got == want + [eot] or got == [eot] + want:
            raise CheckFailed(f"pack_documents({docs!r}) put a separator "
                              f"{'after the last' if got[-1] == eot else 'before the first'} document: "
                              "the end-of-text token goes only between two documents")
        if n < len(docs) - 1:
            raise CheckFailed(f"pack_documents({docs!r}) gave {n} separators for {len(docs)} documents: "
                              f"there must be {len(docs) - 1}, one between each two, even around an "
                              "empty document")
        raise CheckFailed(f"pack_documents({docs!r}, ord per character, eot_id={eot}) gave {got}, "
                          f"expected {want}")
    try:
        got = [int(i) for i in pack_documents((d for d in ["ab", "c"]), _chars, eot)]
    except (TypeError, IndexError) as err:
        got = f"{type(err).__name__} ({err})"
    expect(got == [97, 98, eot, 99], "documents may be a generator (read once): go through it with one "
                                     f"loop, not len() or indexing; got {got}")


# ---------------------------------------------------------------- 2.12
def _plan_ref(sizes, shard_size):
    plan, first, filled = [], 0, 0
    for k, size in enumerate(sizes):
        filled += size
        if filled >= shard_size:
            plan.append((first, k + 1))
            first, filled = k + 1, 0
    if first < len(sizes):
        plan.append((first, len(sizes)))
    return plan


@exercise("2.12", "Plan the shards", builds="gptlib.shards:plan_shards", tier="warm-up", difficulty=1,
          importance=2)
def _(plan_shards):
    cases = [([3, 3, 3, 3], 6), ([10, 1, 1], 4), ([1, 1, 1], 100), ([5], 5), ([2, 9, 2, 2, 9], 4), ([], 8)]
    rng = random.Random(case_seed(212))
    cases.append(([rng.randrange(1, 12) for _ in range(rng.randrange(1, 15))], rng.randrange(1, 16)))
    for sizes, shard_size in cases:
        want = _plan_ref(sizes, shard_size)
        got = [tuple(r) for r in plan_shards(sizes, shard_size)]
        if got == want:
            continue
        covered = [k for a, b in got for k in range(a, b)]
        expect(covered == list(range(len(sizes))), f"sizes {sizes}, shard_size {shard_size}: every document "
               f"must land in exactly one shard, in order; your ranges {got} cover {covered}")
        expect(all(b > a for a, b in got), f"sizes {sizes}: no shard may be empty; got {got}")
        expect(False, f"sizes {sizes}, shard_size {shard_size}: a shard takes documents until their sizes add "
               f"up to shard_size or more, then the next starts; expected {want}, got {got}")


# ---------------------------------------------------------------- 2.13
def _shard_case(lengths: list[int]):
    import numpy as np
    stream = np.arange(1000, 1000 + sum(lengths), dtype=np.int64)
    offsets = np.cumsum([0] + lengths)
    shards = [stream[a:b].astype(np.uint16) for a, b in zip(offsets[:-1], offsets[1:])]
    return stream, shards, offsets


@exercise("2.13", "Reading windows from shards", builds="gptlib.shards:read_positions", tier="core",
          difficulty=2, importance=2)
def _(read_positions):
    import numpy as np
    rng = random.Random(case_seed(213))
    drawn = [rng.randrange(0, 9) for _ in range(rng.randrange(1, 7))]
    while sum(drawn) < 3:                                   # the windows below read positions 0, 1, 2
        drawn[rng.randrange(len(drawn))] += 1
    for lengths in ([5, 3, 7], [4, 0, 6, 2], [1, 1, 1], [10], drawn):
        stream, shards, offsets = _shard_case(lengths)
        every = np.arange(len(stream))
        _OFFSET = ("subtract the shard's offset: the token at global position p of shard k is "
                   "shards[k][p - offsets[k]]")
        try:
            got = np.asarray(read_positions(shards, offsets, every))
        except IndexError as err:
            raise CheckFailed(f"with shards of lengths {lengths}, reading every position raised "
                              f"IndexError ({err}): {_OFFSET}") from None
        expect(got.shape == every.shape, f"return one token per position: shape {every.shape}, got {got.shape}")
        if not np.array_equal(got, stream):
            wrong = np.flatnonzero(got != stream)
            at_starts = bool(np.isin(wrong, offsets).all())
            hint = ("each wrong one is the first token of its shard: a position equal to offsets[k] is in "
                    "shard k, so search with side='right' and subtract 1" if at_starts else _OFFSET)
            bad = int(wrong[0])
            raise CheckFailed(f"with shards of lengths {lengths} the token at position {bad} should be "
                              f"{int(stream[bad])}, got {int(got[bad])}: {hint}")
        windows = np.array([[0, 1, 2], [len(stream) - 1, 0, len(stream) - 1]])
        got = np.asarray(read_positions(shards, offsets, windows))
        expect(got.shape == windows.shape and np.array_equal(got, stream[windows]),
               "positions may be a 2-D array (a batch of windows): return an array of the same shape")
        expect(got.dtype == np.int64, f"return int64 ids (torch reads them as long), got {got.dtype}")
