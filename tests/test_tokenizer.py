"""gptlib.tokenizer: BPE training (naive == incremental), encoding, special tokens, save/load,
exact parity with tiktoken, and the character tokenizer."""
import json
import random

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlib.tokenizer import (ENDOFTEXT, GPT2_SPLIT_PATTERN, BPETokenizer, CharTokenizer, best_pair,
                              chunk_counts, count_pairs, merge, merges_from_ranks, train_merges,
                              train_merges_naive)

tiktoken = pytest.importorskip("tiktoken")

TRICKY = [
    "",
    "a",
    "Hello world! It's 2024 and I'll say: don't PANIC.",
    "emoji 👋🏽 👨‍👩‍👧 🇫🇷 🫠 and CJK 世界你好 日本語のテキスト 한국어",
    "combining: e\u0301 a\u0308\u0301 \u0915\u094d\u0937 and precomposed é ä",
    "whitespace   runs\t\t and\n\n\nnewlines    \n   end   ",
    "windows\r\nline\r\nendings\r\n\r\n",
    "digits 1234567890 3.14159 1,000,000 007 ١٢٣ ½",
    "  leading spaces and trailing ones   ",
    " " * 40 + "\n" * 5 + "\t" * 3,
    "'s 've 'LL 'RE ''' --- ... !!! ??? $$$",
    "ünïcödé ÅΩ ßæ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b\u200d\ufeff",
]


@pytest.fixture(scope="module")
def shakespeare():
    from gptlib.datasets import DatasetUnavailableError, load_text
    try:
        return load_text("tinyshakespeare")
    except DatasetUnavailableError as err:
        pytest.skip(f"Tiny Shakespeare unavailable offline: {err}")


@pytest.fixture(scope="module")
def trained(shakespeare):
    return BPETokenizer().train(shakespeare[:200_000], 512, special_tokens=[ENDOFTEXT])


@pytest.fixture(scope="module", params=["gpt2", "cl100k_base"])
def pair_of_encoders(request):
    return BPETokenizer.from_tiktoken(request.param), tiktoken.get_encoding(request.param)


# ------------------------------------------------------------------ basics
def test_count_pairs_counts_overlapping_pairs():
    assert count_pairs([5, 5, 5]) == {(5, 5): 2}
    assert count_pairs([1, 2, 1, 2, 3]) == {(1, 2): 2, (2, 1): 1, (2, 3): 1}
    assert count_pairs([]) == {} and count_pairs([4]) == {}
    table = count_pairs([1, 2], weight=3)
    assert count_pairs([1, 2, 1], table, weight=2) == {(1, 2): 5, (2, 1): 2}


def test_merge_scans_left_to_right_without_overlap():
    assert merge([5, 5, 5], (5, 5), 9) == [9, 5]
    assert merge([5, 5, 5, 5], (5, 5), 9) == [9, 9]
    assert merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge([2, 1], (1, 2), 9) == [2, 1]


def test_tie_break_rule_most_frequent_then_smallest_pair():
    assert best_pair({(3, 4): 2, (1, 9): 2, (0, 1): 1}) == (1, 9)
    assert best_pair({(0, 0): 1, (7, 7): 3}) == (7, 7)
    assert best_pair({(2, 5): 4, (2, 3): 4}) == (2, 3)


# ------------------------------------------------------------------ trainers agree
def _chunks(text):
    return [list(c.encode("utf-8")) for c in regex.findall(GPT2_SPLIT_PATTERN, text)]


@pytest.mark.parametrize("text", [
    "aaaaaaaa",                          # overlapping pairs, runs of one symbol
    "abababab cdcdcd abab",
    "low lower lowest; new newer newest",
    "ab ba ab ba aa bb",                 # many ties
    "x",
])
def test_incremental_trainer_learns_the_same_merges_as_the_naive_one(text):
    chunks = _chunks(text)
    words = {}
    for c in chunks:
        words[tuple(c)] = words.get(tuple(c), 0) + 1
    slow = train_merges_naive(chunks, 30)
    assert train_merges(words, 30) == slow
    assert train_merges(list(words.items()), 30) == slow


def test_trainers_agree_on_random_texts():
    rng = random.Random(0)
    for _ in range(30):
        text = "".join(rng.choice("ab c\nd") for _ in range(rng.randrange(1, 120)))
        chunks = _chunks(text)
        words = {}
        for c in chunks:
            words[tuple(c)] = words.get(tuple(c), 0) + 1
        assert train_merges(words, 25) == train_merges_naive(chunks, 25), text


