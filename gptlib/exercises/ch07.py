"""Checks for Chapter 7 (sampling): the greedy loop, the sampling filters, the generation loop,
the KV cache, a count of the model's work and the cache of fixed shape.

Hand-written. The filters return *logits* (removed tokens at -inf), as ``gptlib.sampling`` does;
the checks compare with small private references written here from ``F.softmax``, ``torch.sort``
and ``torch.multinomial``, never with ``gptlib.sampling`` itself, and, when they differ, probe
for the usual mistakes to name the likely one. The loops run on small random GPTs from
``gptlib.model`` (Chapter 5), against a private naive loop that recomputes everything.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gptlib.exercises import CheckFailed, case_seed, exercise, expect

_ATOL = 1e-5
_NEG_INF = float("-inf")


# ---- inputs and comparisons ------------------------------------------------------------------
def _logits(rows: int, vocab: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(case_seed(seed))
    return torch.randn(rows, vocab, generator=g) * scale


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, atol=_ATOL, rtol=1e-4))


def _call_filter(fn, logits: torch.Tensor, arg, what: str) -> torch.Tensor:
    """Call a filter on a copy of ``logits``; check it returns logits of the same shape and leaves
    its input alone."""
    given = logits.clone()
    try:
        out = fn(given, arg)
    except ZeroDivisionError:
        raise CheckFailed(f"{what} divided by zero: handle this case before dividing") from None
    expect(isinstance(out, torch.Tensor), f"return a tensor of logits, got {type(out).__name__}")
    expect(tuple(out.shape) == tuple(logits.shape),
           f"return one logit per token: shape {tuple(logits.shape)}, got {tuple(out.shape)}")
    expect(torch.equal(given.isnan(), logits.isnan()) and bool((given == logits).logical_or(
        given.isnan()).all()), f"{what} changed the logits you were given (an in-place operation "
           "such as masked_fill_ or `logits[...] = `): return a new tensor and leave the input alone")
    return out.detach().float()


def _same_filter(out: torch.Tensor, logits: torch.Tensor, keep: torch.Tensor) -> bool:
    """``out`` keeps exactly ``keep`` with the logits unchanged and has -inf elsewhere."""
    return (torch.equal(torch.isfinite(out), keep & torch.isfinite(logits))
            and bool((out[~keep] == _NEG_INF).all())
            and _close(out[keep & torch.isfinite(logits)], logits[keep & torch.isfinite(logits)]))


def _expect_logits(out: torch.Tensor, logits: torch.Tensor, keep: torch.Tensor, what: str) -> None:
    """A filter's output must be logits with the removed ones at -inf: name what it is instead."""
    if bool((out >= 0).all()) and _close(out.sum(-1), torch.ones(out.shape[:-1])):
        raise CheckFailed(f"{what}: you returned probabilities. A filter returns logits (the "
                          "removed ones at -inf); next_token_probs applies one softmax at the end")
    if bool((~keep).any()) and bool(torch.isfinite(out).all()) and bool((out[~keep] == 0).all()):
        raise CheckFailed(f"{what}: set the removed logits to -inf, not 0 (a logit of 0 still has "
                          "a probability after the softmax)")


# ---- private references ----------------------------------------------------------------------
def _keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    return torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order[..., :k], True)


def _keep_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1:
        return torch.ones_like(logits, dtype=torch.bool)
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep_sorted = (sorted_probs.cumsum(-1) - sorted_probs) < p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def _probs(logits: torch.Tensor, temperature: float = 1.0, top_k=None, top_p=None) -> torch.Tensor:
    """Temperature, then top-k, then top-p on the tempered distribution, then one softmax."""
    z = logits.float()
    if temperature == 0:
        return F.one_hot(z.argmax(-1), z.size(-1)).float()
    z = z / temperature
    if top_k is not None:
        z = z.masked_fill(~_keep_top_k(z, top_k), _NEG_INF)
    if top_p is not None:
        z = z.masked_fill(~_keep_top_p(z, top_p), _NEG_INF)
    return F.softmax(z, dim=-1)


def _tiny_gpt(seed: int = 0, vocab_size: int = 11, block_size: int = 8, n_layer: int = 2,
              dropout: float = 0.0, fixed: bool = False):
    """A small random GPT whose greedy text varies (weights scaled up), in eval mode; drawn from
    ``case_seed(seed)`` (the grader's own weights), or from ``seed`` itself when ``fixed``."""
    from gptlib.model import GPT, GPTConfig
    torch.manual_seed(seed if fixed else case_seed(seed))
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                          n_head=2, n_embd=16, dropout=dropout))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)
    return model.eval()


def _prompt(batch: int, length: int, vocab: int, seed: int, fixed: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed if fixed else case_seed(seed))
    return torch.randint(0, vocab, (batch, length), generator=g)


@torch.no_grad()
def _naive_loop(model, idx, n, choose=None, crop="last", position=-1):
    """The textbook loop, recomputing everything each step. ``choose(logits) -> (B, 1)`` defaults
    to argmax; ``crop`` and ``position`` can be set wrong to recognise a mistake."""
    bs = model.config.block_size
    for _ in range(n):
        context = idx[:, -bs:] if crop == "last" else idx[:, :bs]
        logits = model(context)[0][:, position]
        nxt = logits.argmax(-1, keepdim=True) if choose is None else choose(logits)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


@torch.no_grad()
def _naive_no_append(model, idx, n):
    """The mistake of feeding the prompt every step (the chosen tokens never reach the model)."""
    bs = model.config.block_size
    nxt = model(idx[:, -bs:])[0][:, -1].argmax(-1, keepdim=True)
    return torch.cat([idx] + [nxt] * n, dim=1)


