"""Chapter 1 checks: each reference passes and each typical mistake is rejected with its hint.

The wrong candidates are small edits of the chapter's solutions (gptlib.tokenizer), one mistake
each; the last column of FAILING is a phrase the check's hint must contain."""
from collections import Counter

import pytest
import regex

import gptlib.tokenizer as T
from gptlib.exercises import run_check
from gptlib.tokenizer import (GPT2_SPLIT_PATTERN, BPETokenizer, CharTokenizer, best_pair, count_pairs,
                              merge, train_merges, train_merges_naive)


# ---------------------------------------------------------------- 1.1 CharTokenizer
class _CharUnsorted(CharTokenizer):
    def __init__(self, text):
        self.chars = list(dict.fromkeys(text))             # first-seen order
        self.stoi = {c: i for i, c in enumerate(self.chars)}


class _CharNegativeIds(CharTokenizer):
    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)    # chars[-1] quietly works


class _CharIndexError(CharTokenizer):
    def decode(self, ids):
        out = []
        for i in ids:
            if i < 0:
                raise ValueError(i)
            out.append(self.chars[i])                       # IndexError past the end
        return "".join(out)


# ---------------------------------------------------------------- 1.2 count pairs
def count_counter(ids, counts=None, weight=1):
    counts = {} if counts is None else counts
    for pair, n in Counter(zip(ids, ids[1:])).items():
        counts[pair] = counts.get(pair, 0) + n * weight
    return counts


def _non_overlapping(ids, counts=None, weight=1):
    counts, i = ({} if counts is None else counts), 0
    while i + 1 < len(ids):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + weight
        i += 2
    return counts


def _distinct(ids, counts=None, weight=1):
    return {pair: 1 for pair in zip(ids, ids[1:])}


def _reversed(ids, counts=None, weight=1):
    return count_pairs([*ids][::-1], counts, weight)


def _drops_last(ids, counts=None, weight=1):
    return count_pairs(ids[:-1], counts, weight)


def _a_list(ids, counts=None, weight=1):
    return list(zip(ids, ids[1:]))


def _or_empty(ids, counts=None, weight=1):
    counts = counts or {}                                  # an empty table is replaced
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def _shared_default(ids, counts={}, weight=1):             # noqa: B006 -- the mistake under test
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def _ignores_weight(ids, counts=None, weight=1):
    return count_pairs(ids, counts, 1)


def _crashes_on_short(ids, counts=None, weight=1):
    counts = {(ids[0], ids[1]): 0}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


# ---------------------------------------------------------------- 1.3 merge
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


# ---------------------------------------------------------------- 1.4 best pair
def best_sorted(counts):
    return sorted(counts, key=lambda p: (-counts[p], p))[0]


def _first_seen(counts):
    return max(counts, key=counts.get)


def _largest_on_tie(counts):
    return max(counts, key=lambda p: (counts[p], p))


def _least_frequent(counts):
    return min(counts, key=lambda p: (counts[p], p))


# ---------------------------------------------------------------- 1.5 the naive trainer
def _naive(pick=best_pair, across=False, stop=True, ids_from=None, recount=True):
    def train(chunks, num_merges, first_id=256):
        chunks = [list(c) for c in chunks]
        if across:
            chunks = [[i for c in chunks for i in c]]
        merges, counts = [], None
        for k, new_id in enumerate(range(first_id, first_id + num_merges)):
            if recount or counts is None:
                counts = {}
                for ids in chunks:
                    count_pairs(ids, counts)
            if not counts:
                if stop:
                    break
                merges.append(((0, 0), new_id))
                continue
            pair = pick(counts)
            if not recount:
                del counts[pair]
            chunks = [merge(ids, pair, new_id) for ids in chunks]
            merges.append((pair, (ids_from + k) if ids_from is not None else new_id))
        return merges
    return train


_naive_first_seen = _naive(pick=_first_seen)
_naive_across_chunks = _naive(across=True)
_naive_never_stops = _naive(stop=False)
_naive_ids_from_256 = _naive(ids_from=256)
_naive_counts_once = _naive(recount=False)
for _name_, _f in list(globals().items()):
    if _name_.startswith("_naive_") and callable(_f):
        _f.__name__ = _name_


def _naive_mutates(chunks, num_merges, first_id=256):
    merges = []
    for new_id in range(first_id, first_id + num_merges):
        counts = {}
        for ids in chunks:
            count_pairs(ids, counts)
        if not counts:
            break
        pair = best_pair(counts)
        for ids in chunks:
            ids[:] = merge(ids, pair, new_id)
        merges.append((pair, new_id))
    return merges


