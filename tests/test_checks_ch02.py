"""Chapter 2 checks: each reference passes and each typical mistake is rejected with its hint."""
import math

import pytest
import torch
import torch.nn.functional as F

from gptlib.data import get_batch
from gptlib.embeddings import one_hot_embed, sinusoidal_encoding
from gptlib.exercises import run_check


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


def _backward(data, block_size, batch_size, generator=None):
    starts = 1 + torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in starts.tolist()])
    y = torch.stack([data[i - 1:i - 1 + block_size] for i in starts.tolist()])
    return x, y


def _strided(data, block_size, batch_size, generator=None):
    starts = torch.randint(len(data) - 2 * block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + 2 * block_size:2] for i in starts.tolist()])
    return x, x + 1


def _transposed(data, block_size, batch_size, generator=None):
    x, y = get_batch(data, block_size, batch_size, generator=generator)
    return x.T, y.T


# ---------------------------------------------------------------- 2.2 one-hot embedding
def _one_hot_ref(idx, weight):
    return F.one_hot(idx, num_classes=weight.shape[0]).to(weight.dtype) @ weight


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


# ---------------------------------------------------------------- the table
PASSING = [  # (exercise, candidate); the id names it
    pytest.param("2.1", _batch_with(0), id="2.1-reference"),
    pytest.param("2.1", get_batch, id="2.1-library"),
    pytest.param("2.2", _one_hot_ref, id="2.2-reference"),
    pytest.param("2.2", one_hot_embed, id="2.2-library"),
    pytest.param("2.3", _sinusoidal(), id="2.3-reference"),
    pytest.param("2.3", sinusoidal_encoding, id="2.3-library"),
]

FAILING = [  # (exercise, candidate, a phrase its hint must contain); the id names the mistake
    pytest.param("2.1", _batch_with(-1, shift=0), "y equals x", id="2.1-not-shifted"),
    pytest.param("2.1", _batch_with(-2, shift=2), "shifted by two tokens (off by one)",
                 id="2.1-shift-by-two"),
    pytest.param("2.1", _backward, "wrong way", id="2.1-backward-shift"),
    pytest.param("2.1", _batch_with(-1), "upper bound is exclusive", id="2.1-missing-last-window"),
    pytest.param("2.1", _batch_with(+1), "run past the end of data", id="2.1-windows-past-the-end"),
    pytest.param("2.1", _batch_with(0, use_generator=False), "generator=generator",
                 id="2.1-ignores-generator"),
    pytest.param("2.1", _strided, "contiguous window", id="2.1-non-contiguous"),
    pytest.param("2.1", _transposed, "shape (batch_size, block_size)", id="2.1-wrong-shapes"),
    pytest.param("2.2", lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]).to(w.dtype) @ w.T, "weight.T",
                 id="2.2-transposed"),
    pytest.param("2.2", lambda idx, w: F.one_hot(idx).to(w.dtype) @ w, "num_classes=weight.shape[0]",
                 id="2.2-no-num-classes"),
    pytest.param("2.2", lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]) @ w,
                 "convert the one-hot tensor to weight's dtype", id="2.2-long-one-hot"),
    pytest.param("2.2", lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]).float() @ w.float(),
                 "use .to(weight.dtype)", id="2.2-float32-cast"),
    pytest.param("2.2", lambda idx, w: (F.one_hot(idx, num_classes=w.shape[0]).to(w.dtype) @ w)
                 .reshape(-1, w.shape[1]), "idx.shape + (C,)", id="2.2-flattened"),
    pytest.param("2.3", _sinusoidal(swap=True), "sin and cos are swapped", id="2.3-swapped"),
    pytest.param("2.3", _sinusoidal(exponent="i"), "you used i / n_embd", id="2.3-exponent-i"),
    pytest.param("2.3", _per_column_exponent, "you gave each column its own exponent", id="2.3-per-column"),
    pytest.param("2.3", _sinusoidal(divide=False), "you multiplied", id="2.3-multiplied"),
    pytest.param("2.3", _sinusoidal(layout="halves"), "not all sines then all cosines", id="2.3-halves"),
    pytest.param("2.3", lambda T, d: sinusoidal_encoding(T, d)[:, : d // 2], "must have shape", id="2.3-shape"),
    pytest.param("2.3", lambda T, d: sinusoidal_encoding(T, d).long(), "float tensor", id="2.3-dtype"),
    pytest.param("2.3", lambda T, d: sinusoidal_encoding(T, d) + 0.1, "row 0 (position 0)", id="2.3-offset"),
    pytest.param("2.3", lambda T, d: sinusoidal_encoding(T, d, base=1000.0), f"sin(1) = {math.sin(1):.4f}",
                 id="2.3-base"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING)
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING)
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_unsolved_exercises_report_not_done():
    def todo(*args, **kwargs):
        raise NotImplementedError
    for eid in ("2.1", "2.2", "2.3"):
        assert run_check(eid, todo).status == "not done"
