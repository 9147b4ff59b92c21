"""Chapter 9 checks: RMSNorm, RoPE, SwiGLU, the key/value head repetition, the attention of a
Llama block, the block, the model and its weight loading, the KV cache's memory, the rolling
cache and the matched width.

Each check compares the learner's component with a small private reference kept here (never
with ``gptlib.llama`` itself, which a learner's own export would be) and with exact properties
(a rotation keeps lengths; a score depends only on the offset between positions). When the
candidate matches a known mistake, the hint names it.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from gptlib.exercises import CheckFailed, case_seed, exercise, expect


# ---- private references ----------------------------------------------------------------------
def _rms(x, weight, eps, dim=-1, center=False, eps_outside=False):
    xf = x.double()
    if center:
        xf = xf - xf.mean(dim=dim, keepdim=True)
    ms = xf.pow(2).mean(dim=dim, keepdim=True)
    scale = 1 / (ms.sqrt() + eps) if eps_outside else torch.rsqrt(ms + eps)
    return weight.double() * (xf * scale)


def _cos_sin(head_dim, start, T, theta, exponent=2, layout="halves"):
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    inv_freq = theta ** (-exponent * i / head_dim)
    angles = torch.arange(start, start + T, dtype=torch.float64)[:, None] * inv_freq
    angles = (torch.cat([angles, angles], -1) if layout == "halves"
              else angles.repeat_interleave(2, dim=-1))
    return angles.cos(), angles.sin()


def _rotate(x, cos, sin, pairs="halves", sign=1):
    x = x.double()
    if pairs == "halves":
        half = x.shape[-1] // 2
        turned = torch.cat([-x[..., half:], x[..., :half]], -1)
    else:  # neighbours (2i, 2i + 1)
        turned = torch.stack([-x[..., 1::2], x[..., ::2]], -1).flatten(-2)
    return x * cos + sign * turned * sin


class _Cache:
    """The smallest layer cache: ``length`` and ``update(k, v)``, by concatenation."""

    def __init__(self):
        self.length, self.k, self.v = 0, None, None

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], 2)
        self.v = v if self.v is None else torch.cat([self.v, v], 2)
        self.length = self.k.shape[2]
        return self.k, self.v


def _attention(att, x, start, theta, bug=None):
    """The reference attention of a LlamaAttention's weights (float64), with one named bug."""
    W = {n: getattr(att, n).weight.detach().double() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    return _attention_w(W, att.n_head, att.n_kv_head, att.head_dim, x, start, theta, bug)


def _attention_w(W, H, K, d, x, start, theta, bug=None):
    B, T, _ = x.shape
    xd = x.double()
    q = (xd @ W["q_proj"].T).view(B, T, H, d).transpose(1, 2)
    k = (xd @ W["k_proj"].T).view(B, T, K, d).transpose(1, 2)
    v = (xd @ W["v_proj"].T).view(B, T, K, d).transpose(1, 2)
    cos, sin = _cos_sin(d, start, T, theta)
    q = _rotate(q, cos, sin)
    if bug != "keys_not_rotated":
        k = _rotate(k, cos, sin)
    if bug == "rope_on_values":
        v = _rotate(v, cos, sin)
    if bug == "tiled_heads":
        k, v = k.repeat(1, H // K, 1, 1), v.repeat(1, H // K, 1, 1)
    else:
        k, v = k.repeat_interleave(H // K, 1), v.repeat_interleave(H // K, 1)
    scores = q @ k.transpose(-2, -1) / d ** 0.5
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * d)
    return y @ W["o_proj"].T


def _close(a, b, atol=1e-5):
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4)


def _which(out, wrongs: dict, atol=1e-5):
    """The hint of the first known mistake that ``out`` reproduces, or None."""
    for hint, value in wrongs.items():
        if _close(out, value, atol):
            return hint
    return None


# ---- 9.1 RMSNorm -------------------------------------------------------------------------------
@exercise("9.1", "RMSNorm", builds="gptlib.llama:RMSNorm", tier="warm-up", difficulty=1, importance=3,
          forbids=("F.rms_norm", "torch.nn.functional.rms_norm", "nn.RMSNorm", "torch.nn.RMSNorm"))
def _(RMSNorm):
    g = torch.Generator().manual_seed(case_seed(9))
    for shape, eps, scale in (((4, 16), 1e-6, 3.0), ((2, 5, 16), 1e-5, 1.0), ((3, 7), 1e-2, 0.05)):
        norm = RMSNorm(shape[-1], eps=eps)
        expect(tuple(norm.weight.shape) == (shape[-1],) and torch.equal(norm.weight, torch.ones(shape[-1])),
               f"RMSNorm({shape[-1]}).weight should be an nn.Parameter of ones, shape ({shape[-1]},)")
        expect(sum(p.numel() for p in norm.parameters()) == shape[-1],
               "RMSNorm has one parameter vector, weight: no bias")
        with torch.no_grad():
            norm.weight.copy_(torch.rand(shape[-1], generator=g) + 0.5)
        x = torch.randn(shape, generator=g) * scale
        x[0] *= 10                                           # rows of different sizes
        with torch.no_grad():
            out = norm(x)
        want = _rms(x, norm.weight, eps)
        if _close(out, want):
            continue
        wrongs = {"normalise each vector over its last dimension (dim=-1), not over the batch or "
                  "time axis": _rms(x, norm.weight, eps, dim=0),
                  "that is LayerNorm: RMSNorm does not subtract the mean": _rms(x, norm.weight, eps, center=True),
                  "eps goes inside the square root: x / sqrt(mean(x**2) + eps)": _rms(x, norm.weight, eps, eps_outside=True),
                  "multiply the normalised x by self.weight": _rms(x, torch.ones_like(norm.weight), eps)}
        if x.dim() == 3:
            wrongs["normalise each vector over its last dimension (dim=-1), not over the time axis"] = \
                _rms(x, norm.weight, eps, dim=1)
        raise CheckFailed(_which(out, wrongs) or
                          f"RMSNorm({shape[-1]}, eps={eps}) on an input of shape {shape} differs from "
                          "x / sqrt(mean(x**2, last dim) + eps) * weight")


# ---- 9.2 the rotation angles -------------------------------------------------------------------
@exercise("9.2", "RoPE's angles", builds="gptlib.llama:rope_cos_sin", tier="core", difficulty=2, importance=3)
def _(rope_cos_sin):
    for head_dim, start, T, theta in ((8, 0, 5, 10000.0), (16, 7, 3, 10000.0), (4, 100, 2, 500000.0),
                                      (6, 3, 4, 50.0)):
        cos, sin = rope_cos_sin(head_dim, start, T, theta)
        expect(isinstance(cos, torch.Tensor) and tuple(cos.shape) == (T, head_dim) and tuple(sin.shape) == (T, head_dim),
               f"rope_cos_sin({head_dim}, start={start}, T={T}) should return cos and sin of shape ({T}, {head_dim})")
        want_cos, want_sin = _cos_sin(head_dim, start, T, theta)
        if _close(cos, want_cos, 1e-4) and _close(sin, want_sin, 1e-4):
            continue
        wrongs = {f"off by one: with start={start} the rows are positions {start} .. {start + T - 1} "
                  "(with the cache, start is the number of positions before these)": _cos_sin(head_dim, start + 1, T, theta)[1],
                  "off by one: the first row is position start itself": _cos_sin(head_dim, start - 1, T, theta)[1],
                  "the frequency of pair i is theta ** (-2i / head_dim): i steps through 0, 2, 4, ... as "
                  "torch.arange(0, head_dim, 2)": _cos_sin(head_dim, start, T, theta, exponent=1)[1],
                  "Llama's layout repeats the angles as two halves, cat([a, a]), not interleaved: "
                  "column i and column i + head_dim // 2 hold the same angle": _cos_sin(head_dim, start, T, theta, layout="pairs")[1],
                  "use theta (not a fixed 10000)": _cos_sin(head_dim, start, T, 10000.0)[1]}
        hint = _which(sin, wrongs, 1e-4)
        raise CheckFailed(hint or f"rope_cos_sin({head_dim}, start={start}, T={T}, theta={theta}): the angle "
                          "of position p in pair i is p * theta ** (-2i / head_dim)")


# ---- 9.3 the rotation --------------------------------------------------------------------------
@exercise("9.3", "Rotate queries and keys", builds="gptlib.llama:apply_rope", tier="core", difficulty=2,
          importance=3)
def _(apply_rope):
    g = torch.Generator().manual_seed(case_seed(93))
    for shape, start, theta in (((2, 3, 5, 8), 0, 10000.0), ((1, 2, 4, 16), 9, 100.0), ((1, 1, 3, 4), 2, 10.0)):
        x = torch.randn(shape, generator=g)
        before = x.clone()
        cos, sin = (t.float() for t in _cos_sin(shape[-1], start, shape[2], theta))
        out = apply_rope(x, cos, sin)
        expect(torch.equal(x, before), "apply_rope must not change x in place: return a new tensor")
        want = _rotate(x, cos.double(), sin.double())
        if _close(out, want, 1e-5):
            continue
        wrongs = {"pair dimension i with i + head_dim // 2 (x1 = first half, x2 = second half), "
                  "not neighbours 2i and 2i + 1": _rotate(x, cos.double(), sin.double(), pairs="neighbours"),
                  "the rotation turns the wrong way: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)":
                      _rotate(x, cos.double(), sin.double(), sign=-1),
                  "cos and sin are swapped: x * cos + rotate_half(x) * sin":
                      _rotate(x, sin.double(), cos.double())}
        raise CheckFailed(_which(out, wrongs) or
                          f"apply_rope on x of shape {shape} (positions {start}..): each pair (x1, x2) "
                          "should become (x1 cos a - x2 sin a, x2 cos a + x1 sin a)")
    # the property RoPE is for: the score of q at m and k at n depends only on m - n
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    scores = []
    for m, n in ((5, 2), (13, 10), (3, 0)):
        cq, sq = (t.float() for t in _cos_sin(8, m, 1, 100.0))
        ck, sk = (t.float() for t in _cos_sin(8, n, 1, 100.0))
        scores.append((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item())
    expect(max(scores) - min(scores) < 1e-4, f"q at position m and k at n should score the same for every "
           f"pair with m - n = 3; got {scores}")


# ---- 9.4 SwiGLU --------------------------------------------------------------------------------
@exercise("9.4", "The SwiGLU MLP", builds="gptlib.llama:SwiGLU", tier="warm-up", difficulty=1, importance=2)
def _(SwiGLU):
    g = torch.Generator().manual_seed(case_seed(94))
    for C, H in ((8, 12), (6, 16)):
        mlp = SwiGLU(C, H)
        for name, shape in (("gate_proj", (H, C)), ("up_proj", (H, C)), ("down_proj", (C, H))):
            layer = getattr(mlp, name, None)
            expect(layer is not None and tuple(layer.weight.shape) == shape and layer.bias is None,
                   f"SwiGLU({C}, {H}).{name} should be a bias-free nn.Linear with weight shape {shape}")
        expect(sum(p.numel() for p in mlp.parameters()) == 3 * C * H,
               f"SwiGLU({C}, {H}) should have 3 * {C} * {H} parameters: the three matrices, nothing else")
        with torch.no_grad():
            for p in mlp.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            x = torch.randn(2, 3, C, generator=g)
            out = mlp(x)
        W = {n: getattr(mlp, n).weight.double() for n in ("gate_proj", "up_proj", "down_proj")}
        gate, up = x.double() @ W["gate_proj"].T, x.double() @ W["up_proj"].T
        want = (F.silu(gate) * up) @ W["down_proj"].T
        if _close(out, want):
            continue
        wrongs = {"the activation is SiLU (x * sigmoid(x), F.silu), not GELU": (F.gelu(gate) * up) @ W["down_proj"].T,
                  "SiLU goes on the gate: silu(gate_proj(x)) * up_proj(x)": (gate * F.silu(up)) @ W["down_proj"].T,
                  "multiply by up_proj(x): the gate scales it": F.silu(gate) @ W["down_proj"].T,
                  "apply SiLU to the gate before the product, not to the product": F.silu(gate * up) @ W["down_proj"].T}
        raise CheckFailed(_which(out, wrongs) or f"SwiGLU({C}, {H}) should compute "
                          "down_proj(silu(gate_proj(x)) * up_proj(x))")


# ---- 9.5 key/value heads, repeated -------------------------------------------------------------
@exercise("9.5", "Share key/value heads", builds="gptlib.llama:repeat_kv", tier="warm-up", difficulty=2,
          importance=2)
def _(repeat_kv):
    g = torch.Generator().manual_seed(case_seed(95))
    for shape, n_rep in (((2, 2, 3, 4), 3), ((1, 4, 5, 2), 2), ((1, 1, 2, 4), 4), ((2, 3, 2, 2), 1)):
        x = torch.randn(shape, generator=g)
        out = repeat_kv(x, n_rep)
        want = x.repeat_interleave(n_rep, dim=1)
        B, K, T, d = shape
        expect(isinstance(out, torch.Tensor) and tuple(out.shape) == (B, K * n_rep, T, d),
               f"repeat_kv(x of shape {shape}, {n_rep}) should have shape {(B, K * n_rep, T, d)}")
        if torch.equal(out, want):
            continue
        expect(not torch.equal(out, x.repeat(1, n_rep, 1, 1)),
               f"with {K} key/value heads and n_rep={n_rep}, query heads 0..{n_rep - 1} share key/value "
               f"head 0: repeat each head in place ([k0, k0, k1, k1]), do not tile the heads ([k0, k1, k0, k1])")
        raise CheckFailed(f"repeat_kv(x of shape {shape}, {n_rep}): head h of the result should be "
                          f"key/value head h // {n_rep}")


# ---- 9.6 the attention of a Llama block --------------------------------------------------------
@exercise("9.6", "Attention with RoPE and shared heads", builds="gptlib.llama:LlamaAttention", tier="core",
          difficulty=3, importance=3)
def _(LlamaAttention):
    g = torch.Generator().manual_seed(case_seed(96))
    theta = 100.0
    for n_head, n_kv_head in ((4, 4), (4, 2), (4, 1)):
        cfg = SimpleNamespace(n_embd=16, n_head=n_head, n_kv_head=n_kv_head, head_dim=4)
        att = LlamaAttention(cfg)
        with torch.no_grad():
            for p in att.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.4)
        expect(tuple(att.k_proj.weight.shape) == (n_kv_head * 4, 16),
               f"with n_kv_head={n_kv_head}, k_proj maps 16 channels to n_kv_head * head_dim = {n_kv_head * 4}")
        x = torch.randn(2, 6, 16, generator=g)
        cos, sin = (t.float() for t in _cos_sin(4, 0, 6, theta))
        with torch.no_grad():
            out = att(x, cos, sin)
        want = _attention(att, x, 0, theta)
        what = f"n_head={n_head}, n_kv_head={n_kv_head}"
        if not _close(out, want, 1e-4):
            wrongs = {"rotate the queries and the keys only: the values carry content, not position":
                          _attention(att, x, 0, theta, "rope_on_values"),
                      "rotate the keys too: a score compares a turned query with a turned key":
                          _attention(att, x, 0, theta, "keys_not_rotated"),
                      "query heads j * n_rep .. (j + 1) * n_rep - 1 share key/value head j: use repeat_kv, "
                      "not a tiling of the heads": _attention(att, x, 0, theta, "tiled_heads")}
            raise CheckFailed((_which(out, wrongs, 1e-4) or "the output differs from causal attention with "
                               "RoPE on q and k and shared key/value heads") + f" ({what})")
        # the same tokens in pieces, through a cache: 3 tokens, then 1, then 2
        cache, pieces, start = _Cache(), [], 0
        in_pieces = (f"run in pieces with a cache (3, then 1, then 2 tokens), the output differs from one "
                     f"pass ({what}): read past = cache.length before cache.update, store the rotated keys, "
                     f"and let new query i see keys 0 .. past + i")
        try:
            with torch.no_grad():
                for n in (3, 1, 2):
                    c, s = (t.float() for t in _cos_sin(4, start, n, theta))
                    pieces.append(att(x[:, start:start + n], c, s, cache=cache))
                    start += n
        except RuntimeError as err:       # a mask or cache of the wrong length: shapes disagree
            raise CheckFailed(f"{in_pieces} (your code raised: {err})") from None
        expect(cache.length == 6, f"after 6 tokens in pieces the cache should hold 6 positions, it holds "
               f"{cache.length}: call cache.update(k, v) once per forward")
        expect(_close(torch.cat(pieces, 1), want, 1e-4), in_pieces)


# ---- 9.10 the cache's memory --------------------------------------------------------------------
@exercise("9.10", "The cache's memory, predicted", builds="gptlib.llama:kv_cache_bytes", tier="stretch",
          difficulty=2, importance=2)
def _(kv_cache_bytes):
    from gptlib.llama import Llama, LlamaConfig     # the model only stores what the formula predicts
    from gptlib.model import GPT, GPTConfig
    from gptlib.sampling import KVCache
    cases = [(LlamaConfig(vocab_size=11, block_size=16, n_layer=2, n_head=4, n_kv_head=1, n_embd=16,
                          hidden_dim=8), Llama, 3, 5, torch.float32),
             (LlamaConfig(vocab_size=11, block_size=16, n_layer=3, n_head=4, n_kv_head=2, n_embd=32,
                          hidden_dim=8), Llama, 2, 7, torch.bfloat16),
             (GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=8), GPT, 1, 4, torch.float32)]
    for config, cls, B, T, dtype in cases:
        torch.manual_seed(case_seed(0))
        model = cls(config).to(dtype)
        cache = KVCache(config.n_layer, T)
        with torch.no_grad():
            model(torch.zeros(B, T, dtype=torch.long), cache=cache)
        measured = cache.nbytes()
        size = torch.finfo(dtype).bits // 8
        got = kv_cache_bytes(config, B, T, size)
        name = type(config).__name__
        expect(got == measured, f"{name}(n_layer={config.n_layer}, n_head={config.n_head}, n_kv_head="
               f"{getattr(config, 'n_kv_head', config.n_head)}, n_embd={config.n_embd}), batch {B}, {T} "
               f"positions, {size} bytes a value: the cache holds {measured} bytes, your formula says {got}")