def test_trainers_agree_on_shakespeare(shakespeare):
    sample = shakespeare[:20_000]
    chunks = _chunks(sample)
    words = {tuple(c.encode("utf-8")): n for c, n in chunk_counts(sample).items()}
    assert sum(words.values()) == len(chunks)
    assert train_merges(words, 40) == train_merges_naive(chunks, 40)


def test_naive_trainer_follows_the_tie_break_rule():
    # "ab" and "cd" both occur twice; (97, 98) < (99, 100), so "ab" is merged first.
    merges = train_merges_naive([list(b"cdab"), list(b"abcd")], 1)
    assert merges == [((97, 98), 256)]


# ------------------------------------------------------------------ training and encoding
def test_train_builds_the_vocabulary(trained):
    assert trained.vocab_size == 512
    assert len(trained.merges) == 255 and trained.special_tokens == {ENDOFTEXT: 511}
    assert trained.vocab[256] == trained.vocab[next(iter(trained.merges))[0]] + \
        trained.vocab[next(iter(trained.merges))[1]]
    ranks = list(trained.merges.values())
    assert ranks == list(range(256, 511))


def test_round_trip_on_corpus_and_unseen_text(trained, shakespeare):
    assert trained.decode(trained.encode(shakespeare[:50_000])) == shakespeare[:50_000]
    for text in TRICKY:
        assert trained.decode(trained.encode(text)) == text


def test_training_is_deterministic(shakespeare):
    a = BPETokenizer().train(shakespeare[:30_000], 300)
    b = BPETokenizer().train(shakespeare[:30_000], 300)
    assert a.merges == b.merges


def test_train_rejects_bad_arguments():
    with pytest.raises(TypeError, match="str"):
        BPETokenizer().train(b"bytes", 300)
    with pytest.raises(ValueError, match="smaller than the 256"):
        BPETokenizer().train("abc", 200)
    with pytest.warns(UserWarning, match="only supports"):
        tok = BPETokenizer().train("abab", 300)
    assert tok.vocab_size == 256 + len(tok.merges)


def test_special_tokens_are_cut_out_of_training():
    tok = BPETokenizer().train(f"ab{ENDOFTEXT}ab{ENDOFTEXT}" * 50, 258, special_tokens=[ENDOFTEXT])
    assert len(tok.merges) == 1
    assert all(b"<|" not in t and b"|>" not in t for t in tok.vocab.values())


def test_decode_joins_bytes_before_utf8(gpt2_tokenizer):
    ids = gpt2_tokenizer.encode("👋")
    assert len(ids) > 1                                    # the emoji is split over tokens
    assert gpt2_tokenizer.decode(ids) == "👋"
    assert gpt2_tokenizer.decode(ids[:1]) == "\ufffd"      # partial UTF-8 is replaced, no error
    with pytest.raises(ValueError, match="not in the vocabulary"):
        gpt2_tokenizer.decode([10**9])


def test_encode_rejects_non_text(gpt2_tokenizer):
    with pytest.raises(TypeError, match="str"):
        gpt2_tokenizer.encode(b"bytes")


# ------------------------------------------------------------------ special tokens
def test_special_tokens_need_permission(trained):
    doc = f"one{ENDOFTEXT}two"
    with pytest.raises(ValueError, match="special token"):
        trained.encode(doc)
    eot = trained.special_tokens[ENDOFTEXT]
    assert eot in trained.encode(doc, allowed_special={ENDOFTEXT})
    assert eot in trained.encode(doc, allowed_special="all")
    plain = trained.encode(doc, disallowed_special=())
    assert eot not in plain and trained.decode(plain) == doc
    with pytest.raises(ValueError, match="does not have"):
        trained.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="'all' or a set"):
        trained.encode(doc, allowed_special=ENDOFTEXT)


@pytest.mark.parametrize("allowed", [set(), "all", {"<|endoftext|>"}])
def test_special_tokens_match_tiktoken(pair_of_encoders, allowed):
    mine, ref = pair_of_encoders
    text = "a<|endoftext|>b <|endoftext|><|endoftext|>c"
    if allowed == set():
        with pytest.raises(ValueError):
            ref.encode(text)
        with pytest.raises(ValueError):
            mine.encode(text)
        assert mine.encode(text, disallowed_special=()) == ref.encode(text, disallowed_special=())
    else:
        assert mine.encode(text, allowed_special=allowed) == ref.encode(text, allowed_special=allowed)


# ------------------------------------------------------------------ save / load
def test_save_load_round_trip(tmp_path, trained):
    path = trained.save(tmp_path / "sub" / "tok.json")
    again = BPETokenizer.load(path)
    assert again.merges == trained.merges and again.special_tokens == trained.special_tokens
    text = f"Hello {ENDOFTEXT} world 👋"
    assert again.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]     # no temporary file left


