"""Training BPE on a corpus file (issue 19): ``file_pieces`` cuts a file right after special tokens,
``count_chunks`` counts the pieces in worker processes, ``BPETokenizer.train_file`` learns the
merges of ``train``, and ``python -m gptlib train-bpe`` writes a tokenizer that loads."""
import random
import tracemalloc
from collections import Counter

import pytest
import regex

from gptlib import tokenizer as T
from gptlib.tokenizer import ENDOFTEXT, BPETokenizer, chunk_counts, count_chunks, file_pieces

EOT = ENDOFTEXT
N = len(EOT.encode("utf-8"))          # 13 bytes


def write(tmp_path, text, name="corpus.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def piece_texts(path, pieces):
    raw = path.read_bytes()
    return [raw[a:b].decode("utf-8") for a, b in pieces]


def parts_of(text, specials):
    """The text split on the special tokens (longest first), written here without gptlib."""
    if not specials:
        return [text]
    return regex.split("|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)), text)


def whole_counts(text, specials=(EOT,)):
    counts = Counter()
    for part in parts_of(text, specials):
        counts.update(chunk_counts(part))
    return counts


def documents(rng, n):
    words = ["the", " cat", " sat", ".", "\n", "\n\n", "  ", " héllo", " 世界", " 👋🏽", "'ll", " 42", "!"]
    return ["".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def shakespeare_docs():
    from gptlib.datasets import DatasetUnavailableError, load_text
    try:
        text = load_text("tinyshakespeare")[:200_000]
    except DatasetUnavailableError as err:
        pytest.skip(f"Tiny Shakespeare unavailable offline: {err}")
    speeches = text.split("\n\n")
    return EOT.join("\n\n".join(speeches[k:k + 100]) for k in range(0, len(speeches), 100))


@pytest.fixture(scope="module")
def shakespeare_file(shakespeare_docs, tmp_path_factory):
    return write(tmp_path_factory.mktemp("corpus"), shakespeare_docs)


# ------------------------------------------------------------------ file_pieces
@pytest.mark.parametrize("block_size", range(1, 25))
def test_a_token_cut_by_a_block_boundary_is_found_whole(tmp_path, block_size):
    path = write(tmp_path, "abcd" + EOT + "efgh")       # the token is bytes 4..17 of 21
    want = [(0, 4 + N), (4 + N, 8 + N)] if block_size <= 4 + N else [(0, 8 + N)]
    assert list(file_pieces(path, [EOT], block_size)) == want


def test_a_file_without_the_token_is_one_piece(tmp_path):
    path = write(tmp_path, "no separator in here, 世界 <|endoftext| <|")
    assert list(file_pieces(path, [EOT], 4)) == [(0, path.stat().st_size)]
    assert list(file_pieces(path, [], 4)) == [(0, path.stat().st_size)]
    assert list(file_pieces(write(tmp_path, "", "empty.txt"), [EOT], 4)) == []


def test_tokens_at_the_start_and_the_end(tmp_path):
    path = write(tmp_path, EOT + "abc" + EOT)
    pieces = list(file_pieces(path, [EOT], 1))
    assert pieces == [(0, N), (N, 2 * N + 3)]          # no empty piece after the last token
    assert piece_texts(path, pieces) == [EOT, "abc" + EOT]


def test_empty_documents(tmp_path):
    path = write(tmp_path, EOT * 3 + "x" + EOT + EOT)
    pieces = list(file_pieces(path, [EOT], 1))
    assert piece_texts(path, pieces) == [EOT, EOT, EOT, "x" + EOT, EOT]
    assert list(file_pieces(path, [EOT], 2 * N)) == [(0, 2 * N), (2 * N, 4 * N + 1), (4 * N + 1, 5 * N + 1)]


@pytest.mark.parametrize("block_size", range(1, 14))
def test_multibyte_characters_across_block_boundaries(tmp_path, block_size):
    text = "é世👋🏽" * 4 + EOT + "👋é" * 3 + EOT + "世"
    path = write(tmp_path, text)
    pieces = list(file_pieces(path, [EOT], block_size))
    texts = piece_texts(path, pieces)                  # every piece is whole UTF-8
    assert "".join(texts) == text and len(texts) >= 2
    assert all(t.endswith(EOT) for t in texts[:-1])


def test_pieces_split_on_the_tokens_give_the_parts_of_the_whole_text(tmp_path):
    """Random texts and block sizes, several special tokens, one a prefix of another and one that
    overlaps itself ("xx" in "xxx"): the cuts must be where the whole text's split cuts."""
    rng = random.Random(19)
    alphabet = ["a", "x", "xx", "é", "👋", " ", "\n", EOT, "<|pad|>", "<|", "|>"]
    for _ in range(600):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        specials = rng.choice([[EOT], [EOT, "<|pad|>"], ["xx"], ["xx", "x"], ["x", "xx", EOT]])
        path = write(tmp_path, text)
        pieces = list(file_pieces(path, specials, rng.randint(1, 20)))
        texts = piece_texts(path, pieces)
        assert "".join(texts) == text and all(texts)
        parts = [p for t in texts for p in parts_of(t, specials)]
        assert [p for p in parts if p] == [p for p in parts_of(text, specials) if p], (text, specials)


def test_memory_stays_at_about_one_block(tmp_path):
    rng = random.Random(0)
    doc = "".join(rng.choice("abc de\n") for _ in range(1000))
    path = write(tmp_path, EOT.join([doc] * 8000))      # 8 MB
    tracemalloc.start()
    try:
        pieces = list(file_pieces(path, [EOT], 1 << 16))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(pieces) > 100 and pieces[-1][1] == path.stat().st_size
    assert peak < 1 << 20, f"file_pieces held {peak:,} bytes for 64 KiB blocks"


# ------------------------------------------------------------------ count_chunks
@pytest.mark.parametrize("workers", [1, 2])
def test_counts_of_the_pieces_are_the_counts_of_the_whole_text(tmp_path, workers):
    text = EOT.join(documents(random.Random(workers), 60))
    path = write(tmp_path, text)
    spans = [(path, a, b) for a, b in file_pieces(path, [EOT], 64)]
    assert len(spans) > 5
    want = whole_counts(text)
    assert count_chunks(spans, [EOT], workers=workers) == want
    assert count_chunks(piece_texts(path, [s[1:] for s in spans]), [EOT], workers=workers) == want
    assert count_chunks([text], [EOT]) == want and count_chunks([], [EOT], workers=workers) == Counter()


def test_blind_cuts_would_change_the_counts(tmp_path):
    """The check above can fail: pieces cut anywhere but right after a token count differently."""
    text = EOT.join(["the cat sat on the mat"] * 10)
    path = write(tmp_path, text)
    blind = [(path, a, min(a + 16, len(text))) for a in range(0, len(text), 16)]
    assert count_chunks(blind, [EOT]) != whole_counts(text)


# ------------------------------------------------------------------ train_file
@pytest.mark.parametrize("workers", [1, 2])
def test_train_file_learns_the_merges_of_train_on_shakespeare(shakespeare_docs, shakespeare_file, workers):
    vocab = 256 + 50 + 1
    want = BPETokenizer().train(shakespeare_docs, vocab, special_tokens=[EOT])
    size = shakespeare_file.stat().st_size
    got = BPETokenizer().train_file(shakespeare_file, vocab, special_tokens=[EOT], workers=workers,
                                    block_size=size // 8)
    assert len(got.merges) == 50 and got.merges == want.merges
    assert got.special_tokens == want.special_tokens == {EOT: 306}
    assert got.vocab == want.vocab


def test_train_file_on_a_file_without_the_token(tmp_path):
    text = "".join(documents(random.Random(3), 30))
    path = write(tmp_path, text)
    got = BPETokenizer().train_file(path, 256 + 20 + 1, workers=2, block_size=32)
    assert got.merges == BPETokenizer().train(text, 256 + 20 + 1, special_tokens=[EOT]).merges


def test_train_is_counting_then_train_from_counts():
    text = EOT.join(documents(random.Random(5), 40))
    want = BPETokenizer().train(text, 256 + 25 + 1, special_tokens=[EOT])
    got = BPETokenizer().train_from_counts(whole_counts(text), 256 + 25 + 1, special_tokens=[EOT])
    assert got.merges == want.merges and got.special_tokens == want.special_tokens
    ignored = BPETokenizer().train_from_counts(chunk_counts(text), 256 + 25 + 1, special_tokens=[EOT])
    assert ignored.merges != want.merges               # the counts are the only input


def test_train_file_warns_when_the_text_runs_out_of_pairs(tmp_path):
    path = write(tmp_path, "abab" + EOT + "ab")
    with pytest.warns(UserWarning, match="only supports"):
        tok = BPETokenizer().train_file(path, 400, workers=1)
    assert tok.vocab_size == 256 + len(tok.merges) + 1


# ------------------------------------------------------------------ bad input, refused before counting
@pytest.fixture
def no_counting(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was counted before the arguments were checked")
    monkeypatch.setattr(T, "count_chunks", refuse)


@pytest.mark.parametrize("kwargs, error, phrase", [
    (dict(vocab_size=200), ValueError, "smaller than the 256"),
    (dict(workers=0), ValueError, "workers must be a positive integer"),
    (dict(workers=-2), ValueError, "workers must be a positive integer"),
    (dict(workers=True), ValueError, "workers must be a positive integer"),
    (dict(special_tokens=[""]), ValueError, "non-empty string"),
    (dict(special_tokens=[EOT, ""]), ValueError, "non-empty string"),
    (dict(special_tokens=EOT), TypeError, "list of strings"),
    (dict(block_size=0), ValueError, "block_size must be a positive integer"),
])
def test_train_file_refuses_bad_arguments(tmp_path, no_counting, kwargs, error, phrase):
    path = write(tmp_path, "some text" + EOT + "more text")
    args = dict(vocab_size=300, workers=1) | kwargs
    with pytest.raises(error, match=phrase):
        BPETokenizer().train_file(path, **args)


def test_train_file_refuses_a_missing_file_or_a_folder(tmp_path, no_counting):
    for path in (tmp_path / "missing.txt", tmp_path):
        with pytest.raises(FileNotFoundError, match="not a file"):
            BPETokenizer().train_file(path, 300)
        with pytest.raises(FileNotFoundError, match="not a file"):
            file_pieces(path)                          # at the call, not at the first piece


def test_train_refuses_an_empty_special_token():
    with pytest.raises(ValueError, match="non-empty string"):
        BPETokenizer().train("abab", 300, special_tokens=[""])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_that_is_not_utf8_is_named_with_the_byte(tmp_path, workers):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("utf-8") + EOT.encode() + "café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not UTF-8 text: byte 21"):
        BPETokenizer().train_file(path, 300, workers=workers, block_size=4)


def test_count_chunks_refuses_bad_workers():
    with pytest.raises(ValueError, match="workers"):
        count_chunks(["text"], workers=0)


# ------------------------------------------------------------------ the command line
def test_command_line_writes_a_tokenizer_that_loads(tmp_path, capsys):
    from gptlib.__main__ import main
    text = EOT.join(documents(random.Random(7), 80))
    corpus = write(tmp_path, text)
    out = tmp_path / "out" / "bpe.json"
    assert main(["train-bpe", str(corpus), str(out), "--vocab-size", "300", "--workers", "2"]) == 0
    tok = BPETokenizer.load(out)
    assert tok.merges == BPETokenizer().train(text, 300, special_tokens=[EOT]).merges
    assert tok.special_tokens == {EOT: 299} and tok.vocab_size == 300
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("args, phrase", [
    (["--vocab-size", "100"], "smaller than the 256"),
    (["--vocab-size", "300", "--workers", "0"], "workers must be a positive integer"),
    ([], "--vocab-size"),
])
def test_command_line_refuses_bad_arguments(tmp_path, capsys, args, phrase):
    from gptlib.__main__ import main
    corpus = write(tmp_path, "some text" + EOT + "more")
    out = tmp_path / "bpe.json"
    with pytest.raises(SystemExit) as exit_:
        main(["train-bpe", str(corpus), str(out), *args])
    assert exit_.value.code == 2 and phrase in capsys.readouterr().err
    assert not out.exists()


def test_command_line_refuses_a_missing_corpus(tmp_path, capsys):
    from gptlib.__main__ import main
    with pytest.raises(SystemExit) as exit_:
        main(["train-bpe", str(tmp_path / "nope.txt"), str(tmp_path / "bpe.json"), "--vocab-size", "300"])
    assert exit_.value.code == 2 and "nope.txt is not a file" in capsys.readouterr().err
