"""Checks for Chapter 1 (byte-pair encoding). Hand-written.

The learner writes the tokenizer itself (``gptlib.tokenizer``), so no check compares with that
module: each one compares with tiktoken, with a small private reference below (written
independently, as plainly as possible), or with exact properties. The inputs are chosen so that
the usual mistakes give recognisably different answers (overlapping pairs, a pair at the very
end, ties, half a character in a token), and the hint names the mistake it sees.

The hand-made cases stay as they are; the random ones (and a drawn text, cut or byte table after
them) come from ``case_seed``, so the grader's cases are not the notebook's.
"""
from __future__ import annotations

import random

import regex

from gptlib.exercises import CheckFailed, case_seed, exercise, expect

_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++"""
            r"""|\s++$|\s+(?!\S)|\s""")                      # GPT-2's, as tiktoken writes it
_EOT = "<|endoftext|>"


# ---------------------------------------------------------------- private references
def _ref_count_pairs(ids):
    counts = {}
    for i in range(len(ids) - 1):
        counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
    return counts


def _ref_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i:i + 2]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _ref_best(counts):
    top = max(counts.values())
    return sorted(p for p, c in counts.items() if c == top)[0]


def _ref_train(chunks, num_merges, first_id=256):
    chunks, merges = [list(c) for c in chunks], []
    for new_id in range(first_id, first_id + num_merges):
        counts = {}
        for ids in chunks:
            for pair, n in _ref_count_pairs(ids).items():
                counts[pair] = counts.get(pair, 0) + n
        if not counts:
            break
        pair = _ref_best(counts)
        chunks = [_ref_merge(ids, pair, new_id) for ids in chunks]
        merges.append((pair, new_id))
    return merges


def _ref_encode_chunk(chunk, byte_ids, merges):
    ids = [byte_ids[b] for b in chunk.encode("utf-8")]
    while True:
        ranked = [(merges[p], i) for i, p in enumerate(zip(ids, ids[1:])) if p in merges]
        if not ranked:
            return tuple(ids)
        rank, i = min(ranked)
        ids[i:i + 2] = [rank]


def _random_chunks(rng, alphabet, n_chunks, max_len):
    return [[rng.choice(alphabet) for _ in range(rng.randrange(1, max_len))] for _ in range(n_chunks)]


def _merges_text(merges) -> str:
    return ", ".join(f"{p}->{i}" for p, i in merges[:6]) + (" ..." if len(merges) > 6 else "")


def _byte_shift() -> int:
    """How far the checks' permuted byte table moves each byte: byte b gets id (b + k) % 256, as
    GPT-2's single bytes are a permutation too. k = 7 in a notebook; under the grader another shift
    from 1 to 255 (never 0, which would be the identity)."""
    return 1 + (case_seed(7) - 1) % 255


def _drawn_text(rng, pieces, n) -> str:
    return "".join(rng.choice(pieces) for _ in range(n))


# ---------------------------------------------------------------- 1.1 the character tokenizer
@exercise("1.1", "A character tokenizer", builds="gptlib.tokenizer:CharTokenizer", tier="warm-up",
          difficulty=1, importance=2)
def _(candidate):
    drawn = _drawn_text(random.Random(case_seed(11)), list("abcxyz ,.!\nAZ09éü世界👋"), 24)
    for text in ["hello world", "banana", "To be, or not to be", "héllo 世界 👋🏽", "ba\nab\t", drawn]:
        tok = candidate(text)
        chars = sorted(set(text))
        got = list(getattr(tok, "chars", []))
        if sorted(got) == chars and got != chars:
            raise CheckFailed(f"for {text!r}, chars should be sorted: expected {chars}, got {got}")
        expect(got == chars, f"for {text!r}, chars should be the distinct characters, sorted: "
                             f"expected {chars}, got {got}")
        expect(tok.vocab_size == len(chars), f"vocab_size for {text!r} should be {len(chars)}")
        ids = tok.encode(text)
        expect(isinstance(ids, list) and len(ids) == len(text),
               f"encode({text!r}) should give one id per character, got {ids!r}")
        want = [chars.index(c) for c in text]
        expect(ids == want, f"encode({text!r}): the id of a character is its position in chars; "
                            f"expected {want}, got {ids}")
        out = tok.decode(ids)
        expect(out == text, f"decode(encode({text!r})) gave {out!r}: decoding must give the text back")
        expect(tok.decode(iter(ids)) == text, "decode should accept any iterable of ids (a generator too)")
        expect(tok.decode([]) == "", "decode([]) should be the empty string")
        for bad in (-1, len(chars), len(chars) + 5):
            try:
                out = tok.decode([0, bad])
            except ValueError:
                continue
            except IndexError:
                raise CheckFailed(f"decode([0, {bad}]) raised IndexError: check the range yourself "
                                  "and raise ValueError naming the id") from None
            raise CheckFailed(f"decode([0, {bad}]) returned {out!r}: id {bad} is outside 0 .. "
                              f"{len(chars) - 1}, raise ValueError (a Python list quietly accepts "
                              "-1 as the last item)")


# ---------------------------------------------------------------- 1.2 and 1.3 count and merge
def _check_shared_table(candidate):
    table = {}
    out = candidate([1, 2, 1], table)
    if table == {} and out:
        raise CheckFailed("count_pairs([1, 2, 1], table) with an empty dict `table` left it empty: "
                          "add into the table you were given, even an empty one (`counts or {}` "
                          "replaces an empty dict by a new one; test `counts is None`)")
    expect(out is table, "when a table is given, add into it and return that same dict")
    candidate([2, 1, 2], table)
    expect(dict(table) == {(1, 2): 2, (2, 1): 2},
           f"counting [1, 2, 1] then [2, 1, 2] into one table should give {{(1, 2): 2, (2, 1): 2}}, "
           f"got {table}")
    fresh = candidate([3, 4])
    if (1, 2) in fresh:
        raise CheckFailed("a call without a table returned counts from an earlier call: a default "
                          "argument `counts={}` is created once and shared; default to None")
    weighted = candidate([5, 6, 5, 6], {}, 3)
    expect(dict(weighted) == {(5, 6): 6, (6, 5): 3},
           f"with weight=3, [5, 6, 5, 6] should give {{(5, 6): 6, (6, 5): 3}}, got {weighted}: add "
           "`weight` per occurrence, not 1")


def _as_counts(result, probe) -> dict:
    expect(hasattr(result, "items"), f"return a dict {{(left, right): count}}, got {type(result).__name__} "
                                     f"for {probe}")
    return {tuple(k): v for k, v in result.items() if v}


@exercise("1.2", "Count adjacent pairs", builds="gptlib.tokenizer:count_pairs", tier="warm-up",
          difficulty=1, importance=3)
def _(candidate):
    probe = [1, 2, 1, 2, 1, 2]
    got = _as_counts(candidate(list(probe)), probe)
    want = _ref_count_pairs(probe)                       # {(1, 2): 3, (2, 1): 2}
    again = _as_counts(candidate(list(probe)), probe)
    if again != got:                                     # before judging got: an earlier call may have filled it
        raise CheckFailed(f"a second call on {probe} gave {again}, the first {got}: a default "
                          "argument `counts={}` is created once and shared by every call; default "
                          "to None and make a new dict inside")
    if got != want:
        if got == {(1, 2): 3}:
            raise CheckFailed("you count non-overlapping pairs (stepping by 2): every adjacent pair "
                              "counts, so [1, 2, 1, 2, 1, 2] holds (1, 2) three times and (2, 1) twice")
        if set(got) == set(want) and set(got.values()) == {1}:
            raise CheckFailed("each pair is counted once: count how many times each pair occurs, "
                              "not which pairs occur (a set)")
        if got == {(b, a): n for (a, b), n in want.items()}:
            raise CheckFailed("the pairs are reversed: the key is (ids[i], ids[i + 1]), left id first")
        if got == {(1, 2): 2, (2, 1): 2}:
            raise CheckFailed("the last pair is missing: the pairs are zip(ids, ids[1:]), the last "
                              "one is (ids[-2], ids[-1])")
        raise CheckFailed(f"for {probe} expected {want}, got {got}: count every adjacent pair "
                          "(ids[i], ids[i + 1]), overlapping ones too")
    triple = _as_counts(candidate([5, 5, 5]), [5, 5, 5])
    expect(triple == {(5, 5): 2}, f"[5, 5, 5] holds the pair (5, 5) twice (overlapping), got {triple}")
    for short in ([], [7]):
        got = _as_counts(candidate(list(short)), short)
        expect(got == {}, f"a sequence of {len(short)} id(s) has no pairs: return an empty dict, got {got}")
    rng = random.Random(case_seed(0))
    for _ in range(20):
        ids = [rng.randrange(4) for _ in range(rng.randrange(2, 30))]
        got = _as_counts(candidate(list(ids)), ids)
        want = _ref_count_pairs(ids)
        expect(got == want, f"wrong counts for {ids}: expected {want}, got {got}")
    _check_shared_table(candidate)


@exercise("1.3", "Apply one merge", builds="gptlib.tokenizer:merge", tier="warm-up", difficulty=2,
          importance=3)
def _(candidate):
    def run(ids, pair, new_id):
        original = list(ids)
        out = candidate(ids, pair, new_id)
        expect(ids == original, "your function changed its input list: build and return a new list")
        expect(isinstance(out, list), f"return a list of ids, got {type(out).__name__}")
        return out

    out = run([1, 2, 3, 1, 2], (1, 2), 99)
    if out == [99, 3, 1, 2]:
        raise CheckFailed("only the first occurrence was merged: replace every occurrence of the pair")
    if out == [99, 2, 3, 99, 2]:
        raise CheckFailed("after merging at i, continue at i + 2: both ids of the pair are used up "
                          "(you also kept the right id of each merged pair)")
    if out == [99, 3]:
        raise CheckFailed("the id after the last pair went missing; "
                          "[1, 2, 3, 1, 2] merging (1, 2) gives [99, 3, 99]")
    expect(out == [99, 3, 99], f"[1, 2, 3, 1, 2] merging (1, 2) -> 99 should give [99, 3, 99], got {out}")
    out = run([1, 2, 3], (1, 2), 99)
    expect(out == [99, 3], f"[1, 2, 3] merging (1, 2) should give [99, 3], got {out}: the last id "
                           "went missing; keep the ids that are not part of a pair, including the last one")
    out = run([5, 5, 5], (5, 5), 99)
    if out == [99, 99, 5] or out == [99, 99]:
        raise CheckFailed("overlapping occurrences were merged twice: after merging at i, continue at "
                          "i + 2, so [5, 5, 5] merging (5, 5) gives [99, 5]")
    if out == [5, 99]:
        raise CheckFailed("scan from the left: [5, 5, 5] merging (5, 5) gives [99, 5], not [5, 99]")
    expect(out == [99, 5], f"[5, 5, 5] merging (5, 5) should give [99, 5], got {out}")
    out = run([5, 5, 5, 5], (5, 5), 99)
    expect(out == [99, 99], f"[5, 5, 5, 5] merging (5, 5) should give [99, 99], got {out}")
    out = run([2, 1, 3], (1, 2), 99)
    expect(out == [2, 1, 3], f"(1, 2) is an ordered pair: [2, 1, 3] has no (1, 2), got {out}")
    expect(run([], (1, 2), 99) == [] and run([1], (1, 2), 99) == [1], "short inputs: [] -> [], [1] -> [1]")
    rng = random.Random(case_seed(1))
    for _ in range(20):
        ids = [rng.randrange(3) for _ in range(rng.randrange(0, 25))]
        want = _ref_merge(ids, (0, 1), 7)
        got = run(list(ids), (0, 1), 7)
        expect(got == want, f"merging (0, 1) in {ids}: expected {want}, got {got}")


# ---------------------------------------------------------------- 1.4 the tie-break
@exercise("1.4", "Pick the next merge", builds="gptlib.tokenizer:best_pair", tier="warm-up",
          difficulty=1, importance=3)
def _(candidate):
    cases = [
        ({(0, 0): 1, (7, 7): 3}, "the most frequent pair wins"),
        ({(3, 4): 2, (1, 9): 2, (0, 1): 1}, "a tie at 2"),
        ({(1, 9): 2, (3, 4): 2, (0, 1): 1}, "the same tie, listed in another order"),
        ({(2, 5): 4, (2, 3): 4, (9, 0): 4}, "a tie broken by the right id"),
        ({(9, 0): 4, (2, 5): 4, (2, 3): 4}, "the same tie, listed in another order"),
        ({(300, 1): 5, (1, 300): 5, (2, 2): 1}, "a tie between a pair and its reverse"),
        ({(6, 6): 1}, "a single pair"),
    ]
    rng = random.Random(case_seed(4))
    for _ in range(30):
        pairs = {(rng.randrange(6), rng.randrange(6)): rng.randrange(1, 4) for _ in range(8)}
        cases.append((pairs, "random counts"))
    for counts, what in cases:
        want = _ref_best(counts)
        got = candidate(dict(counts))
        got = tuple(got) if isinstance(got, (tuple, list)) else got
        if got == want:
            continue
        top = max(counts.values())
        tied = sorted(p for p, c in counts.items() if c == top)
        flipped = candidate(dict(reversed(list(counts.items()))))
        if got in tied and tuple(flipped) != got:
            raise CheckFailed(f"{what}: the pairs {tied} are tied at {top}; you picked {got}, or "
                              f"{tuple(flipped)} when the dict lists them in reverse: your answer "
                              "depends on the dict's order. The rule: the smallest (left, right) wins")
        if got in tied and got == tied[-1]:
            raise CheckFailed(f"{what}: among the pairs tied at {top}, {tied}, the SMALLEST wins; you "
                              f"picked {got}, the largest")
        if got in tied:
            raise CheckFailed(f"{what}: the pairs {tied} are tied at {top}; you picked {got}, which "
                              f"depends on the dict's order. The rule: the smallest (left, right) wins")
        raise CheckFailed(f"{what}: for {counts} the next merge is {want} (count {counts[want]}), "
                          f"you picked {got!r}: the most frequent pair wins")


# ---------------------------------------------------------------- 1.5 the naive trainer
def _check_trainer(run, name):
    """Shared by 1.5 and 1.6: ``run(chunks, num_merges, first_id)`` trains on lists of ids."""
    def compare(chunks, n, first_id=256, what=""):
        want = _ref_train(chunks, n, first_id)
        got = run([list(c) for c in chunks], n, first_id)
        expect(isinstance(got, list), f"{name} should return a list of ((left, right), new_id), "
                                      f"got {type(got).__name__}")
        got = [(tuple(p), i) for p, i in got]
        if got == want:
            return
        if len(got) > len(want) and got[:len(want)] == want:
            raise CheckFailed(f"{what}: after {len(want)} merges no pair is left, but you returned "
                              f"{len(got)}: stop when the counts are empty")
        k = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        detail = f"merge {k + 1} should be {want[k] if k < len(want) else 'none'}, you have " \
                 f"{got[k] if k < len(got) else 'none'}"
        if k < len(got) and k < len(want) and got[k][0] != want[k][0]:
            state = [list(c) for c in chunks]
            for pair, new_id in want[:k]:
                state = [_ref_merge(c, pair, new_id) for c in state]
            counts = {}
            for c in state:
                for pair, n in _ref_count_pairs(c).items():
                    counts[pair] = counts.get(pair, 0) + n
            mine, right = tuple(got[k][0]), want[k][0]
            if counts.get(mine) == counts[right]:
                raise CheckFailed(f"{what}: {detail}; both pairs occur {counts[right]} times at that "
                                  "point, and on a tie the smallest pair wins (best_pair)")
        if k < len(got) and k < len(want) and got[k][0] == want[k][0]:
            raise CheckFailed(f"{what}: {detail}: the right pair with the wrong id; new ids are "
                              f"first_id, first_id + 1, ... (first_id={first_id})")
        raise CheckFailed(f"{what}: {detail} (expected {_merges_text(want)})")

    toy = list(b"aaabdaaabac")
    compare([toy], 3, what="the toy text 'aaabdaaabac'")
    compare([[3, 4, 1, 9]], 1, what="a tie between (1, 9), (3, 4) and (4, 1): the smallest pair wins")
    compare([[5, 5, 5, 5]], 3, what="the run [5, 5, 5, 5]")
    compare([[1, 2], [3, 1, 2]], 2, what="chunks [1, 2] and [3, 1, 2]")
    whole = _ref_train([[1, 2, 3, 4, 5, 1, 2, 3, 4]], 2)
    got = [(tuple(p), i) for p, i in run([[1, 2, 3], [4, 5, 1], [2, 3, 4]], 2, 256)]
    if got == whole:
        raise CheckFailed("chunks [1, 2, 3], [4, 5, 1], [2, 3, 4]: you counted pairs across chunk "
                          "boundaries (such as (3, 4)); count each chunk's own pairs only")
    compare([[1, 2, 3], [4, 5, 1], [2, 3, 4]], 2, what="chunks [1, 2, 3], [4, 5, 1], [2, 3, 4]")
    compare([[7, 8]], 5, what="a single pair asked for 5 merges")
    compare([[1], [2]], 3, what="chunks with no pairs at all")
    compare([list(b"hello hello")], 4, first_id=1000, what="first_id=1000")
    chunks = [list(b"low"), list(b"lower")]
    before = [list(c) for c in chunks]
    run(chunks, 3, 256)
    expect(chunks == before, f"{name} changed the caller's chunks: work on copies")
    rng = random.Random(case_seed(5))
    for trial in range(12):
        corpus = _random_chunks(rng, [0, 1, 2, 3] if trial % 2 else [0, 1], rng.randrange(1, 8), 12)
        compare(corpus, rng.randrange(1, 12), what=f"random chunks {corpus}")


@exercise("1.5", "The BPE training loop", builds="gptlib.tokenizer:train_merges_naive", tier="core",
          difficulty=2, importance=3)
def _(candidate):
    _check_trainer(lambda chunks, n, first_id: candidate(chunks, n, first_id), "train_merges_naive")


# ---------------------------------------------------------------- 1.6 the incremental trainer
@exercise("1.6", "The incremental update", builds="gptlib.tokenizer:train_merges", tier="core",
          difficulty=3, importance=2)
def _(candidate):
    def run(chunks, n, first_id):
        words = {}
        for c in chunks:
            words[tuple(c)] = words.get(tuple(c), 0) + 1
        return candidate(words, n, first_id)

    # weights: a word seen 3 times counts 3 times; the iterable form gives the same merges
    for words in ({(1, 2): 1, (3, 4): 5}, {(1, 2): 3, (2, 3): 2, (2, 3, 1, 2): 1}):
        want = _ref_train([list(w) for w, n in words.items() for _ in range(n)], 4)
        got = [(tuple(p), i) for p, i in candidate(dict(words), 4)]
        expect(got == want, f"words {words} (word -> how often it occurs): expected "
                            f"{_merges_text(want)}, got {_merges_text(got)}: each word's pairs count "
                            "freqs[w] times")
    _check_trainer(run, "train_merges")
    rng = random.Random(case_seed(6))
    for _ in range(8):
        corpus = _random_chunks(rng, [0, 1, 2], rng.randrange(3, 20), 9)
        n = rng.randrange(5, 20)
        want = _ref_train(corpus, n)
        got = [(tuple(p), i) for p, i in run(corpus, n, 256)]
        expect(got == want, f"random words {sorted(set(map(tuple, corpus)))[:5]}...: expected "
                            f"{_merges_text(want)}, got {_merges_text(got)}")


# ---------------------------------------------------------------- 1.7 merges from tiktoken's ranks
def _ref_merges_from_ranks(ranks):
    """(byte_ids, merges) from bytes -> rank, by plain BPE on each token's bytes (no shortcut)."""
    byte_ids = [ranks[bytes([b])] for b in range(256)]
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:                        # BPE on the token's bytes with lower ranks
            found = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:]))
                     if ranks.get(a + b, rank) < rank]
            _, i = min(found)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        merges.append(((ranks[parts[0]], ranks[parts[1]]), rank))
    return byte_ids, merges