def test_save_load_keeps_gpt2_permuted_bytes(tmp_path, gpt2_tokenizer):
    again = BPETokenizer.load(gpt2_tokenizer.save(tmp_path / "gpt2.json"))
    assert again.byte_ids == gpt2_tokenizer.byte_ids and again.pattern == gpt2_tokenizer.pattern
    assert again.encode(TRICKY[3]) == gpt2_tokenizer.encode(TRICKY[3])


@pytest.mark.parametrize("content, phrase", [
    ("{not json", "not valid JSON"),
    ("[]", "not a gptlib BPE tokenizer file"),
    (json.dumps({"format": "gptlib-bpe", "version": 99}), "version"),
    (json.dumps({"format": "gptlib-bpe", "version": 1, "pattern": "x"}), "lacks"),
    (json.dumps({"format": "gptlib-bpe", "version": 1, "pattern": GPT2_SPLIT_PATTERN,
                 "byte_ids": list(range(255)), "merges": [], "special_tokens": {}}), "256 distinct"),
    (json.dumps({"format": "gptlib-bpe", "version": 1, "pattern": GPT2_SPLIT_PATTERN,
                 "byte_ids": list(range(256)), "merges": [[1, 900, 256]], "special_tokens": {}}),
     "not defined"),
    (json.dumps({"format": "gptlib-bpe", "version": 1, "pattern": GPT2_SPLIT_PATTERN,
                 "byte_ids": list(range(256)), "merges": [[1, 2]], "special_tokens": {}}), "corrupt"),
    (json.dumps({"format": "gptlib-bpe", "version": 1, "pattern": GPT2_SPLIT_PATTERN,
                 "byte_ids": list(range(256)), "merges": [], "special_tokens": {"<|x|>": 5}}),
     "already taken"),
    (json.dumps({"format": "gptlib-bpe", "version": 1, "pattern": "(unclosed",
                 "byte_ids": list(range(256)), "merges": [], "special_tokens": {}}), "corrupt"),
])
def test_load_rejects_corrupt_files(tmp_path, content, phrase):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=phrase):
        BPETokenizer.load(path)


# ------------------------------------------------------------------ tiktoken parity
def test_gpt2_pattern_is_tiktokens():
    assert GPT2_SPLIT_PATTERN == tiktoken.get_encoding("gpt2")._pat_str


def test_from_tiktoken_vocabulary(pair_of_encoders):
    mine, ref = pair_of_encoders
    assert mine.vocab_size == ref.n_vocab
    assert sorted(mine.byte_ids) != mine.byte_ids or ref.name != "gpt2"   # gpt2's byte ids are permuted
    for i in (0, 1000, 30000):
        assert mine.vocab[i] == ref.decode_single_token_bytes(i)


@pytest.mark.parametrize("text", TRICKY)
def test_from_tiktoken_encodes_tricky_text_identically(pair_of_encoders, text):
    mine, ref = pair_of_encoders
    assert mine.encode(text) == ref.encode(text)
    assert mine.decode(mine.encode(text)) == text


def test_from_tiktoken_encodes_shakespeare_identically(pair_of_encoders, shakespeare):
    mine, ref = pair_of_encoders
    assert mine.encode(shakespeare) == ref.encode(shakespeare)


def test_merges_from_ranks_on_a_small_table():
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"abc": 257, b"xabc": 258})
    byte_ids, merges = merges_from_ranks(ranks)
    assert byte_ids == list(range(256))
    assert merges == [((97, 98), 256), ((256, 99), 257), ((120, 257), 258)]
    with pytest.raises(ValueError, match="single byte"):
        merges_from_ranks({b"a": 0})


# ------------------------------------------------------------------ property tests
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_round_trip_any_unicode_trained(trained, s):
    assert trained.decode(trained.encode(s, disallowed_special=())) == s


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_round_trip_and_parity_any_unicode_from_tiktoken(pair_of_encoders, s):
    mine, ref = pair_of_encoders
    ids = mine.encode(s, disallowed_special=())
    assert mine.decode(ids) == s
    assert ids == ref.encode(s, disallowed_special=())


# ------------------------------------------------------------------ characters
def test_char_tokenizer():
    tok = CharTokenizer("hello world")
    assert tok.chars == sorted(set("hello world")) and tok.vocab_size == 8
    assert tok.decode(tok.encode("low rod")) == "low rod"
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        tok.encode("zed")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([8])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")
    with pytest.raises(TypeError):
        CharTokenizer(["a"])


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_char_tokenizer_round_trip(s):
    tok = CharTokenizer(s)
    assert tok.decode(tok.encode(s)) == s