# ---------------------------------------------------------------- 1.6 the incremental trainer
def _incremental(stale_check=True, index_new=True, weighted=True, drop_zero=True):
    """train_merges with one of its steps left out (each flag False is one mistake)."""
    import heapq

    def train(words, num_merges, first_id=256):
        items = words.items() if isinstance(words, dict) else words
        seqs = [list(w) for w, _ in items]
        freqs = [int(f) if weighted else 1 for _, f in (words.items() if isinstance(words, dict) else words)]
        counts, where = {}, {}
        for w, ids in enumerate(seqs):
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + freqs[w]
                where.setdefault(pair, set()).add(w)
        heap = [(-c, p) for p, c in counts.items()]
        heapq.heapify(heap)
        merges, new_id = [], first_id
        while len(merges) < num_merges and heap:
            neg, pair = heapq.heappop(heap)
            if stale_check and counts.get(pair, 0) != -neg:
                continue
            if not stale_check and pair not in where:
                continue
            delta = {}
            for w in where.pop(pair, ()):
                old = seqs[w]
                new = merge(old, pair, new_id)
                if len(new) == len(old):
                    continue
                for p in zip(old, old[1:]):
                    delta[p] = delta.get(p, 0) - freqs[w]
                for p in zip(new, new[1:]):
                    delta[p] = delta.get(p, 0) + freqs[w]
                    if index_new and new_id in p:
                        where.setdefault(p, set()).add(w)
                seqs[w] = new
            for p, d in delta.items():
                if d == 0:
                    continue
                c = counts.get(p, 0) + d
                if c > 0 or not drop_zero:
                    counts[p] = c
                    heapq.heappush(heap, (-c, p))
                else:
                    counts.pop(p, None)
            merges.append((pair, new_id))
            new_id += 1
        return merges
    return train


_incremental_reference = _incremental()
_incremental_no_stale_check = _incremental(stale_check=False)
_incremental_no_new_index = _incremental(index_new=False)
_incremental_unweighted = _incremental(weighted=False)
for _name_, _f in list(globals().items()):
    if _name_.startswith("_incremental_") and callable(_f):
        _f.__name__ = _name_


# ---------------------------------------------------------------- 1.7 merges from tiktoken's ranks
def _bpe_join(ranks, token, max_rank, pick):
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        found = [(ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:]))
                 if ranks.get(a + b, max_rank) < max_rank]
        if not found:
            break
        _, i = pick(found)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _ranks_with(halves_of, byte_ids=None, order=lambda ranks: sorted(ranks.items(), key=lambda kv: kv[1]),
                as_ids=True):
    def merges_from_ranks(ranks):
        ids = [ranks[bytes([b])] for b in range(256)] if byte_ids is None else byte_ids
        merges = []
        for token, rank in order(ranks):
            if len(token) > 1:
                left, right = halves_of(ranks, token, rank)
                merges.append(((ranks[left], ranks[right]) if as_ids else (left, right), rank))
        return ids, merges
    return merges_from_ranks


_bpe_halves = lambda ranks, token, rank: _bpe_join(ranks, token, rank, min)   # noqa: E731
# BPE that joins the leftmost pair with a rank instead of the lowest-ranked pair
_ranks_leftmost = _ranks_with(lambda r, t, k: _bpe_join(r, t, k, lambda found: min(found, key=lambda f: f[1])))
# the first split whose halves are both earlier tokens
_ranks_first_split = _ranks_with(lambda r, t, k: next((t[:i], t[i:]) for i in range(1, len(t))
                                                      if r.get(t[:i], k) < k and r.get(t[i:], k) < k))
_ranks_identity_bytes = _ranks_with(_bpe_halves, byte_ids=list(range(256)))   # GPT-2's are permuted
_ranks_dict_order = _ranks_with(_bpe_halves, order=lambda ranks: ranks.items())  # not sorted by rank
_ranks_bytes = _ranks_with(_bpe_halves, as_ids=False)                       # ((b"a", b"b"), rank)


def _ranks_no_limit(ranks):                     # BPE with every rank: the token joins into one part
    def halves(r, t, k):
        parts = T._bpe_by_rank(r, t, max(r.values()) + 1)
        if len(parts) != 2:
            raise ValueError(f"token {t!r} (rank {k}) is not the merge of two earlier tokens")
        return parts
    return _ranks_with(halves)(ranks)