def _rank_table(tokens, byte_ids=range(256), reverse=False):
    """bytes -> rank: the single bytes with ``byte_ids``, then ``tokens`` from rank 256 on."""
    ranks = {bytes([b]): i for b, i in enumerate(byte_ids)}
    ranks.update({t: 256 + k for k, t in enumerate(tokens)})
    return dict(reversed(list(ranks.items()))) if reverse else ranks


def _run_merges_from_ranks(candidate, ranks, what):
    try:
        out = candidate(dict(ranks))
    except ValueError as err:
        if "not the merge of two earlier tokens" not in str(err):
            raise
        raise CheckFailed(f"{what}: {err}. Every token of rank r splits into two earlier tokens: in "
                          "_bpe_by_rank join only pairs whose rank is below max_rank (the token's own "
                          "rank is not), and stop when no adjacent pair has such a rank") from None
    expect(isinstance(out, tuple) and len(out) == 2, "return a tuple (byte_ids, merges)")
    byte_ids, merges = list(out[0]), list(out[1])
    for m in merges:
        ok = isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], tuple) and len(m[0]) == 2
        expect(ok, f"each merge is ((left id, right id), rank), got {m!r}")
        if not all(isinstance(x, int) for x in (*m[0], m[1])):
            raise CheckFailed(f"{what}: the merge {m!r} holds bytes; a merge names ids: the ranks of "
                              "its halves, ((ranks[left], ranks[right]), rank)")
    return byte_ids, merges


