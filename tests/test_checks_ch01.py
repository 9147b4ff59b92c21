"""Chapter 1 checks: each reference passes and each typical mistake is rejected with its hint."""
import pytest

from gptlib.exercises import run_check
from gptlib.tokenizer import count_pairs, merge


def _assert_fails(exercise_id, candidate, phrase):
    result = run_check(exercise_id, candidate)
    assert result.status == "failed", (result.status, result.message)
    assert phrase in result.message, result.message


# ---------------------------------------------------------------- 1.1 count pairs
def test_1_1_reference_passes():
    assert run_check("1.1", lambda ids: count_pairs(ids)).status == "passed"
    from collections import Counter
    assert run_check("1.1", lambda ids: Counter(zip(ids, ids[1:]))).status == "passed"


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


def _crashes_on_short(ids):
    counts = {(ids[0], ids[1]): 0}
    for pair in zip(ids, ids[1:]):
        counts[pair] += 0
        counts[pair] = counts.get(pair, 0) + 1
    return counts


@pytest.mark.parametrize("candidate, phrase", [
    (_non_overlapping, "non-overlapping"),
    (_distinct, "counted once"),
    (_reversed, "reversed"),
    (_drops_last, "last pair is missing"),
], ids=["non-overlapping", "distinct-only", "reversed", "drops-last"])
def test_1_1_rejects_wrong_counts(candidate, phrase):
    _assert_fails("1.1", candidate, phrase)


def test_1_1_rejects_a_list_and_reports_crashes():
    _assert_fails("1.1", lambda ids: list(zip(ids, ids[1:])), "return a dict")
    assert run_check("1.1", _crashes_on_short).status == "error"


# ---------------------------------------------------------------- 1.2 merge
def test_1_2_reference_passes():
    assert run_check("1.2", merge).status == "passed"


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


@pytest.mark.parametrize("candidate, phrase", [
    (_first_only, "only the first occurrence"),
    (_no_skip, "continue at i + 2"),
    (_from_the_right, "scan from the left"),
    (_drops_tail, "went missing"),
    (_in_place, "changed its input"),
    (_string_replace, "ordered pair"),
], ids=["first-only", "overlap-aaa", "right-to-left", "drops-tail", "in-place", "unordered"])
def test_1_2_rejects_wrong_merges(candidate, phrase):
    _assert_fails("1.2", candidate, phrase)


# ---------------------------------------------------------------- 1.3 decode
def test_1_3_reference_passes():
    ref = lambda ids, vocab: b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
    assert run_check("1.3", ref).status == "passed"


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


@pytest.mark.parametrize("candidate, phrase", [
    (_per_token_replace, "join all the bytes first"),
    (_per_token_strict, "join all the bytes first"),
    (_strict, "errors='replace'"),
    (_latin1, "not Latin-1"),
    (_ignore, "\\ufffd"),
], ids=["per-token-replace", "per-token-strict", "strict-partial-utf8", "latin-1", "errors-ignore"])
def test_1_3_rejects_wrong_decoders(candidate, phrase):
    _assert_fails("1.3", candidate, phrase)
