"""BPETokenizer.encode_iterable: a lazy encoder that gives exactly encode's ids on the joined text,
wherever the strings are cut, with special tokens, and in memory that does not grow with the text."""
import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlib.datasets import load_text
from gptlib.tokenizer import ENDOFTEXT, BPETokenizer

tiktoken = pytest.importorskip("tiktoken")

CL100K_PATTERN = tiktoken.get_encoding("cl100k_base")._pat_str
FIM = "<|fim|>"


@pytest.fixture(scope="module")
def shakespeare():
    return load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def gpt2():
    return BPETokenizer.from_tiktoken("gpt2")


@pytest.fixture(scope="module")
def small_tokenizers(shakespeare):
    """Two trained tokenizers, one per pre-tokenization pattern, with two special tokens."""
    text = shakespeare[:60_000]
    return [BPETokenizer().train(text, 256 + 120 + 2, special_tokens=[ENDOFTEXT, FIM]),
            BPETokenizer(CL100K_PATTERN).train(text, 256 + 120 + 2, special_tokens=[ENDOFTEXT, FIM])]


def _random_pieces(text, n, rng):
    cuts = sorted(rng.sample(range(len(text) + 1), min(n, len(text) + 1)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]          # empty strings included


def test_shakespeare_line_by_line_and_in_random_pieces(gpt2, shakespeare):
    want = gpt2.encode(shakespeare)
    assert want == tiktoken.get_encoding("gpt2").encode(shakespeare)
    assert list(gpt2.encode_iterable(shakespeare.splitlines(keepends=True))) == want
    assert list(gpt2.encode_iterable(_random_pieces(shakespeare, 30_000, random.Random(0)))) == want


def test_an_open_file(gpt2, tmp_path):
    text = "First line.\n\n\nIt's  the   second's\n  \n\tend\n\n"
    path = tmp_path / "t.txt"
    path.write_text(text * 50, encoding="utf-8")
    with open(path, encoding="utf-8") as f:
        assert list(gpt2.encode_iterable(f)) == gpt2.encode(text * 50)


def test_character_by_character_with_special_tokens(gpt2):
    doc = ("Hello world.\n\n" + ENDOFTEXT + "  x's <|endoftext|><|endoftext|>\n \n'll 123456 ") * 3
    want = gpt2.encode(doc, allowed_special="all")
    assert ENDOFTEXT not in gpt2.decode(want[:3]) and want.count(gpt2.special_tokens[ENDOFTEXT]) == 9
    assert list(gpt2.encode_iterable(list(doc), allowed_special="all")) == want
    assert list(gpt2.encode_iterable(list(doc), disallowed_special=())) == gpt2.encode(doc, disallowed_special=())


def test_a_disallowed_special_token_cut_in_two_still_raises(gpt2):
    with pytest.raises(ValueError, match="special token"):
        list(gpt2.encode_iterable(["a <|endof", "text|> b"]))
    with pytest.raises(ValueError, match="special token"):
        list(gpt2.encode_iterable(list("ab <|endoftext|> c")))


def test_bad_input_is_refused(gpt2):
    with pytest.raises(TypeError, match="use encode"):
        list(gpt2.encode_iterable("a string"))
    with pytest.raises(TypeError, match="strings"):
        list(gpt2.encode_iterable(["ok", b"bytes"]))
    with pytest.raises(ValueError, match="'all' or a set"):
        list(gpt2.encode_iterable(["x"], allowed_special=ENDOFTEXT))
    assert list(gpt2.encode_iterable([])) == [] and list(gpt2.encode_iterable(["", ""])) == []


PIECES = st.sampled_from(["a", "b", "Z", "é", "世", "👋🏽", "1", "23", " ", "  ", "\n", "\n\n", "\t", "\r\n",
                          "'", "'s", "'ll", "'RE", "!", "...", ",", ENDOFTEXT, FIM, "<|", "|>",
                          "<|endof", "text|>", " the", "don't"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(PIECES, max_size=40), seed=st.integers(0, 2**32 - 1), which=st.integers(0, 1))
def test_any_text_any_cuts(small_tokenizers, parts, seed, which):
    tok = small_tokenizers[which]
    text = "".join(parts)
    pieces = _random_pieces(text, random.Random(seed).randint(0, len(text) + 1), random.Random(seed))
    for allowed in ("all", {ENDOFTEXT}):
        want = tok.encode(text, allowed_special=allowed, disallowed_special=())
        assert list(tok.encode_iterable(pieces, allowed_special=allowed, disallowed_special=())) == want
    if ENDOFTEXT not in text and FIM not in text:
        assert list(tok.encode_iterable(pieces)) == tok.encode(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60), seed=st.integers(0, 2**32 - 1))
def test_any_unicode_matches_tiktoken(gpt2, text, seed):
    pieces = _random_pieces(text, random.Random(seed).randint(0, len(text) + 1), random.Random(seed))
    want = tiktoken.get_encoding("gpt2").encode(text, disallowed_special=())
    assert list(gpt2.encode_iterable(pieces, disallowed_special=())) == want


def _lines(lines, n_chars):
    """The ``lines``, over and over, until ``n_chars`` characters: never one string."""
    n = 0
    while n < n_chars:
        for line in lines:
            n += len(line)
            yield line


def _peak_bytes(shakespeare, stream):
    """Ids counted and the peak of memory allocated while encoding ``stream`` lazily.

    A fresh tokenizer whose chunk cache already holds Tiny Shakespeare's chunks (the cache is part
    of the tokenizer, not of the stream; other tests fill it with random chunks)."""
    tok = BPETokenizer.from_tiktoken("gpt2")
    tok.encode(shakespeare)
    tracemalloc.start()
    try:
        count = sum(1 for _ in tok.encode_iterable(stream))
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_text(shakespeare):
    count, peak = _peak_bytes(shakespeare, _lines(shakespeare.splitlines(keepends=True), 2_000_000))
    assert count > 600_000 and peak < 200_000, (count, peak)


@pytest.mark.slow
def test_memory_on_tens_of_megabytes(shakespeare):
    count, peak = _peak_bytes(shakespeare, _lines(shakespeare.splitlines(keepends=True), 20_000_000))
    assert count > 6_000_000 and peak < 200_000, (count, peak)