def _explain_merges(ranks, got, want, what):
    vocab = {r: t for t, r in ranks.items()}
    if got == want:
        return
    if sorted(got, key=lambda m: m[1]) == want:
        raise CheckFailed(f"{what}: you found every merge, but not in increasing rank: a dict's order "
                          "is not the ranks' order, so go through the tokens sorted by rank")
    for g, w in zip(got, want):
        if g != w:
            name = lambda m: f"{vocab.get(m[0][0], m[0][0])!r} + {vocab.get(m[0][1], m[0][1])!r}"
            raise CheckFailed(f"{what}: the token {vocab.get(w[1], w[1])!r} (rank {w[1]}) is the merge "
                              f"{name(w)} = {w}, you gave {name(g)} = {g}: its halves are what BPE leaves "
                              "with the ranks below its own, joining the LOWEST-ranked pair first "
                              "(not the leftmost pair, nor the first split whose halves are tokens)")
    raise CheckFailed(f"{what}: expected {len(want)} merges ({_merges_text(want)}), got {len(got)} "
                      f"({_merges_text(got)}): one per token longer than a byte")


@exercise("1.7", "Recover GPT-2's merges from tiktoken's ranks", builds="gptlib.tokenizer:merges_from_ranks",
          tier="core", difficulty=3, importance=2)
