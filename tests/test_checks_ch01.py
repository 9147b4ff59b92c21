"""Chapter 1 checks: each reference passes and each typical mistake is rejected with its hint."""
from collections import Counter

import pytest

from gptlib.exercises import run_check
from gptlib.tokenizer import count_pairs, merge


# ---------------------------------------------------------------- 1.1 count pairs
def count_library(ids):
    return count_pairs(ids)


def count_counter(ids):
    return Counter(zip(ids, ids[1:]))


def _non_overlapping(ids):
    counts, i = {}, 0
    while i + 1 < len(ids):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
        i += 2
    return counts


def _distinct(ids):
    return {pair: 1 for pair in zip(ids, ids[1:])}


def _reversed(ids):
    return count_pairs([*ids][::-1])


def _drops_last(ids):
    return count_pairs(ids[:-1])


def _a_list(ids):
    return list(zip(ids, ids[1:]))


def _crashes_on_short(ids):
    counts = {(ids[0], ids[1]): 0}
    for pair in zip(ids, ids[1:]):
        counts[pair] += 0
        counts[pair] = counts.get(pair, 0) + 1
    return counts


# ---------------------------------------------------------------- 1.2 merge
def _first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def _no_skip(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 1                      # forgets that the right id is used up
        else:
            out.append(ids[i])
            i += 1
    return out


def _from_the_right(ids, pair, new_id):
    return merge(ids[::-1], pair[::-1], new_id)[::-1]


def _drops_tail(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _in_place(ids, pair, new_id):
    merged = merge(ids, pair, new_id)
    ids[:] = merged
    return ids


def _string_replace(ids, pair, new_id):   # counts the pair in both orders
    out = merge(ids, pair, new_id)
    return merge(out, pair[::-1], new_id)


# ---------------------------------------------------------------- 1.3 decode
def decode_ref(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def _per_token_replace(ids, vocab):
    return "".join(vocab[i].decode("utf-8", errors="replace") for i in ids)


def _per_token_strict(ids, vocab):
    return "".join(vocab[i].decode("utf-8") for i in ids)


def _strict(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("utf-8")


def _latin1(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("latin-1")


def _ignore(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="ignore")


# ---------------------------------------------------------------- the table
PASSING = [("1.1", count_library), ("1.1", count_counter), ("1.2", merge), ("1.3", decode_ref)]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("1.1", _non_overlapping, "non-overlapping"),
    ("1.1", _distinct, "counted once"),
    ("1.1", _reversed, "reversed"),
    ("1.1", _drops_last, "last pair is missing"),
    ("1.1", _a_list, "return a dict"),
    ("1.2", _first_only, "only the first occurrence"),
    ("1.2", _no_skip, "continue at i + 2"),                 # the overlapping run "aaa"
    ("1.2", _from_the_right, "scan from the left"),
    ("1.2", _drops_tail, "went missing"),
    ("1.2", _in_place, "changed its input"),
    ("1.2", _string_replace, "ordered pair"),
    ("1.3", _per_token_replace, "join all the bytes first"),
    ("1.3", _per_token_strict, "join all the bytes first"),
    ("1.3", _strict, "errors='replace'"),                    # strict decoding of partial UTF-8
    ("1.3", _latin1, "not Latin-1"),
    ("1.3", _ignore, "\\ufffd"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING, ids=[c.__name__ for _, c in PASSING])
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING,
                         ids=[c.__name__.lstrip("_") for _, c, _ in FAILING])
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_a_crashing_candidate_is_reported_as_an_error():
    assert run_check("1.1", _crashes_on_short).status == "error"
