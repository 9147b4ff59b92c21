"""The Chapter 7 checks accept the reference solutions and reject the usual mistakes."""
import pytest
import torch
import torch.nn.functional as F

from gptlib import sampling
from gptlib.exercises import ch07, run_check
from gptlib.sampling import (KVCache, LayerKVCache, StaticKVCache, StaticLayerKVCache,
                             next_token_probs, sample_next)

NEG_INF = float("-inf")


# ---- 7.1 the greedy loop and 7.6 / 7.9 the generation loop -------------------------------------
def loop(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_tokens=None,
         use_cache=True, generator=None, bug=None):
    """A generate written for these tests; ``bug`` names the one mistake it makes."""
    idx = torch.as_tensor(idx)
    one_d = idx.dim() == 1
    idx = idx[None] if one_d else idx
    prompt_len, bs = idx.size(1), model.config.block_size
    cache = KVCache(model.config.n_layer, bs) if use_cache and bug != "ignores_cache" else None
    stops = None
    if stop_tokens is not None:
        stops = torch.tensor([stop_tokens] if isinstance(stop_tokens, int) else list(stop_tokens))
    done = torch.zeros(idx.size(0), dtype=torch.bool)
    repeat = torch.zeros(idx.size(0), dtype=torch.long)
    context = idx
    was_training = model.training
    if bug != "no_eval":
        model.eval()
    with torch.no_grad():
        for step in range(max_new_tokens):
            if cache is not None:
                if bug == "cache_never_fills":
                    feed = idx[:, -1:]
                elif bug == "cache_whole_context":
                    feed = idx[:, -bs:]
                else:
                    feed = cache.next_input(idx)
            elif bug == "no_crop":
                feed = context
            elif bug == "crop_first":
                feed = context[:, :bs]
            else:
                feed = context[:, -bs:]
            if bug == "cache_not_passed":
                logits, _ = model(feed)
            else:
                logits, _ = model(feed, cache=cache)
            logits = logits[:, 0] if bug == "first_position" else logits[:, -1]
            if bug == "always_greedy":
                nxt = logits.argmax(-1)
            else:
                nxt = sample_next(logits, temperature, top_k, top_p,
                                  None if bug == "global_rng" else generator).view(-1)
            if stops is not None and bug != "ignores_stops":
                if bug != "no_repeat":
                    nxt = torch.where(done, repeat, nxt)
                hit = torch.isin(nxt, stops) & ~done
                repeat = torch.where(hit, nxt, repeat)
                done = done | hit
            idx = torch.cat([idx, nxt[:, None]], dim=1)
            if bug != "no_append":
                context = idx
            if stops is not None and bug != "ignores_stops":
                if bug == "stop_token_dropped" and bool(done.all()):
                    idx = idx[:, :-1]
                    break
                if bool(done.any() if bug == "stops_at_first_row" else done.all()):
                    break
    if bug != "no_restore":
        model.train(was_training)
    if bug == "no_append":
        idx = torch.cat([idx[:, :prompt_len]] + [idx[:, prompt_len:prompt_len + 1]] *
                        max_new_tokens, dim=1)
    return idx[0] if one_d else idx


def _generate_with(bug):
    def generate(model, idx, max_new_tokens, **kw):
        return loop(model, idx, max_new_tokens, bug=bug, **kw)
    generate.__name__ = f"generate_{bug}"
    return generate


def _greedy_with(bug):
    def greedy_loop(model, idx, max_new_tokens):
        return loop(model, idx, max_new_tokens, temperature=0, use_cache=False, bug=bug)
    greedy_loop.__name__ = f"greedy_loop_{bug}"
    return greedy_loop


generate_ref = _generate_with(None)
greedy_ref = _greedy_with(None)


# ---- 7.2 temperature ---------------------------------------------------------------------------
def temperature_ref(logits, temperature):
    if temperature == 0:
        keep = F.one_hot(logits.argmax(-1), logits.size(-1)).bool()
        return logits.masked_fill(~keep, NEG_INF)
    return logits / temperature


def temperature_multiplied(logits, temperature):
    return temperature_ref(logits, 0) if temperature == 0 else logits * temperature


def temperature_divides_by_zero(logits, temperature):
    return logits / temperature


def temperature_python_division(logits, temperature):
    return logits * (1 / temperature)


def temperature_returns_probs(logits, temperature):
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).float()
    return F.softmax(logits / temperature, dim=-1)