def _(candidate):
    cases = [
        ([b"bc", b"ab", b"abc"], "ranks bc=256, ab=257, abc=258"),        # BPE joins b+c first
        ([b"ab", b"bc", b"abc"], "ranks ab=256, bc=257, abc=258"),        # BPE joins a+b first
        ([b"aa", b"aaaa", b"aaa"], "ranks aa=256, aaaa=257, aaa=258"),
        ([b"ab", b"cd", b"bc", b"abcd", b"abc"], "ranks ab, cd, bc, abcd, abc = 256..260"),
    ]
    for tokens, what in cases:
        ranks = _rank_table(tokens)
        byte_ids, merges = _run_merges_from_ranks(candidate, ranks, what)
        want_ids, want = _ref_merges_from_ranks(ranks)
        expect(byte_ids == want_ids, f"{what}: byte_ids[b] must be the rank of the single byte "
                                     f"bytes([b]); got {byte_ids[:8]}...")
        _explain_merges(ranks, merges, want, what)
    k = _byte_shift()
    shifted = [(i + k) % 256 for i in range(256)]
    ranks = _rank_table([b"ab", b"abc"], shifted, reverse=True)
    what = f"single bytes ranked as a permutation (byte b has rank (b + {k}) % 256), in reverse dict order"
    byte_ids, merges = _run_merges_from_ranks(candidate, ranks, what)
    if byte_ids == list(range(256)):
        raise CheckFailed(f"{what}: byte_ids must be read from the ranks, byte_ids[b] = ranks[bytes([b])] "
                          "(GPT-2's single bytes are a permutation, not b itself); you gave 0 .. 255")
    expect(byte_ids == shifted, f"{what}: byte_ids[b] must be ranks[bytes([b])], e.g. byte_ids[0] = "
                                f"{shifted[0]}; got {byte_ids[:8]}...")
    _explain_merges(ranks, merges, _ref_merges_from_ranks(ranks)[1], what)
    small = _gpt2_prefix()
    if small is not None:
        ranks = small[0]._mergeable_ranks
        what = "GPT-2's first 1000 tokens"
        byte_ids, merges = _run_merges_from_ranks(candidate, ranks, what)
        expect(byte_ids == small[1], f"{what}: byte_ids[b] must be ranks[bytes([b])], as tiktoken has them")
        _explain_merges(ranks, merges, _ref_merges_from_ranks(ranks)[1], what)


