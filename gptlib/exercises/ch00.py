"""Checks for Chapter 0 (what a language model is). Hand-written.

The references are small private ones written here (brute-force loops, plain formulas), never
gptlib.ngram or gptlib.objectives, which the learner's exported notebook may have written. Each
check compares with what the usual mistakes would give and names the one it recognises.
"""
from __future__ import annotations

import math

import torch

from gptlib.exercises import case_seed, exercise, expect

IGNORE_INDEX = -100


def _ids(n: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(vocab, (n,), generator=torch.Generator().manual_seed(case_seed(seed)))


def _counts_ref(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    counts = torch.zeros(vocab, vocab, dtype=torch.long)
    for a, b in zip(ids[:-1].tolist(), ids[1:].tolist()):
        counts[a, b] += 1
    return counts


@exercise("0.1", "Count the bigrams", builds="gptlib.ngram:bigram_counts", tier="warm-up",
          difficulty=1, importance=3)
def _(bigram_counts):
    for n, vocab, seed in ((50, 5, 0), (200, 7, 1), (1, 3, 2), (2, 4, 3), (300, 11, 4)):
        ids = _ids(n, vocab, seed)
        got = bigram_counts(ids, vocab)
        expect(isinstance(got, torch.Tensor) and got.shape == (vocab, vocab),
               f"for {n} ids over {vocab} tokens return a ({vocab}, {vocab}) tensor, got "
               f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}")
        ref = _counts_ref(ids, vocab)
        expect(not got.dtype.is_floating_point, f"counts are whole numbers: return torch.long, got {got.dtype}")
        if torch.equal(got, ref):
            continue
        expect(not torch.equal(got, ref.T), "rows and columns are swapped: entry [a, b] counts b "
               "*following* a (a = ids[t], b = ids[t + 1])")
        expect(int(got.sum()) != len(ids), f"{len(ids)} ids hold {len(ids) - 1} adjacent pairs, not "
               f"{len(ids)}: the last token has no successor (and the first no predecessor)")
        expect(int(got.sum()) == len(ids) - 1, f"{len(ids)} ids hold {len(ids) - 1} adjacent pairs, "
               f"your counts add up to {int(got.sum())}: count every pair, overlapping ones too")
        expect(False, f"wrong counts for ids={ids.tolist()[:12]}{'...' if n > 12 else ''}: entry "
               "[a, b] must be the number of t with ids[t] == a and ids[t + 1] == b")


@exercise("0.2", "From counts to probabilities", builds="gptlib.ngram:bigram_probs", difficulty=1,
          importance=3)
def _(bigram_probs):
    for vocab, seed, k in ((5, 0, 1.0), (7, 1, 0.1), (4, 2, 0.0), (6, 3, 2.5)):
        counts = torch.randint(1 if k == 0 else 0, 9, (vocab, vocab),
                               generator=torch.Generator().manual_seed(case_seed(seed)))
        got = bigram_probs(counts, k)
        expect(isinstance(got, torch.Tensor) and got.is_floating_point(),
               "return a float tensor of probabilities (counts are integers: convert before dividing)")
        smoothed = counts.double() + k
        ref = smoothed / smoothed.sum(dim=1, keepdim=True)
        if torch.allclose(got.double(), ref, atol=1e-6):
            continue
        expect(not torch.allclose(got.double(), smoothed / smoothed.sum(dim=0, keepdim=True), atol=1e-6),
               "you normalised the columns: row a must be P(. | a), so each ROW sums to one (dim=1)")
        expect(not torch.allclose(got.double(), (counts.double() + k) / counts.double().sum(1, keepdim=True),
                                  atol=1e-6) or k == 0,
               "k is added to the numerator only: the denominator needs k for every token too "
               "(row total + k * V), or the rows no longer sum to one")
        expect(not bool((got == got.floor()).all()), "your probabilities are whole numbers: that is "
               "floor division (//) or integer division; divide float tensors with /")
        expect(torch.allclose(got.double().sum(dim=1), torch.ones(vocab, dtype=torch.float64), atol=1e-5),
               f"each row must sum to one (k = {k}); yours sum to {got.sum(dim=1).tolist()}")
        expect(False, f"with k = {k}, P(b | a) must be (count[a, b] + k) / (row total + k * V)")


@exercise("0.3", "The loss in nats", builds="gptlib.ngram:bigram_loss", difficulty=1, importance=3)
def _(bigram_loss):
    for vocab, n, seed in ((5, 40, 0), (8, 100, 1), (3, 2, 2)):
        g = torch.Generator().manual_seed(case_seed(seed))
        probs = torch.rand(vocab, vocab, generator=g) + 0.05
        probs /= probs.sum(dim=1, keepdim=True)
        ids = torch.randint(vocab, (n,), generator=g)
        terms = [math.log(probs[a, b]) for a, b in zip(ids[:-1].tolist(), ids[1:].tolist())]
        ref = -sum(terms) / len(terms)
        got = bigram_loss(probs, ids)
        expect(isinstance(got, float), f"return a Python float (.item()), got {type(got).__name__}")
        if abs(got - ref) < 1e-4:
            continue
        swapped = -sum(math.log(probs[b, a]) for a, b in zip(ids[:-1].tolist(), ids[1:].tolist())) / len(terms)
        expect(abs(got - swapped) > 1e-4, "rows and columns are swapped: P(next | previous) is "
               "probs[previous, next]")
        expect(abs(got - ref * len(terms)) > 1e-4 or len(terms) == 1,
               "that is the sum: the loss is the mean over the predicted tokens")
        expect(abs(got - ref / math.log(2)) > 1e-4, "those are bits (log base 2): use the natural "
               "logarithm, the loss is in nats")
        expect(False, f"the loss of these {n} ids should be {ref:.4f} nats, got {got:.4f}: average "
               "-log probs[ids[t - 1], ids[t]] over t = 1 .. n - 1")


def _context_ref(ids, n, vocab):
    out = []
    for t in range(n - 1, len(ids)):
        value = 0
        for token in ids[t - n + 1:t].tolist():
            value = value * vocab + token
        out.append(value)
    return torch.tensor(out, dtype=torch.long)


@exercise("0.4", "Contexts as numbers", builds="gptlib.ngram:context_ids", difficulty=2, importance=2)
def _(context_ids):
    for n in (1, 2, 3, 4, 5):
        for vocab, length, seed in ((7, 30, n), (65, 20, 10 + n)):
            ids = _ids(length, vocab, seed)
            got = context_ids(ids, n, vocab)
            ref = _context_ref(ids, n, vocab)
            expect(isinstance(got, torch.Tensor) and got.shape == ref.shape,
                   f"n = {n}, {length} ids: return {length - n + 1} entries (one per target "
                   f"ids[{n - 1}:]), got {tuple(got.shape) if isinstance(got, torch.Tensor) else got!r}")
            if torch.equal(got.long(), ref):
                continue
            if n >= 3:
                reversed_digits = torch.tensor([sum(tok * vocab ** j for j, tok in enumerate(ids[t - n + 1:t].tolist()))
                                                for t in range(n - 1, length)])
                expect(not torch.equal(got.long(), reversed_digits),
                       "the digits are in the wrong order: the oldest token ids[t - n + 1] is the "
                       "most significant digit")
            expect(n < 2 or not torch.equal(got.long()[1:], ref[:-1]) and not torch.equal(got.long()[:-1], ref[1:]),
                   "off by one position: entry i is the context of the target ids[i + n - 1], the "
                   "n - 1 tokens before it, without the target itself")
            expect(False, f"n = {n}, vocab {vocab}: entry i must be the number with base-{vocab} digits "
                   f"ids[i], ..., ids[i + n - 2]; got {got[:4].tolist()}..., expected {ref[:4].tolist()}...")


@exercise("0.6", "Next-token targets", builds="gptlib.objectives:next_token_targets", tier="warm-up",
          difficulty=1, importance=3)
def _(next_token_targets):
    for length in (2, 5, 9):
        ids = torch.arange(10, 10 + length)
        got = next_token_targets(ids)
        expect(isinstance(got, tuple) and len(got) == 2, "return a pair (inputs, targets)")
        inputs, targets = got
        expect(len(inputs) != len(targets) or not torch.equal(targets, inputs),
               "the targets are the inputs: shift them by one")
        expect(len(inputs) == len(targets) == length - 1,
               f"a sequence of {length} tokens gives {length - 1} inputs and {length - 1} targets")
        expect(not (torch.equal(inputs, ids[1:]) and torch.equal(targets, ids[:-1])),
               "shifted the wrong way: the target at position t is the token that FOLLOWS it, ids[t + 1]")
        expect(torch.equal(inputs, ids[:-1]) and torch.equal(targets, ids[1:]),
               f"for {ids.tolist()} expected inputs {ids[:-1].tolist()} and targets {ids[1:].tolist()}")


@exercise("0.7", "Masked-LM targets", builds="gptlib.objectives:masked_lm_targets", difficulty=2,
          importance=2)
def _(masked_lm_targets):
    mask_id = 0
    for length, rate, seed in ((40, 0.15, 0), (60, 0.5, 1), (30, 0.0, 2), (25, 1.0, 3)):
        ids = torch.randint(1, 20, (length,),
                            generator=torch.Generator().manual_seed(case_seed(100 + seed)))
        before = ids.clone()
        inputs, targets = masked_lm_targets(ids, mask_id, rate,
                                            torch.Generator().manual_seed(case_seed(seed)))
        expect(torch.equal(ids, before), "ids was modified: build new tensors (masked_fill, not masked_fill_)")
        chosen = torch.rand(length, generator=torch.Generator().manual_seed(case_seed(seed))) < rate
        ref_inputs = ids.masked_fill(chosen, mask_id)
        ref_targets = ids.masked_fill(~chosen, IGNORE_INDEX)
        expect(not torch.equal(targets, ids) or chosen.all(),
               "targets at every position: positions not chosen must hold IGNORE_INDEX (-100), so the "
               "loss scores only the hidden tokens")
        expect(not (torch.equal(inputs, ids) and (targets == mask_id).any()) or not chosen.any(),
               "the mask went into the targets: the INPUTS get mask_id at chosen positions, the "
               "targets keep the original token there")
        expect(torch.equal(inputs, ref_inputs) and torch.equal(targets, ref_targets),
               f"rate {rate}: choose position t when torch.rand(len(ids), generator=generator)[t] < rate "
               "(one draw per position, in order); inputs = ids with mask_id there, targets = the "
               "original token there and IGNORE_INDEX elsewhere")


def _brute_ngram_log_probs(train, ids, n, k, vocab):
    counts, totals = {}, {}
    for t in range(n - 1, len(train)):
        ctx = tuple(train[t - n + 1:t].tolist())
        counts[ctx, int(train[t])] = counts.get((ctx, int(train[t])), 0) + 1
        totals[ctx] = totals.get(ctx, 0) + 1
    return torch.tensor([math.log((counts.get((tuple(ids[t - n + 1:t].tolist()), int(ids[t])), 0) + k)
                                  / (totals.get(tuple(ids[t - n + 1:t].tolist()), 0) + k * vocab))
                         for t in range(n - 1, len(ids))])


@exercise("0.5", "An n-gram model", builds="gptlib.ngram:NGramModel", difficulty=2, importance=2)
def _(NGramModel):
    for n, vocab, k, seed in ((1, 5, 1.0, 0), (2, 6, 0.5, 1), (3, 4, 0.1, 2), (4, 3, 1.0, 3)):
        train = _ids(400, vocab, seed)
        val = torch.cat([_ids(60, vocab, 50 + seed), torch.full((n + 2,), vocab - 1)])  # a run unseen in training
        train = train[train != vocab - 1] if n > 1 else train                            # token vocab-1 never seen
        model = NGramModel(vocab, n=n, k=k).fit(train)
        ref = _brute_ngram_log_probs(train, val, n, k, vocab)
        got = model.log_probs(val)
        expect(isinstance(got, torch.Tensor) and got.shape == ref.shape,
               f"log_probs of {len(val)} ids with n = {n} has {len(ref)} entries (one per t >= n - 1)")
        if not torch.allclose(got.double(), ref.double(), atol=1e-4):
            no_kv = _brute_ngram_log_probs(train, val, n, k, 1)
            expect(not torch.allclose(got.double(), no_kv.double(), atol=1e-4) or vocab == 1,
                   "the denominator lacks k * V: add k once for every token of the vocabulary, so "
                   "each context's probabilities sum to one")
            expect(torch.isfinite(got).all(), "an unseen pair gives -inf: the add-k rule must be applied "
                   "to every count, 0 included")
            expect(False, f"n = {n}, k = {k}: log_probs differ from counting by hand (largest gap "
                   f"{(got.double() - ref.double()).abs().max():.3g}); a key that is not in the sorted "
                   "list must count 0, not the count of its neighbour (check keys[at] == query), "
                   "and a query past the last key must not index out of range")
        for start in sorted({0, 7, len(val) - n, *range(1, len(val) - n, 8)}):  # many contexts
            context = val[: start + n - 1]
            probs = model.next_probs(context)
            expect(isinstance(probs, torch.Tensor) and probs.shape == (vocab,),
                   f"next_probs returns one probability per token: shape ({vocab},)")
            expect(abs(float(probs.sum()) - 1) < 1e-4, f"next_probs must sum to one, got {float(probs.sum()):.4f}")
            for token in (0, vocab - 1):
                seq = torch.cat([context, torch.tensor([token])])
                want = _brute_ngram_log_probs(train, seq, n, k, vocab)[-1].exp()
                expect(abs(float(probs[token]) - float(want)) < 1e-4,
                       f"next_probs of the context {context[-(n - 1):].tolist() if n > 1 else []} gives "
                       f"P({token}) = {float(probs[token]):.4f}, counting says {float(want):.4f}: use the "
                       "last n - 1 tokens of the context")


def _markov(order: int, vocab: int, length: int, seed: int) -> torch.Tensor:
    """Text whose next token depends on exactly the previous ``order`` tokens (sharp random tables).
    Not salted: on these seeds the validation loss is lowest at n = order + 1, which another
    random table need not give (Exercise 0.9 asserts it)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.softmax(4 * torch.randn(vocab ** order, vocab, generator=g), dim=1)
    ids = torch.randint(vocab, (order,), generator=g).tolist()
    for _ in range(length - order):
        row = 0
        for token in ids[len(ids) - order:]:
            row = row * vocab + token
        ids.append(int(torch.multinomial(table[row], 1, generator=g)))
    return torch.tensor(ids)


@exercise("0.8", "The masks of the three families", builds="gptlib.objectives:attention_masks",
          difficulty=1, importance=3)
def _(attention_masks):
    for T, S in ((4, 6), (5, 3), (1, 2)):
        lower = torch.ones(T, T, dtype=torch.bool).tril()
        enc = attention_masks("encoder-only", T)
        expect(set(enc) == {"self"}, "an encoder-only model has one mask, {'self': ...}")
        expect(enc["self"].dtype == torch.bool and enc["self"].shape == (T, T),
               f"masks are bool tensors; encoder-only self is ({T}, {T})")
        expect(bool(enc["self"].all()) or T == 1,
               "the encoder-only mask is causal: an encoder is bidirectional, every token sees every token")
        dec = attention_masks("decoder-only", T)["self"]
        expect(not (dec.all() and T > 1), "the decoder-only mask lets tokens see the future: it is causal "
               "(lower triangle with the diagonal)")
        expect(torch.equal(dec, lower), f"decoder-only self for T = {T} must be the lower triangle with the "
               "diagonal (query i sees keys j <= i)")
        ed = attention_masks("encoder-decoder", T, S)
        expect(set(ed) == {"encoder", "decoder", "cross"},
               "an encoder-decoder has three masks: 'encoder', 'decoder' and 'cross'")
        expect(ed["encoder"].shape == (S, S) and bool(ed["encoder"].all()),
               f"the encoder's mask is over the input: ({S}, {S}), all True")
        expect(torch.equal(ed["decoder"], lower), f"the decoder's self mask is causal over the output: the "
               f"({T}, {T}) lower triangle")
        expect(ed["cross"].shape == (T, S), f"cross-attention: queries are the {T} output positions, keys the "
               f"{S} input positions, so the mask is ({T}, {S}); got {tuple(ed['cross'].shape)}")
        expect(bool(ed["cross"].all()), "the cross mask hides some input: every output position may see "
               "the whole input (it is given, not generated)")


@exercise("0.9", "Let the validation text choose n", tier="stretch", difficulty=2, importance=2)
def _(choose_order):
    for order, seed in ((1, 0), (2, 1), (2, 2), (1, 3)):
        vocab = 4
        text = _markov(order, vocab, 6000, seed)
        train, val = text[:5000], text[5000:]
        got = choose_order(train, val, vocab, [1, 2, 3, 4, 5], 0.5)
        expect(got != 5, "you chose the largest n: the training loss always falls with n; choose by "
               "the loss on val_ids")
        expect(got == order + 1, f"on text whose next token depends on exactly the previous {order} "
               f"token(s) the validation loss is lowest at n = {order + 1}; you chose n = {got}")