def temperature_zero_one_hot(logits, temperature):
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).to(logits.dtype)
    return logits / temperature


def temperature_ties_spread(logits, temperature):
    if temperature == 0:
        return logits.masked_fill(logits < logits.max(-1, keepdim=True).values, NEG_INF)
    return logits / temperature


def temperature_in_place(logits, temperature):
    return temperature_ref(logits, 0) if temperature == 0 else logits.div_(temperature)


# ---- 7.3 top-k ---------------------------------------------------------------------------------
def top_k_ref(logits, k):
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order[..., :k], True)
    return logits.masked_fill(~keep, NEG_INF)


def top_k_plus_one(logits, k):
    return top_k_ref(logits, min(k + 1, logits.size(-1)))


def top_k_threshold_keeps_ties(logits, k):
    kth = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_k_smallest(logits, k):
    return logits.masked_fill(~torch.isfinite(top_k_ref(-logits, k)), NEG_INF)


def top_k_ties_high_ids(logits, k):
    return top_k_ref(logits.flip(-1), k).flip(-1)


def top_k_zero_not_inf(logits, k):
    return top_k_ref(logits, k).nan_to_num(neginf=0.0)


def top_k_topk_crashes(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return top_k_ref(logits, k) if kth is not None else None


def top_k_returns_probs(logits, k):
    return F.softmax(top_k_ref(logits, k), dim=-1)


def top_k_in_place(logits, k):
    drop = ~torch.isfinite(top_k_ref(logits, k))
    return logits.masked_fill_(drop, NEG_INF)


# ---- 7.4 top-p ---------------------------------------------------------------------------------
def top_p_ref(logits, p):
    if p >= 1:
        return logits
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def top_p_drops_crossing_token(logits, p):
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    drop = torch.zeros_like(sorted_probs, dtype=torch.bool).scatter(
        -1, order, sorted_probs.cumsum(-1) > p + 1e-6)
    return logits.masked_fill(drop, NEG_INF)


def top_p_unsorted(logits, p):
    probs = F.softmax(logits, dim=-1)
    return logits.masked_fill((probs.cumsum(-1) - probs) >= p, NEG_INF)


def top_p_no_shortcut_for_one(logits, p):
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= p
    return logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), NEG_INF)


def top_p_in_place(logits, p):
    return logits.masked_fill_(~torch.isfinite(top_p_ref(logits, p)), NEG_INF)


def top_p_zero_not_inf(logits, p):
    return top_p_ref(logits, p).nan_to_num(neginf=0.0)


def top_p_softmax_wrong_axis(logits, p):
    probs = F.softmax(logits, dim=0)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= p
    return logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), NEG_INF)


# ---- 7.5 the sampling distribution ---------------------------------------------------------------
def probs_ref(logits, temperature=1.0, top_k=None, top_p=None):
    z = temperature_ref(logits.float(), temperature)
    z = z if top_k is None else top_k_ref(z, top_k)
    z = z if top_p is None else top_p_ref(z, top_p)
    return F.softmax(z, dim=-1)


def probs_top_p_first(logits, temperature=1.0, top_k=None, top_p=None):
    z = temperature_ref(logits.float(), temperature)
    z = z if top_p is None else top_p_ref(z, top_p)
    z = z if top_k is None else top_k_ref(z, top_k)
    return F.softmax(z, dim=-1)


def probs_temperature_last(logits, temperature=1.0, top_k=None, top_p=None):
    z = logits.float()
    z = z if top_k is None else top_k_ref(z, top_k)
    z = z if top_p is None else top_p_ref(z, top_p)
    return F.softmax(temperature_ref(z, temperature), dim=-1)


def probs_no_softmax(logits, temperature=1.0, top_k=None, top_p=None):
    z = temperature_ref(logits.float(), temperature)
    z = z if top_k is None else top_k_ref(z, top_k)
    return z if top_p is None else top_p_ref(z, top_p)


def probs_filters_always(logits, temperature=1.0, top_k=None, top_p=None):
    return F.softmax(top_p_ref(top_k_ref(temperature_ref(logits.float(), temperature), top_k),
                               top_p), dim=-1)


def probs_keeps_dtype(logits, temperature=1.0, top_k=None, top_p=None):
    return probs_ref(logits, temperature, top_k, top_p).to(logits.dtype)


# ---- 7.7 the layer's cache ---------------------------------------------------------------------
class LayerNeverAdvances(LayerKVCache):
    def update(self, k, v):
        length = self.length
        out = super().update(k, v)
        self.length = length
        return out