# ---------------------------------------------------------------- 1.8 encode one chunk
_TIKTOKEN_SMALL = {}


def _gpt2_prefix(n_ranks=1000):
    """GPT-2's first ``n_ranks`` tokens as (tiktoken Encoding, byte_ids, merges); None offline."""
    if n_ranks in _TIKTOKEN_SMALL:
        return _TIKTOKEN_SMALL[n_ranks]
    try:
        import tiktoken
        full = tiktoken.get_encoding("gpt2")
    except Exception:                                # no tiktoken or no cached files
        _TIKTOKEN_SMALL[n_ranks] = None
        return None
    ranks = {b: r for b, r in full._mergeable_ranks.items() if r < n_ranks}
    byte_ids, merges = _ref_merges_from_ranks(ranks)
    enc = tiktoken.Encoding(name=f"gpt2-first-{n_ranks}", pat_str=full._pat_str,
                            mergeable_ranks=ranks, special_tokens={})
    _TIKTOKEN_SMALL[n_ranks] = enc, byte_ids, dict(merges)
    return _TIKTOKEN_SMALL[n_ranks]


_TRICKY = [
    "Hello world! It's 2024 and I'll say: don't PANIC.",
    "emoji 👋🏽 👨‍👩‍👧 🇫🇷 and CJK 世界你好 日本語のテキスト",
    "combining: e\u0301 a\u0308\u0301 and precomposed é ä",
    "whitespace   runs\t\t and\n\n\nnewlines    \n   end   ",
    "windows\r\nline\r\nendings\r\n",
    "digits 1234567890 3.14159 1,000,000 007",
    "  leading spaces and trailing ones   ",
    "'s 've 'LL 'RE ''' --- ... !!! ??? $$$",
]


def _drawn_tricky(seed: int) -> str:
    """Pieces of the tricky texts, cut at random places (inside a word, a run of spaces, an emoji
    sequence) and joined: a text drawn from ``case_seed(seed)``."""
    rng = random.Random(case_seed(seed))
    out = []
    for text in rng.sample(_TRICKY, 5):
        a = rng.randrange(len(text))
        out.append(text[a:rng.randrange(a + 1, len(text) + 1)])
    return "".join(out)


@exercise("1.8", "Encode one chunk with the learned merges", builds="gptlib.tokenizer:_encode_chunk",
          tier="core", difficulty=2, importance=3)
