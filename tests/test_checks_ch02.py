"""Chapter 2 checks: each reference passes and each typical mistake is rejected with its hint."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptlib.data import as_token_tensor, get_batch, iter_batches, train_val_split
from gptlib.embeddings import (INIT_STD, PositionalEmbedding, TokenEmbedding, one_hot_embed, position_similarity,
                               sinusoidal_encoding)
from gptlib.exercises import run_check
from gptlib.shards import plan_shards


# ---------------------------------------------------------------- 2.1 as_token_tensor
def _stream(floats=True, bools=True, dims=True, empty=True, negative=True, wrap=True, cast=True):
    """An as_token_tensor with one knob per rule it may forget."""
    def candidate(data):
        if not isinstance(data, torch.Tensor):
            try:
                data = torch.as_tensor(data if hasattr(data, "__array__") else list(data))
            except (TypeError, ValueError, RuntimeError) as err:
                if wrap:
                    raise ValueError("not a sequence of ints") from err
                raise
        if empty and data.numel() == 0:
            raise ValueError("empty")
        if (floats and data.is_floating_point()) or (bools and data.dtype == torch.bool):
            raise ValueError("integers")
        if dims and data.dim() != 1:
            raise ValueError("1-D")
        if negative and data.numel() and int(data.min()) < 0:
            raise ValueError(">= 0")
        return data.long() if cast else data
    return candidate


# ---------------------------------------------------------------- 2.2 train_val_split
def _split(n_train=lambda n, f: int(n * (1.0 - f)), order="train-first", copy=False,
           refuse=lambda n, k: k == 0 or k == n):
    def candidate(data, val_fraction=0.1):
        k = n_train(len(data), val_fraction)
        if refuse(len(data), k):
            raise ValueError("too few")
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


# ---------------------------------------------------------------- 2.3 get_batch
def _batch_with(start_high, shift=1, use_generator=True, use_device=True, too_short=lambda n, T: n <= T):
    """A get_batch whose starts come from randint(len(data) + start_high) and whose y is x shifted by `shift`;
    it refuses a stream of n tokens when too_short(n, block_size)."""
    def candidate(data, block_size, batch_size, generator=None, device=None):
        if too_short(len(data), block_size):
            raise ValueError("too short")
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


# ---------------------------------------------------------------- 2.4 iter_batches
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


# ---------------------------------------------------------------- 2.5 one-hot embedding
def _one_hot_ref(idx, weight):
    return F.one_hot(idx, num_classes=weight.shape[0]).to(weight.dtype) @ weight


# ---------------------------------------------------------------- 2.6 the token table
class _EmbInitAfterSuper(TokenEmbedding):
    def __init__(self, vocab_size, n_embd, init_std=INIT_STD, **kwargs):
        nn.Embedding.__init__(self, vocab_size, n_embd, **kwargs)   # calls reset_parameters first
        self.init_std = init_std


class _EmbDefaultInit(TokenEmbedding):
    def reset_parameters(self):
        nn.Embedding.reset_parameters(self)                         # PyTorch's N(0, 1)


class _EmbConstantStd(TokenEmbedding):
    def reset_parameters(self):
        nn.init.normal_(self.weight, std=INIT_STD)


class _EmbUniform(TokenEmbedding):
    def reset_parameters(self):
        nn.init.uniform_(self.weight, -self.init_std, self.init_std)


class _EmbWrongSizes(TokenEmbedding):
    def __init__(self, vocab_size, n_embd, init_std=INIT_STD, **kwargs):
        self.init_std = init_std
        nn.Embedding.__init__(self, n_embd, vocab_size, **kwargs)


# ---------------------------------------------------------------- 2.7 learned positions
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


# ---------------------------------------------------------------- 2.8 sinusoidal
def _sinusoidal(swap=False, exponent="2i", divide=True, layout="interleave", use_base=True, odd=True):
    def candidate(block_size, n_embd, base=10000.0):
        if odd and n_embd % 2:
            raise ValueError("even")
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
    if n_embd % 2:
        raise ValueError("even")
    t = torch.arange(block_size, dtype=torch.float32)[:, None]
    angle = t / base ** (torch.arange(n_embd, dtype=torch.float32) / n_embd)
    table = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table


# ---------------------------------------------------------------- 2.9 similarity
def _similarity(normalize_dim=-1, transpose=False, detach=True, cast=True, ignore_flag=False):
    def candidate(weight, normalize=True):
        w = weight.detach() if detach else weight
        w = w.float() if cast else w
        if normalize or ignore_flag:
            w = F.normalize(w, dim=normalize_dim)
        return w.T @ w if transpose else w @ w.T
    return candidate


# ---------------------------------------------------------------- 2.10 prefix pooling
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


# ---------------------------------------------------------------- 2.11 pack_documents, 2.12 plan_shards, 2.13 read_positions
def _plan_strictly_over(sizes, shard_size):
    plan, first, filled = [], 0, 0
    for k, size in enumerate(sizes):
        filled += size
        if filled > shard_size:
            plan.append((first, k + 1))
            first, filled = k + 1, 0
    if first < len(sizes):
        plan.append((first, len(sizes)))
    return plan


def _plan_drops_the_rest(sizes, shard_size):
    """The reference, less a last shard that never filled up."""
    plan = plan_shards(sizes, shard_size)
    return plan[:-1] if plan and sum(sizes[plan[-1][0]:]) < shard_size else plan


def _plan_empty_shard_first(sizes, shard_size):
    return [(0, 0)] + plan_shards(sizes, shard_size)
def _pack(where="between", skip_empty=False, listify=False):
    def candidate(documents, encode, eot_id):
        docs = list(documents) if listify else documents
        if listify:
            docs = [docs[k] for k in range(len(docs))]
        ids = []
        for k, doc in enumerate(docs):
            if skip_empty and not doc:
                continue
            if where == "before" or (where == "between" and k > 0):
                ids.append(eot_id)
            ids.extend(encode(doc))
            if where == "after":
                ids.append(eot_id)
        return ids
    return candidate


def _pack_len(documents, encode, eot_id):           # len() fails on a generator
    return [i for k in range(len(documents)) for i in ([eot_id] if k else []) + list(encode(documents[k]))]


def _read(side="right", subtract=True, flatten=False):
    import numpy as np

    def candidate(shards, offsets, positions):
        shard = np.searchsorted(offsets, positions, side=side) - 1
        shard = np.clip(shard, 0, len(shards) - 1)
        out = np.empty(positions.shape, dtype=np.int64)
        for k in np.unique(shard):
            where = shard == k
            local = positions[where] - (offsets[k] if subtract else 0)
            out[where] = shards[k][np.clip(local, 0, max(len(shards[k]) - 1, 0))] if len(shards[k]) else 0
        return out.ravel() if flatten else out
    return candidate


# ---------------------------------------------------------------- the table
PASSING = [  # (exercise, candidate); the id names it
    pytest.param("2.1", _stream(), id="2.1-reference"),
    pytest.param("2.1", as_token_tensor, id="2.1-library"),
    pytest.param("2.2", _split(), id="2.2-reference"),
    pytest.param("2.2", train_val_split, id="2.2-library"),
    pytest.param("2.3", _batch_with(0), id="2.3-reference"),
    pytest.param("2.3", get_batch, id="2.3-library"),
    pytest.param("2.4", _iter(), id="2.4-reference"),
    pytest.param("2.4", iter_batches, id="2.4-library"),
    pytest.param("2.5", _one_hot_ref, id="2.5-reference"),
    pytest.param("2.5", one_hot_embed, id="2.5-library"),
    pytest.param("2.5", lambda idx, w: (idx[..., None] == torch.arange(w.shape[0])).to(w.dtype) @ w,
                 id="2.5-by-comparison"),
    pytest.param("2.6", TokenEmbedding, id="2.6-library"),
    pytest.param("2.7", _Positions, id="2.7-reference"),
    pytest.param("2.7", PositionalEmbedding, id="2.7-library"),
    pytest.param("2.8", _sinusoidal(), id="2.8-reference"),
    pytest.param("2.8", sinusoidal_encoding, id="2.8-library"),
    pytest.param("2.9", _similarity(), id="2.9-reference"),
    pytest.param("2.9", position_similarity, id="2.9-library"),
    pytest.param("2.10", _pool(), id="2.10-reference"),
    pytest.param("2.10", _pool_loop, id="2.10-loop"),
    pytest.param("2.11", _pack(), id="2.11-reference"),
    pytest.param("2.12", plan_shards, id="2.12-reference"),
    pytest.param("2.13", _read(), id="2.13-reference"),
]

FAILING = [  # (exercise, candidate, a phrase its hint must contain); the id names the mistake
    pytest.param("2.1", _stream(floats=False), "token ids are integers", id="2.1-accepts-floats"),
    pytest.param("2.1", _stream(bools=False), "a bool tensor", id="2.1-accepts-bools"),
    pytest.param("2.1", _stream(dims=False), "a stream is 1-D", id="2.1-accepts-2d"),
    pytest.param("2.1", _stream(empty=False), "there are no ids", id="2.1-accepts-empty"),
    pytest.param("2.1", _stream(negative=False), "token ids are >= 0", id="2.1-accepts-negative"),
    pytest.param("2.1", _stream(wrap=False), "turn the conversion's own error", id="2.1-conversion-error-leaks"),
    pytest.param("2.1", _stream(cast=False), "return torch.long", id="2.1-keeps-int16"),
    pytest.param("2.1", lambda data: torch.as_tensor(data).long(), "returned", id="2.1-no-checks"),
    pytest.param("2.2", _split(refuse=lambda n, k: False), "the training part would be empty",
                 id="2.2-empty-train-part"),
    pytest.param("2.2", _split(refuse=lambda n, k: k == 0), "rounds to 1.0", id="2.2-empty-val-part"),
    pytest.param("2.2", _split(order="val-first"), "validation part comes first", id="2.2-parts-swapped"),
    pytest.param("2.2", _head_is_val, "validation part comes first", id="2.2-head-held-out"),
    pytest.param("2.2", _shuffled_split, "no shuffling", id="2.2-shuffled"),
    pytest.param("2.2", _split(n_train=lambda n, f: round(n * (1 - f))), "rounds down", id="2.2-rounded"),
    pytest.param("2.2", _split(n_train=lambda n, f: n - int(n * f)), "rounds down", id="2.2-val-rounded-down"),
    pytest.param("2.2", _split(copy=True), "not copies", id="2.2-copies"),
    pytest.param("2.3", _batch_with(-1, shift=0), "y equals x", id="2.3-not-shifted"),
    pytest.param("2.3", _batch_with(-2, shift=2), "shifted by two tokens (off by one)",
                 id="2.3-shift-by-two"),
    pytest.param("2.3", _backward, "wrong way", id="2.3-backward-shift"),
    pytest.param("2.3", _batch_with(-1), "upper bound is exclusive", id="2.3-missing-last-window"),
    pytest.param("2.3", _batch_with(+1), "run past the end of data", id="2.3-windows-past-the-end"),
    pytest.param("2.3", _batch_with(0, use_generator=False), "generator=generator",
                 id="2.3-ignores-generator"),
    pytest.param("2.3", _strided, "contiguous window", id="2.3-non-contiguous"),
    pytest.param("2.3", _transposed, "shape (batch_size, block_size)", id="2.3-wrong-shapes"),
    pytest.param("2.3", _scaled_uniform, "use exactly that call", id="2.3-rand-times-range"),
    pytest.param("2.3", _batch_with(0, use_device=False), "move x and y", id="2.3-ignores-device"),
    pytest.param("2.3", _batch_with(0, too_short=lambda n, T: n < T), "len(data) < block_size + 1",
                 id="2.3-length-rule-off-by-one"),
    pytest.param("2.3", _batch_with(0, too_short=lambda n, T: n <= T + 1), "holds exactly one window",
                 id="2.3-length-rule-too-strict"),
    pytest.param("2.4", _iter(stride=1), "overlap", id="2.4-overlapping"),
    pytest.param("2.4", _iter(stop=lambda n, T: n - T - 1), "left it out", id="2.4-misses-last-window"),
    pytest.param("2.4", _iter(stop=lambda n, T: n - T + 1), "runs past the end of data",
                 id="2.4-window-past-the-end"),
    pytest.param("2.4", _iter(drop_last=True), "the windows that are left", id="2.4-drops-last-batch"),
    pytest.param("2.4", _iter(honour_max=False), "max_batches=2", id="2.4-ignores-max-batches"),
    pytest.param("2.5", lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]).to(w.dtype) @ w.T, "weight.T",
                 id="2.5-transposed"),
    pytest.param("2.5", lambda idx, w: F.one_hot(idx).to(w.dtype) @ w, "V = weight.shape[0]",
                 id="2.5-no-num-classes"),
    pytest.param("2.5", lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]) @ w,
                 "in weight's dtype", id="2.5-long-one-hot"),
    pytest.param("2.5", lambda idx, w: F.one_hot(idx, num_classes=w.shape[0]).float() @ w.float(),
                 "use .to(weight.dtype)", id="2.5-float32-cast"),
    pytest.param("2.5", lambda idx, w: (F.one_hot(idx, num_classes=w.shape[0]).to(w.dtype) @ w)
                 .reshape(-1, w.shape[1]), "idx.shape + (C,)", id="2.5-flattened"),
    pytest.param("2.6", _EmbInitAfterSuper, "before super().__init__", id="2.6-init-std-after-super"),
    pytest.param("2.6", _EmbDefaultInit, "PyTorch's default N(0, 1)", id="2.6-default-init"),
    pytest.param("2.6", _EmbConstantStd, "not the constant INIT_STD", id="2.6-constant-std"),
    pytest.param("2.6", _EmbUniform, "std init_std = 0.02", id="2.6-uniform"),
    pytest.param("2.6", _EmbWrongSizes, "one parameter, weight of shape", id="2.6-sizes-swapped"),
    pytest.param("2.7", _positions(start_used=False), "rows of positions 0 ..", id="2.7-ignores-start"),
    pytest.param("2.7", _positions(limit=">="), "may end exactly at the last row", id="2.7-limit-off-by-one"),
    pytest.param("2.7", _positions(limit=None), "raise ValueError", id="2.7-no-limit"),
    pytest.param("2.7", _positions(init="one"), "std init_std = 0.02", id="2.7-std-one"),
    pytest.param("2.7", _positions(init="constant"), "use self.init_std", id="2.7-ignores-init-std"),
    pytest.param("2.7", _positions(as_parameter=False), "nn.Parameter", id="2.7-not-a-parameter"),
    pytest.param("2.7", _positions(per_sequence=True), "not one copy per sequence", id="2.7-per-sequence"),
    pytest.param("2.7", _positions(detach=True), "keep their gradient", id="2.7-detached"),
    pytest.param("2.7", _PositionsOfBatchDim, "T is x.shape[1]", id="2.7-batch-dim-as-T"),
    pytest.param("2.7", _PositionsByTokenId, "not of the token ids", id="2.7-token-ids-as-positions"),
    pytest.param("2.8", _sinusoidal(odd=False), "odd", id="2.8-odd-n-embd"),
    pytest.param("2.8", lambda T, d, base=10000.0: _sinusoidal(odd=False)(T, d + d % 2, base)[:, :d], "odd",
                 id="2.8-odd-n-embd-cropped"),
    pytest.param("2.8", _sinusoidal(swap=True), "sin and cos are swapped", id="2.8-swapped"),
    pytest.param("2.8", _sinusoidal(exponent="i"), "you used i / n_embd", id="2.8-exponent-i"),
    pytest.param("2.8", _per_column_exponent, "you gave each column its own exponent", id="2.8-per-column"),
    pytest.param("2.8", _sinusoidal(divide=False), "you multiplied", id="2.8-multiplied"),
    pytest.param("2.8", _sinusoidal(layout="halves"), "not all sines then all cosines", id="2.8-halves"),
    pytest.param("2.8", _sinusoidal(use_base=False), "use the `base` argument", id="2.8-ignores-base"),
    pytest.param("2.8", lambda T, d, base=10000.0: sinusoidal_encoding(T, d)[:, : d // 2], "must have shape",
                 id="2.8-shape"),
    pytest.param("2.8", lambda T, d, base=10000.0: sinusoidal_encoding(T, d).long(), "float tensor",
                 id="2.8-dtype"),
    pytest.param("2.8", lambda T, d, base=10000.0: sinusoidal_encoding(T, d, base).double(), "float32 table",
                 id="2.8-float64"),
    pytest.param("2.8", lambda T, d, base=10000.0: sinusoidal_encoding(T, d) + 0.1, "row 0 (position 0)",
                 id="2.8-offset"),
    pytest.param("2.8", lambda T, d, base=10000.0: sinusoidal_encoding(T, d, base=1000.0),
                 f"sin(1) = {math.sin(1):.4f}", id="2.8-base"),
    pytest.param("2.9", _similarity(transpose=True), "w.T @ w", id="2.9-dimensions-not-positions"),
    pytest.param("2.9", _similarity(normalize_dim=0), "not each column", id="2.9-normalised-columns"),
    pytest.param("2.9", lambda w, normalize=True: _similarity()(w, normalize=False), "cosine similarities",
                 id="2.9-never-normalised"),
    pytest.param("2.9", _similarity(ignore_flag=True), "plain dot products", id="2.9-always-normalised"),
    pytest.param("2.9", _similarity(detach=False), "without gradient", id="2.9-keeps-gradient"),
    pytest.param("2.9", _similarity(cast=False), "float32", id="2.9-float64"),
    pytest.param("2.10", _pool("full"), "pools the whole window", id="2.10-not-causal"),
    pytest.param("2.10", _pool("exclusive"), "NaN", id="2.10-excludes-token-t"),
    pytest.param("2.10", _pool("global-softmax"), "softmax over the prefix", id="2.10-softmax-over-window"),
    pytest.param("2.10", _pool("mean"), "equal weights", id="2.10-plain-mean"),
    pytest.param("2.10", lambda s, v: _pool()(s, v)[:, -1], "return (B, T, C)", id="2.10-last-row-only"),
    pytest.param("2.11", _pack("after"), "after the last", id="2.11-trailing-separator"),
    pytest.param("2.11", _pack("before"), "before the first", id="2.11-leading-separator"),
    pytest.param("2.11", _pack("none"), "separators", id="2.11-no-separator"),
    pytest.param("2.11", _pack(skip_empty=True), "empty document", id="2.11-drops-empty-documents"),
    pytest.param("2.11", _pack_len, "generator", id="2.11-uses-len"),
    pytest.param("2.12", _plan_strictly_over, "shard_size or more", id="2.12-strictly-over"),
    pytest.param("2.12", _plan_drops_the_rest, "exactly one shard", id="2.12-drops-the-tail"),
    pytest.param("2.12", _plan_empty_shard_first, "no shard may be empty", id="2.12-empty-first-shard"),
    pytest.param("2.13", _read(side="left"), "side='right'", id="2.13-searchsorted-left"),
    pytest.param("2.13", _read(subtract=False), "subtract the shard's offset", id="2.13-global-index-in-shard"),
    pytest.param("2.13", _read(flatten=True), "same shape", id="2.13-flattens-positions"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING)
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING)
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


@pytest.mark.parametrize("exercise_id", [f"2.{k}" for k in range(1, 14)])
def test_unsolved_exercises_report_not_done(exercise_id):
    def todo(*args, **kwargs):
        raise NotImplementedError
    assert run_check(exercise_id, todo).status == "not done"