class LayerWritesAtZero(LayerKVCache):
    def update(self, k, v):
        length = self.length
        self.length = 0
        super().update(k, v)
        self.length = length + k.size(2)
        return self.keys[:, :, :self.length], self.values[:, :, :self.length]


class LayerReturnsWholeBuffer(LayerKVCache):
    def update(self, k, v):
        super().update(k, v)
        return self.keys, self.values


class LayerAllocatesOnce(LayerKVCache):
    def update(self, k, v):
        if self.keys is None:
            shape = (k.size(0), k.size(1), self.capacity, k.size(3))
            self.keys, self.values = k.new_empty(shape), v.new_empty(shape)
        start, end = self.length, self.length + k.size(2)
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class LayerConcatenatesForever(LayerKVCache):
    def update(self, k, v):
        if self.keys is None:
            self.keys, self.values = k, v
        else:
            self.keys, self.values = torch.cat([self.keys, k], 2), torch.cat([self.values, v], 2)
        self.length += k.size(2)
        return self.keys, self.values


class LayerStoresFloat32(LayerKVCache):
    def update(self, k, v):
        keys, values = super().update(k.float(), v.float())
        return keys, values


class LayerNoOverflowCheck(LayerKVCache):
    def _check_room(self, T):
        pass


# ---- 7.8 the cache's bookkeeping ---------------------------------------------------------------
class CacheLengthSums(KVCache):
    def __len__(self):
        return sum(layer.length for layer in self.layers)


class CacheResetsFirstLayer(KVCache):
    def reset(self):
        self.layers[0].length = 0


class CacheNeverRefills(KVCache):
    def next_input(self, idx):
        return idx[:, -self.capacity:] if len(self) == 0 else idx[:, -1:]


class CacheRefillsFromTheStart(KVCache):
    def next_input(self, idx):
        if len(self) in (0, self.capacity):
            self.reset()
            return idx[:, :self.capacity]
        return idx[:, -1:]


class CacheFillsUncropped(KVCache):
    def next_input(self, idx):
        if len(self) in (0, self.capacity):
            self.reset()
            return idx
        return idx[:, -1:]


class CacheCountsKeysOnly(KVCache):
    def nbytes(self):
        return sum(layer.keys.numel() * layer.keys.element_size() for layer in self.layers
                   if layer.keys is not None)


# ---- 7.10 count the work -----------------------------------------------------------------------
def tokens_fed_ref(prompt_len, n_new, block_size, use_cache):
    if not use_cache:
        return sum(min(prompt_len + i, block_size) for i in range(n_new))
    total, cached = 0, 0
    for i in range(n_new):
        if cached in (0, block_size):
            cached = min(prompt_len + i, block_size)
            total += cached
        else:
            cached += 1
            total += 1
    return total


def tokens_fed_no_crop(prompt_len, n_new, block_size, use_cache):
    if not use_cache:
        return sum(prompt_len + i for i in range(n_new))
    return tokens_fed_ref(prompt_len, n_new, block_size, use_cache)


def tokens_fed_no_refill(prompt_len, n_new, block_size, use_cache):
    if use_cache:
        return min(prompt_len, block_size) + max(n_new - 1, 0)
    return tokens_fed_ref(prompt_len, n_new, block_size, use_cache)


def tokens_fed_squared(prompt_len, n_new, block_size, use_cache):
    return n_new if use_cache else n_new * n_new // 2


# ---- 7.11 a cache of fixed shape ---------------------------------------------------------------
def _static_with(layer_cls):
    """A StaticKVCache whose layers are ``layer_cls``."""
    class Cache(StaticKVCache):
        def __init__(self, n_layer, capacity, batch, n_head, head_size, dtype=torch.float32,
                     device=None):
            self.capacity = capacity
            self.layers = [layer_cls(capacity, batch, n_head, head_size, dtype, device)
                           for _ in range(n_layer)]
    Cache.__name__ = f"StaticKVCache_{layer_cls.__name__}"
    return Cache


class StaticAllocatesLazily(LayerKVCache):
    def __init__(self, capacity, batch, n_head, head_size, dtype=torch.float32, device=None):
        super().__init__(capacity)


