"""Chapter 9 checks: RMSNorm, RoPE, SwiGLU, the key/value head repetition, the attention of a
Llama block and the KV cache's memory.

Each check compares the learner's component with a small private reference kept here (never
with ``gptlib.llama`` itself, which a learner's own export would be) and with exact properties
(a rotation keeps lengths; a score depends only on the offset between positions). When the
candidate matches a known mistake, the hint names it.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from gptlib.exercises import CheckFailed, exercise, expect


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
    B, T, _ = x.shape
    H, K, d = att.n_head, att.n_kv_head, att.head_dim
    W = {n: getattr(att, n).weight.detach().double() for n in ("q_proj", "k_proj", "v_proj", "o_proj")}
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
    g = torch.Generator().manual_seed(9)
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
    g = torch.Generator().manual_seed(93)
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
    g = torch.Generator().manual_seed(94)
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
    g = torch.Generator().manual_seed(95)
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
    g = torch.Generator().manual_seed(96)
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


# ---- 9.7 the cache's memory --------------------------------------------------------------------
@exercise("9.7", "The cache's memory, predicted", builds="gptlib.llama:kv_cache_bytes", tier="stretch",
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
        torch.manual_seed(0)
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
