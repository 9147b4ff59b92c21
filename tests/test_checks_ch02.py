"""Chapter 2 checks: each reference passes and each typical mistake is rejected with its hint."""
import math

import pytest
import torch
import torch.nn.functional as F

from gptlib.data import get_batch
from gptlib.embeddings import one_hot_embed, sinusoidal_encoding
from gptlib.exercises import run_check


def _assert_fails(exercise_id, candidate, phrase):
    result = run_check(exercise_id, candidate)
    assert result.status == "failed", (result.status, result.message)
    assert phrase in result.message, result.message


# ---------------------------------------------------------------- 2.1 get_batch
def _batch_with(start_high, shift=1, use_generator=True):
    """A get_batch whose starts come from randint(len(data) + start_high) and whose y is x shifted by `shift`."""
    def candidate(data, block_size, batch_size, generator=None):
        g = generator if use_generator else None
        starts = torch.randint(len(data) - block_size + start_high, (batch_size,), generator=g)
        x = torch.stack([data[i:i + block_size] for i in starts.tolist()])
        y = torch.stack([data[i + shift:i + shift + block_size] for i in starts.tolist()])
        return x, y
    return candidate


def test_2_1_reference_and_library_pass():
    assert run_check("2.1", _batch_with(0)).status == "passed"
    assert run_check("2.1", get_batch).status == "passed"


@pytest.mark.parametrize("candidate, phrase", [
    (_batch_with(-1, shift=0), "y equals x"),                       # targets not shifted
    (_batch_with(-2, shift=2), "shifted by two tokens (off by one)"),
], ids=["not-shifted", "shift-by-two"])
def test_2_1_rejects_wrong_shifts(candidate, phrase):
    _assert_fails("2.1", candidate, phrase)


def test_2_1_rejects_backward_shift():
    def backward(data, block_size, batch_size, generator=None):
        starts = 1 + torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        x = torch.stack([data[i:i + block_size] for i in starts.tolist()])
        y = torch.stack([data[i - 1:i - 1 + block_size] for i in starts.tolist()])
        return x, y
    _assert_fails("2.1", backward, "wrong way")


def test_2_1_rejects_missing_last_window():
    _assert_fails("2.1", _batch_with(-1), "upper bound is exclusive")


def test_2_1_rejects_windows_past_the_end():
    _assert_fails("2.1", _batch_with(+1), "run past the end of data")


def test_2_1_rejects_ignoring_the_generator():
    _assert_fails("2.1", _batch_with(0, use_generator=False), "generator=generator")


def test_2_1_rejects_non_contiguous_windows():
    def strided(data, block_size, batch_size, generator=None):
        starts = torch.randint(len(data) - 2 * block_size, (batch_size,), generator=generator)
        x = torch.stack([data[i:i + 2 * block_size:2] for i in starts.tolist()])
        return x, x + 1
    _assert_fails("2.1", strided, "contiguous window")


def test_2_1_rejects_wrong_shapes():
    def transposed(data, block_size, batch_size, generator=None):
        x, y = get_batch(data, block_size, batch_size, generator=generator)
        return x.T, y.T
    _assert_fails("2.1", transposed, "shape (batch_size, block_size)")


# ---------------------------------------------------------------- 2.2 one-hot embedding
def test_2_2_reference_and_library_pass():
    def reference(idx, weight):
        return F.one_hot(idx, num_classes=weight.shape[0]).to(weight.dtype) @ weight
    assert run_check("2.2", reference).status == "passed"
    assert run_check("2.2", one_hot_embed).status == "passed"


@pytest.mark.parametrize("candidate, phrase", [
    (lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]).to(w.dtype) @ w.T, "weight.T"),
    (lambda idx, w: F.one_hot(idx).to(w.dtype) @ w, "num_classes=weight.shape[0]"),
    (lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]) @ w, "convert the one-hot tensor to weight's dtype"),
    (lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]).float() @ w.float(), "use .to(weight.dtype)"),
    (lambda idx, w: (F.one_hot(idx, num_classes=w.shape[0]).to(w.dtype) @ w).reshape(-1, w.shape[1]),
     "idx.shape + (C,)"),
], ids=["transposed", "no-num-classes", "long-one-hot", "float32-cast", "flattened"])
def test_2_2_rejects_mistakes(candidate, phrase):
    _assert_fails("2.2", candidate, phrase)


# ---------------------------------------------------------------- 2.3 sinusoidal
def _sinusoidal(swap=False, exponent="2i", divide=True, layout="interleave"):
    def candidate(block_size, n_embd):
        t = torch.arange(block_size, dtype=torch.float32)[:, None]
        two_i = torch.arange(0, n_embd, 2, dtype=torch.float32)
        e = {"2i": two_i, "i": two_i / 2}[exponent]
        scale = 10000 ** (e / n_embd)
        angle = t / scale if divide else t * scale
        first, second = (torch.cos, torch.sin) if swap else (torch.sin, torch.cos)
        if layout == "halves":
            return torch.cat([first(angle), second(angle)], dim=1)
        table = torch.zeros(block_size, n_embd)
        table[:, 0::2], table[:, 1::2] = first(angle), second(angle)
        return table
    return candidate


def _per_column_exponent(block_size, n_embd):
    t = torch.arange(block_size, dtype=torch.float32)[:, None]
    angle = t / 10000 ** (torch.arange(n_embd, dtype=torch.float32) / n_embd)
    table = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table


def test_2_3_reference_and_library_pass():
    assert run_check("2.3", _sinusoidal()).status == "passed"
    assert run_check("2.3", sinusoidal_encoding).status == "passed"


@pytest.mark.parametrize("candidate, phrase", [
    (_sinusoidal(swap=True), "sin and cos are swapped"),
    (_sinusoidal(exponent="i"), "you used i / n_embd"),
    (_per_column_exponent, "you gave each column its own exponent"),
    (_sinusoidal(divide=False), "you multiplied"),
    (_sinusoidal(layout="halves"), "not all sines then all cosines"),
    (lambda T, d: sinusoidal_encoding(T, d)[:, : d // 2], "must have shape"),
    (lambda T, d: sinusoidal_encoding(T, d).long(), "float tensor"),
    (lambda T, d: sinusoidal_encoding(T, d) + 0.1, "row 0 (position 0)"),
    (lambda T, d: sinusoidal_encoding(T, d, base=1000.0), f"sin(1) = {math.sin(1):.4f}"),
], ids=["swapped", "exponent-i", "per-column", "multiplied", "halves", "shape", "dtype", "offset", "base"])
def test_2_3_rejects_mistakes(candidate, phrase):
    _assert_fails("2.3", candidate, phrase)


def test_unsolved_exercises_report_not_done():
    def todo(*args, **kwargs):
        raise NotImplementedError
    for eid in ("2.1", "2.2", "2.3"):
        assert run_check(eid, todo).status == "not done"