def _(candidate):
    def run(chunk, byte_ids, merges):
        out = candidate(chunk, list(byte_ids), dict(merges))
        expect(isinstance(out, (tuple, list)), f"return the ids as a tuple, got {type(out).__name__}")
        return tuple(out)

    ident = range(256)
    a, b, c = b"a"[0], b"b"[0], b"c"[0]
    # ranks: (b, c) was learned first, so "abc" is a + bc even though (a, b) is further left
    merges = {(b, c): 256, (a, b): 257, (a, 256): 258}
    got = run("abc", ident, merges)
    if got == (257, c):
        raise CheckFailed("'abc' with merges (b, c)->256, (a, b)->257, (a, 256)->258 gave "
                          f"{list(got)}: you merged (a, b) (rank 257) before (b, c) (rank 256); always apply "
                          "the pair with the LOWEST rank (the merge learned first), wherever it is")
    if got == (a, 256):
        raise CheckFailed("'abc' with merges (b, c)->256, (a, b)->257, (a, 256)->258 gave "
                          f"{list(got)}: merging b+c made the pair (a, 256), which has a rank too; "
                          "keep merging until no adjacent pair has a rank")
    expect(got == (258,), f"'abc' with merges (b, c)->256, (a, b)->257, (a, 256)->258 should "
                          f"encode to [258] (b+c first, then a+bc), got {list(got)}")
    merges = {(a, a): 256, (256, 256): 257}
    got = run("aaaaa", ident, merges)
    expect(got == (257, a), f"'aaaaa' with merges (a, a)->256, (256, 256)->257 should give "
                            f"[257, {a}], got {list(got)}: keep merging until no pair has a rank")
    expect(run("xyz", ident, {(a, b): 256}) == tuple(b"xyz"),
           "a chunk in which no merge applies is just its bytes")
    expect(run("a", ident, {(a, b): 256}) == (a,), "a one-byte chunk is its byte's id")
    got = run("é", ident, {})
    if got == (233,):
        raise CheckFailed("'é' should start as its UTF-8 bytes [195, 169], got [233] (its code "
                          "point): use chunk.encode('utf-8')")
    expect(got == (195, 169), f"'é' should encode to its UTF-8 bytes [195, 169], got {list(got)}")
    k = _byte_shift()
    shifted = [(i + k) % 256 for i in range(256)]
    got = run("ab", shifted, {})
    if got == (a, b):
        raise CheckFailed("with byte_ids a permutation (GPT-2's are), 'ab' should start as "
                          f"[byte_ids[{a}], byte_ids[{b}]] = {[shifted[a], shifted[b]]}; you used "
                          "the raw bytes")
    expect(got == (shifted[a], shifted[b]), f"'ab' with permuted byte_ids gave {list(got)}")
    # against tiktoken, on GPT-2's first thousand tokens (a permuted byte table, real merges)
    small = _gpt2_prefix()
    if small is not None:
        enc, byte_ids, merges = small
        for text in [*_TRICKY, _drawn_tricky(18)]:
            for chunk in regex.findall(_PATTERN, text):
                want = tuple(enc.encode_ordinary(chunk))
                got = run(chunk, byte_ids, merges)
                expect(got == want, f"with GPT-2's first 1000 tokens, the chunk {chunk!r} should "
                                    f"encode to {list(want)} (as tiktoken does), got {list(got)}")
    rng = random.Random(case_seed(7))
    for _ in range(10):
        corpus = [list(w.encode()) for w in rng.choices(["ab", "abc", "bca", "aab", "ca"], k=12)]
        learned = dict(_ref_train(corpus, 6))
        text = "".join(rng.choice("abc") for _ in range(rng.randrange(1, 15)))
        want = _ref_encode_chunk(text, range(256), learned)
        got = run(text, range(256), learned)
        expect(got == want, f"{text!r} with merges {learned}: expected {list(want)}, got {list(got)}")


# ---------------------------------------------------------------- 1.9 the tokenizer class
# Merges whose tokens split characters: "é" is c3 a9 and "👋" is f0 9f 91 8b.
_SPLIT_MERGES = [((104, 0xC3), 256),            # b"h\xc3": h and the first half of é
                 ((0xA9, 108), 257),            # b"\xa9l"
                 ((257, 108), 258),             # b"\xa9ll"
                 ((32, 0xF0), 259),             # b" \xf0": a space and the start of 👋
                 ((0x9F, 0x91), 260),           # b"\x9f\x91"
                 ((0x8B, 33), 261)]             # b"\x8b!"


def _train_reference(text, vocab_size, specials=()):
    pieces = regex.split("|".join(regex.escape(s) for s in specials), text) if specials else [text]
    chunks = [list(c.encode("utf-8")) for p in pieces for c in regex.findall(_PATTERN, p)]
    return _ref_train(chunks, vocab_size - 256 - len(specials))


def _check_vocab(candidate):
    k = _byte_shift()
    shifted = [(i + k) % 256 for i in range(256)]
    h, i, bang = (shifted[c] for c in b"hi!")
    tok = candidate.from_merges([((h, i), 256), ((256, bang), 257)], byte_ids=shifted)
    what = (f"from_merges([(({h}, {i}), 256), ((256, {bang}), 257)]) with byte_ids a permutation "
            f"(byte b has id (b + {k}) % 256, so 'h' is {h})")
    if tok.vocab.get(104) == b"h":
        raise CheckFailed(f"{what}: vocab[104] is b'h', but 104 is the id of byte {shifted.index(104)!r}: "
                          "id byte_ids[b] stands for the single byte b")
    expect(tok.vocab.get(h) == b"h", f"{what}: vocab[{h}] should be b'h', got {tok.vocab.get(h)!r}")
    if tok.vocab.get(256) == b"ih":
        raise CheckFailed(f"{what}: vocab[256] is b'ih': a merged token is its left id's bytes followed "
                          "by its right id's")
    expect(tok.vocab.get(256) == b"hi" and tok.vocab.get(257) == b"hi!",
           f"{what}: vocab[256] should be b'hi' and vocab[257] b'hi!' (the bytes of the two ids joined), "
           f"got {tok.vocab.get(256)!r} and {tok.vocab.get(257)!r}")
    expect(dict(tok.merges) == {(h, i): 256, (256, bang): 257},
           f"{what}: merges should map each pair to its new id, {{({h}, {i}): 256, (256, {bang}): 257}}, "
           f"got {dict(tok.merges)}")


