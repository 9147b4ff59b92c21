"""gptlib.data: token streams, the train/validation split, random and sequential batches."""
import numpy as np
import pytest
import torch

from gptlib.data import as_token_tensor, encode_text, get_batch, iter_batches, train_val_split


class _Chars:
    """A minimal character tokenizer (the real one lives in gptlib.tokenizer)."""

    def __init__(self, text):
        self.chars = sorted(set(text))

    def encode(self, s):
        return [self.chars.index(c) for c in s]


def test_as_token_tensor_accepts_lists_arrays_tensors():
    for data in ([3, 1, 2], np.array([3, 1, 2], dtype=np.int32), torch.tensor([3, 1, 2], dtype=torch.int16)):
        out = as_token_tensor(data)
        assert out.dtype == torch.long and out.tolist() == [3, 1, 2]


@pytest.mark.parametrize("bad, phrase", [
    ([1.5, 2.0], "integers"),
    (torch.tensor([True, False]), "integers"),
    (torch.zeros(2, 3, dtype=torch.long), "1-D"),
    ([], "empty"),
    ([1, -2], ">= 0"),
    ("abc", "sequence of ints"),
])
def test_as_token_tensor_rejects_non_ids(bad, phrase):
    with pytest.raises(ValueError, match=phrase):
        as_token_tensor(bad)


def test_encode_text_with_a_char_tokenizer():
    tok = _Chars("hello world")
    out = encode_text("hello", tok)
    assert out.dtype == torch.long and out.tolist() == tok.encode("hello")


def test_train_val_split_is_deterministic_and_complete():
    data = torch.arange(1000)
    train, val = train_val_split(data, 0.1)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), data)
    assert torch.equal(train_val_split(data, 0.1)[1], val)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, "0.1"])
def test_train_val_split_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(torch.arange(100), fraction)


def test_train_val_split_rejects_too_little_data():
    with pytest.raises(ValueError, match="too few"):
        train_val_split(torch.arange(1), 0.1)


def test_get_batch_shapes_shift_and_windows():
    data = torch.arange(500, 600)
    x, y = get_batch(data, block_size=8, batch_size=32, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (32, 8) and x.dtype == y.dtype == torch.long
    assert torch.equal(y, x + 1)                           # data is arange: shift by one = +1
    starts = x[:, 0] - 500
    assert torch.equal(x, data[starts[:, None] + torch.arange(8)])
    assert x.is_contiguous() and y.is_contiguous()


def test_get_batch_is_reproducible_with_a_generator_and_covers_every_window():
    data = torch.arange(11)                                 # block_size 8: starts 0, 1, 2
    torch.manual_seed(0)
    a = get_batch(data, 8, 200, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(1)
    b = get_batch(data, 8, 200, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[0][:, 0].tolist()) == {0, 1, 2}
    assert a[1][:, -1].max().item() == 10                  # the last token is reachable as a target


def test_get_batch_device_and_smallest_stream():
    x, y = get_batch(torch.tensor([4, 5]), block_size=1, batch_size=3, device="cpu")
    assert x.tolist() == [[4]] * 3 and y.tolist() == [[5]] * 3


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(data=torch.arange(10), block_size=10, batch_size=2), "block_size \\+ 1"),
    (dict(data=torch.arange(10), block_size=12, batch_size=2), "block_size \\+ 1"),
    (dict(data=torch.arange(10), block_size=0, batch_size=2), "block_size must be a positive int"),
    (dict(data=torch.arange(10), block_size=2.0, batch_size=2), "block_size must be a positive int"),
    (dict(data=torch.arange(10), block_size=2, batch_size=0), "batch_size must be a positive int"),
    (dict(data=torch.rand(10), block_size=2, batch_size=2), "integers"),
    (dict(data=torch.arange(12).view(3, 4), block_size=2, batch_size=2), "1-D"),
    (dict(data=[1, 2, 3, 4], block_size=2, batch_size=2), "as_token_tensor"),
])
def test_get_batch_rejects_bad_input(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        get_batch(**kwargs)


def test_iter_batches_scores_every_target_once_in_order():
    data = torch.arange(103)
    batches = list(iter_batches(data, block_size=10, batch_size=4))
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert [len(x) for x, _ in batches] == [4, 4, 2]
    assert torch.equal(ys, xs + 1)
    assert torch.equal(xs.flatten(), torch.arange(100))
    assert len(list(iter_batches(data, 10, 4, max_batches=2))) == 2
    assert [x.tolist() for x, _ in iter_batches(data, 10, 4)] == [x.tolist() for x, _ in batches]


def test_iter_batches_rejects_bad_input():
    with pytest.raises(ValueError, match="block_size"):
        next(iter_batches(torch.arange(5), block_size=5, batch_size=2))
    with pytest.raises(ValueError, match="max_batches"):
        next(iter_batches(torch.arange(50), block_size=5, batch_size=2, max_batches=0))


def test_works_with_the_course_tokenizers(gpt2_tokenizer):
    tokenizer = pytest.importorskip("gptlib.tokenizer")
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
    for tok in (tokenizer.CharTokenizer(text), gpt2_tokenizer):
        data = encode_text(text, tok)
        train, val = train_val_split(data)
        x, y = get_batch(train, 8, 4, generator=torch.Generator().manual_seed(0))
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert int(data.max()) < tok.vocab_size
        assert tok.decode(data.tolist()) == text