# ---- references of the block and the model (float64, from the candidate's own weights) ---------
def _swiglu_w(sd, prefix, x):
    gate, up = x @ sd[prefix + "gate_proj.weight"].T, x @ sd[prefix + "up_proj.weight"].T
    return (F.silu(gate) * up) @ sd[prefix + "down_proj.weight"].T


def _layer_ref(sd, p, x, cfg, start=0, eps=None, bug=None):
    """One Pre-norm block of state dict ``sd`` (keys prefixed ``p``), with one named bug."""
    eps = cfg.norm_eps if eps is None else eps
    W = {n: sd[f"{p}self_attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
    attn = lambda h: _attention_w(W, cfg.n_head, cfg.n_kv_head, cfg.n_embd // cfg.n_head, h, start, cfg.rope_theta)
    mlp = lambda h: _swiglu_w(sd, p + "mlp.", h)
    n1 = lambda h: _rms(h, sd[p + "input_layernorm.weight"], eps)
    n2 = lambda h: _rms(h, sd[p + "post_attention_layernorm.weight"], eps)
    if bug == "swapped":
        n1, n2 = n2, n1
    if bug == "post_norm":
        x = n1(x + attn(x))
        return n2(x + mlp(x))
    if bug == "no_attn_residual":
        h = attn(n1(x))
        return h + mlp(n2(h))
    if bug == "parallel":
        return x + attn(n1(x)) + mlp(n2(x))
    h = x + attn(n1(x))
    return h + mlp(n2(h))


def _model_ref(model, idx, bug=None):
    cfg = model.config
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    x = sd["model.embed_tokens.weight"][idx]
    for i in range(cfg.n_layer):
        x = _layer_ref(sd, f"model.layers.{i}.", x, cfg)
    if bug != "no_final_norm":
        x = _rms(x, sd["model.norm.weight"], cfg.norm_eps)
    return x @ sd["lm_head.weight"].T


def _llama_shapes(cfg, head=True) -> dict:
    """Hugging Face's names and shapes of a LlamaForCausalLM of ``cfg``."""
    C, H, d = cfg.n_embd, cfg.hidden_dim, cfg.n_embd // cfg.n_head
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, C), "model.norm.weight": (C,)}
    if head:
        shapes["lm_head.weight"] = (cfg.vocab_size, C)
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                   p + "self_attn.q_proj.weight": (cfg.n_head * d, C),
                   p + "self_attn.k_proj.weight": (cfg.n_kv_head * d, C),
                   p + "self_attn.v_proj.weight": (cfg.n_kv_head * d, C),
                   p + "self_attn.o_proj.weight": (C, cfg.n_head * d),
                   p + "mlp.gate_proj.weight": (H, C), p + "mlp.up_proj.weight": (H, C),
                   p + "mlp.down_proj.weight": (C, H)}
    return shapes