def _check_decode(candidate):
    tok = candidate.from_merges(_SPLIT_MERGES, special_tokens={_EOT: 262})
    per_token = ("decode joined the pieces wrongly: a token can hold part of a character, so join "
                 "the bytes of ALL ids first (decode_bytes), then decode UTF-8 once")

    def run(ids, why):
        try:
            out = tok.decode(list(ids))
        except UnicodeDecodeError:
            raise CheckFailed(why) from None
        expect(isinstance(out, str), f"decode should return a str, got {type(out).__name__}")
        return out

    ids = [256, 258, 111, 259, 260, 261]                 # h\xc3 | \xa9ll | o | ' \xf0' | ... | \x8b!
    out = run(ids, per_token)
    if "Ã" in out:
        raise CheckFailed("the bytes are UTF-8, not Latin-1: decode with .decode('utf-8', errors='replace')")
    if "\ufffd" in out:
        raise CheckFailed(per_token)
    expect(out == "héllo 👋!", f"ids {ids} should decode to 'héllo 👋!', got {out!r}")
    raw = tok.decode_bytes(ids)
    expect(raw == "héllo 👋!".encode(), f"decode_bytes({ids}) should be the joined bytes "
                                        f"{'héllo 👋!'.encode()!r}, got {raw!r}")
    expect(run([104, 105], per_token) == "hi", "single-byte tokens 104, 105 are 'h', 'i'")
    partial = ("ids can end in the middle of a character (a model may generate any id): decode with "
               "errors='replace' so incomplete UTF-8 becomes '\\ufffd' instead of an exception")
    out = run([256], partial)
    expect(out == "h\ufffd", f"[256] (b'h\\xc3', half of 'é') should decode to 'h\\ufffd' "
                             f"(errors='replace'), got {out!r}")
    out = run([259, 105], partial)
    expect(out == " \ufffdi", f"[259, 105] (b' \\xf0' then 'i') should decode to ' \\ufffdi', got {out!r}")
    expect(run([], partial) == "", "no ids decode to the empty string")
    try:
        out = run([104, 262, 105], per_token)
    except KeyError:
        out = "KeyError"
    expect(out == "h<|endoftext|>i", f"the special id 262 should decode to its text '<|endoftext|>', "
                                     f"got {out!r}: look it up in special_tokens when it is not in vocab")
    for bad in (263, 5000, -1):
        try:
            tok.decode_bytes([104, bad])
        except ValueError:
            continue
        except (KeyError, IndexError, TypeError, AttributeError) as err:
            raise CheckFailed(f"decode_bytes([104, {bad}]) raised {type(err).__name__}: an id that is "
                              "neither in vocab nor a special token should raise ValueError naming it") from None
        raise CheckFailed(f"decode_bytes([104, {bad}]) did not raise: id {bad} is neither in vocab nor "
                          "a special token; raise ValueError")


def _one_chunk_merges(text, vocab_size):
    """The merges of the slip that trains on the whole text as one chunk."""
    return dict(_ref_train([list(text.encode())], vocab_size - 256))


def _weightless_merges(text, vocab_size):
    """The merges of the slip that counts each distinct chunk once."""
    return dict(_ref_train([list(c.encode()) for c in set(regex.findall(_PATTERN, text))], vocab_size - 256))


def _train_text(vocab_size) -> str:
    """300 words drawn from ``case_seed(8)`` on: the first seed whose text tells the chapter's merges
    from both slips' (a drawn text need not: the first merges may all lie inside words)."""
    words = ["the", "then", "there", "cat.", "cats,", "a", "an", "and", "dog.", "dog!", "42", "4242",
             "so.\n"]
    seed = case_seed(8)
    while True:
        rng = random.Random(seed)
        text = " ".join(rng.choice(words) for _ in range(300))
        want = dict(_train_reference(text, vocab_size))
        if want not in (_one_chunk_merges(text, vocab_size), _weightless_merges(text, vocab_size)):
            return text
        seed += 1


def _check_train(candidate):
    vocab = 256 + 15
    text = _train_text(vocab)
    tok = candidate().train(text, vocab)
    want = dict(_train_reference(text, vocab))
    got = dict(tok.merges)
    if got != want:
        one_chunk, weightless = _one_chunk_merges(text, vocab), _weightless_merges(text, vocab)
        if got == one_chunk:
            raise CheckFailed("train learned merges across chunk boundaries (for example a word and "
                              "the space after it): split each piece into chunks with self._split "
                              "and count pairs within chunks only")
        if got == weightless:
            raise CheckFailed("train counted each distinct chunk once: weight each one by how many "
                              "times it occurs in the text (a Counter of the chunks)")
        first = next((m for m in sorted(want.items(), key=lambda kv: kv[1]) if m not in got.items()), None)
        raise CheckFailed(f"train on a {len(text)}-character text with vocab_size={vocab}: merges differ "
                          f"from the chapter's rule; the first one missing is {first}")
    doc = (text[:200] + _EOT) * 5
    vocab = 256 + 12 + 1
    tok = candidate().train(doc, vocab, special_tokens=[_EOT])
    want = dict(_train_reference(doc, vocab, [_EOT]))
    if dict(tok.merges) != want:
        raise CheckFailed("train with special_tokens=['<|endoftext|>']: the special token's text "
                          "should be cut out before counting (train on the pieces between them), "
                          f"expected merges {list(want.items())[:4]}...")
    expect(tok.special_tokens == {_EOT: 256 + len(want)},
           f"the special token should get the id after the merges, {256 + len(want)}, "
           f"got {tok.special_tokens}")


def _check_encode(candidate):
    try:
        import tiktoken
        tiktoken.get_encoding("gpt2")
    except Exception:                                    # offline without tiktoken's files
        return
    for name in ("gpt2", "cl100k_base"):
        mine, ref = candidate.from_tiktoken(name), tiktoken.get_encoding(name)
        for text in ["", *_TRICKY, _drawn_tricky(19)]:
            want = ref.encode_ordinary(text)
            got = list(mine.encode_ordinary(text))
            if got != want and got == list(_ref_encode_chunk(text, mine.byte_ids, mine.merges)):
                raise CheckFailed(f"{name}: encode_ordinary({text[:30]!r}...) ran BPE on the whole "
                                  "text; pre-tokenize first (self._split.findall) and encode each "
                                  "chunk on its own")
            expect(got == want, f"{name}: encode_ordinary({text!r}) should give tiktoken's ids "
                                f"{want[:12]}..., got {got[:12]}...")
            expect(mine.decode(got) == text == ref.decode(want),
                   f"{name}: decode(encode({text!r})) should give the text back, got {mine.decode(got)!r}")
        again = list(mine.encode_ordinary(_TRICKY[0]))
        expect(again == ref.encode_ordinary(_TRICKY[0]), f"{name}: encoding the same text twice gave "
                                                         "different ids: check what the cache stores")
        docs = ["a<|endoftext|>b", "<|endoftext|><|endoftext|> x <|endoftext|>", "<|endoftext|>"]
        if name == "cl100k_base":
            docs.append("def f():<|fim_prefix|> pass<|endoftext|>\n<|fim_suffix|>x")
        for doc in docs:
            for allowed in ("all", {_EOT}):
                want = ref.encode(doc, allowed_special=allowed, disallowed_special=())
                got = list(mine.encode(doc, allowed_special=allowed, disallowed_special=()))
                if got != want and got == ref.encode_ordinary(doc):
                    raise CheckFailed(f"{name}: encode({doc!r}, allowed_special={allowed!r}) encoded "
                                      "the special tokens as ordinary text: cut the text at the "
                                      "allowed special tokens and give each its id")
                expect(got == want, f"{name}: encode({doc!r}, allowed_special={allowed!r}) should give "
                                    f"tiktoken's ids {want}, got {got}")


