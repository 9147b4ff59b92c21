"""Chapter 2 checks: each reference passes and each typical mistake is rejected with its hint."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptlib.data import get_batch, iter_batches, train_val_split
from gptlib.embeddings import PositionalEmbedding, one_hot_embed, position_similarity, sinusoidal_encoding
from gptlib.exercises import run_check


# ---------------------------------------------------------------- 2.1 train_val_split
def _split(n_train=lambda n, f: int(n * (1.0 - f)), order="train-first", copy=False):
    def candidate(data, val_fraction=0.1):
        k = n_train(len(data), val_fraction)
        head, tail = data[:k], data[k:]
        if copy:
            head, tail = head.clone(), tail.clone()
        return (head, tail) if order == "train-first" else (tail, head)
    return candidate


def _shuffled_split(data, val_fraction=0.1):
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    k = int(len(data) * (1 - val_fraction))
    return data[perm[:k]], data[perm[k:]]


def _head_is_val(data, val_fraction=0.1):
    k = len(data) - int(len(data) * (1 - val_fraction))
    return data[k:], data[:k]


# ---------------------------------------------------------------- 2.2 get_batch
def _batch_with(start_high, shift=1, use_generator=True, use_device=True):
    """A get_batch whose starts come from randint(len(data) + start_high) and whose y is x shifted by `shift`."""
    def candidate(data, block_size, batch_size, generator=None, device=None):
        g = generator if use_generator else None
        starts = torch.randint(len(data) - block_size + start_high, (batch_size,), generator=g)
        x = torch.stack([data[i:i + block_size] for i in starts.tolist()])
        y = torch.stack([data[i + shift:i + shift + block_size] for i in starts.tolist()])
        if device is not None and use_device:
            x, y = x.to(device), y.to(device)
        return x, y
    return candidate


def _backward(data, block_size, batch_size, generator=None, device=None):
    starts = 1 + torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in starts.tolist()])
    y = torch.stack([data[i - 1:i - 1 + block_size] for i in starts.tolist()])
    return x, y


def _strided(data, block_size, batch_size, generator=None, device=None):
    starts = torch.randint(len(data) - 2 * block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + 2 * block_size:2] for i in starts.tolist()])
    return x, x + 1


def _transposed(data, block_size, batch_size, generator=None, device=None):
    x, y = get_batch(data, block_size, batch_size, generator=generator)
    return x.T, y.T


def _scaled_uniform(data, block_size, batch_size, generator=None, device=None):
    starts = (torch.rand(batch_size, generator=generator) * (len(data) - block_size)).long()
    x = torch.stack([data[i:i + block_size] for i in starts.tolist()])
    return x, torch.stack([data[i + 1:i + block_size + 1] for i in starts.tolist()])


# ---------------------------------------------------------------- 2.3 iter_batches
def _iter(stop=lambda n, T: n - T, stride=None, drop_last=False, honour_max=True):
    def candidate(data, block_size, batch_size, max_batches=None, device=None):
        starts = torch.arange(0, stop(len(data), block_size), stride or block_size)
        for n, first in enumerate(range(0, len(starts), batch_size)):
            if honour_max and max_batches is not None and n >= max_batches:
                return
            chunk = starts[first:first + batch_size]
            if drop_last and len(chunk) < batch_size:
                return
            x = torch.stack([data[i:i + block_size] for i in chunk.tolist()])
            y = torch.stack([data[i + 1:i + block_size + 1] for i in chunk.tolist()])
            yield (x.to(device), y.to(device)) if device is not None else (x, y)
    return candidate


# ---------------------------------------------------------------- 2.4 one-hot embedding
def _one_hot_ref(idx, weight):
    return F.one_hot(idx, num_classes=weight.shape[0]).to(weight.dtype) @ weight


# ---------------------------------------------------------------- 2.5 learned positions
class _Positions(nn.Module):
    """A PositionalEmbedding with one knob per mistake."""
    start_used, limit, init, as_parameter, per_sequence, detach = True, ">", "init_std", True, False, False

    def __init__(self, block_size, n_embd, init_std=0.02):
        super().__init__()
        self.block_size, self.n_embd, self.init_std = block_size, n_embd, init_std
        table = torch.empty(block_size, n_embd)
        self.weight = nn.Parameter(table) if self.as_parameter else table
        std = {"init_std": init_std, "constant": 0.02, "one": 1.0}[self.init]
        with torch.no_grad():
            self.weight.normal_(0.0, std)

    def forward(self, x, start=0):
        T = x.shape[1]
        start = start if self.start_used else 0
        if (start + T > self.block_size) if self.limit == ">" else (start + T >= self.block_size) \
                if self.limit == ">=" else False:
            raise ValueError("too long")
        out = self.weight[start:start + T]
        out = out.detach() if self.detach else out
        return out.expand(x.shape[0], T, self.n_embd) if self.per_sequence else out


def _positions(**knobs):
    return type("Positions", (_Positions,), knobs)


class _PositionsOfBatchDim(_Positions):
    def forward(self, x, start=0):
        return self.weight[start:start + x.shape[0]]


class _PositionsByTokenId(_Positions):
    def forward(self, x, start=0):
        if start + x.shape[1] > self.block_size:
            raise ValueError("too long")
        return self.weight[x[0] % self.block_size] if x.dim() == 2 else self.weight[start:start + x.shape[1]]


# ---------------------------------------------------------------- 2.6 sinusoidal
def _sinusoidal(swap=False, exponent="2i", divide=True, layout="interleave", use_base=True):
    def candidate(block_size, n_embd, base=10000.0):
        base = base if use_base else 10000.0
        t = torch.arange(block_size, dtype=torch.float64)[:, None]
        two_i = torch.arange(0, n_embd, 2, dtype=torch.float64)
        e = {"2i": two_i, "i": two_i / 2}[exponent]
        scale = base ** (e / n_embd)
        angle = t / scale if divide else t * scale
        first, second = (torch.cos, torch.sin) if swap else (torch.sin, torch.cos)
        if layout == "halves":
            return torch.cat([first(angle), second(angle)], dim=1).float()
        table = torch.zeros(block_size, n_embd, dtype=torch.float64)
        table[:, 0::2], table[:, 1::2] = first(angle), second(angle)
        return table.float()
    return candidate


def _per_column_exponent(block_size, n_embd, base=10000.0):
    t = torch.arange(block_size, dtype=torch.float32)[:, None]
    angle = t / base ** (torch.arange(n_embd, dtype=torch.float32) / n_embd)
    table = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table


# ---------------------------------------------------------------- 2.7 similarity
def _similarity(normalize_dim=-1, transpose=False, detach=True, cast=True, ignore_flag=False):
    def candidate(weight, normalize=True):
        w = weight.detach() if detach else weight
        w = w.float() if cast else w
        if normalize or ignore_flag:
            w = F.normalize(w, dim=normalize_dim)
        return w.T @ w if transpose else w @ w.T
    return candidate


# ---------------------------------------------------------------- 2.8 prefix pooling
def _pool(mode="causal"):
    def candidate(scores, values):
        T = scores.shape[1]
        if mode == "full":
            w = scores.softmax(-1)[:, None, :].expand(-1, T, -1)
        elif mode == "exclusive":          # tokens j < t: row 0 pools nothing
            allowed = torch.ones(T, T, dtype=torch.bool).tril(-1)
            w = scores[:, None, :].masked_fill(~allowed, float("-inf")).softmax(-1)
        elif mode == "global-softmax":     # softmax over the window, then a running sum
            w = scores.softmax(-1)[:, None, :] * torch.ones(T, T).tril()
        elif mode == "mean":               # equal weights over the prefix
            w = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]
            w = w.expand(scores.shape[0], T, T)
        else:
            allowed = torch.ones(T, T, dtype=torch.bool).tril()
            w = scores[:, None, :].masked_fill(~allowed, float("-inf")).softmax(-1)
        return w @ values
    return candidate


def _pool_loop(scores, values):
    return torch.stack([(scores[:, :t + 1].softmax(-1)[..., None] * values[:, :t + 1]).sum(1)
                        for t in range(scores.shape[1])], dim=1)


# ---------------------------------------------------------------- the table
PASSING = [  # (exercise, candidate); the id names it
    pytest.param("2.1", _split(), id="2.1-reference"),
    pytest.param("2.1", train_val_split, id="2.1-library"),
    pytest.param("2.2", _batch_with(0), id="2.2-reference"),
    pytest.param("2.2", get_batch, id="2.2-library"),
    pytest.param("2.3", _iter(), id="2.3-reference"),
    pytest.param("2.3", iter_batches, id="2.3-library"),
    pytest.param("2.4", _one_hot_ref, id="2.4-reference"),
    pytest.param("2.4", one_hot_embed, id="2.4-library"),
    pytest.param("2.5", _Positions, id="2.5-reference"),
    pytest.param("2.5", PositionalEmbedding, id="2.5-library"),
    pytest.param("2.6", _sinusoidal(), id="2.6-reference"),
    pytest.param("2.6", sinusoidal_encoding, id="2.6-library"),
    pytest.param("2.7", _similarity(), id="2.7-reference"),
    pytest.param("2.7", position_similarity, id="2.7-library"),
    pytest.param("2.8", _pool(), id="2.8-reference"),
    pytest.param("2.8", _pool_loop, id="2.8-loop"),
]

FAILING = [  # (exercise, candidate, a phrase its hint must contain); the id names the mistake
    pytest.param("2.1", _split(order="val-first"), "validation part comes first", id="2.1-parts-swapped"),
    pytest.param("2.1", _head_is_val, "validation part comes first", id="2.1-head-held-out"),
    pytest.param("2.1", _shuffled_split, "no shuffling", id="2.1-shuffled"),
    pytest.param("2.1", _split(n_train=lambda n, f: round(n * (1 - f))), "rounds down", id="2.1-rounded"),
    pytest.param("2.1", _split(n_train=lambda n, f: n - int(n * f)), "rounds down", id="2.1-val-rounded-down"),
    pytest.param("2.1", _split(copy=True), "not copies", id="2.1-copies"),
    pytest.param("2.2", _batch_with(-1, shift=0), "y equals x", id="2.2-not-shifted"),
    pytest.param("2.2", _batch_with(-2, shift=2), "shifted by two tokens (off by one)",
                 id="2.2-shift-by-two"),
    pytest.param("2.2", _backward, "wrong way", id="2.2-backward-shift"),
    pytest.param("2.2", _batch_with(-1), "upper bound is exclusive", id="2.2-missing-last-window"),
    pytest.param("2.2", _batch_with(+1), "run past the end of data", id="2.2-windows-past-the-end"),
    pytest.param("2.2", _batch_with(0, use_generator=False), "generator=generator",
                 id="2.2-ignores-generator"),
    pytest.param("2.2", _strided, "contiguous window", id="2.2-non-contiguous"),
    pytest.param("2.2", _transposed, "shape (batch_size, block_size)", id="2.2-wrong-shapes"),
    pytest.param("2.2", _scaled_uniform, "use exactly that call", id="2.2-rand-times-range"),
    pytest.param("2.2", _batch_with(0, use_device=False), "move x and y", id="2.2-ignores-device"),
    pytest.param("2.3", _iter(stride=1), "overlap", id="2.3-overlapping"),
    pytest.param("2.3", _iter(stop=lambda n, T: n - T - 1), "left it out", id="2.3-misses-last-window"),
    pytest.param("2.3", _iter(stop=lambda n, T: n - T + 1), "runs past the end of data",
                 id="2.3-window-past-the-end"),
    pytest.param("2.3", _iter(drop_last=True), "the windows that are left", id="2.3-drops-last-batch"),
    pytest.param("2.3", _iter(honour_max=False), "max_batches=2", id="2.3-ignores-max-batches"),
    pytest.param("2.4", lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]).to(w.dtype) @ w.T, "weight.T",
                 id="2.4-transposed"),
    pytest.param("2.4", lambda idx, w: F.one_hot(idx).to(w.dtype) @ w, "num_classes=weight.shape[0]",
                 id="2.4-no-num-classes"),
    pytest.param("2.4", lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]) @ w,
                 "convert the one-hot tensor to weight's dtype", id="2.4-long-one-hot"),
    pytest.param("2.4", lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]).float() @ w.float(),
                 "use .to(weight.dtype)", id="2.4-float32-cast"),
    pytest.param("2.4", lambda idx, w: (F.one_hot(idx, num_classes=w.shape[0]).to(w.dtype) @ w)
                 .reshape(-1, w.shape[1]), "idx.shape + (C,)", id="2.4-flattened"),
    pytest.param("2.5", _positions(start_used=False), "rows of positions 0 ..", id="2.5-ignores-start"),
    pytest.param("2.5", _positions(limit=">="), "may end exactly at the last row", id="2.5-limit-off-by-one"),
    pytest.param("2.5", _positions(limit=None), "raise ValueError", id="2.5-no-limit"),
    pytest.param("2.5", _positions(init="one"), "std init_std = 0.02", id="2.5-std-one"),
    pytest.param("2.5", _positions(init="constant"), "use self.init_std", id="2.5-ignores-init-std"),
    pytest.param("2.5", _positions(as_parameter=False), "nn.Parameter", id="2.5-not-a-parameter"),
    pytest.param("2.5", _positions(per_sequence=True), "not one copy per sequence", id="2.5-per-sequence"),
    pytest.param("2.5", _positions(detach=True), "keep their gradient", id="2.5-detached"),
    pytest.param("2.5", _PositionsOfBatchDim, "T is x.shape[1]", id="2.5-batch-dim-as-T"),
    pytest.param("2.5", _PositionsByTokenId, "not of the token ids", id="2.5-token-ids-as-positions"),
    pytest.param("2.6", _sinusoidal(swap=True), "sin and cos are swapped", id="2.6-swapped"),
    pytest.param("2.6", _sinusoidal(exponent="i"), "you used i / n_embd", id="2.6-exponent-i"),
    pytest.param("2.6", _per_column_exponent, "you gave each column its own exponent", id="2.6-per-column"),
    pytest.param("2.6", _sinusoidal(divide=False), "you multiplied", id="2.6-multiplied"),
    pytest.param("2.6", _sinusoidal(layout="halves"), "not all sines then all cosines", id="2.6-halves"),
    pytest.param("2.6", _sinusoidal(use_base=False), "use the `base` argument", id="2.6-ignores-base"),
    pytest.param("2.6", lambda T, d, base=10000.0: sinusoidal_encoding(T, d)[:, : d // 2], "must have shape",
                 id="2.6-shape"),
    pytest.param("2.6", lambda T, d, base=10000.0: sinusoidal_encoding(T, d).long(), "float tensor",
                 id="2.6-dtype"),
    pytest.param("2.6", lambda T, d, base=10000.0: sinusoidal_encoding(T, d, base).double(), "float32 table",
                 id="2.6-float64"),
    pytest.param("2.6", lambda T, d, base=10000.0: sinusoidal_encoding(T, d) + 0.1, "row 0 (position 0)",
                 id="2.6-offset"),
    pytest.param("2.6", lambda T, d, base=10000.0: sinusoidal_encoding(T, d, base=1000.0),
                 f"sin(1) = {math.sin(1):.4f}", id="2.6-base"),
    pytest.param("2.7", _similarity(transpose=True), "w.T @ w", id="2.7-dimensions-not-positions"),
    pytest.param("2.7", _similarity(normalize_dim=0), "not each column", id="2.7-normalised-columns"),
    pytest.param("2.7", lambda w, normalize=True: _similarity()(w, normalize=False), "cosine similarities",
                 id="2.7-never-normalised"),
    pytest.param("2.7", _similarity(ignore_flag=True), "plain dot products", id="2.7-always-normalised"),
    pytest.param("2.7", _similarity(detach=False), "without gradient", id="2.7-keeps-gradient"),
    pytest.param("2.7", _similarity(cast=False), "float32", id="2.7-float64"),
    pytest.param("2.8", _pool("full"), "pools the whole window", id="2.8-not-causal"),
    pytest.param("2.8", _pool("exclusive"), "NaN", id="2.8-excludes-token-t"),
    pytest.param("2.8", _pool("global-softmax"), "softmax over the prefix", id="2.8-softmax-over-window"),
    pytest.param("2.8", _pool("mean"), "equal weights", id="2.8-plain-mean"),
    pytest.param("2.8", lambda s, v: _pool()(s, v)[:, -1], "return (B, T, C)", id="2.8-last-row-only"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING)
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING)
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


@pytest.mark.parametrize("exercise_id", ["2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8"])
def test_unsolved_exercises_report_not_done(exercise_id):
    def todo(*args, **kwargs):
        raise NotImplementedError
    assert run_check(exercise_id, todo).status == "not done"
