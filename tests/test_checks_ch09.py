"""The Chapter 9 checks accept the reference solutions, reject the usual mistakes (each with the
hint that names it), and say "not done" for a student's placeholder."""
import pytest
import torch
import torch.nn.functional as F

from gptlib import llama
from gptlib.exercises import run_check

REFERENCES = {"9.1": llama.RMSNorm, "9.2": llama.rope_cos_sin, "9.3": llama.apply_rope, "9.4": llama.SwiGLU,
              "9.5": llama.repeat_kv, "9.6": llama.LlamaAttention, "9.7": llama.kv_cache_bytes}


@pytest.mark.parametrize("eid", sorted(REFERENCES))
def test_the_reference_passes(eid):
    assert run_check(eid, REFERENCES[eid]).status == "passed"


def _not_done(*args, **kwargs):
    raise NotImplementedError


class _NotDoneNorm(llama.RMSNorm):
    def forward(self, x):
        raise NotImplementedError


@pytest.mark.parametrize("eid, candidate", [
    ("9.1", _NotDoneNorm), ("9.2", _not_done), ("9.3", _not_done), ("9.5", _not_done), ("9.7", _not_done)])
def test_a_placeholder_is_not_done(eid, candidate):
    assert run_check(eid, candidate).status == "not done"


def _expect_failure(eid, candidate, words):
    result = run_check(eid, candidate)
    assert result.status in ("failed", "error"), (eid, result)
    if words:
        assert result.status == "failed" and words in result.message, result.message


# ---- 9.1 RMSNorm -------------------------------------------------------------------------------
def _norm(forward):
    return type("WrongNorm", (llama.RMSNorm,), {"forward": forward})


@pytest.mark.parametrize("forward, words", [
    (lambda self, x: self.weight * x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + self.eps), "last dimension"),
    (lambda self, x: self.weight * (x - x.mean(-1, keepdim=True)) * torch.rsqrt(
        (x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True) + self.eps), "LayerNorm"),
    (lambda self, x: self.weight * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps), "inside the square root"),
    (lambda self, x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps), "self.weight"),
    (lambda self, x: self.weight * x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + self.eps), None),
], ids=["axis0", "layernorm", "eps-outside", "no-weight", "sum-not-mean"])
def test_rmsnorm_mistakes(forward, words):
    _expect_failure("9.1", _norm(forward), words)


def test_rmsnorm_over_the_time_axis_is_named():
    def forward(self, x):
        dim = 1 if x.dim() == 3 else -1
        return self.weight * x * torch.rsqrt(x.pow(2).mean(dim, keepdim=True) + self.eps)
    _expect_failure("9.1", _norm(forward), "time axis")


# ---- 9.2 RoPE's angles -------------------------------------------------------------------------
def _angles(shift=0, exponent=2, layout="halves", fixed_theta=False):
    def rope_cos_sin(head_dim, start, T, theta=10000.0, device=None):
        theta = 10000.0 if fixed_theta else theta
        inv = 1.0 / theta ** (exponent * torch.arange(head_dim // 2).float() / head_dim)
        a = torch.outer(torch.arange(start + shift, start + shift + T).float(), inv)
        a = torch.cat([a, a], -1) if layout == "halves" else a.repeat_interleave(2, -1)
        return a.cos(), a.sin()
    return rope_cos_sin


@pytest.mark.parametrize("candidate, words", [
    (_angles(shift=1), "off by one"), (_angles(shift=-1), "off by one"),
    (_angles(exponent=1), "theta ** (-2i / head_dim)"), (_angles(layout="pairs"), "two halves"),
    (_angles(fixed_theta=True), "use theta"),
], ids=["start+1", "start-1", "exponent", "interleaved", "theta-ignored"])
def test_rope_angle_mistakes(candidate, words):
    _expect_failure("9.2", candidate, words)


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


@pytest.mark.parametrize("candidate, words", [
    (_neighbours, "not neighbours"),
    (lambda x, cos, sin: x * cos - _half(x) * sin, "wrong way"),
    (lambda x, cos, sin: x * sin + _half(x) * cos, "swapped"),
    (_in_place, "in place"),
    (lambda x, cos, sin: x * cos, None),
], ids=["neighbour-pairs", "wrong-direction", "cos-sin-swapped", "in-place", "no-sin"])
def test_rope_rotation_mistakes(candidate, words):
    _expect_failure("9.3", candidate, words)


# ---- 9.4 SwiGLU --------------------------------------------------------------------------------
def _mlp(forward):
    return type("WrongSwiGLU", (llama.SwiGLU,), {"forward": forward})


class _BiasedSwiGLU(llama.SwiGLU):
    def __init__(self, n_embd, hidden_dim):
        super().__init__(n_embd, hidden_dim, bias=True)


@pytest.mark.parametrize("candidate, words", [
    (_mlp(lambda s, x: s.down_proj(F.gelu(s.gate_proj(x)) * s.up_proj(x))), "not GELU"),
    (_mlp(lambda s, x: s.down_proj(s.gate_proj(x) * F.silu(s.up_proj(x)))), "on the gate"),
    (_mlp(lambda s, x: s.down_proj(F.silu(s.gate_proj(x)))), "multiply by up_proj"),
    (_mlp(lambda s, x: s.down_proj(F.silu(s.gate_proj(x) * s.up_proj(x)))), "before the product"),
    (_BiasedSwiGLU, "bias-free"),
], ids=["gelu", "silu-on-up", "no-up", "silu-after-product", "biases"])
def test_swiglu_mistakes(candidate, words):
    _expect_failure("9.4", candidate, words)


def test_swiglu_placeholder_is_not_done():
    assert run_check("9.4", _mlp(lambda s, x: _not_done())).status == "not done"


# ---- 9.5 repeat_kv -----------------------------------------------------------------------------
@pytest.mark.parametrize("candidate, words", [
    (lambda x, n: x.repeat(1, n, 1, 1), "do not tile"),
    (lambda x, n: x.repeat_interleave(n, dim=2), "should have shape"),
    (lambda x, n: x, "should have shape"),
], ids=["tiled", "time-axis", "ignores-n_rep"])
def test_repeat_kv_mistakes(candidate, words):
    _expect_failure("9.5", candidate, words)


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


@pytest.mark.parametrize("bug, words", [
    ("rope_on_values", "values carry content"),
    ("keys_not_rotated", "rotate the keys too"),
    ("tiled_heads", "not a tiling"),
    ("past_after_update", "read past = cache.length before cache.update"),
    ("past_off_by_one", "in pieces with a cache"),
])
def test_attention_mistakes(bug, words):
    _expect_failure("9.6", _attention(bug), words)


def test_attention_placeholder_is_not_done():
    wrong = type("NotDone", (llama.LlamaAttention,), {"forward": lambda self, *a, **k: _not_done()})
    assert run_check("9.6", wrong).status == "not done"


# ---- 9.7 the cache's memory --------------------------------------------------------------------
@pytest.mark.parametrize("candidate", [
    lambda c, B, T, b=4: 2 * c.n_layer * c.n_embd * T * B * b,                                 # every head
    lambda c, B, T, b=4: c.n_layer * c.n_kv_head * (c.n_embd // c.n_head) * T * B * b,         # keys only
    lambda c, B, T, b=4: 2 * c.n_layer * c.n_kv_head * (c.n_embd // c.n_head) * T * B * 4,     # ignores dtype
], ids=["no-gqa", "keys-only", "fixed-float32"])
def test_cache_memory_mistakes(candidate):
    _expect_failure("9.7", candidate, "your formula says")