def greedy_loop(model, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Exercise 7.1's loop, for a notebook whose own is not done yet: greedy, crop to the last
    ``block_size`` tokens, idx (B, T) -> (B, T + max_new_tokens)."""
    return _naive_loop(model, idx, max_new_tokens)


def _run_loop(fn, what: str, *args, **kwargs):
    """Run a candidate loop; a model that refuses a too-long context means the crop is missing,
    a cache that overflows means it was not emptied when full."""
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        if "cached positions" in str(err) or "KV cache holds" in str(err):
            raise CheckFailed(f"{what}: the cache overflowed ({err}). When the cache is full, "
                              "next_input must empty it (reset) and return the last capacity "
                              "tokens to refill it") from None
        if "exceeds block_size" in str(err):
            raise CheckFailed(f"{what}: the model was given more than block_size tokens ({err}). "
                              "Crop the context to its last block_size tokens before each forward "
                              "pass") from None
        raise


def _diagnose_greedy(out, model, prompt, n, what: str) -> None:
    """``out`` differs from the naive greedy loop: name the likely mistake. Returns without a
    verdict when two mistakes give these same tokens (a one-token prompt: its first position is
    its last), so that another case can tell them apart."""
    expect(isinstance(out, torch.Tensor), f"return a tensor of token ids, got {type(out).__name__}")
    want = (prompt.size(0), prompt.size(1) + n)
    expect(tuple(out.shape) == want, f"{what}: expected shape {want} (the prompt followed by "
           f"{n} new tokens), got {tuple(out.shape)}")
    expect(torch.equal(out[:, :prompt.size(1)], prompt), f"{what}: the result must start with the "
           "prompt, unchanged")
    first_position = torch.equal(out, _naive_loop(model, prompt, n, position=0))
    no_append = torch.equal(out, _naive_no_append(model, prompt, n))
    if first_position and no_append:
        return
    if first_position:
        raise CheckFailed(f"{what}: you chose from the logits of the first position. Position t "
                          "predicts the token after t: take the last position, logits[:, -1]")
    if torch.equal(out, _naive_loop(model, prompt, n, crop="first")):
        raise CheckFailed(f"{what}: once the text is longer than block_size you fed its *first* "
                          "block_size tokens. Crop to the last ones, idx[:, -block_size:]")
    if no_append:
        raise CheckFailed(f"{what}: every new token is the same one. Each step must see the "
                          "token chosen at the step before: append it to the context")
    raise CheckFailed(f"{what}: your tokens differ from greedy decoding (the argmax of the last "
                      "position's logits, each step on the context cropped to block_size)")


_GREEDY_CASES = [  # (seed, batch, prompt length, new tokens) on a model with block_size 8
    (1, 2, 3, 4), (2, 3, 5, 19), (3, 1, 12, 6), (4, 2, 1, 9)]


def _expect_greedy(loop, model, call: str, **kw) -> None:
    """``loop(model, prompt, n, **kw)`` writes the naive greedy loop's tokens on every case."""
    undecided = None
    for seed, batch, length, n in _GREEDY_CASES:
        prompt = _prompt(batch, length, model.config.vocab_size, seed)
        what = f"{call} on {batch} prompts of {length} tokens, {n} new (block_size 8)"
        out = _run_loop(loop, what, model, prompt.clone(), n, **kw)
        if not (isinstance(out, torch.Tensor) and torch.equal(out, _naive_loop(model, prompt, n))):
            _diagnose_greedy(out, model, prompt, n, what)
            undecided = undecided or what
    if undecided:
        raise CheckFailed(f"{undecided}: every new token is the one the prompt's first position "
                          "predicts. Either you chose from the logits of the first position (take "
                          "the last, logits[:, -1]) or no step saw the token chosen before it "
                          "(append it to the context)")


@exercise("7.1", "The greedy loop", builds="gptlib.exercises.ch07:greedy_loop", tier="warm-up",
          difficulty=1, importance=3)
def _(greedy_loop):
    _expect_greedy(greedy_loop, _tiny_gpt(seed=0), "greedy_loop")


# ---- 7.2 .. 7.5: the filters and the distribution ---------------------------------------------
@exercise("7.2", "Temperature", builds="gptlib.sampling:apply_temperature", tier="warm-up",
          difficulty=1, importance=2)
def _(apply_temperature):
    logits = _logits(3, 10, seed=0)
    for t in (0.5, 1.0, 2.0, 0.7):
        out = _call_filter(apply_temperature, logits, t, f"temperature={t}")
        if _close(out, logits / t):
            continue
        if _close(out, logits * t):
            raise CheckFailed("you multiplied the logits by the temperature: divide them "
                              "(logits / T), so T < 1 sharpens and T > 1 flattens")
        if _close(out, F.softmax(logits / t, dim=-1)):
            raise CheckFailed("you returned probabilities: return the tempered logits, logits / T "
                              "(next_token_probs applies one softmax at the end)")
        raise CheckFailed(f"at temperature {t} expected logits / T")
    out = _call_filter(apply_temperature, logits, 0, "temperature=0")
    if bool(out.isnan().any()) or bool((out == float("inf")).any()):
        raise CheckFailed("temperature=0 gives nan/inf: logits / 0 divides by zero. Handle T == 0 "
                          "on its own: keep the largest logit of each row, -inf elsewhere")
    greedy = F.one_hot(logits.argmax(-1), logits.size(-1)).bool()
    if _close(out, greedy.float()):
        raise CheckFailed("temperature=0: you returned a one-hot probability, but softmax([1, 0, "
                          "0]) is not one-hot. Return logits: the largest kept, -inf elsewhere")
    expect(torch.equal(torch.isfinite(out), greedy) and _close(F.softmax(out, -1), greedy.float()),
           "temperature=0 means greedy: keep only the largest logit of each row and set every "
           "other one to -inf, so the softmax is one-hot")
    ties = torch.tensor([[2.0, 5.0, 5.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    out = _call_filter(apply_temperature, ties, 0, "temperature=0")
    expect(torch.isfinite(out).tolist() == [[False, True, False, False], [True, False, False, False]],
           "temperature=0 with tied largest logits, rows [2, 5, 5, 1] and [0, 0, 0, 0]: keep only "
           "the first of them (as argmax does), not every tie")


@exercise("7.3", "Top-k filter", builds="gptlib.sampling:top_k_filter", tier="core",
          difficulty=2, importance=3)
def _(top_k_filter):
    V = 12
    logits = _logits(4, V, seed=1)
    for k in (1, 3, 5, 11, 12, 20):
        what = f"k={k} on rows of {V} logits"
        try:
            out = _call_filter(top_k_filter, logits, k, what)
        except (CheckFailed, NotImplementedError):
            raise
        except Exception as err:
            if k > V:
                raise CheckFailed(f"{what} raised {type(err).__name__}: {err}. When k >= the "
                                  "vocabulary size every token is kept: return the logits") from None
            raise
        keep = _keep_top_k(logits, k)
        if _same_filter(out, logits, keep):
            continue
        _expect_logits(out, logits, keep, what)
        kept = torch.isfinite(out).sum(-1)
        n = min(k, V)
        if bool((kept == n + 1).all()) or bool((kept == n - 1).all()):
            raise CheckFailed(f"{what}: you kept {kept[0].item()} tokens per row: off by one, "
                              f"keep exactly k")
        expect(bool((kept == n).all()), f"{what}: keep exactly {n} tokens per row, got "
               f"{kept.tolist()}")
        if torch.equal(torch.isfinite(out), _keep_top_k(-logits, k)):
            raise CheckFailed(f"{what}: you kept the k smallest logits: keep the k *largest*")
        expect(torch.equal(torch.isfinite(out), keep), f"{what}: you kept the wrong tokens: keep "
               "the k largest of each row")
        raise CheckFailed(f"{what}: the kept logits must stay as they were")
    ties = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    out = _call_filter(top_k_filter, ties, 2, "k=2")
    kept = int(torch.isfinite(out).sum())
    expect(kept == 2, f"logits [1, 3, 3, 3, 0] with k=2: you kept {kept} tokens. Keep exactly k, "
           "even when logits tie at the k-th place (a threshold like `logits >= kth_value` keeps "
           "every tie)")
    expect(torch.isfinite(out).tolist() == [[False, True, True, False, False]],
           "logits [1, 3, 3, 3, 0] with k=2: on ties keep the lower token ids (ids 1 and 2): "
           "use a stable sort, torch.sort(..., stable=True)")


def _expect_rows(out: torch.Tensor, logits: torch.Tensor, p: float, what: str) -> None:
    """Name a softmax over the batch axis (the probabilities of a row come from that row)."""
    probs = F.softmax(logits, dim=0)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(sorted_probs, dtype=torch.bool).scatter(
        -1, order, (sorted_probs.cumsum(-1) - sorted_probs) < p)
    if torch.equal(torch.isfinite(out), keep) and not torch.equal(keep, _keep_top_p(logits, p)):
        raise CheckFailed(f"{what}: you took the softmax over the wrong axis. Each row is one "
                          "distribution: softmax over the vocabulary (dim=-1), row by row")


@exercise("7.4", "Top-p (nucleus) filter", builds="gptlib.sampling:top_p_filter", tier="core",
          difficulty=3, importance=3)
def _(top_p_filter):
    base = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    shuffled = base[:, [2, 0, 3, 1]]    # the same distribution, not sorted by id
    rows = _logits(3, 20, seed=2)
    for p in (0.3, 0.8):
        _expect_rows(_call_filter(top_p_filter, rows, p, f"p={p}"), rows, p,
                     f"p={p} on three rows of 20 random logits")
    for logits, p, n_keep in ((base, 0.7, 2), (base, 0.45, 1), (base, 0.9, 3), (base, 1.0, 4),
                              (shuffled, 0.7, 2), (shuffled, 0.9, 3)):
        desc = (f"probabilities {[round(v, 2) for v in F.softmax(logits, -1)[0].tolist()]} "
                f"with p={p}")
        out = _call_filter(top_p_filter, logits, p, desc)
        keep = _keep_top_p(logits, p)
        if _same_filter(out, logits, keep):
            continue
        _expect_logits(out, logits, keep, desc)
        kept = int(torch.isfinite(out).sum())
        if kept == n_keep - 1:
            raise CheckFailed(f"{desc}: keep {n_keep} tokens, you kept {kept}. You dropped the "
                              "token that crosses the threshold: keep a token while the mass "
                              "ranked *above* it is still < p (so the most likely token is always "
                              "kept)")
        if logits is shuffled and kept != n_keep:
            raise CheckFailed(f"{desc}: keep {n_keep} tokens, you kept {kept}. Sort the tokens by "
                              "probability (descending) before the cumulative sum, then map back "
                              "to token ids")
        if kept == n_keep and not torch.equal(torch.isfinite(out), keep):
            raise CheckFailed(f"{desc}: you kept {n_keep} tokens, but not the most likely ones")
        expect(kept == n_keep, f"{desc}: keep the {n_keep} most likely tokens (you kept {kept})")
        raise CheckFailed(f"{desc}: the kept logits must stay as they were")
    tail = torch.tensor([[0.0, -20.0, -25.0, -30.0]])
    out = _call_filter(top_p_filter, tail, 1.0, "p=1")
    expect(bool(torch.isfinite(out).all()), "logits [0, -20, -25, -30] with p=1: every token must "
           "survive, but you removed some. In float32 the mass above the unlikely tokens rounds to "
           "exactly 1.0, so `mass_above < p` fails: p >= 1 keeps everything, return the logits")
    filtered = torch.tensor([[2.0, 1.0, _NEG_INF, 0.5, _NEG_INF]])   # after top-k, say
    out = _call_filter(top_p_filter, filtered, 0.8, "p=0.8")
    keep = _keep_top_p(filtered, 0.8)
    expect(_same_filter(out, filtered, keep), "logits [2, 1, -inf, 0.5, -inf] (a row top-k has "
           "already filtered) with p=0.8: keep ids 0 and 1 and leave the other logits at -inf "
           f"(got {out.tolist()})")
    logits = _logits(3, 20, seed=2)
    for p in (0.3, 0.8, 0.95):
        out = _call_filter(top_p_filter, logits, p, f"p={p}")
        _expect_rows(out, logits, p, f"p={p} on three rows of 20 random logits")
        expect(_same_filter(out, logits, _keep_top_p(logits, p)),
               f"on three rows of 20 random logits with p={p} you kept the wrong tokens: sort by "
               "probability, keep tokens while the mass above them is < p, row by row")


@exercise("7.5", "The sampling distribution", builds="gptlib.sampling:next_token_probs",
          tier="core", difficulty=1, importance=2)
def _(next_token_probs):
    logits = _logits(4, 25, seed=3)
    settings = [dict(), dict(temperature=0.7), dict(top_k=3), dict(top_p=0.8),
                dict(temperature=1.3, top_k=10, top_p=0.9), dict(temperature=0),
                dict(temperature=2.0, top_p=0.5), dict(top_k=6, top_p=0.6)]
    for kw in settings:
        what = "next_token_probs(logits" + "".join(f", {k}={v}" for k, v in kw.items()) + ")"
        try:
            out = next_token_probs(logits.clone(), **kw)
        except TypeError as err:
            if "NoneType" in str(err):
                raise CheckFailed(f"{what} raised TypeError: {err}. top_k=None and top_p=None "
                                  "mean no filter: skip that step") from None
            raise
        expect(isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(logits.shape),
               f"{what}: return probabilities of shape {tuple(logits.shape)}")
        out = out.detach().float()
        want = _probs(logits, **kw)
        if _close(out, want):
            continue
        expect(bool((out >= 0).all()) and _close(out.sum(-1), torch.ones(4)),
               f"{what}: each row must be a probability distribution (>= 0, sums to 1): end with "
               "a softmax over the last axis")
        t, k, p = kw.get("temperature", 1.0), kw.get("top_k"), kw.get("top_p")
        if p is not None and t != 1 and _close(out, _probs(logits, 1.0, k, p).pow(1 / t) /
                                               _probs(logits, 1.0, k, p).pow(1 / t).sum(-1, True)):
            raise CheckFailed(f"{what}: apply the temperature first, so that top-p measures the "
                              "mass of the tempered distribution")
        if k is not None and p is not None:
            tempered = logits.float() / t
            swapped = tempered.masked_fill(~_keep_top_p(tempered, p), _NEG_INF)
            swapped = F.softmax(swapped.masked_fill(~_keep_top_k(swapped, k), _NEG_INF), -1)
            if _close(out, swapped):
                raise CheckFailed(f"{what}: you applied top-p before top-k. The order is "
                                  "temperature, top-k, then top-p on what top-k kept")
        raise CheckFailed(f"{what}: your probabilities differ. The order is temperature, then "
                          "top-k, then top-p, then one softmax")
    half = next_token_probs(logits.to(torch.bfloat16))
    expect(half.dtype == torch.float32 and _close(half.sum(-1), torch.ones(4)),
           f"bfloat16 logits gave {half.dtype} probabilities: compute in float32 (logits.float()) "
           "so that the probabilities sum to 1 accurately")


# ---- 7.6 the generation loop -------------------------------------------------------------------
def _sampled_reference(model, prompt, n, seed, **kw):
    g = torch.Generator().manual_seed(case_seed(seed))

    def choose(logits):
        return torch.multinomial(_probs(logits, **kw), 1, generator=g)
    return _naive_loop(model, prompt, n, choose=choose)


def _with_stops(free: torch.Tensor, prompt_len: int, stops) -> torch.Tensor:
    """What generation with stop tokens writes, from what it writes without them."""
    rows, done_at = [], []
    for row in free:
        new = row[prompt_len:].clone()
        hits = [i for i, t in enumerate(new.tolist()) if t in stops]
        if hits:
            new[hits[0]:] = new[hits[0]]
        rows.append(torch.cat([row[:prompt_len], new]))
        done_at.append(hits[0] + 1 if hits else len(new))
    return torch.stack(rows)[:, :prompt_len + max(done_at)]


def _stop_checks(generate, model, cache_kw) -> None:
    """Stop tokens on ``model`` (drawn with ``fixed=True``): the case is hand-picked, every row
    meets a stop token within the 12 steps, which a salted model or prompt need not do."""
    prompt = _prompt(3, 4, model.config.vocab_size, seed=11, fixed=True)
    free = _naive_loop(model, prompt, 12)
    stop = int(free[0, 4 + 2])                          # row 0's third new token
    prompt[1, 1] = stop                                 # a stop token in a prompt stops nothing
    free = _naive_loop(model, prompt, 12)
    for stops in ([stop], [stop, int(free[2, 4 + 5])]):
        what = f"three prompts, stop_tokens={stops}, greedy"
        out = generate(model, prompt.clone(), 12, temperature=0, stop_tokens=stops, **cache_kw)
        want = _with_stops(free, 4, stops)
        if torch.equal(out, want):
            continue
        expect(out.size(1) != free.size(1) or want.size(1) == free.size(1),
               f"{what}: every row had written a stop token by step {want.size(1) - 4}, but the "
               f"loop went on to {out.size(1) - 4} steps: stop once every row is done")
        expect(out.size(1) != want.size(1) - 1, f"{what}: the stop token is part of the output: "
               "yield it, then stop")
        if out.size(1) < want.size(1):
            raise CheckFailed(f"{what}: you stopped after {out.size(1) - 4} new tokens, when the "
                              f"first row finished; stop when *every* row is done "
                              f"({want.size(1) - 4} tokens here)")
        if out.shape == want.shape and torch.equal(out, free[:, :want.size(1)]):
            raise CheckFailed(f"{what}: a row that chose a stop token must repeat that token at "
                              "every later step (it is finished), not go on writing")
        raise CheckFailed(f"{what}: expected {want.tolist()}, got {out.tolist()}")


@exercise("7.6", "The generation loop", builds="gptlib.sampling:generate", tier="core",
          difficulty=3, importance=3)
def _(generate):
    model = _tiny_gpt(seed=0)
    _expect_greedy(generate, model, "generate(temperature=0)", temperature=0, use_cache=False)
    prompt = _prompt(2, 3, model.config.vocab_size, seed=5)
    for kw in (dict(temperature=1.0), dict(temperature=0.8, top_k=4),
               dict(temperature=1.2, top_p=0.9)):
        what = "sampling with " + ", ".join(f"{k}={v}" for k, v in kw.items())
        runs = [generate(model, prompt.clone(), 14, use_cache=False,
                         generator=torch.Generator().manual_seed(case_seed(0)), **kw)
                for _ in range(2)]
        expect(torch.equal(runs[0], runs[1]), f"{what}: the same seed gave two different texts. "
               "Draw with the generator you were given: sample_next(..., generator)")
        want = _sampled_reference(model, prompt, 14, 0, **kw)
        if torch.equal(runs[0], want):
            continue
        expect(not torch.equal(runs[0], _naive_loop(model, prompt, 14)),
               f"{what}: you wrote the greedy text. Choose with sample_next(logits, temperature, "
               "top_k, top_p, generator); only temperature 0 is greedy")
        raise CheckFailed(f"{what}: your tokens differ from one draw per step with "
                          "torch.multinomial(probs, 1, generator) from next_token_probs(logits of "
                          "the last position, temperature, top_k, top_p)")
    _stop_checks(generate, _tiny_gpt(seed=0, fixed=True), dict(use_cache=False))
    _eval_mode_checks(generate)


def _eval_mode_checks(generate) -> None:
    """Generation runs the model in eval mode and gives it back its own mode."""
    model = _tiny_gpt(seed=2, dropout=0.5)
    prompt = _prompt(2, 3, model.config.vocab_size, seed=6)
    want = _naive_loop(model, prompt, 10)            # in eval mode: dropout off
    what = "a model with dropout 0.5, in training mode, greedy on 2 prompts of 3 tokens"
    model.train()
    out = generate(model, prompt.clone(), 10, temperature=0, use_cache=False)
    expect(torch.equal(out, want), f"{what}: your tokens differ from the model's in eval mode. "
           "Dropout must be off while generating: put the model in eval mode (model.eval()) "
           "before the loop")
    expect(model.training, f"{what}: the model was left in eval mode. Give it back the mode it "
           "had (model.train(was_training)), in a `finally` so that it also happens when a "
           "caller stops early")


# ---- 7.7 .. 7.9: the KV cache ------------------------------------------------------------------
class _Cache:
    """A private stand-in for KVCache: one candidate layer cache per layer, and its length."""

    def __init__(self, layer_cls, n_layer: int, capacity: int):
        self.layers = [layer_cls(capacity) for _ in range(n_layer)]

    def __len__(self) -> int:
        return self.layers[0].length


def _kv(batch, heads, T, size, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(case_seed(seed))
    return (torch.randn(batch, heads, T, size, generator=g).to(dtype),
            torch.randn(batch, heads, T, size, generator=g).to(dtype))


def _expect_kv(got, want_k, want_v, what: str) -> None:
    expect(isinstance(got, tuple) and len(got) == 2, f"{what}: update must return the pair "
           "(keys, values)")
    k, v = got
    expect(tuple(k.shape) == tuple(want_k.shape) and tuple(v.shape) == tuple(want_v.shape),
           f"{what}: expected keys and values of shape {tuple(want_k.shape)} (every position so "
           f"far, and no more), got {tuple(k.shape)} and {tuple(v.shape)}")
    expect(k.dtype == want_k.dtype, f"{what}: the keys came back as {k.dtype}, they went in as "
           f"{want_k.dtype}: store them in their own dtype")
    expect(torch.equal(k, want_k) and torch.equal(v, want_v), f"{what}: the keys or values "
           "differ from the ones stored: earlier positions first, then the new ones, in order "
           "along the positions axis (dim 2)")


@exercise("7.7", "The layer's KV cache", builds="gptlib.sampling:LayerKVCache", tier="core",
          difficulty=2, importance=3)
def _(LayerKVCache):
    cache = LayerKVCache(6)
    expect(cache.length == 0 and cache.capacity == 6, "a new LayerKVCache(6) has length 0 and "
           "capacity 6")
    k1, v1 = _kv(2, 3, 4, 5, seed=0)
    _expect_kv(cache.update(k1, v1), k1, v1, "the first update, 4 positions")
    expect(cache.length == 4, f"after storing 4 positions length must be 4, got {cache.length}: "
           "advance self.length by the number of new positions")
    k2, v2 = _kv(2, 3, 1, 5, seed=1)
    _expect_kv(cache.update(k2, v2), torch.cat([k1, k2], 2), torch.cat([v1, v2], 2),
               "4 positions, then 1 more")
    expect(cache.length == 5, f"after 4 + 1 positions length must be 5, got {cache.length}")
    cache.length = 0                                   # what KVCache.reset does
    k3, v3 = _kv(2, 3, 2, 5, seed=2)
    _expect_kv(cache.update(k3, v3), k3, v3, "after the length was set back to 0 (a reset), 2 "
               "positions")
    k4, v4 = _kv(1, 3, 3, 5, seed=3, dtype=torch.float64)
    cache.length = 0
    _expect_kv(cache.update(k4, v4), k4, v4, "after a reset, a batch of 1 in float64 (it was a "
               "batch of 2 in float32: make room again when the batch size or dtype changes)")
    try:
        cache.update(*_kv(1, 3, 4, 5, seed=4, dtype=torch.float64))
    except ValueError:
        pass
    except (RuntimeError, IndexError) as err:
        raise CheckFailed(f"a cache of capacity 6 holding 3 positions, given 4 more, crashed with "
                          f"{type(err).__name__}: raise a ValueError (in _check_room) when the "
                          "cache would overflow") from None
    else:
        raise CheckFailed("a cache of capacity 6 holding 3 positions accepted 4 more: raise a "
                          "ValueError (in _check_room) when the cache would overflow")
    from gptlib.model import GPT, GPTConfig
    torch.manual_seed(case_seed(0))
    model = GPT(GPTConfig(vocab_size=13, block_size=12, n_layer=2, n_head=2, n_embd=16)).eval()
    idx = _prompt(2, 12, 13, seed=5)
    cache = _Cache(LayerKVCache, 2, 12)
    with torch.no_grad():
        parts = [model.hidden_states(idx[:, a:b], cache=cache) for a, b in [(0, 5), (5, 6), (6, 12)]]
        full = model.hidden_states(idx)
    expect(torch.allclose(torch.cat(parts, 1), full, atol=1e-5), "a GPT fed 12 tokens in pieces "
           "of 5, 1 and 6 through your cache must give the hidden states of one forward pass")


def _expected_feeds(prompt_len: int, n: int, bs: int) -> list[int]:
    """Tokens fed per step with the cache: fill it, then one per step; empty and refill when full."""
    feeds, length, total = [], 0, prompt_len
    for _ in range(n):
        if length in (0, bs):
            feed = length = min(total, bs)
        else:
            feed, length = 1, length + 1
        feeds.append(feed)
        total += 1
    return feeds


class _FeedCounter:
    """Records how many tokens each pass of ``model`` gets, and whether a cache came too.

    It wraps the model's ``hidden_states``, which every way of running the model goes through
    (``forward`` and ``next_token_logits`` alike)."""

    def __init__(self, model):
        self.sizes, self.cached, self.model = [], [], model
        original = model.hidden_states

        def counting(idx, cache=None):
            self.sizes.append(int(idx.size(1)))
            self.cached.append(cache is not None)
            return original(idx, cache)
        model.hidden_states = counting

    def expect_prefix(self, want: list[int], what: str, how: str) -> None:
        """The feeds so far agree with ``want`` (a run that broke off may have fewer)."""
        expect(self.sizes == want[:len(self.sizes)], f"{what}: the model got {self.sizes[:12]} "
               f"tokens per step, expected {want[:12]} ({how})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        del self.model.hidden_states          # the class's own method again


@exercise("7.8", "The cache's bookkeeping", builds="gptlib.sampling:KVCache", tier="core",
          difficulty=2, importance=3)
def _(KVCache):
    cache = KVCache(3, 5)
    expect(len(cache.layers) == 3 and len(cache) == 0, "KVCache(3, 5) holds 3 layer caches and "
           "len() 0")
    idx = torch.arange(16).view(2, 8)
    feed = cache.next_input(idx)
    expect(torch.equal(feed, idx[:, -5:]), f"an empty cache of capacity 5, tokens [0 .. 7]: "
           f"next_input must return the last 5 tokens to fill it, got {feed.tolist()}")
    for layer in cache.layers:
        layer.update(*_kv(2, 2, 5, 4, seed=0))
    expect(len(cache) == 5, f"every layer holds 5 positions, but len(cache) is {len(cache)}: "
           "it is the number of positions cached (the same in every layer), not a sum")
    want = 3 * 2 * (2 * 2 * 5 * 4) * 4          # layers, keys and values, numbers, float32
    expect(cache.nbytes() == want, f"3 layers with room for 5 positions of a batch of 2, 2 heads "
           f"of size 4, in float32, hold {want} bytes; nbytes() says {cache.nbytes()}: count the "
           "keys and the values of every layer, numel() * element_size()")
    idx = torch.arange(18).view(2, 9)
    feed = cache.next_input(idx)
    expect(torch.equal(feed, idx[:, -5:]) and all(layer.length == 0 for layer in cache.layers),
           "a full cache of capacity 5 (5 positions), 9 tokens: next_input must empty every layer "
           f"and return the last 5 tokens to refill it; got {feed.tolist()} and layer lengths "
           f"{[layer.length for layer in cache.layers]}")
    for layer in cache.layers:
        layer.update(*_kv(2, 2, 3, 4, seed=1))
    idx = torch.arange(20).view(2, 10)
    feed = cache.next_input(idx)
    expect(torch.equal(feed, idx[:, -1:]) and len(cache) == 3, "a cache holding 3 of 5 "
           f"positions: next_input must return only the newest token, got {feed.tolist()}")
    cache.reset()
    expect(all(layer.length == 0 for layer in cache.layers), "reset() must empty every layer, "
           f"got lengths {[layer.length for layer in cache.layers]}")
    model = _tiny_gpt(seed=0).double()     # float64: cached and uncached logits agree closely
    bs = model.config.block_size
    for seed, (batch, length, n) in enumerate([(2, 1, 6), (1, 3, 2 * bs + 3), (3, bs, 5),
                                               (2, bs + 4, 4)]):
        prompt = _prompt(batch, length, model.config.vocab_size, seed)
        what = f"greedy through your cache, {batch} prompts of {length} tokens, {n} new " \
               f"(block_size {bs})"
        idx, cache = prompt.clone(), KVCache(model.config.n_layer, bs)
        want_fed = _expected_feeds(length, n, bs)
        with torch.no_grad(), _FeedCounter(model) as fed:
            try:
                for _ in range(n):
                    logits, _ = _run_loop(model, what, cache.next_input(idx), cache=cache)
                    idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            except CheckFailed:
                fed.expect_prefix(want_fed, what, "fill, then one token per step, refill when full")
                raise
        fed.expect_prefix(want_fed, what, "fill, then one token per step, refill when full")
        expect(len(fed.sizes) == n, f"{what}: the model ran {len(fed.sizes)} times for {n} tokens")
        expect(torch.equal(idx, _naive_loop(model, prompt, n)), f"{what}: the tokens differ from "
               "the loop without a cache")


@exercise("7.9", "Generation with the KV cache", builds="gptlib.sampling:generate", tier="core",
          difficulty=1, importance=3)
def _(generate):
    model = _tiny_gpt(seed=1).double()     # float64: cached and uncached logits agree closely
    bs = model.config.block_size
    for seed, (batch, length, n) in enumerate([(2, 1, 20), (2, 5, bs - 5), (3, bs - 3, 10),
                                               (2, bs, 2 * bs), (1, 3, 2 * bs + 7),
                                               (2, 2 * bs + 1, 5)]):
        prompt = _prompt(batch, length, model.config.vocab_size, seed)
        what = f"generate(use_cache=True, temperature=0), {batch} prompts of {length} tokens, " \
               f"{n} new (block_size {bs})"
        want_fed = _expected_feeds(length, n, bs)
        how = ("with a cache feed cache.next_input(idx), which fills the cache, then gives one "
               "token per step")
        with _FeedCounter(model) as fed:
            try:
                out = _run_loop(generate, what, model, prompt.clone(), n, temperature=0,
                                use_cache=True)
            except CheckFailed:
                fed.expect_prefix(want_fed, what, how)
                raise
        expect(all(fed.cached), f"{what}: the model was called without the cache: pass it on, "
               "model(feed, cache=cache)")
        fed.expect_prefix(want_fed, what, how)
        expect(len(fed.sizes) == n, f"{what}: the model ran {len(fed.sizes)} times for {n} tokens")
        expect(torch.equal(out, _naive_loop(model, prompt, n)), f"{what}: the tokens differ from "
               "the loop without a cache")
    prompt = _prompt(2, 2, model.config.vocab_size, seed=9)
    kw = dict(temperature=0.9, top_k=6, top_p=0.95)
    out = generate(model, prompt.clone(), 2 * bs + 3, use_cache=True,
                   generator=torch.Generator().manual_seed(case_seed(0)), **kw)
    expect(torch.equal(out, _sampled_reference(model, prompt, 2 * bs + 3, 0, **kw)),
           "sampling with the cache (temperature 0.9, top-k 6, top-p 0.95, one seed) must write the "
           "tokens sampling without it writes")
    _stop_checks(generate, _tiny_gpt(seed=1, fixed=True).double(), dict(use_cache=True))


# ---- 7.10 stretch: count the work ----------------------------------------------------------------
@exercise("7.10", "Count the work", tier="stretch", difficulty=3, importance=2)
def _(tokens_fed):
    cases = [(1, 10, 16), (5, 20, 8), (8, 8, 8), (3, 30, 8), (20, 5, 8), (1, 1, 4), (4, 0, 8)]
    for prompt_len, n, bs in cases:
        for use_cache in (False, True):
            got = tokens_fed(prompt_len, n, bs, use_cache)
            want = (sum(_expected_feeds(prompt_len, n, bs)) if use_cache
                    else sum(min(prompt_len + i, bs) for i in range(n)))
            if got == want:
                continue
            what = (f"a prompt of {prompt_len} tokens, {n} new, block_size {bs}, "
                    f"use_cache={use_cache}: you counted {got}, the model processes {want}")
            if not use_cache and got == sum(prompt_len + i for i in range(n)):
                raise CheckFailed(f"{what}: past block_size each step feeds only block_size "
                                  "tokens (the crop)")
            if use_cache and got == min(prompt_len, bs) + max(n - 1, 0):
                raise CheckFailed(f"{what}: once the cache is full, each step empties it and "
                                  "refills it with block_size tokens")
            raise CheckFailed(what)


# ---- 7.11 a cache of fixed shape --------------------------------------------------------------
def _visible_ref(length: int, T: int, capacity: int) -> torch.Tensor:
    """New query i (at position length + i) may see slot j when j <= length + i."""
    return torch.arange(capacity)[None, :] <= (length + torch.arange(T))[:, None]


def _expect_visible(layer, T: int, what: str) -> None:
    got = layer.visible(T)
    want = _visible_ref(layer.length, T, layer.capacity)
    expect(isinstance(got, torch.Tensor) and tuple(got.shape) == tuple(want.shape),
           f"{what}: visible({T}) must be a (T, capacity) = {tuple(want.shape)} mask, got "
           f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
    got = got.bool().cpu()
    if torch.equal(got, want):
        return
    if torch.equal(got, _visible_ref(layer.length - 1, T, layer.capacity)):   # j < length + i
        raise CheckFailed(f"{what}: each new query must see its own slot too: slot j is visible "
                          "to query i when j <= length + i (you used <)")
    if torch.equal(got, _visible_ref(0, T, layer.capacity)):
        raise CheckFailed(f"{what}: the new queries sit at positions length .. length + T - 1, "
                          "after the cached ones: add length before comparing")
    if torch.equal(got, (torch.arange(layer.capacity) < layer.length + T)[None].expand(T, -1)):
        raise CheckFailed(f"{what}: new query i must not see the new tokens after it (they attend "
                          "causally among themselves): slot j is visible when j <= length + i")
    raise CheckFailed(f"{what}: expected {want.int().tolist()}, got {got.int().tolist()}")


@exercise("7.11", "A cache of fixed shape", builds="gptlib.sampling:StaticKVCache", tier="core",
          difficulty=2, importance=2)
def _(StaticKVCache):
    for n_layer, cap, batch, heads, size, dtype in [(2, 6, 3, 2, 4, torch.float64),
                                                    (1, 5, 1, 3, 2, torch.float32)]:
        what = f"StaticKVCache({n_layer}, {cap}, batch={batch}, n_head={heads}, head_size={size}, {dtype})"
        cache = StaticKVCache(n_layer, cap, batch, heads, size, dtype)
        expect(len(cache.layers) == n_layer and len(cache) == 0, f"{what}: it holds {n_layer} "
               "layer caches and len() 0")
        layer = cache.layers[0]
        expect(isinstance(layer.keys, torch.Tensor) and isinstance(layer.values, torch.Tensor),
               f"{what}: the buffers must exist as soon as the cache is made (allocate them in "
               "__init__), so that its memory is known before the first token")
        shape = (batch, heads, cap, size)
        expect(tuple(layer.keys.shape) == shape and tuple(layer.values.shape) == shape
               and layer.keys.dtype == dtype, f"{what}: keys and values must be {shape} in "
               f"{dtype}, got {tuple(layer.keys.shape)} in {layer.keys.dtype}")
        expect(cache.nbytes() == 2 * n_layer * batch * heads * cap * size * layer.keys.element_size(),
               f"{what}: nbytes() counts every layer's two full buffers")
        ptrs = (layer.keys.data_ptr(), layer.values.data_ptr())
        _expect_visible(layer, 3, f"{what}, empty")
        k1, v1 = _kv(batch, heads, 3, size, seed=0, dtype=dtype)
        _expect_kv(layer.update(k1, v1), k1, v1, f"{what}: the first update, 3 positions")
        _expect_visible(layer, 1, f"{what}, holding 3 positions")
        _expect_visible(layer, 2, f"{what}, holding 3 positions")
        k2, v2 = _kv(batch, heads, 1, size, seed=1, dtype=dtype)
        got = layer.update(k2, v2)
        expect((layer.keys.data_ptr(), layer.values.data_ptr()) == ptrs and
               got[0].data_ptr() == ptrs[0], f"{what}: after an update the keys live in new "
               "memory. Write into the buffers in place (self.keys[:, :, start:end] = k) and "
               "return views of them (self.keys[:, :, :end]); never torch.cat or reallocate")
        _expect_kv(got, torch.cat([k1, k2], 2), torch.cat([v1, v2], 2), f"{what}: 3 positions, then 1")
        expect(layer.length == 4, f"{what}: after 3 + 1 positions length must be 4, got {layer.length}")
        other = 1 if batch > 1 else 2
        try:
            layer.update(*_kv(other, heads, 1, size, seed=2, dtype=dtype))
            accepted = True
        except ValueError:
            accepted = False
        except RuntimeError:
            accepted = True
        expect(not accepted, f"{what}: keys for a batch of {other} got past your update. The "
               "shapes are fixed: raise a ValueError for any other batch, heads, head size or "
               "dtype (slice assignment would broadcast a batch of 1 silently)")
        try:
            layer.update(*_kv(batch, heads, cap - 3, size, seed=3, dtype=dtype))
        except ValueError:
            pass
        else:
            raise CheckFailed(f"{what}: a cache of capacity {cap} holding 4 positions accepted "
                              f"{cap - 3} more: call self._check_room(T) before writing")
    model = _tiny_gpt(seed=3).double()
    cfg = model.config
    cache = StaticKVCache.for_model(model, 2)
    layer = cache.layers[0]
    want = (2, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
    expect(len(cache.layers) == cfg.n_layer and tuple(layer.keys.shape) == want
           and cache.capacity == cfg.block_size, f"for_model on a GPT with {cfg.n_layer} layers, "
           f"{cfg.n_head} heads, n_embd {cfg.n_embd} and block_size {cfg.block_size}, batch 2: "
           f"expected {cfg.n_layer} layers of {want} (head size n_embd // n_head), got "
           f"{len(cache.layers)} of {tuple(layer.keys.shape)}")
    expect(layer.keys.dtype == torch.float64, "for_model on a float64 GPT made float32 buffers: "
           "take the dtype (and device) of the model's weights, model.lm_head.weight")
    bs = cfg.block_size
    for seed, (batch, length, n) in enumerate([(2, 3, 2 * bs + 3), (1, bs + 2, 5)]):
        prompt = _prompt(batch, length, cfg.vocab_size, seed)
        idx, cache = prompt.clone(), StaticKVCache.for_model(model, batch)
        with torch.no_grad():
            for _ in range(n):
                logits, _ = _run_loop(model, "greedy through your static cache",
                                      cache.next_input(idx), cache=cache)
                idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        expect(torch.equal(idx, _naive_loop(model, prompt, n)), f"greedy through your static "
               f"cache, {batch} prompts of {length} tokens, {n} new (block_size {bs}): the tokens "
               "differ from the loop without a cache")
