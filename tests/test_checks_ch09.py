"""The Chapter 9 checks accept the reference solutions, reject the usual mistakes (each with the
hint that names it), and say "not done" for a student's placeholder."""
import pytest
import torch
import torch.nn.functional as F

from gptlib import llama
from gptlib.exercises import run_check

REFERENCES = {"9.1": llama.RMSNorm, "9.2": llama.rope_cos_sin, "9.3": llama.apply_rope, "9.4": llama.SwiGLU,
              "9.5": llama.repeat_kv, "9.6": llama.LlamaAttention, "9.7": llama.LlamaBlock, "9.8": llama.Llama, "9.9": llama.Llama,
              "9.10": llama.kv_cache_bytes, "9.11": llama.RollingKVCache, "9.12": llama.matched_llama_config}


PASSING = sorted(REFERENCES.items())  # (exercise, reference)


@pytest.mark.parametrize("eid", sorted(REFERENCES))
def test_the_reference_passes(eid):
    assert run_check(eid, REFERENCES[eid]).status == "passed"


def _not_done(*args, **kwargs):
    raise NotImplementedError


class _NotDoneNorm(llama.RMSNorm):
    def forward(self, x):
        raise NotImplementedError


@pytest.mark.parametrize("eid, candidate", [
    ("9.1", _NotDoneNorm), ("9.2", _not_done), ("9.3", _not_done), ("9.5", _not_done), ("9.10", _not_done), ("9.12", _not_done)])
def test_a_placeholder_is_not_done(eid, candidate):
    assert run_check(eid, candidate).status == "not done"


FAILING = []       # (exercise, candidate, words its hint must contain; None: failed or crashed)
FAILING_IDS = []   # the test id of each row: exercise and mistake


def _mistakes(eid, cases):
    """Add ``{mistake: (candidate, words)}`` to FAILING."""
    for name, (candidate, words) in cases.items():
        FAILING.append((eid, candidate, words))
        FAILING_IDS.append(f"{eid}-{name}")


def _expect_failure(eid, candidate, words):
    result = run_check(eid, candidate)
    assert result.status in ("failed", "error"), (eid, result)
    if words:
        assert result.status == "failed" and words in result.message, result.message


# ---- 9.1 RMSNorm -------------------------------------------------------------------------------
def _norm(forward):
    return type("WrongNorm", (llama.RMSNorm,), {"forward": forward})


def _over_time_when_3d(self, x):
    dim = 1 if x.dim() == 3 else -1
    return self.weight * x * torch.rsqrt(x.pow(2).mean(dim, keepdim=True) + self.eps)


_mistakes("9.1", {
    "axis0": (_norm(lambda self, x: self.weight * x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + self.eps)),
              "last dimension"),
    "layernorm": (_norm(lambda self, x: self.weight * (x - x.mean(-1, keepdim=True)) * torch.rsqrt(
        (x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + self.eps)), "LayerNorm"),
    "eps-outside": (_norm(lambda self, x: self.weight * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)),
                    "inside the square root"),
    "no-weight": (_norm(lambda self, x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)), "self.weight"),
    "sum-not-mean": (_norm(lambda self, x: self.weight * x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + self.eps)),
                     None),
    "time-axis": (_norm(_over_time_when_3d), "time axis"),
})