def _expect_names(module, want: dict, what: str):
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if got == want:
        return
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    parts = ([f"missing {missing[:4]}"] if missing else []) + ([f"unexpected {unexpected[:4]}"] if unexpected else [])
    parts += [f"{k} has shape {got[k]}, expected {want[k]}" for k in wrong[:3]]
    raise CheckFailed(f"{what}: the parameters should carry Hugging Face's names and shapes; " + "; ".join(parts))


def _randomize(module, g, scale=0.4):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _small_config(**kw):
    from gptlib.llama import LlamaConfig
    sizes = dict(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=16, hidden_dim=24,
                 rope_theta=50.0)
    return LlamaConfig(**(sizes | kw))


# ---- 9.7 the block -----------------------------------------------------------------------------
@exercise("9.7", "The Llama block", builds="gptlib.llama:LlamaBlock", tier="core", difficulty=2, importance=3)
def _(LlamaBlock):
    g = torch.Generator().manual_seed(case_seed(97))
    for n_kv_head in (2, 1):
        cfg = _small_config(n_kv_head=n_kv_head, norm_eps=0.3)
        block = LlamaBlock(cfg)
        shapes = {k.removeprefix("model.layers.0."): v for k, v in _llama_shapes(cfg, head=False).items()
                  if k.startswith("model.layers.0.")}
        _expect_names(block, shapes, f"LlamaBlock(n_kv_head={n_kv_head})")
        _randomize(block, g)
        x = torch.randn(2, 6, 16, generator=g) * 0.5
        cos, sin = (t.float() for t in _cos_sin(4, 0, 6, cfg.rope_theta))
        with torch.no_grad():
            out = block(x, cos, sin)
        sd = {k: v.detach().double() for k, v in block.state_dict().items()}
        want = _layer_ref(sd, "", x.double(), cfg)
        what = f" (n_kv_head={n_kv_head}, norm_eps={cfg.norm_eps})"
        if not _close(out, want, 1e-4):
            wrongs = {"that is Post-norm: Pre-norm normalises the input of each sublayer, "
                      "x + self_attn(input_layernorm(x), ...)": _layer_ref(sd, "", x.double(), cfg, bug="post_norm"),
                      "input_layernorm goes before the attention, post_attention_layernorm before the MLP":
                          _layer_ref(sd, "", x.double(), cfg, bug="swapped"),
                      "add the attention's output to x (the residual): x = x + self_attn(...)":
                          _layer_ref(sd, "", x.double(), cfg, bug="no_attn_residual"),
                      "the MLP reads the sum after the attention, not the block's input: update x first":
                          _layer_ref(sd, "", x.double(), cfg, bug="parallel"),
                      "the norms take config.norm_eps: RMSNorm(n_embd, config.norm_eps)":
                          _layer_ref(sd, "", x.double(), cfg, eps=1e-6)}
            raise CheckFailed((_which(out, wrongs, 1e-4) or "the output differs from "
                               "x + self_attn(input_layernorm(x)), then + mlp(post_attention_layernorm(x))") + what)
        cache, pieces = _Cache(), []
        with torch.no_grad():
            for a, b in ((0, 4), (4, 6)):
                c, s = (t.float() for t in _cos_sin(4, a, b - a, cfg.rope_theta))
                pieces.append(block(x[:, a:b], c, s, cache=cache))
        expect(cache.length == 6 and _close(torch.cat(pieces, 1), want, 1e-4),
               "run in two pieces with a cache, the block's output differs from one pass: hand the cache "
               "to the attention, self.self_attn(..., cache=cache)" + what)
    block = LlamaBlock(_small_config(mlp="gelu"))
    expect(not hasattr(block.mlp, "gate_proj") and sum(p.numel() for p in block.mlp.parameters()) == 8 * 16 * 16,
           "with config.mlp == 'gelu' the MLP is Chapter 5's MLP(n_embd, bias=False): 8 * n_embd**2 parameters")


