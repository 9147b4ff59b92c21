"""Checks for Chapter 1 (byte-pair encoding). Hand-written.

Each check feeds the learner's function small inputs on which the usual mistakes give
recognisably different answers (overlapping pairs, a pair at the very end, half a character in a
token) and names the mistake it sees.
"""
from __future__ import annotations

import random

from gptlib.exercises import CheckFailed, exercise, expect
from gptlib.tokenizer import count_pairs, merge


def _as_counts(result, probe) -> dict:
    expect(hasattr(result, "items"), f"return a dict {{(left, right): count}}, got {type(result).__name__} "
                                     f"for {probe}")
    return {tuple(k): v for k, v in result.items() if v}


@exercise("1.1", "Count adjacent pairs")
def _(candidate):
    probe = [1, 2, 1, 2, 1, 2]
    got = _as_counts(candidate(list(probe)), probe)
    want = dict(count_pairs(probe))                       # {(1, 2): 3, (2, 1): 2}
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
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.randrange(4) for _ in range(rng.randrange(2, 30))]
        got = _as_counts(candidate(list(ids)), ids)
        expect(got == count_pairs(ids), f"wrong counts for {ids}: expected {count_pairs(ids)}, got {got}")


@exercise("1.2", "Apply one merge")
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
    rng = random.Random(1)
    for _ in range(20):
        ids = [rng.randrange(3) for _ in range(rng.randrange(0, 25))]
        want = merge(ids, (0, 1), 7)
        got = run(list(ids), (0, 1), 7)
        expect(got == want, f"merging (0, 1) in {ids}: expected {want}, got {got}")


# A vocabulary in which "é" (bytes c3 a9) and "👋" (f0 9f 91 8b) are split across tokens.
_VOCAB = {i: bytes([i]) for i in range(256)}
_VOCAB.update({256: b"h\xc3", 257: b"\xa9llo", 258: b" \xf0\x9f", 259: b"\x91\x8b!", 260: b"\xe4\xb8\x96"})


@exercise("1.3", "Decode ids to text")
def _(candidate):
    def run(ids, why):
        try:
            out = candidate(list(ids), dict(_VOCAB))
        except UnicodeDecodeError:
            raise CheckFailed(why) from None
        expect(isinstance(out, str), f"return a str, got {type(out).__name__}")
        return out

    per_token = ("decoding each token on its own breaks characters whose bytes are split across "
                 "tokens: join all the bytes first (b''.join(vocab[i] for i in ids)), then decode once")
    out = run([256, 257, 258, 259], per_token)
    if out == "hÃ©llo ð\x9f\x91\x8b!":
        raise CheckFailed("the bytes are UTF-8, not Latin-1: use .decode('utf-8', errors='replace')")
    if "\ufffd" in out:
        raise CheckFailed(per_token)
    expect(out == "héllo 👋!", f"ids [256, 257, 258, 259] should decode to 'héllo 👋!', got {out!r}")
    expect(run([104, 105], per_token) == "hi", "single-byte tokens 104, 105 are 'h', 'i'")
    partial = ("ids can end in the middle of a character (a model may generate any id): decode with "
               "errors='replace' so incomplete UTF-8 becomes '\\ufffd' instead of an exception")
    out = run([256], partial)
    expect(out == "h\ufffd", f"[256] (b'h\\xc3', half of 'é') should give 'h\\ufffd', got {out!r}")
    out = run([258, 260], partial)
    expect(out == " \ufffd世", f"[258, 260] should decode to ' \\ufffd世', got {out!r}")
    expect(run([], partial) == "", "no ids decode to the empty string")