class StaticConcatenates(StaticLayerKVCache):
    def update(self, k, v):
        keys = torch.cat([self.keys[:, :, :self.length], k], 2)
        values = torch.cat([self.values[:, :, :self.length], v], 2)
        self.keys[:, :, :keys.size(2)], self.values[:, :, :keys.size(2)] = keys, values
        self.keys = self.keys.clone()
        self.values = self.values.clone()
        self.length = keys.size(2)
        return keys, values


class StaticBroadcasts(StaticLayerKVCache):
    def update(self, k, v):
        self._check_room(k.size(2))
        start, end = self.length, self.length + k.size(2)
        self.keys[:, :, start:end], self.values[:, :, start:end] = k, v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class StaticVisibleStrict(StaticLayerKVCache):
    def visible(self, T):
        return torch.arange(self.capacity)[None, :] < (self.length + torch.arange(T))[:, None]


class StaticVisibleIgnoresLength(StaticLayerKVCache):
    def visible(self, T):
        return torch.arange(self.capacity)[None, :] <= torch.arange(T)[:, None]


class StaticVisibleNotCausal(StaticLayerKVCache):
    def visible(self, T):
        return (torch.arange(self.capacity) < self.length + T)[None].expand(T, -1)


class StaticForModelHeadSize(StaticKVCache):
    @classmethod
    def for_model(cls, model, batch):
        c = model.config
        return cls(c.n_layer, c.block_size, batch, c.n_head, c.n_embd, model.lm_head.weight.dtype)


class StaticForModelFloat32(StaticKVCache):
    @classmethod
    def for_model(cls, model, batch):
        c = model.config
        return cls(c.n_layer, c.block_size, batch, c.n_head, c.n_embd // c.n_head)


# ---- the table ---------------------------------------------------------------------------------
PASSING = [("7.1", greedy_ref), ("7.1", ch07.greedy_loop),
           ("7.2", temperature_ref), ("7.2", sampling.apply_temperature),
           ("7.3", top_k_ref), ("7.3", sampling.top_k_filter),
           ("7.4", top_p_ref), ("7.4", sampling.top_p_filter),
           ("7.5", probs_ref), ("7.5", next_token_probs),
           ("7.6", generate_ref), ("7.6", sampling.generate),
           ("7.7", LayerKVCache), ("7.8", KVCache),
           ("7.9", generate_ref), ("7.9", sampling.generate),
           ("7.10", tokens_fed_ref), ("7.11", StaticKVCache)]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("7.1", _greedy_with("first_position"), "first position"),
    ("7.1", _greedy_with("crop_first"), "*first*"),
    ("7.1", _greedy_with("no_crop"), "Crop the context"),
    ("7.1", _greedy_with("no_append"), "append it"),
    ("7.2", temperature_multiplied, "multiplied"),
    ("7.2", temperature_divides_by_zero, "divides by zero"),
    ("7.2", temperature_python_division, "divided by zero"),
    ("7.2", temperature_returns_probs, "returned probabilities"),
    ("7.2", temperature_zero_one_hot, "one-hot probability"),
    ("7.2", temperature_ties_spread, "first of them"),
    ("7.2", temperature_in_place, "in-place"),
    ("7.3", top_k_plus_one, "off by one"),
    ("7.3", top_k_threshold_keeps_ties, "tie at the k-th place"),
    ("7.3", top_k_smallest, "*largest*"),
    ("7.3", top_k_ties_high_ids, "lower token ids"),
    ("7.3", top_k_zero_not_inf, "not 0"),
    ("7.3", top_k_topk_crashes, "every token is kept"),
    ("7.3", top_k_returns_probs, "returned probabilities"),
    ("7.3", top_k_in_place, "in-place"),
    ("7.4", top_p_drops_crossing_token, "crosses the threshold"),
    ("7.4", top_p_unsorted, "Sort the tokens"),
    ("7.4", top_p_no_shortcut_for_one, "p >= 1 keeps everything"),
    ("7.4", top_p_in_place, "in-place"),
    ("7.4", top_p_zero_not_inf, "not 0"),
    ("7.4", top_p_softmax_wrong_axis, "row by row"),
    ("7.5", probs_top_p_first, "top-p before top-k"),
    ("7.5", probs_temperature_last, "temperature first"),
    ("7.5", probs_no_softmax, "end with a softmax"),
    ("7.5", probs_filters_always, "mean no filter"),
    ("7.5", probs_keeps_dtype, "float32"),
    ("7.6", _generate_with("first_position"), "first position"),
    ("7.6", _generate_with("crop_first"), "*first*"),
    ("7.6", _generate_with("no_crop"), "Crop the context"),
    ("7.6", _generate_with("no_append"), "append it"),
    ("7.6", _generate_with("global_rng"), "same seed"),
    ("7.6", _generate_with("always_greedy"), "greedy text"),
    ("7.6", _generate_with("ignores_stops"), "stop once every row is done"),
    ("7.6", _generate_with("no_repeat"), "repeat that token"),
    ("7.6", _generate_with("stops_at_first_row"), "*every* row"),
    ("7.6", _generate_with("stop_token_dropped"), "yield it, then stop"),
    ("7.6", _generate_with("no_eval"), "eval mode (model.eval())"),
    ("7.6", _generate_with("no_restore"), "left in eval mode"),
    ("7.7", LayerNeverAdvances, "advance self.length"),
    ("7.7", LayerWritesAtZero, "earlier positions first"),
    ("7.7", LayerReturnsWholeBuffer, "and no more"),
    ("7.7", LayerAllocatesOnce, "batch size or dtype changes"),
    ("7.7", LayerConcatenatesForever, "a reset"),
    ("7.7", LayerStoresFloat32, "in their own dtype"),
    ("7.7", LayerNoOverflowCheck, "would overflow"),
    ("7.8", CacheLengthSums, "not a sum"),
    ("7.8", CacheResetsFirstLayer, "empty every layer"),
    ("7.8", CacheNeverRefills, "return the last 5 tokens to refill it"),
    ("7.8", CacheRefillsFromTheStart, "return the last 5 tokens"),
    ("7.8", CacheFillsUncropped, "last 5 tokens to fill it"),
    ("7.8", CacheCountsKeysOnly, "keys and the values"),
    ("7.9", _generate_with("cache_not_passed"), "without the cache"),
    ("7.9", _generate_with("ignores_cache"), "without the cache"),
    ("7.9", _generate_with("cache_never_fills"), "tokens per step"),
    ("7.9", _generate_with("cache_whole_context"), "tokens per step"),
    ("7.10", tokens_fed_no_crop, "(the crop)"),
    ("7.10", tokens_fed_no_refill, "refills it"),
    ("7.10", tokens_fed_squared, "you counted"),
    ("7.11", _static_with(StaticAllocatesLazily), "allocate them in __init__"),
    ("7.11", _static_with(StaticConcatenates), "Write into the buffers in place"),
    ("7.11", _static_with(StaticBroadcasts), "broadcast a batch of 1"),
    ("7.11", _static_with(StaticVisibleStrict), "its own slot too"),
    ("7.11", _static_with(StaticVisibleIgnoresLength), "add length"),
    ("7.11", _static_with(StaticVisibleNotCausal), "causally among themselves"),
    ("7.11", StaticForModelHeadSize, "n_embd // n_head"),
    ("7.11", StaticForModelFloat32, "dtype (and device) of the model's weights"),
]