# ---------------------------------------------------------------- 1.8 encode one chunk
def encode_by_rank_order(chunk, byte_ids, merges):      # slow but correct: every merge, in rank order
    ids = [byte_ids[b] for b in chunk.encode("utf-8")]
    for pair, new_id in sorted(merges.items(), key=lambda kv: kv[1]):
        ids = merge(ids, pair, new_id)
    return tuple(ids)


def _leftmost_first(chunk, byte_ids, merges):
    ids = [byte_ids[b] for b in chunk.encode("utf-8")]
    while True:
        hit = next((i for i, p in enumerate(zip(ids, ids[1:])) if p in merges), None)
        if hit is None:
            return tuple(ids)
        ids[hit:hit + 2] = [merges[(ids[hit], ids[hit + 1])]]


def _highest_rank_first(chunk, byte_ids, merges):
    ids = [byte_ids[b] for b in chunk.encode("utf-8")]
    while True:
        ranked = [(merges[p], i) for i, p in enumerate(zip(ids, ids[1:])) if p in merges]
        if not ranked:
            return tuple(ids)
        rank, i = max(ranked)
        ids[i:i + 2] = [rank]


def _raw_bytes(chunk, byte_ids, merges):
    return T._encode_chunk(chunk, list(range(256)), merges)


def _one_pass(chunk, byte_ids, merges):
    ids = [byte_ids[b] for b in chunk.encode("utf-8")]
    ranked = sorted((merges[p], p) for p in set(zip(ids, ids[1:])) if p in merges)
    for rank, pair in ranked:                              # never looks at pairs a merge creates
        ids = merge(ids, pair, rank)
    return tuple(ids)


def _code_points(chunk, byte_ids, merges):
    ids = [byte_ids[ord(c) % 256] for c in chunk]
    while len(ids) > 1:
        ranks = [merges.get(p) for p in zip(ids, ids[1:])]
        best = min((r for r in ranks if r is not None), default=None)
        if best is None:
            break
        i = ranks.index(best)
        ids = ids[:i] + merge(ids[i:], (ids[i], ids[i + 1]), best)
    return tuple(ids)


# ---------------------------------------------------------------- 1.9 the tokenizer class
class _PerTokenDecode(BPETokenizer):
    def decode(self, ids):
        return "".join(self.decode_bytes([i]).decode("utf-8", errors="replace") for i in ids)


class _StrictDecode(BPETokenizer):
    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8")


class _VocabByteValues(BPETokenizer):
    def _set_merges(self, byte_ids, merges, special_tokens):
        super()._set_merges(byte_ids, merges, special_tokens)
        self.vocab.update({b: bytes([b]) for b in range(256)})      # id b is byte b, permuted or not


class _VocabRightLeft(BPETokenizer):
    def _set_merges(self, byte_ids, merges, special_tokens):
        super()._set_merges(byte_ids, merges, special_tokens)
        for (a, b), new_id in sorted(self.merges.items(), key=lambda kv: kv[1]):
            self.vocab[new_id] = self.vocab[b] + self.vocab[a]


class _Latin1Decode(BPETokenizer):
    def decode(self, ids):
        return self.decode_bytes(ids).decode("latin-1")


class _IgnoreDecode(BPETokenizer):
    def decode(self, ids):
        return self.decode_bytes(ids).decode("utf-8", errors="ignore")


class _NoSpecialDecode(BPETokenizer):
    def decode_bytes(self, ids):
        return b"".join(self.vocab[i] for i in ids)        # KeyError for specials and unknown ids


class _SilentUnknown(BPETokenizer):
    def decode_bytes(self, ids):
        specials = {i: s.encode() for s, i in self.special_tokens.items()}
        return b"".join(self.vocab.get(i, specials.get(i, b"")) for i in ids)


class _NoPretokenize(BPETokenizer):
    def encode_ordinary(self, text):
        return list(T._encode_chunk(text, self.byte_ids, self.merges))


class _SpecialsAsText(BPETokenizer):
    def encode(self, text, allowed_special=(), disallowed_special="all"):
        super().encode(text, allowed_special, disallowed_special)      # keeps the validation
        return self.encode_ordinary(text)


class _SpecialsDropped(BPETokenizer):
    def encode(self, text, allowed_special=(), disallowed_special="all"):
        super().encode(text, allowed_special, disallowed_special)
        specials = sorted(self.special_tokens, key=len, reverse=True)
        parts = regex.split("|".join(regex.escape(s) for s in specials), text) if specials else [text]
        return [i for part in parts for i in self.encode_ordinary(part)]   # the special ids go missing