# ---- 9.8 the model -----------------------------------------------------------------------------
@exercise("9.8", "The model's forward pass", builds="gptlib.llama:Llama", tier="core", difficulty=3, importance=3)
def _(Llama):
    from gptlib.model import IGNORE_INDEX
    from gptlib.sampling import KVCache
    g = torch.Generator().manual_seed(case_seed(98))
    for tie, n_kv_head in ((True, 2), (False, 1)):
        cfg = _small_config(n_kv_head=n_kv_head, tie_embeddings=tie)
        what = f" (tie_embeddings={tie}, n_kv_head={n_kv_head})"
        model = Llama(cfg)
        _expect_names(model, _llama_shapes(cfg), "Llama" + what)
        head, emb = model.lm_head.weight, model.model.embed_tokens.weight
        expect((head is emb) == tie, ("with tie_embeddings=True the head is the embedding's matrix: "
                                      "self.lm_head.weight = self.model.embed_tokens.weight") if tie else
               "with tie_embeddings=False the head has a matrix of its own: do not tie it")
        expect(model.lm_head.bias is None, "lm_head is bias-free: nn.Linear(n_embd, vocab_size, bias=False)")
        _randomize(model, g)
        idx = torch.randint(0, cfg.vocab_size, (2, 9), generator=g)
        targets = torch.randint(0, cfg.vocab_size, (2, 9), generator=g)
        targets[0, :3] = IGNORE_INDEX
        targets[1, -1] = IGNORE_INDEX
        try:
            with torch.no_grad():
                logits, loss = model(idx, targets)
        except NotImplementedError:
            raise
        except (RuntimeError, ValueError, IndexError) as err:
            raise CheckFailed(f"model(idx, targets) raised: {err}. F.cross_entropy takes logits (B * T, "
                              "vocab_size) and targets (B * T,): reshape both" + what) from None
        want = _model_ref(model, idx)
        if not _close(logits, want, 1e-4):
            hint = _which(logits, {"apply the final norm, self.model.norm, before the head":
                                   _model_ref(model, idx, "no_final_norm")}, 1e-4)
            raise CheckFailed((hint or "the logits differ from embed -> blocks (with the angles of positions "
                               "0 .. T - 1) -> final norm -> lm_head") + what)
        V = cfg.vocab_size
        want_loss = F.cross_entropy(want.reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and abs(loss.item() - want_loss.item()) < 1e-4):
            shifted = F.cross_entropy(want[:, :-1].reshape(-1, V), targets[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
            if isinstance(loss, torch.Tensor) and loss.numel() == 1 and abs(loss.item() - shifted.item()) < 1e-4:
                raise CheckFailed("targets are already the next tokens (targets[:, t] follows idx[:, t]): do not "
                                  "shift them again" + what)
            raise CheckFailed("the loss should be the mean cross-entropy of the logits over the targets that are "
                              f"not IGNORE_INDEX ({IGNORE_INDEX}), one number" + what)
        with torch.no_grad():
            plain, none = model(idx)
            last = model.next_token_logits(idx)
        expect(none is None and _close(plain, want, 1e-4), "model(idx) without targets returns (logits, None)")
        expect(_close(last, want[:, -1], 1e-4), "next_token_logits(idx) is the head on the last position only: "
               "(B, vocab_size)" + what)
        cache, pieces, start = KVCache(cfg.n_layer, 16), [], 0
        with torch.no_grad():
            for n in (4, 1, 4):
                pieces.append(model(idx[:, start:start + n], cache=cache)[0])
                start += n
        expect(all(layer.length == 9 for layer in cache.layers),
               "run in pieces through a KVCache, every layer's cache should hold 9 positions: hand block i "
               "its layer's cache, cache.layers[i]" + what)
        expect(_close(torch.cat(pieces, 1), want, 1e-4),
               "run in pieces through a KVCache (4, 1, then 4 tokens), the logits differ from one pass: with "
               "a cache, idx's first token sits at position len(cache), so the angles start there" + what)


# ---- 9.9 loading Hugging Face weights ----------------------------------------------------------
def _hf_state_dict(cfg, g, head):
    """Random tensors under Hugging Face's names; head: 'tied' (a copy of the embedding), 'absent'
    or 'own' (a matrix of its own)."""
    sd = {k: torch.randn(shape, generator=g) for k, shape in _llama_shapes(cfg, head=False).items()}
    if head == "tied":
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    elif head == "own":
        sd["lm_head.weight"] = torch.randn(cfg.vocab_size, cfg.n_embd, generator=g)
    return sd


@exercise("9.9", "Load Hugging Face weights", builds="gptlib.llama:Llama", tier="core", difficulty=2, importance=3)
def _(Llama):
    g = torch.Generator().manual_seed(case_seed(99))
    hints = {(True, "tied"): "a tied model's state dict holds lm_head.weight too (equal to model.embed_tokens.weight), "
                             "and named_parameters lists the shared matrix once: take lm_head.weight out first",
             (True, "absent"): "a tied state dict may leave lm_head.weight out: take it out only when it is there",
             (False, "own"): "an untied model (tie_embeddings=False) loads lm_head.weight as a matrix of its own: "
                             "take it out only when the config ties the head"}
    for (tie, head), hint in hints.items():
        cfg = _small_config(tie_embeddings=tie)
        sd = _hf_state_dict(cfg, g, head)
        given = {k: v.clone() for k, v in sd.items()}
        try:
            model = Llama.from_hf_state_dict(sd, cfg)
        except NotImplementedError:
            raise
        except (ValueError, KeyError) as err:
            raise CheckFailed(f"{hint} (yours raised: {err})") from None
        except RuntimeError as err:
            raise CheckFailed("copy under torch.no_grad(): an in-place change of a Parameter that requires grad "
                              f"raises otherwise (yours raised: {err})") from None
        expect(set(sd) == set(given), "do not change the state dict you were given: work on a copy, dict(state_dict)")
        state = model.state_dict()
        differ = sorted(k for k in given if k in state and not torch.equal(state[k], given[k]))
        expect(not differ, f"after loading, {differ[:3]} differ from the state dict's tensors: copy each tensor "
               "into its parameter in place, param.copy_(tensors[key])")
        if tie:
            expect(model.lm_head.weight is model.model.embed_tokens.weight,
                   "loading must keep the head tied: copy into the model's own Parameters, do not replace them")
    cfg = _small_config(tie_embeddings=True)
    try:
        Llama.from_hf_state_dict(_hf_state_dict(cfg, g, "own"), cfg)
    except ValueError:
        return
    raise CheckFailed("a tied config was given a state dict whose lm_head.weight differs from "
                      "model.embed_tokens.weight, and loaded it: raise a ValueError (that checkpoint is untied)")


# ---- 9.11 the rolling cache --------------------------------------------------------------------
def _store(cache, positions):
    """What a model's layers would store: keys that hold their position (and the layer), values minus that."""
    k = torch.tensor(positions, dtype=torch.float32).view(1, 1, -1, 1).expand(1, 2, -1, 3)
    for i, layer in enumerate(cache.layers):
        layer.update(k + 1000 * i, -(k + 1000 * i))


@exercise("9.11", "A cache that rolls", builds="gptlib.llama:RollingKVCache", tier="core", difficulty=2,
          importance=2)
def _(RollingKVCache):
    cap, n_layer = 4, 2
    idx = torch.arange(100, 112)[None]                      # token 100 + p sits at position p
    short = RollingKVCache(n_layer, cap)
    expect(torch.equal(short.next_input(idx[:, :2]), idx[:, :2]),
           "an empty cache is filled first, with the prompt: idx[:, -capacity:] (all of it when it fits)")
    cache = RollingKVCache(n_layer, cap)
    first = cache.next_input(idx[:, :6])
    expect(torch.equal(first, idx[:, 2:6]), "an empty cache is filled first: it runs the last `capacity` "
           f"tokens, idx[:, -capacity:] (a prompt of 6 tokens, capacity {cap})")
    _store(cache, list(range(cap)))
    for step in range(5):
        seen = cap + step
        out = cache.next_input(idx[:, :seen + 1])
        lengths = [layer.length for layer in cache.layers]
        expect(0 not in lengths, "do not empty a full cache: drop its oldest position and keep the others "
               "(their keys are already rotated by their own positions)")
        expect(lengths == [cap - 1] * n_layer, f"a full cache lets one position go in every layer: after it, "
               f"each layer.length should be {cap - 1}; got {lengths}")
        held = list(range(step + 1, step + cap))
        keys = cache.layers[1].keys[0, 0, :cap - 1, 0].tolist()
        if keys != [1000 + p for p in held]:
            expect(keys[0] != 1000 + step, "drop the oldest position (slot 0): move keys[:, :, 1:] to "
                   "keys[:, :, :-1], so that the newest slot is the one freed")
            raise CheckFailed(f"after rolling, the cache should hold the keys of positions {held}; it holds "
                              f"{[k - 1000 for k in keys]}")
        expect(cache.layers[1].values[0, 0, :cap - 1, 0].tolist() == [-(1000 + p) for p in held],
               "roll the values with the keys: every layer's values move one slot too")
        expect(torch.equal(out, idx[:, seen:seen + 1]), "after the first call only the newest token runs: idx[:, -1:]")
        expect(len(cache) == seen, f"len(cache) counts every position seen ({seen} here), the dropped ones "
               f"included: add one to self.dropped per position that leaves; got {len(cache)}")
        _store(cache, [seen])
    # a one-layer model: rolling computes the last window exactly
    from gptlib.llama import Llama
    torch.manual_seed(case_seed(1))
    model = Llama(_small_config(n_layer=1, block_size=6)).eval()
    tokens, cache = torch.tensor([[1, 2, 3]]), RollingKVCache(1, 6)
    with torch.no_grad():
        for _ in range(10):
            logits = model.next_token_logits(cache.next_input(tokens), cache=cache)
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], 1)
        cropped = model.next_token_logits(tokens[:, :-1][:, -6:])
    expect(_close(logits, cropped, 1e-4), "a one-layer Llama decoding past its window with your cache should give "
           "the logits of the last window run from scratch")