def _check_stream(candidate):
    rng = random.Random(case_seed(19))
    words = ["the", " then", " there's", " cat.", "'ll", " 42", "\n", "\n\n", "  ", " \n", "x", _EOT]
    text = "".join(rng.choice(words) for _ in range(400))
    plain = text.replace(_EOT, "")
    tok = candidate.from_merges(_train_reference(plain, 256 + 20), special_tokens={_EOT: 276})
    cuts = sorted(rng.sample(range(1, len(text)), 150))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    for name, stream, source, allowed in (("its lines", plain.splitlines(keepends=True), plain, ()),
                                          ("one character at a time", list(plain[:600]), plain[:600], ()),
                                          ("150 random pieces", pieces, text, "all")):
        want = tok.encode(source, allowed_special=allowed)
        got = list(tok.encode_iterable(stream, allowed_special=allowed))
        if got != want:
            one_by_one = [i for p in stream for i in tok.encode(p, allowed_special=allowed)]
            if got == one_by_one:
                raise CheckFailed(f"encode_iterable on {name} encoded each string on its own: a chunk "
                                  "can continue in the next string (a word cut in two, '\\n' then '\\n'); "
                                  "keep the last chunks in the buffer until more text has come")
            k = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise CheckFailed(f"encode_iterable on {name} should give encode's ids on the joined text; "
                              f"they differ from id {k} on ({want[k:k + 6]} expected, got {got[k:k + 6]}): "
                              "keep back the last two chunks and any chunk ending within four "
                              "characters of where a special token could start")


@exercise("1.9", "Train, encode and decode", builds="gptlib.tokenizer:BPETokenizer", tier="core",
          difficulty=2, importance=3)
def _(candidate):
    _check_vocab(candidate)
    _check_decode(candidate)
    _check_encode(candidate)
    _check_stream(candidate)
    _check_train(candidate)


# ---------------------------------------------------------------- 1.10 stretch: straddling tokens
def _ref_crossing(tok, text, pattern):
    bounds, at = set(), 0
    for chunk in regex.findall(pattern, text):
        at += len(chunk.encode("utf-8"))
        bounds.add(at)
    crossing, at = 0, 0
    for i in tok.encode_ordinary(text):
        span = range(at + 1, at + len(tok.vocab[i]))
        crossing += any(b in bounds for b in span)
        at += len(tok.vocab[i])
    return crossing


class _FixedTokenizer:
    """A stand-in tokenizer: ``encode_ordinary`` returns ids fixed in advance."""

    def __init__(self, pieces):
        self.vocab = {i: p for i, p in enumerate(pieces)}

    def encode_ordinary(self, text):
        assert b"".join(self.vocab.values()) == text.encode("utf-8")
        return list(self.vocab)


@exercise("1.10", "What pre-tokenization prevents", tier="stretch", difficulty=2, importance=2)
def _(candidate):
    cases = [
        ([b"dog", b".", b" cat"], "dog. cat", 0, "tokens that end exactly at chunk ends"),
        ([b"dog.", b" cat"], "dog. cat", 1, "'dog.' spans the chunks 'dog' and '.'"),
        ([b"dog", b". cat"], "dog. cat", 1, "'. cat' spans '.' and ' cat'"),
        ([b"d", b"og. c", b"at"], "dog. cat", 1, "one token spanning two boundaries counts once"),
        ([b"the", b" ", b" end"], "the  end", 0, "a run of spaces: the last space joins the word"),
        ([b"the ", b" end"], "the  end", 1, "'the ' spans 'the' and ' '"),
        ([b"caf\xc3", b"\xa9 ok"], "café ok", 1, "byte offsets: 'é' is two bytes"),
        ([b"caf\xc3", b"\xa9", b" ok"], "café ok", 0, "half a character is still inside its chunk"),
        ([b"\xe4\xb8\x96\xe7\x95\x8c", b"!"], "世界!", 0, "three-byte characters"),
    ]
    for pieces, text, want, what in cases:
        got = candidate(_FixedTokenizer(pieces), text, _PATTERN)
        if got == want:
            continue
        raise CheckFailed(f"tokens {pieces} of {text!r}: {want} should straddle a chunk boundary "
                          f"({what}), you counted {got}" + ("" if text.isascii() else
                          ": offsets are in bytes (len(tok.vocab[i]), len(chunk.encode('utf-8'))), "
                          "not characters"))
    text = "Hello world!! It's 2024, don't   panic:\n  say héllo"
    for pattern in (_PATTERN, r"\S+|\s+", r"[\s\S]+"):
        tok = _FixedTokenizer([text.encode()[i:i + 3] for i in range(0, len(text.encode()), 3)])
        want = _ref_crossing(tok, text, pattern)
        got = candidate(tok, text, pattern)
        expect(got == want, f"3-byte tokens of {text!r} with the pattern {pattern!r}: expected "
                            f"{want}, got {got} (use the pattern you are given)")
    rng = random.Random(case_seed(10))
    raw = text.encode()
    cuts = sorted(rng.sample(range(1, len(raw)), 12))
    tok = _FixedTokenizer([raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])])
    want = _ref_crossing(tok, text, _PATTERN)
    got = candidate(tok, text, _PATTERN)
    expect(got == want, f"the tokens {list(tok.vocab.values())} of {text!r}, cut at the random byte offsets "
                        f"{cuts}: {want} of them straddle a chunk boundary, you counted {got}")