class _TrainOneChunk(BPETokenizer):
    def __init__(self, pattern=GPT2_SPLIT_PATTERN):
        super().__init__(pattern)

    def train(self, text, vocab_size, special_tokens=(), verbose=False):
        merges = train_merges({tuple(text.encode()): 1}, vocab_size - 256 - len(special_tokens))
        self._set_merges(range(256), merges, {s: 256 + len(merges) + k for k, s in enumerate(special_tokens)})
        return self


class _TrainUnweighted(BPETokenizer):
    def train(self, text, vocab_size, special_tokens=(), verbose=False):
        words = {tuple(c.encode()): 1 for c in set(regex.findall(self._split, text))}
        merges = train_merges(words, vocab_size - 256 - len(special_tokens))
        self._set_merges(range(256), merges, {s: 256 + len(merges) + k for k, s in enumerate(special_tokens)})
        return self


class _StreamPieceByPiece(BPETokenizer):
    def encode_iterable(self, texts, allowed_special=(), disallowed_special="all"):
        for text in texts:
            yield from self.encode(text, allowed_special, disallowed_special)


class _StreamKeepsOneChunk(BPETokenizer):
    def encode_iterable(self, texts, allowed_special=(), disallowed_special="all"):
        buffer = ""
        for text in texts:
            buffer += text
            chunks = self._split.findall(buffer)[:-1]             # only the last chunk kept back
            for chunk in chunks:
                yield from self.encode_ordinary(chunk)
            buffer = buffer[sum(map(len, chunks)):]
        yield from self.encode(buffer, allowed_special, disallowed_special)


# ---------------------------------------------------------------- 1.10 straddling tokens
def crossing_ref(tok, text, pattern=GPT2_SPLIT_PATTERN):
    ends, at = set(), 0
    for chunk in regex.findall(pattern, text):
        at += len(chunk.encode("utf-8"))
        ends.add(at)
    count, at = 0, 0
    for i in tok.encode_ordinary(text):
        n = len(tok.vocab[i])
        count += any(e in ends for e in range(at + 1, at + n))
        at += n
    return count


def _crossing_in_characters(tok, text, pattern=GPT2_SPLIT_PATTERN):
    ends, at = set(), 0
    for chunk in regex.findall(pattern, text):
        at += len(chunk)
        ends.add(at)
    count, at = 0, 0
    for i in tok.encode_ordinary(text):
        n = len(tok.vocab[i].decode("utf-8", "replace"))
        count += any(e in ends for e in range(at + 1, at + n))
        at += n
    return count


def _crossing_counts_boundaries(tok, text, pattern=GPT2_SPLIT_PATTERN):
    ends, at = set(), 0
    for chunk in regex.findall(pattern, text):
        at += len(chunk.encode("utf-8"))
        ends.add(at)
    count, at = 0, 0
    for i in tok.encode_ordinary(text):
        n = len(tok.vocab[i])
        count += sum(e in ends for e in range(at + 1, at + n))     # a token per boundary
        at += n
    return count


def _crossing_includes_ends(tok, text, pattern=GPT2_SPLIT_PATTERN):
    ends, at = set(), 0
    for chunk in regex.findall(pattern, text):
        at += len(chunk.encode("utf-8"))
        ends.add(at)
    count, at = 0, 0
    for i in tok.encode_ordinary(text):
        n = len(tok.vocab[i])
        count += any(e in ends for e in range(at + 1, at + n + 1))  # a token ending at a boundary
        at += n
    return count


def _crossing_has_space(tok, text, pattern=GPT2_SPLIT_PATTERN):
    return sum(b" " in tok.vocab[i].strip(b" ") or tok.vocab[i].endswith(b" ")
               for i in tok.encode_ordinary(text))