# ---- 9.2 RoPE's angles -------------------------------------------------------------------------
def _angles(shift=0, exponent=2, layout="halves", fixed_theta=False):
    def rope_cos_sin(head_dim, start, T, theta=10000.0, device=None):
        theta = 10000.0 if fixed_theta else theta
        inv = 1.0 / theta ** (exponent * torch.arange(head_dim // 2).float() / head_dim)
        a = torch.outer(torch.arange(start + shift, start + shift + T).float(), inv)
        a = torch.cat([a, a], -1) if layout == "halves" else a.repeat_interleave(2, -1)
        return a.cos(), a.sin()
    return rope_cos_sin


_mistakes("9.2", {
    "start+1": (_angles(shift=1), "off by one"), "start-1": (_angles(shift=-1), "off by one"),
    "exponent": (_angles(exponent=1), "theta ** (-2i / head_dim)"), "interleaved": (_angles(layout="pairs"), "two halves"),
    "theta-ignored": (_angles(fixed_theta=True), "use theta"),
})


# ---- 9.3 the rotation --------------------------------------------------------------------------
def _neighbours(x, cos, sin):
    turned = torch.stack([-x[..., 1::2], x[..., ::2]], -1).flatten(-2)
    return x * cos + turned * sin


def _half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def _in_place(x, cos, sin):
    x.copy_(x * cos + _half(x) * sin)
    return x


_mistakes("9.3", {
    "neighbour-pairs": (_neighbours, "not neighbours"),
    "wrong-direction": (lambda x, cos, sin: x * cos - _half(x) * sin, "wrong way"),
    "cos-sin-swapped": (lambda x, cos, sin: x * sin + _half(x) * cos, "swapped"),
    "in-place": (_in_place, "in place"),
    "no-sin": (lambda x, cos, sin: x * cos, None),
})


# ---- 9.4 SwiGLU --------------------------------------------------------------------------------
def _mlp(forward):
    return type("WrongSwiGLU", (llama.SwiGLU,), {"forward": forward})


class _BiasedSwiGLU(llama.SwiGLU):
    def __init__(self, n_embd, hidden_dim):
        super().__init__(n_embd, hidden_dim, bias=True)


_mistakes("9.4", {
    "gelu": (_mlp(lambda s, x: s.down_proj(F.gelu(s.gate_proj(x)) * s.up_proj(x))), "not GELU"),
    "silu-on-up": (_mlp(lambda s, x: s.down_proj(s.gate_proj(x) * F.silu(s.up_proj(x)))), "on the gate"),
    "no-up": (_mlp(lambda s, x: s.down_proj(F.silu(s.gate_proj(x)))), "multiply by up_proj"),
    "silu-after-product": (_mlp(lambda s, x: s.down_proj(F.silu(s.gate_proj(x) * s.up_proj(x)))), "before the product"),
    "biases": (_BiasedSwiGLU, "bias-free"),
})


def test_swiglu_placeholder_is_not_done():
    assert run_check("9.4", _mlp(lambda s, x: _not_done())).status == "not done"


# ---- 9.5 repeat_kv -----------------------------------------------------------------------------
_mistakes("9.5", {
    "tiled": (lambda x, n: x.repeat(1, n, 1, 1), "do not tile"),
    "time-axis": (lambda x, n: x.repeat_interleave(n, dim=2), "should have shape"),
    "ignores-n_rep": (lambda x, n: x, "should have shape"),
})


# ---- 9.6 the attention -------------------------------------------------------------------------
def _attention(bug):
    def forward(self, x, cos, sin, cache=None):
        q = llama.split_heads(self.q_proj(x), self.n_head)
        k = llama.split_heads(self.k_proj(x), self.n_kv_head)
        v = llama.split_heads(self.v_proj(x), self.n_kv_head)
        q = llama.apply_rope(q, cos, sin)
        if bug != "keys_not_rotated":
            k = llama.apply_rope(k, cos, sin)
        if bug == "rope_on_values":
            v = llama.apply_rope(v, cos, sin)
        past = 0
        if cache is not None:
            if bug == "past_after_update":
                k, v = cache.update(k, v)
                past = cache.length
            else:
                past = cache.length
                k, v = cache.update(k, v)
        if bug == "past_off_by_one" and past:
            past -= 1
        n = self.n_head // self.n_kv_head
        if bug == "tiled_heads":
            k, v = k.repeat(1, n, 1, 1), v.repeat(1, n, 1, 1)
        else:
            k, v = llama.repeat_kv(k, n), llama.repeat_kv(v, n)
        y = llama._attend(q, k, v, past)
        return self.o_proj(llama.merge_heads(y))
    return type("WrongAttention", (llama.LlamaAttention,), {"forward": forward})


_mistakes("9.6", {bug: (_attention(bug), words) for bug, words in [
    ("rope_on_values", "values carry content"),
    ("keys_not_rotated", "rotate the keys too"),
    ("tiled_heads", "not a tiling"),
    ("past_after_update", "read past = cache.length before cache.update"),
    ("past_off_by_one", "in pieces with a cache"),
]})


def test_attention_placeholder_is_not_done():
    wrong = type("NotDone", (llama.LlamaAttention,), {"forward": lambda self, *a, **k: _not_done()})
    assert run_check("9.6", wrong).status == "not done"


# ---- 9.10 the cache's memory --------------------------------------------------------------------
_mistakes("9.10", {
    "no-gqa": (lambda c, B, T, b=4: 2 * c.n_layer * c.n_embd * T * B * b, "your formula says"),
    "keys-only": (lambda c, B, T, b=4: c.n_layer * c.n_kv_head * (c.n_embd // c.n_head) * T * B * b,
                  "your formula says"),
    "fixed-float32": (lambda c, B, T, b=4: 2 * c.n_layer * c.n_kv_head * (c.n_embd // c.n_head) * T * B * 4,
                      "your formula says"),
})


# ---- 9.7 the block -----------------------------------------------------------------------------
def _block(forward=None, init=None):
    body = {}
    if forward:
        body["forward"] = forward
    if init:
        body["__init__"] = init
    return type("WrongBlock", (llama.LlamaBlock,), body)


def _default_eps_init(self, config):
    llama.LlamaBlock.__init__(self, config)
    self.input_layernorm = llama.RMSNorm(config.n_embd)
    self.post_attention_layernorm = llama.RMSNorm(config.n_embd)


def _always_swiglu_init(self, config):
    llama.LlamaBlock.__init__(self, config)
    self.mlp = llama.SwiGLU(config.n_embd, config.hidden_dim)


def _no_cache(self, x, cos, sin, cache=None):
    x = x + self.self_attn(self.input_layernorm(x), cos, sin)
    return x + self.mlp(self.post_attention_layernorm(x))


def _swapped(self, x, cos, sin, cache=None):
    x = x + self.self_attn(self.post_attention_layernorm(x), cos, sin, cache=cache)
    return x + self.mlp(self.input_layernorm(x))


def _no_residual(self, x, cos, sin, cache=None):
    x = self.self_attn(self.input_layernorm(x), cos, sin, cache=cache)
    return x + self.mlp(self.post_attention_layernorm(x))


def _parallel(self, x, cos, sin, cache=None):
    return (x + self.self_attn(self.input_layernorm(x), cos, sin, cache=cache)
            + self.mlp(self.post_attention_layernorm(x)))


_mistakes("9.7", {
    "post-norm": (llama.PostNormLlamaBlock, "Post-norm"),
    "norms-swapped": (_block(_swapped), "input_layernorm goes before the attention"),
    "no-attn-residual": (_block(_no_residual), "the residual"),
    "parallel": (_block(_parallel), "the MLP reads the sum after the attention"),
    "default-eps": (_block(init=_default_eps_init), "config.norm_eps"),
    "cache-dropped": (_block(_no_cache), "hand the cache"),
    "gelu-ignored": (_block(init=_always_swiglu_init), "Chapter 5's MLP"),
})


def test_block_placeholder_is_not_done():
    assert run_check("9.7", _block(lambda self, *a, **k: _not_done())).status == "not done"


# ---- 9.8 the model -----------------------------------------------------------------------------
def _model(**methods):
    return type("WrongLlama", (llama.Llama,), methods)


def _hidden(start_zero=False, final_norm=True, layer_caches=True):
    def hidden_states(self, idx, cache=None):
        start = 0 if cache is None or start_zero else len(cache)
        x = self.model.embed_tokens(idx)
        cos, sin = self.rope(start, idx.shape[1], idx.device)
        layers = cache.layers if cache is not None and layer_caches else [None] * len(self.model.layers)
        for block, layer_cache in zip(self.model.layers, layers):
            x = block(x, cos, sin, cache=layer_cache)
        return self.model.norm(x) if final_norm else x
    return hidden_states


def _untied_init(self, config, block_cls=llama.LlamaBlock):
    llama.Llama.__init__(self, config, block_cls)
    self.lm_head = torch.nn.Linear(config.n_embd, config.vocab_size, bias=False)


def _shifted_forward(self, idx, targets=None, cache=None):
    logits = self.lm_head(self.hidden_states(idx, cache))
    if targets is None:
        return logits, None
    V = logits.size(-1)
    return logits, F.cross_entropy(logits[:, :-1].reshape(-1, V), targets[:, 1:].reshape(-1), ignore_index=-100)


def _unflattened_forward(self, idx, targets=None, cache=None):
    logits = self.lm_head(self.hidden_states(idx, cache))
    return logits, None if targets is None else F.cross_entropy(logits, targets)


_mistakes("9.8", {
    "no-final-norm": (_model(hidden_states=_hidden(final_norm=False)), "final norm"),
    "angles-restart": (_model(hidden_states=_hidden(start_zero=True)), "position len(cache)"),
    "no-layer-caches": (_model(hidden_states=_hidden(layer_caches=False)), "cache.layers[i]"),
    "untied-head": (_model(__init__=_untied_init), "the head is the embedding's matrix"),
    "shifted-targets": (_model(forward=_shifted_forward), "do not shift"),
    "no-reshape": (_model(forward=_unflattened_forward), "reshape both"),
    "first-position": (_model(next_token_logits=lambda self, idx, cache=None: self(idx, cache=cache)[0][:, 0]),
                       "last position"),
})


def test_model_placeholder_is_not_done():
    assert run_check("9.8", _model(hidden_states=lambda self, *a, **k: _not_done())).status == "not done"
    assert run_check("9.9", _model(from_hf_state_dict=classmethod(lambda cls, *a: _not_done()))).status == "not done"


# ---- 9.9 loading Hugging Face weights ----------------------------------------------------------
def _loader(pop="when-tied", compare=True, in_place=True, no_grad=True):
    def from_hf_state_dict(cls, state_dict, config):
        model = cls(config)
        tensors = dict(state_dict)
        if "lm_head.weight" in tensors and (pop == "when-present" or (pop == "when-tied" and config.tie_embeddings)):
            head = tensors.pop("lm_head.weight")
            if compare and not torch.equal(head, tensors["model.embed_tokens.weight"]):
                raise ValueError("untied head")
        elif pop == "no-default" and config.tie_embeddings:
            tensors.pop("lm_head.weight")
        params = dict(model.named_parameters())
        if set(params) != set(tensors):
            raise ValueError(f"keys: {sorted(set(params) ^ set(tensors))}")
        with torch.no_grad() if no_grad else torch.enable_grad():
            for key, param in params.items():
                if in_place:
                    param.copy_(tensors[key])
                else:
                    param = tensors[key]
        return model
    return _model(from_hf_state_dict=classmethod(from_hf_state_dict))


_mistakes("9.9", {
    "head-left-in": (_loader(pop="never"), "take lm_head.weight out first"),
    "head-dropped-untied": (_loader(pop="when-present"), "only when the config ties"),
    "pop-without-default": (_loader(pop="no-default"), "may leave lm_head.weight out"),
    "no-comparison": (_loader(compare=False), "raise a ValueError"),
    "not-in-place": (_loader(in_place=False), "param.copy_"),
    "grad-enabled": (_loader(no_grad=False), "torch.no_grad()"),
})


# ---- 9.11 the rolling cache --------------------------------------------------------------------
def _rolling(next_input):
    return type("WrongRolling", (llama.RollingKVCache,), {"next_input": next_input})


def _roll(newest=False, values=True, count=True, layers="all", refill=False, prefill=True):
    def next_input(self, idx):
        if len(self) == 0:
            return idx[:, -self.capacity:] if prefill else idx[:, -1:]
        if self.layers[0].length == self.capacity:
            if refill:
                self.reset()
                return idx[:, -self.capacity:]
            for layer in (self.layers if layers == "all" else self.layers[:1]):
                if newest:
                    layer.keys[:, :, 1:] = layer.keys[:, :, :-1].clone()
                else:
                    layer.keys[:, :, :-1] = layer.keys[:, :, 1:].clone()
                if values:
                    layer.values[:, :, :-1] = layer.values[:, :, 1:].clone()
                layer.length -= 1
            self.dropped += count
        return idx[:, -1:]
    return _rolling(next_input)


_mistakes("9.11", {
    "refill": (_roll(refill=True), "do not empty"),
    "dropped-not-counted": (_roll(count=False), "self.dropped"),
    "newest-dropped": (_roll(newest=True), "drop the oldest"),
    "values-kept": (_roll(values=False), "roll the values"),
    "no-prefill": (_roll(prefill=False), "filled first"),
    "first-layer-only": (_roll(layers="first"), "every layer"),
})


def test_rolling_cache_placeholder_is_not_done():
    assert run_check("9.11", _rolling(lambda self, idx: _not_done())).status == "not done"


# ---- 9.12 equal parameter counts ---------------------------------------------------------------
def _matched(per_unit, base=True, rounding=round):
    def matched_llama_config(target_params, **sizes):
        config = llama.LlamaConfig(**{**sizes, "hidden_dim": 1})
        with torch.device("meta"):
            counted = llama.Llama(config).num_parameters() - 3 * config.n_embd * config.n_layer
        hidden = rounding(((target_params - counted) if base else target_params) / per_unit(config))
        return llama.replace(config, hidden_dim=max(1, hidden))
    return matched_llama_config


_mistakes("9.12", {
    "layers-forgotten": (_matched(lambda c: 3 * c.n_embd), "every one of the n_layer blocks"),
    "two-matrices": (_matched(lambda c: 2 * c.n_embd * c.n_layer), "three matrices"),
    "base-kept": (_matched(lambda c: 3 * c.n_embd * c.n_layer, base=False), "subtract what the model has"),
    "floor": (_matched(lambda c: 3 * c.n_embd * c.n_layer, rounding=int), "not down"),
})


@pytest.mark.parametrize("eid, candidate, words", FAILING, ids=FAILING_IDS)
def test_check_rejects_the_mistake(eid, candidate, words):
    _expect_failure(eid, candidate, words)


def test_every_exercise_has_two_named_mistakes():
    for eid in REFERENCES:
        assert sum(1 for e, _, _ in FAILING if e == eid) >= 2, eid