# ---- 9.12 equal parameter counts ---------------------------------------------------------------
def _count(cfg) -> int:
    C, d = cfg.n_embd, cfg.n_embd // cfg.n_head
    layer = 2 * C * cfg.n_head * d + 2 * C * cfg.n_kv_head * d + 3 * C * cfg.hidden_dim + 2 * C
    return cfg.vocab_size * C * (1 if cfg.tie_embeddings else 2) + cfg.n_layer * layer + C


@exercise("9.12", "Equal parameter counts", builds="gptlib.llama:matched_llama_config", tier="warm-up",
          difficulty=2, importance=1)
def _(matched_llama_config):
    import math
    from dataclasses import replace
    cases = [(37, dict(vocab_size=65, block_size=32, n_layer=4, n_head=4, n_kv_head=2, n_embd=64)),
             (90, dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
                       tie_embeddings=False)),
             (13, dict(vocab_size=30, block_size=8, n_layer=3, n_head=4, n_kv_head=4, n_embd=16))]
    for width, sizes in cases:
        cfg0 = _small_config(**(sizes | {"hidden_dim": 1}))
        unit = 3 * cfg0.n_embd * cfg0.n_layer
        base = _count(cfg0) - unit                      # the count without any SwiGLU width
        target = base + int(unit * (width + 0.7))       # the best width is width + 1
        cfg = matched_llama_config(target, **sizes)
        expect(all(getattr(cfg, k) == v for k, v in sizes.items()),
               f"matched_llama_config({target}, **sizes) should keep every size it was given: {sizes}")
        got = cfg.hidden_dim
        if got == width + 1:
            continue
        C, L = cfg0.n_embd, cfg0.n_layer
        wrongs = {"each unit of width adds 3 * n_embd parameters in every one of the n_layer blocks":
                      round((target - base) / (3 * C)),
                  "SwiGLU has three matrices: a unit of width costs 3 * n_embd per layer":
                      round((target - base) / (2 * C * L)),
                  "subtract what the model has without its SwiGLU width (counted at hidden_dim=1, less one unit)":
                      round(target / unit),
                  "round to the nearest width, not down": math.floor((target - base) / unit)}
        hint = next((h for h, w in wrongs.items() if w == got and w != width + 1), None)
        raise CheckFailed(hint or f"for {target:,} parameters with {sizes} the width should be {width + 1} "
                          f"({_count(replace(cfg0, hidden_dim=width + 1)):,} parameters); got hidden_dim={got}")