def _name(candidate):
    return getattr(candidate, "__name__", type(candidate).__name__)


@pytest.mark.parametrize("exercise_id, candidate", PASSING,
                         ids=[f"{e}-{c.__module__.split('.')[-1]}.{_name(c)}" for e, c in PASSING])
def test_reference_passes(exercise_id, candidate):
    result = run_check(exercise_id, candidate)
    assert result.status == "passed", result.message


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING,
                         ids=[f"{e}-{_name(c)}" for e, c, _ in FAILING])
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_every_exercise_of_the_chapter_is_tested():
    from gptlib.exercises import registry
    ids = {e for e in registry() if e.startswith("7.")}
    assert ids == {e for e, _ in PASSING} == {e for e, _, _ in FAILING}
    for e in ids:
        assert sum(1 for f, _, _ in FAILING if f == e) >= 2, e


def test_unfinished_exercise_is_not_done():
    """What the student notebook holds: the bodies raise NotImplementedError."""
    def todo(*args, **kwargs):
        raise NotImplementedError

    class TodoLayer(LayerKVCache):
        update = todo

    class TodoCache(KVCache):
        __len__ = reset = next_input = nbytes = todo

    class TodoStatic(StaticKVCache):
        __init__ = todo
    for ex in ("7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "7.9", "7.10"):
        assert run_check(ex, todo).status == "not done", ex
    assert run_check("7.7", TodoLayer).status == "not done"
    assert run_check("7.8", TodoCache).status == "not done"
    assert run_check("7.11", TodoStatic).status == "not done"