# ---------------------------------------------------------------- the table
PASSING = [("1.1", CharTokenizer), ("1.2", count_pairs), ("1.2", count_counter), ("1.3", merge),
           ("1.4", best_pair), ("1.4", best_sorted), ("1.5", train_merges_naive),
           ("1.6", train_merges), ("1.6", _incremental_reference), ("1.7", T.merges_from_ranks),
           ("1.7", _ranks_with(_bpe_halves)), ("1.8", T._encode_chunk),
           ("1.8", encode_by_rank_order), ("1.9", BPETokenizer), ("1.10", crossing_ref)]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("1.1", _CharUnsorted, "should be sorted"),
    ("1.1", _CharNegativeIds, "-1"),
    ("1.1", _CharIndexError, "raised IndexError"),
    ("1.2", _non_overlapping, "non-overlapping"),
    ("1.2", _distinct, "counted once"),
    ("1.2", _reversed, "reversed"),
    ("1.2", _drops_last, "last pair is missing"),
    ("1.2", _a_list, "return a dict"),
    ("1.2", _or_empty, "`counts or {}`"),
    ("1.2", _shared_default, "created once and shared"),
    ("1.2", _ignores_weight, "weight=3"),
    ("1.3", _first_only, "only the first occurrence"),
    ("1.3", _no_skip, "continue at i + 2"),                 # the overlapping run "aaa"
    ("1.3", _from_the_right, "scan from the left"),
    ("1.3", _drops_tail, "went missing"),
    ("1.3", _in_place, "changed its input"),
    ("1.3", _string_replace, "ordered pair"),
    ("1.4", _first_seen, "depends on the dict's order"),
    ("1.4", _largest_on_tie, "the largest"),
    ("1.4", _least_frequent, "the most frequent pair wins"),
    ("1.5", _naive_first_seen, "the smallest pair wins"),
    ("1.5", _naive_across_chunks, "across chunk boundaries"),
    ("1.5", _naive_never_stops, "stop when the counts are empty"),
    ("1.5", _naive_ids_from_256, "first_id=1000"),
    ("1.5", _naive_counts_once, "should be"),
    ("1.5", _naive_mutates, "changed the caller's chunks"),
    ("1.6", _incremental_no_stale_check, "expected"),
    ("1.6", _incremental_no_new_index, "expected"),
    ("1.6", _incremental_unweighted, "freqs[w] times"),
    ("1.7", _ranks_leftmost, "LOWEST-ranked pair first"),
    ("1.7", _ranks_first_split, "nor the first split"),
    ("1.7", _ranks_identity_bytes, "you gave 0 .. 255"),
    ("1.7", _ranks_dict_order, "sorted by rank"),
    ("1.7", _ranks_bytes, "holds bytes"),
    ("1.7", _ranks_no_limit, "below max_rank"),
    ("1.8", _leftmost_first, "LOWEST rank"),
    ("1.8", _highest_rank_first, "LOWEST rank"),
    ("1.8", _raw_bytes, "you used the raw bytes"),
    ("1.8", _one_pass, "keep merging"),
    ("1.8", _code_points, "its code point"),
    ("1.9", _VocabByteValues, "stands for the single byte b"),
    ("1.9", _VocabRightLeft, "followed by its right id's"),
    ("1.9", _PerTokenDecode, "join the bytes of ALL ids first"),
    ("1.9", _StrictDecode, "errors='replace'"),
    ("1.9", _Latin1Decode, "not Latin-1"),
    ("1.9", _IgnoreDecode, "\\ufffd"),
    ("1.9", _NoSpecialDecode, "special_tokens"),
    ("1.9", _SilentUnknown, "did not raise"),
    ("1.9", _NoPretokenize, "pre-tokenize first"),
    ("1.9", _SpecialsAsText, "as ordinary text"),
    ("1.9", _SpecialsDropped, "should give tiktoken's ids"),
    ("1.9", _TrainOneChunk, "across chunk boundaries"),
    ("1.9", _TrainUnweighted, "how many times it occurs"),
    ("1.9", _StreamPieceByPiece, "each string on its own"),
    ("1.9", _StreamKeepsOneChunk, "keep back the last two chunks"),
    ("1.10", _crossing_in_characters, "offsets are in bytes"),
    ("1.10", _crossing_counts_boundaries, "counts once"),
    ("1.10", _crossing_includes_ends, "end exactly at chunk ends"),
    ("1.10", _crossing_has_space, "should straddle"),
]


def _name(c):
    return getattr(c, "__name__", repr(c)).lstrip("_")


@pytest.mark.parametrize("exercise_id, candidate", PASSING, ids=[f"{e}-{_name(c)}" for e, c in PASSING])
def test_reference_passes(exercise_id, candidate):
    result = run_check(exercise_id, candidate)
    assert result.status == "passed", result.message


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING,
                         ids=[f"{e}-{_name(c)}" for e, c, _ in FAILING])
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_a_crashing_candidate_is_reported_as_an_error():
    assert run_check("1.2", _crashes_on_short).status == "error"


@pytest.mark.parametrize("exercise_id", [f"1.{k}" for k in range(1, 11)])
def test_not_done(exercise_id):
    def todo(*args, **kwargs):
        raise NotImplementedError

    class Todo:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError

        @classmethod
        def from_merges(cls, *args, **kwargs):
            raise NotImplementedError

    candidate = Todo if exercise_id in ("1.1", "1.9") else todo
    assert run_check(exercise_id, candidate).status == "not done"
