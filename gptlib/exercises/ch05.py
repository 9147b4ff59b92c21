"""Checks for Chapter 5 (the transformer block and the GPT model). Hand-written.

The learner builds ``gptlib.block`` and ``gptlib.model`` in the chapter's exported cells; these
checks never compare with those two modules (a learner's own export would pass against itself).
They compare with PyTorch's own operations (``F.layer_norm``, ``F.gelu``, ``F.linear``,
``F.scaled_dot_product_attention``, ``F.cross_entropy``), with a Hugging Face GPT-2 of random
weights when ``transformers`` is installed (else with the small functional GPT-2 below), with
exact properties (names, shapes, tying, the cache) and with the private references below. When an
answer is wrong they compute what the usual mistakes would have produced and, when the learner's
answer is one of them, name it: first the property that broke and the input that shows it.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlib.exercises import CheckFailed, case_seed, exercise, expect

_IGNORE = -100
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _close(a, b, atol: float = 1e-4) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4))


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


@torch.no_grad()
def _randomise(module: nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Every parameter matters: gains in [0.5, 1.5], everything else N(0, scale^2)."""
    g = torch.Generator().manual_seed(case_seed(seed))
    for name, p in module.named_parameters():
        if p.dim() == 1 and name.endswith("weight"):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        else:
            p.copy_(torch.randn(p.shape, generator=g) * scale)


# --------------------------------------------------------------------------- private references
def _ln(x, ln, eps: float = 1e-5):
    return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, eps)


def _attn(x, attn, n_head: int):
    """Causal self-attention from attn's c_attn and c_proj weights, through PyTorch's SDPA."""
    B, T, C = x.shape
    q, k, v = F.linear(x, attn.c_attn.weight, attn.c_attn.bias).split(C, dim=2)
    q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    return F.linear(y, attn.c_proj.weight, attn.c_proj.bias)


def _mlp(x, mlp, gelu: str = "tanh"):
    h = F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias)
    h = F.relu(h) if gelu == "relu" else h if gelu == "none" else F.gelu(h, approximate=gelu)
    return F.linear(h, mlp.c_proj.weight, mlp.c_proj.bias)


def _count(c) -> int:
    """Parameters of GPT(c): tied head, two LayerNorms per block and ln_f, biases when c.bias."""
    V, T, L, C, b = c.vocab_size, c.block_size, c.n_layer, c.n_embd, int(c.bias)
    ln = C + b * C
    attn = 3 * C * C + 3 * b * C + C * C + b * C
    mlp = 8 * C * C + 5 * b * C
    return V * C + T * C + L * (2 * ln + attn + mlp) + ln


# --------------------------------------------------------------------------- 5.1 LayerNorm
def _ln_variants(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return {
        "unbiased": (x - mean) / torch.sqrt(x.var(-1, unbiased=True, keepdim=True) + eps) * w + b,
        "eps_outside": (x - mean) / (torch.sqrt(var) + eps) * w + b,
        "no_affine": (x - mean) / torch.sqrt(var + eps),
        "no_eps": (x - mean) / torch.sqrt(var) * w + b,
        "wrong_axis": (x - x.mean(0, keepdim=True)) / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + eps) * w + b,
    }


_LN_HINTS = {
    "unbiased": "the output is off by a constant factor: you used the unbiased variance (divide "
                "by C-1); LayerNorm divides by C: use ((x - mean)**2).mean(-1)",
    "eps_outside": "inputs with a tiny variance come out wrong: epsilon belongs inside the square "
                   "root, (x - mean) / sqrt(var + eps), not (x - mean) / (sqrt(var) + eps)",
    "no_affine": "the output ignores weight and bias: after normalising, apply the learned scale "
                 "and shift (* self.weight + self.bias)",
    "no_eps": "inputs with a tiny variance come out wrong: add eps to the variance before the "
              "square root",
    "wrong_axis": "each token vector must be normalised over its own features (the last "
                  "dimension, dim=-1), not over the batch",
}


@exercise("5.1", "LayerNorm, written out", builds="gptlib.block:LayerNorm", tier="core",
          difficulty=2, importance=3, forbids=("F.layer_norm", "nn.LayerNorm"))
def _(LayerNorm):
    ln = LayerNorm(8, fused=False)
    params = dict(ln.named_parameters())
    expect(set(params) == {"weight", "bias"},
           f"LayerNorm(8) should have two parameters, weight and bias; it has {sorted(params)}")
    expect(tuple(ln.weight.shape) == (8,) and tuple(ln.bias.shape) == (8,),
           f"weight and bias hold one number per feature: shape (8,) for LayerNorm(8), got "
           f"{_shape(ln.weight)} and {_shape(ln.bias)}")
    expect(torch.all(ln.weight == 1) and torch.all(ln.bias == 0),
           "a fresh LayerNorm changes nothing after normalising: weight starts at ones, bias at zeros")
    no_bias = LayerNorm(8, bias=False, fused=False)
    expect(no_bias.bias is None and len(list(no_bias.parameters())) == 1,
           "LayerNorm(8, bias=False) has no shift: its bias attribute is None and weight is its "
           "only parameter")
    g = torch.Generator().manual_seed(case_seed(5))
    probes = [  # (x, eps, bias): ordinary values, tiny variance (eps matters), few features (C-1 vs C)
        (torch.randn(3, 5, 8, generator=g) * 2 + 1, 1e-5, True),
        (torch.randn(4, 6, 16, generator=g) * 3e-3 + 0.5, 1e-5, True),
        (torch.randn(6, 4, generator=g), 1e-5, True),
        (torch.randn(2, 3, 8, generator=g) * 0.1, 1e-2, True),
        (torch.randn(2, 7, 12, generator=g) * 3 - 1, 1e-5, False),
    ]
    for x, eps, bias in probes:
        C = x.shape[-1]
        ln = LayerNorm(C, bias=bias, eps=eps, fused=False)
        w = torch.randn(C, generator=g) * 0.5 + 1
        b = torch.randn(C, generator=g) * 0.5 if bias else None
        with torch.no_grad():
            ln.weight.copy_(w)
            if bias:
                ln.bias.copy_(b)
        ref = F.layer_norm(x, (C,), w, b, eps)
        with torch.no_grad():
            out = ln(x.clone())
        where = f"for x of shape {tuple(x.shape)} (eps={eps}, bias={bias})"
        expect(isinstance(out, torch.Tensor), f"forward should return a tensor, got {type(out).__name__}")
        expect(out.shape == x.shape, f"{where} the output should keep x's shape, got {_shape(out)}")
        if _close(out, ref):
            continue
        for name, wrong in _ln_variants(x, w, 0.0 if b is None else b, eps).items():
            if _close(out, wrong):
                raise CheckFailed(f"{where}: {_LN_HINTS[name]}")
        raise CheckFailed(f"{where} the output differs from F.layer_norm: compute the mean and the "
                          "variance over the last dimension, (x - mean) / sqrt(var + eps), then "
                          "* weight (+ bias when there is one)")
    x = (torch.randn(2, 4, 8, generator=g) * 2 + 1).to(torch.bfloat16)
    with torch.no_grad():
        out = LayerNorm(8, fused=False).to(torch.bfloat16)(x)
    expect(out.dtype == torch.bfloat16,
           f"a bfloat16 input should give a bfloat16 output, got {out.dtype}: compute the "
           "statistics in float32, then cast the normalised x back with .to(x.dtype)")
    expect(_close(out, F.layer_norm(x.float(), (8,)), atol=3e-2),
           "a bfloat16 input comes out wrong: compute the statistics on x.float(), then cast back")


# --------------------------------------------------------------------------- 5.2 GELU
def _gelu_variants(x):
    c = math.sqrt(2 / math.pi)
    return {
        "erf": (F.gelu(x), "that is the exact (erf) GELU; GPT-2 uses the tanh approximation, "
                           "0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"),
        "no_half": (x * (1 + torch.tanh(c * (x + 0.044715 * x ** 3))),
                    "the output is twice too large: the formula starts with 0.5 * x"),
        "no_coef": (0.5 * x * (1 + torch.tanh(c * (x + x ** 3))),
                    "the cubic term has a coefficient: x + 0.044715 * x**3"),
        "inverted": (0.5 * x * (1 + torch.tanh(math.sqrt(math.pi / 2) * (x + 0.044715 * x ** 3))),
                     "the factor in front is sqrt(2 / pi), not sqrt(pi / 2)"),
        "relu": (F.relu(x), "that is ReLU: GELU is smooth and lets small negative inputs through"),
    }


@exercise("5.2", "GELU, tanh form", builds="gptlib.block:GELU", tier="warm-up", difficulty=1,
          importance=2, forbids=("F.gelu", "nn.GELU"))
def _(GELU):
    gelu = GELU(fused=False)
    g = torch.Generator().manual_seed(case_seed(52))
    for x in (torch.linspace(-8, 8, 2001), torch.randn(3, 5, 7, generator=g) * 3):
        with torch.no_grad():
            out = gelu(x.clone())
        expect(isinstance(out, torch.Tensor) and out.shape == x.shape,
               f"GELU is elementwise: for x of shape {tuple(x.shape)} return the same shape, got "
               f"{_shape(out)}")
        if _close(out, F.gelu(x, approximate="tanh"), atol=1e-5):
            continue
        for wrong, hint in _gelu_variants(x).values():
            if _close(out, wrong, atol=1e-5):
                raise CheckFailed(hint)
        bad = (out - F.gelu(x, approximate="tanh")).abs().argmax()
        raise CheckFailed(f"gelu({x.flatten()[bad].item():.3f}) should be "
                          f"{F.gelu(x, approximate='tanh').flatten()[bad].item():.5f}, got "
                          f"{out.flatten()[bad].item():.5f}: compare with the tanh formula term by term")


# --------------------------------------------------------------------------- 5.3 MLP
@exercise("5.3", "The MLP", builds="gptlib.block:MLP", tier="warm-up", difficulty=1, importance=2)
def _(MLP):
    torch.manual_seed(case_seed(53))
    for C, expansion, bias, p in ((8, 4, True, 0.0), (12, 2, False, 0.5), (16, 4, True, 0.1)):
        mlp = MLP(C, dropout=p, bias=bias, expansion=expansion)
        where = f"MLP({C}, dropout={p}, bias={bias}, expansion={expansion})"
        names = [n for n, _ in mlp.named_children()]
        expect(names == ["c_fc", "gelu", "c_proj", "dropout"],
               f"{where} has the submodules {names}: name them c_fc, gelu, c_proj, dropout, in "
               "this order (GPT-2's names: its weights load by name)")
        expect(isinstance(mlp.c_fc, nn.Linear) and isinstance(mlp.c_proj, nn.Linear),
               "c_fc and c_proj are nn.Linear layers")
        H = expansion * C
        expect(tuple(mlp.c_fc.weight.shape) == (H, C) and tuple(mlp.c_proj.weight.shape) == (C, H),
               f"{where}: the hidden width is expansion * n_embd = {H}, so c_fc maps {C} -> {H} "
               f"and c_proj {H} -> {C}; got c_fc.weight {_shape(mlp.c_fc.weight)} and "
               f"c_proj.weight {_shape(mlp.c_proj.weight)}")
        expect((mlp.c_fc.bias is not None) == bias and (mlp.c_proj.bias is not None) == bias,
               f"{where}: both linear layers take bias=bias")
        expect(isinstance(mlp.dropout, nn.Dropout) and mlp.dropout.p == p,
               f"{where}: dropout is nn.Dropout({p}), got {mlp.dropout!r}")
        _randomise(mlp, seed=C)
        x = torch.randn(4, 16, C) * 2
        mlp.eval()
        with torch.no_grad():
            out, ref = mlp(x), _mlp(x, mlp)
        expect(isinstance(out, torch.Tensor) and out.shape == x.shape,
               f"{where} should map x {tuple(x.shape)} to the same shape, got {_shape(out)}")
        if not _close(out, ref):
            with torch.no_grad():
                for kind, hint in (("none", "there is no activation between c_fc and c_proj: "
                                            "apply self.gelu in between"),
                                   ("relu", "that is ReLU between the layers: use self.gelu"),
                                   ("none" if bias else "erf", "the activation is the exact erf GELU: "
                                                               "use self.gelu (the tanh GELU above)")):
                    if _close(out, _mlp(x, mlp, kind)):
                        raise CheckFailed(f"{where}: {hint}")
            raise CheckFailed(f"{where}: the output differs from c_proj(gelu(c_fc(x))): apply "
                              "c_fc, then gelu, then c_proj, then dropout")
        if p >= 0.5:
            mlp.train()
            with torch.no_grad():
                zeros = (mlp(x) == 0).float().mean().item()
            expect(0.3 < zeros < 0.7,
                   f"{where} in training mode zeroes {zeros:.0%} of its outputs, expected about "
                   f"{p:.0%}: apply self.dropout last, to the output of c_proj")


# --------------------------------------------------------------------------- 5.4 / 5.5 blocks
def _block_cfg(n_embd, n_head, dropout, bias, block_size):
    return SimpleNamespace(n_embd=n_embd, n_head=n_head, dropout=dropout, bias=bias,
                           block_size=block_size)


_BLOCK_CONFIGS = [_block_cfg(16, 2, 0.0, True, 8), _block_cfg(24, 4, 0.1, False, 12)]


def _wirings(block, H):
    a = lambda x: _attn(x, block.attn, H)  # noqa: E731
    m = lambda x: _mlp(x, block.mlp)       # noqa: E731
    l1 = lambda x: _ln(x, block.ln_1)      # noqa: E731
    l2 = lambda x: _ln(x, block.ln_2)      # noqa: E731

    def pre_ln(x):
        x = x + a(l1(x))
        return x + m(l2(x))

    def post_ln(x):
        x = l1(x + a(x))
        return l2(x + m(x))

    def no_residual(x):
        return m(l2(a(l1(x))))

    def attn_no_residual(x):
        x = a(l1(x))
        return x + m(l2(x))

    def mlp_no_residual(x):
        x = x + a(l1(x))
        return m(l2(x))

    def norm_on_residual(x):
        x = l1(x) + a(l1(x))
        return l2(x) + m(l2(x))

    def mlp_first(x):
        x = x + m(l2(x))
        return x + a(l1(x))

    def no_norm(x):
        x = x + a(x)
        return x + m(x)

    def swapped_norms(x):
        x = x + a(l2(x))
        return x + m(l1(x))

    return {
        "pre_ln": (pre_ln, "that is the Pre-LN wiring (GPT-2's); the Post-LN block normalises "
                           "after each residual addition: x = ln_1(x + attn(x)), then "
                           "x = ln_2(x + mlp(x))"),
        "post_ln": (post_ln, "that is the Post-LN wiring (normalise after adding the residual); "
                             "GPT-2 is Pre-LN: x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))"),
        "no_residual": (no_residual, "the residual connections are missing: add each sublayer's "
                                     "output back to its input, x = x + attn(ln_1(x))"),
        "attn_no_residual": (attn_no_residual, "the attention sublayer has no residual connection: "
                                               "x = x + attn(ln_1(x)), not x = attn(ln_1(x))"),
        "mlp_no_residual": (mlp_no_residual, "the MLP sublayer has no residual connection: "
                                             "x = x + mlp(ln_2(x)), not mlp(ln_2(x))"),
        "norm_on_residual": (norm_on_residual, "the residual path must carry x itself, not the "
                                               "normalised x: x = x + attn(ln_1(x))"),
        "mlp_first": (mlp_first, "attention comes first, then the MLP"),
        "no_norm": (no_norm, "the LayerNorms are missing: apply ln_1 before attention and ln_2 "
                             "before the MLP"),
        "swapped_norms": (swapped_norms, "each sublayer has its own LayerNorm: ln_1 goes before "
                                         "attention, ln_2 before the MLP"),
    }


class _SpyAttention(nn.Module):
    """Stands in for a block's attention layer and records how it is called."""

    def __init__(self, attn):
        super().__init__()
        self.inner, self.calls = attn, []

    def forward(self, x, *args, cache=None, **kwargs):
        self.calls.append((args, kwargs, cache))
        return self.inner(x)


def _check_block(cls, name: str, wiring: str) -> None:
    for cfg in _BLOCK_CONFIGS:
        where = (f"{name}(config) with n_embd={cfg.n_embd}, n_head={cfg.n_head}, "
                 f"dropout={cfg.dropout}, bias={cfg.bias}, block_size={cfg.block_size}")
        block = cls(cfg)
        names = [n for n, _ in block.named_children()]
        expect(names == ["ln_1", "attn", "ln_2", "mlp"],
               f"{where} has the submodules {names}: build ln_1, attn, ln_2, mlp, in this order "
               "(GPT-2's names: its weights load by name)")
        C = cfg.n_embd
        for ln_name in ("ln_1", "ln_2"):
            ln = getattr(block, ln_name)
            expect(tuple(getattr(ln, "weight", torch.empty(0)).shape) == (C,),
                   f"{where}: {ln_name} is a LayerNorm(n_embd) with a weight of shape ({C},)")
            expect((getattr(ln, "bias", None) is not None) == cfg.bias,
                   f"{where}: {ln_name} takes bias=config.bias")
        attn = block.attn
        expect(getattr(attn, "n_head", None) == cfg.n_head,
               f"{where}: attn has n_head={getattr(attn, 'n_head', None)}; give it config.n_head")
        expect(getattr(attn, "block_size", None) == cfg.block_size
               and getattr(attn, "dropout", None) == cfg.dropout,
               f"{where}: give the attention layer the config's dropout and block_size")
        expect((attn.c_attn.bias is not None) == cfg.bias and (block.mlp.c_fc.bias is not None) == cfg.bias,
               f"{where}: the attention layer and the MLP take bias=config.bias")
        expect(getattr(block.mlp.dropout, "p", None) == cfg.dropout,
               f"{where}: the MLP takes dropout=config.dropout")
        _randomise(block, seed=C)
        block.eval()
        x = torch.randn(2, cfg.block_size, C) * 2 + 0.5
        with torch.no_grad():
            out = block(x.clone())
            expect(isinstance(out, torch.Tensor) and out.shape == x.shape,
                   f"{where} must keep the shape {tuple(x.shape)}, got {_shape(out)}")
            wirings = _wirings(block, cfg.n_head)
            if not _close(out, wirings[wiring][0](x)):
                for key, (fn, hint) in wirings.items():
                    if key != wiring and _close(out, fn(x)):
                        raise CheckFailed(f"{where}: {hint}")
                raise CheckFailed(f"{where}: the output differs from the {name} wiring "
                                  f"({'x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))' if wiring == 'pre_ln' else 'x = ln_1(x + attn(x)), then x = ln_2(x + mlp(x))'}), "
                                  "using the block's own submodules")
        spy = _SpyAttention(block.attn)
        block.attn = spy
        token = object()
        with torch.no_grad():
            block(x, cache=token)
        caches = [c for _, _, c in spy.calls]
        expect(spy.calls and not any(args for args, _, _ in spy.calls),
               f"{name}.forward passes the cache to attention positionally; the second parameter "
               "of CausalSelfAttention.forward is need_weights: pass it by name, cache=cache")
        expect(caches == [token],
               f"{name}.forward(x, cache=c) must hand c to the attention layer, "
               "self.attn(..., cache=cache): Chapter 7's KV cache goes through it")


@exercise("5.4", "The Pre-LN block", builds="gptlib.block:Block", tier="core", difficulty=2,
          importance=3)
def _(Block):
    _check_block(Block, "Block", "pre_ln")


@exercise("5.5", "The Post-LN block", builds="gptlib.block:PostLNBlock", tier="warm-up",
          difficulty=1, importance=2)
def _(PostLNBlock):
    _check_block(PostLNBlock, "PostLNBlock", "post_ln")


# --------------------------------------------------------------------------- 5.6 - 5.8 GPT
class _CountBlock(nn.Module):
    """A stand-in block with a known number of parameters (n_embd^2 + n_embd)."""

    def __init__(self, config):
        super().__init__()
        self.proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x, cache=None):
        return x + self.proj(x)


def _config_class(GPT):
    """The GPTConfig that ``GPT`` checks its config against: the one beside its ``__init__`` (a
    notebook defines its own), else gptlib's."""
    cls = getattr(GPT.__init__, "__globals__", {}).get("GPTConfig")
    if not isinstance(cls, type):
        from gptlib.model import GPTConfig as cls
    return cls


def _without_init(GPT):
    """``GPT`` with reset_parameters switched off: 5.6 checks the modules, 5.7 the numbers."""
    class Probe(GPT):
        def reset_parameters(self, std: float = 0.02) -> None:
            pass
    return Probe


def _assembly(GPT) -> None:
    GPTConfig = _config_class(GPT)

    configs = [GPTConfig(vocab_size=50, block_size=12, n_layer=3, n_head=2, n_embd=16),
               GPTConfig(vocab_size=37, block_size=9, n_layer=2, n_head=4, n_embd=24, bias=False,
                         dropout=0.1)]
    Probe = _without_init(GPT)
    for cfg in configs:
        V, T, L, C = cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd
        where = (f"GPT(GPTConfig(vocab_size={V}, block_size={T}, n_layer={L}, n_embd={C}, "
                 f"bias={cfg.bias}), block_cls=...)")
        m = Probe(cfg, block_cls=_CountBlock)
        tr = getattr(m, "transformer", None)
        expect(isinstance(tr, nn.ModuleDict), "self.transformer should be an nn.ModuleDict, got "
                                              f"{type(tr).__name__}")
        keys = list(tr.keys())
        expect(keys == ["wte", "wpe", "drop", "h", "ln_f"],
               f"{where}: self.transformer holds {keys}; it should hold wte, wpe, drop, h and "
               "ln_f, in this order (GPT-2's names)")
        expect(tuple(tr.wte.weight.shape) == (V, C),
               f"{where}: wte has one row per token, shape ({V}, {C}), got {_shape(tr.wte.weight)}")
        expect(tuple(tr.wpe.weight.shape) == (T, C),
               f"{where}: wpe has one row per position, shape (block_size, n_embd) = ({T}, {C}), "
               f"got {_shape(tr.wpe.weight)}")
        expect(isinstance(tr.drop, nn.Dropout) and tr.drop.p == cfg.dropout,
               f"{where}: drop is nn.Dropout(config.dropout), got {tr.drop!r}")
        expect(isinstance(tr.h, nn.ModuleList) and len(tr.h) == L,
               f"{where}: h is an nn.ModuleList of n_layer = {L} blocks, got "
               f"{len(tr.h) if isinstance(tr.h, nn.ModuleList) else type(tr.h).__name__}")
        expect(all(isinstance(b, _CountBlock) for b in tr.h),
               f"{where}: the blocks must be made with block_cls(config), not with a fixed class: "
               f"GPT(config, block_cls=PostLNBlock) gives Post-LN blocks; got "
               f"{type(tr.h[0]).__name__}")
        expect(tuple(getattr(tr.ln_f, "weight", torch.empty(0)).shape) == (C,)
               and (getattr(tr.ln_f, "bias", None) is not None) == cfg.bias,
               f"{where}: ln_f is LayerNorm(n_embd, bias=config.bias)")
        head = getattr(m, "lm_head", None)
        expect(isinstance(head, nn.Linear), f"lm_head should be an nn.Linear, got {type(head).__name__}")
        expect(head.bias is None, "GPT-2's LM head has no bias: nn.Linear(n_embd, vocab_size, bias=False)")
        expect(tuple(head.weight.shape) == (V, C),
               f"{where}: lm_head.weight should have shape (vocab_size, n_embd) = ({V}, {C}), got "
               f"{_shape(head.weight)}: nn.Linear stores (out_features, in_features), already the "
               "embedding's shape, so no transpose is needed")
        if head.weight is not tr.wte.weight:
            if torch.equal(head.weight.detach(), tr.wte.weight.detach()):
                raise CheckFailed("lm_head holds a copy of the embedding: a copy is a second "
                                  "matrix that drifts away during training. Tie the Parameter "
                                  "itself: self.lm_head.weight = self.transformer.wte.weight")
            raise CheckFailed(f"{where}: the LM head has a matrix of its own "
                              f"({V * C:,} more parameters); weight tying makes it the token "
                              "embedding's Parameter itself: self.lm_head.weight = "
                              "self.transformer.wte.weight")
        n = sum(p.numel() for p in m.parameters())
        want = V * C + T * C + L * (C * C + C) + C * (1 + int(cfg.bias))
        expect(n == want, f"{where} has {n:,} parameters, expected {want:,} (embeddings, the "
                          "blocks, ln_f, and nothing for the tied head)")
        got = m.num_parameters()
        if got != want:
            hint = ("the tied head is counted twice (state_dict() lists the shared matrix under "
                    "both names; parameters() yields it once)" if got == want + V * C else
                    "count every parameter's elements, p.numel(), the tied matrix once")
            raise CheckFailed(f"{where}: num_parameters() gives {got:,}, the model has {want:,}: {hint}")
        got = m.num_parameters(non_embedding=True)
        if got != want - V * C - T * C:
            hint = ("the position table wpe is an embedding too: leave it out as well"
                    if got == want - V * C else
                    "leave out the token table wte and the position table wpe, nothing else")
            raise CheckFailed(f"{where}: num_parameters(non_embedding=True) gives {got:,}, expected "
                              f"{want - V * C - T * C:,}: {hint}")


@exercise("5.6", "Assemble the GPT and tie the head", builds="gptlib.model:GPT", tier="core",
          difficulty=2, importance=3)
def _(GPT):
    _assembly(GPT)


def _std_problem(name, got, want, std, L):
    ratio = got / std
    if name.endswith("c_proj.weight"):
        if abs(ratio - 1) < 0.08:
            return (f"{name} has std {got:.4f}, like every other weight; the projections that "
                    f"write into the residual stream start smaller: std / sqrt(2 * n_layer) = {want:.4f}")
        if abs(ratio - 1 / math.sqrt(L)) < 0.03:
            return (f"{name} has std {got:.4f} = std / sqrt(n_layer); there are two such "
                    f"projections per block: divide by sqrt(2 * n_layer) (here {want:.4f})")
    elif abs(ratio - 1 / math.sqrt(2 * L)) < 0.03:
        return (f"{name} has std {got:.4f}: only the two c_proj weights of each block are scaled "
                f"down; {name} keeps std = {std}")
    if abs(got - 0.02) < 0.002 and abs(std - 0.02) > 0.01:
        return f"{name} has std {got:.4f} after reset_parameters(std={std}): use the std argument, not 0.02"
    return f"{name} should have std {want:.4f} after reset_parameters(std={std}), got {got:.4f}"


def _initialisation(GPT) -> None:
    GPTConfig = _config_class(GPT)

    L = 8
    cfg = GPTConfig(vocab_size=512, block_size=64, n_layer=L, n_head=4, n_embd=256)
    torch.manual_seed(case_seed(57))
    m = GPT(cfg)
    for std in (0.02, 0.1):
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(3.0)
        m.reset_parameters(std=std)
        named = dict(m.named_parameters())
        for name, p in named.items():
            if p.dim() == 1:
                ln = ".ln_" in f".{name}" and name.endswith(".weight")
                if ln:
                    expect(torch.all(p == 1), f"{name} should be all ones after reset_parameters: "
                                              "LayerNorm gains start at one")
                else:
                    expect(torch.all(p == 0), f"{name} should be all zeros after reset_parameters: "
                                              "biases (and LayerNorm shifts) start at zero")
                continue
            scaled = name.endswith("c_proj.weight")
            want = std / math.sqrt(2 * L) if scaled else std
            got = p.float().std().item()
            if abs(got - want) > 0.05 * want or abs(p.float().mean().item()) > 0.1 * want:
                raise CheckFailed(_std_problem(name, got, want, std, L))
    small = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=8, bias=False))
    small.reset_parameters()   # no biases to zero: must not fail


@exercise("5.7", "GPT-2's initialisation", builds="gptlib.model:GPT", tier="core", difficulty=2,
          importance=2)
def _(GPT):
    _initialisation(GPT)


def _hf_layout(ours: dict) -> dict:
    """gptlib-named tensors -> GPT2LMHeadModel's (Conv1D weights transposed)."""
    return {k: (v.t() if k.endswith(_CONV1D) else v) for k, v in ours.items()}


def _gpt2_reference(sd: dict, idx, n_head: int, pos: bool = True, ln_f: bool = True,
                    start: int = 0):
    """A functional GPT-2 over gptlib-named tensors (nn.Linear layout): the logits of idx."""
    wte, wpe = sd["transformer.wte.weight"], sd["transformer.wpe.weight"]
    T = idx.shape[1]
    x = wte[idx] + (wpe[start:start + T] if pos else 0)
    L = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.h."))
    for i in range(L):
        p = lambda name: sd.get(f"transformer.h.{i}.{name}")  # noqa: E731
        blk = SimpleNamespace(
            ln_1=SimpleNamespace(weight=p("ln_1.weight"), bias=p("ln_1.bias")),
            ln_2=SimpleNamespace(weight=p("ln_2.weight"), bias=p("ln_2.bias")),
            attn=SimpleNamespace(c_attn=SimpleNamespace(weight=p("attn.c_attn.weight"), bias=p("attn.c_attn.bias")),
                                 c_proj=SimpleNamespace(weight=p("attn.c_proj.weight"), bias=p("attn.c_proj.bias"))),
            mlp=SimpleNamespace(c_fc=SimpleNamespace(weight=p("mlp.c_fc.weight"), bias=p("mlp.c_fc.bias")),
                                c_proj=SimpleNamespace(weight=p("mlp.c_proj.weight"), bias=p("mlp.c_proj.bias"))))
        x = _wirings(blk, n_head)["pre_ln"][0](x)
    if ln_f:
        x = F.layer_norm(x, (x.shape[-1],), sd["transformer.ln_f.weight"], sd.get("transformer.ln_f.bias"))
    return x @ wte.t()


def _random_gpt2(vocab, n_positions, n_embd, n_layer, n_head, seed):
    """Random GPT-2 weights under gptlib's names, and Hugging Face's logits function (or None)."""
    g = torch.Generator().manual_seed(case_seed(seed))
    C = n_embd
    shapes = {"transformer.wte.weight": (vocab, C), "transformer.wpe.weight": (n_positions, C)}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        shapes.update({h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
                       h + "attn.c_attn.weight": (3 * C, C), h + "attn.c_attn.bias": (3 * C,),
                       h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
                       h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
                       h + "mlp.c_fc.weight": (4 * C, C), h + "mlp.c_fc.bias": (4 * C,),
                       h + "mlp.c_proj.weight": (C, 4 * C), h + "mlp.c_proj.bias": (C,)})
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)})
    sd = {k: (torch.rand(s, generator=g) + 0.5 if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
              else torch.randn(s, generator=g) * 0.2) for k, s in shapes.items()}
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return sd, None
    config = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function="gelu_new", bos_token_id=None, eos_token_id=None,
                        attn_implementation="eager")
    hf = GPT2LMHeadModel(config).eval()
    hf.load_state_dict({**_hf_layout(sd), "lm_head.weight": sd["transformer.wte.weight"]}, strict=False)

    def logits(idx):
        with torch.no_grad():
            return hf(idx).logits
    return sd, logits


def _loss_variants(logits, targets):
    V = logits.shape[-1]
    flat, t = logits.reshape(-1, V), targets.reshape(-1)
    keep = t != _IGNORE
    per = F.cross_entropy(flat, t.clamp(min=0), reduction="none")
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, V), targets[:, 1:].reshape(-1), ignore_index=_IGNORE)
    return {
        "sum": (F.cross_entropy(flat, t, ignore_index=_IGNORE, reduction="sum"),
                "the loss is the mean over the counted positions, not their sum"),
        "shifted": (shifted, "the targets are already the next tokens (the data pipeline shifted "
                             "them): compare logits[:, t] with targets[:, t], do not shift again"),
        "all_positions": ((per * keep).sum() / t.numel(),
                          "positions whose target is IGNORE_INDEX must not count in the mean either: "
                          "divide by the number of counted positions (F.cross_entropy(..., "
                          "ignore_index=IGNORE_INDEX) does it)"),
        "ignored_counted": (per.mean(), "positions whose target is IGNORE_INDEX must not count: "
                                        "pass ignore_index=IGNORE_INDEX to F.cross_entropy"),
    }


def _forward(GPT) -> None:
    from gptlib.sampling import KVCache

    GPTConfig = _config_class(GPT)

    for ex_id, part, check in (("5.6", "the model's modules and the tied head", _assembly),
                               ("5.7", "GPT-2's initialisation", _initialisation)):
        try:
            check(GPT)
        except CheckFailed as fail:
            raise CheckFailed(f"Exercise {ex_id} ({part}) comes first: {fail}") from None
    sizes = [dict(vocab=97, n_positions=20, n_embd=32, n_layer=2, n_head=4),
             dict(vocab=61, n_positions=11, n_embd=24, n_layer=3, n_head=6)]
    for seed, s in enumerate(sizes):
        sd, hf_logits = _random_gpt2(**s, seed=seed)
        cfg = GPTConfig(vocab_size=s["vocab"], block_size=s["n_positions"], n_layer=s["n_layer"],
                        n_head=s["n_head"], n_embd=s["n_embd"])
        model = GPT(cfg).eval()
        missing, unexpected = model.load_state_dict({**sd, "lm_head.weight": sd["transformer.wte.weight"]},
                                                    strict=False)
        expect(not missing and not unexpected,
               f"the model's parameters are not GPT-2's: missing {missing}, unexpected {unexpected}")
        where = (f"with the weights of a random GPT-2 (vocab {s['vocab']}, context {s['n_positions']}, "
                 f"{s['n_layer']} blocks of {s['n_head']} heads, width {s['n_embd']})")
        g = torch.Generator().manual_seed(case_seed(seed))
        T = s["n_positions"]
        for idx in (torch.randint(s["vocab"], (3, T), generator=g), torch.randint(s["vocab"], (1, 5), generator=g)):
            with torch.no_grad():
                out = model(idx)
                expect(isinstance(out, tuple) and len(out) == 2 and out[1] is None,
                       "model(idx) returns the pair (logits, loss), with loss None when no targets "
                       f"are given; got {type(out).__name__}")
                logits = out[0]
                ref = hf_logits(idx) if hf_logits is not None else _gpt2_reference(sd, idx, s["n_head"])
                expect(isinstance(logits, torch.Tensor) and logits.shape == (*idx.shape, s["vocab"]),
                       f"for idx of shape {tuple(idx.shape)} the logits have shape (B, T, vocab_size) = "
                       f"{(*idx.shape, s['vocab'])}, got {_shape(logits)}")
                if not _close(logits, ref):
                    if _close(logits, _gpt2_reference(sd, idx, s["n_head"], pos=False)):
                        raise CheckFailed(f"{where}, the logits ignore the positions: add the "
                                          "position embeddings, wte(idx) + wpe(idx, start)")
                    if _close(logits, _gpt2_reference(sd, idx, s["n_head"], ln_f=False)):
                        raise CheckFailed(f"{where}, the logits skip the final LayerNorm: apply "
                                          "ln_f after the blocks, before the LM head")
                    gap = (logits - ref).abs().max().item()
                    raise CheckFailed(f"{where}, the logits for idx {tuple(idx.shape)} differ from "
                                      f"Hugging Face's by up to {gap:.2e}: embeddings plus "
                                      "positions, dropout, each block, ln_f, then lm_head")
            with torch.no_grad():
                nxt = model.next_token_logits(idx)
            if not _close(nxt, logits[:, -1]):
                if _close(nxt, logits[:, 0]):
                    hint = "they are the first position's: the next token follows the last one, [:, -1]"
                elif isinstance(nxt, torch.Tensor) and nxt.shape == logits.shape:
                    hint = ("it returns every position's logits: apply the LM head to the last "
                            "position's hidden state only")
                else:
                    hint = "apply lm_head to hidden_states(idx, cache)[:, -1]"
                raise CheckFailed(f"{where}, next_token_logits(idx) for idx {tuple(idx.shape)} should "
                                  f"be the logits of the last position, shape {(idx.shape[0], s['vocab'])}, "
                                  f"got {_shape(nxt)}: {hint}")
        idx = torch.randint(s["vocab"], (2, T), generator=g)
        targets = torch.randint(s["vocab"], (2, T), generator=g)
        targets[0, :T // 2] = _IGNORE
        targets[1, -2:] = _IGNORE
        with torch.no_grad():
            logits, loss = model(idx, targets)
        ref = F.cross_entropy(logits.reshape(-1, s["vocab"]), targets.reshape(-1), ignore_index=_IGNORE)
        expect(isinstance(loss, torch.Tensor) and loss.dim() == 0,
               f"model(idx, targets) returns (logits, loss) with a scalar loss, got {_shape(loss)}")
        if not _close(loss, ref):
            for wrong, hint in _loss_variants(logits, targets).values():
                if _close(loss, wrong):
                    raise CheckFailed(f"{where}: {hint}")
            raise CheckFailed(f"{where}, the loss is {loss.item():.4f}, F.cross_entropy over the "
                              f"counted positions gives {ref.item():.4f}")
        # the KV cache: the same logits, computed in pieces
        full = logits
        cache = KVCache(s["n_layer"], T)
        pieces = [(0, T - 4), (T - 4, T - 2), (T - 2, T - 1), (T - 1, T)]   # a prefix, 2, 1, 1
        for a, b in pieces:
            with torch.no_grad():
                part = model(idx[:, a:b], cache=cache)[0]
            expect(len(cache) == b,
                   f"after running tokens {a}..{b - 1} with a cache, it should hold {b} positions, "
                   f"it holds {len(cache)}: hand each block its layer of the cache, "
                   "block(x, cache=cache.layers[i])")
            if not _close(part, full[:, a:b]):
                if a and _close(part, _positions_from_zero(sd, idx, a, b, s["n_head"])):
                    raise CheckFailed(f"with a cache of {a} positions, tokens {a}..{b - 1} got the "
                                      "positions 0.. : their positions start at len(cache), "
                                      "wpe(idx, start) with start = len(cache)")
                raise CheckFailed(f"running tokens {a}..{b - 1} after {a} cached ones should give "
                                  "the logits of the full run at those positions: positions start "
                                  "at len(cache), and block i gets cache.layers[i]")


def _positions_from_zero(sd, idx, a, b, n_head):
    """What the cached run of tokens a..b-1 gives when their positions restart at 0."""
    wpe = sd["transformer.wpe.weight"]
    fake = wpe.clone()
    fake[a:b] = wpe[:b - a]
    return _gpt2_reference({**sd, "transformer.wpe.weight": fake}, idx[:, :b], n_head)[:, a:b]


@exercise("5.8", "The forward pass and the loss", builds="gptlib.model:GPT", tier="core",
          difficulty=3, importance=3)
def _(GPT):
    _forward(GPT)


# --------------------------------------------------------------------------- 5.9 HF conversion
def _hf_state_dict(n_layer, C, V, T, seed, prefix=True, buffers=True, masked_bias=False, head=True):
    """A GPT-2 state dict as Hugging Face stores it, and what gptlib expects from it."""
    g = torch.Generator().manual_seed(case_seed(seed))
    pre = "transformer." if prefix else ""
    hf, ours = {}, {}

    def put(name, shape, conv1d=False):
        t = torch.randn(shape, generator=g)
        hf[pre + name] = t
        ours["transformer." + name] = t.t() if conv1d else t

    put("wte.weight", (V, C))
    put("wpe.weight", (T, C))
    for i in range(n_layer):
        h = f"h.{i}."
        put(h + "ln_1.weight", (C,))
        put(h + "ln_1.bias", (C,))
        if buffers:
            hf[pre + h + "attn.bias"] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
            if masked_bias:
                hf[pre + h + "attn.masked_bias"] = torch.tensor(-1e4)
        put(h + "attn.c_attn.weight", (C, 3 * C), conv1d=True)
        put(h + "attn.c_attn.bias", (3 * C,))
        put(h + "attn.c_proj.weight", (C, C), conv1d=True)
        put(h + "attn.c_proj.bias", (C,))
        put(h + "ln_2.weight", (C,))
        put(h + "ln_2.bias", (C,))
        put(h + "mlp.c_fc.weight", (C, 4 * C), conv1d=True)
        put(h + "mlp.c_fc.bias", (4 * C,))
        put(h + "mlp.c_proj.weight", (4 * C, C), conv1d=True)
        put(h + "mlp.c_proj.bias", (C,))
    put("ln_f.weight", (C,))
    put("ln_f.bias", (C,))
    if head:
        hf["lm_head.weight"] = ours["lm_head.weight"] = hf[pre + "wte.weight"]
    return hf, ours


def _conversion_problem(out: dict, want: dict, layout: str) -> str | None:
    extra = [k for k in out if k not in want]
    missing = [k for k in want if k not in out]
    for k in extra:
        if k.split(".")[-2:] in (["attn", "bias"], ["attn", "masked_bias"]):
            return (f"{layout}: {k} is GPT-2's causal-mask buffer, not a weight: drop the keys "
                    "ending in attn.bias and attn.masked_bias")
        if k.startswith("transformer.transformer."):
            return (f"{layout}: {k} has the prefix twice: keys that already start with "
                    "transformer. (or lm_head.) keep their name")
    for k in missing:
        if k.endswith(("attn.c_attn.bias", "attn.c_proj.bias")):
            return (f"{layout}: {k} is missing, but it is a real parameter (the bias of a linear "
                    "layer); only attn.bias and attn.masked_bias, GPT-2's mask, are dropped")
        if k == "lm_head.weight":
            return f"{layout}: keep lm_head.weight under its own name"
        bare = k.removeprefix("transformer.")
        if bare in out:
            return (f"{layout}: {bare} has no transformer. prefix: the bare GPT2Model layout "
                    "lacks it, so add it (transformer.h.0..., transformer.wte.weight)")
    if extra or missing:
        return (f"{layout}: the converted keys differ from gptlib's: unexpected {extra[:4]}, "
                f"missing {missing[:4]}")
    order = sorted(want, key=lambda k: k.endswith("attn.c_proj.weight"))  # the square one last
    for k in order:
        got, exp = out[k], want[k]
        if isinstance(got, torch.Tensor) and got.shape == exp.shape and torch.equal(got, exp):
            continue
        if isinstance(got, torch.Tensor) and got.dim() == 2 and torch.equal(got.t(), exp):
            if k.endswith("attn.c_proj.weight"):
                return (f"{layout}: {k} is not transposed. It is square ({tuple(exp.shape)}), so "
                        "its shape cannot tell you: choose the weights to transpose by name")
            if k.endswith(_CONV1D):
                return (f"{layout}: {k} has shape {tuple(got.shape)}, nn.Linear expects "
                        f"{tuple(exp.shape)}: Conv1D stores (in, out), transpose the four Conv1D "
                        "weights")
            return (f"{layout}: {k} was transposed, but only the four Conv1D weights (attn.c_attn, "
                    "attn.c_proj, mlp.c_fc, mlp.c_proj) are; the others keep their shape")
        return f"{layout}: {k} should be {_shape(exp)} holding the same numbers, got {_shape(got)}"
    return None


@exercise("5.9", "Convert Hugging Face's GPT-2 weights", builds="gptlib.model:convert_hf_state_dict",
          tier="core", difficulty=2, importance=2)
def _(convert_hf_state_dict):
    layouts = [
        ("GPT2LMHeadModel keys (transformer.h.0..., lm_head.weight, attn.bias buffers)",
         dict(n_layer=2, C=8, V=11, T=6, seed=0)),
        ("bare GPT2Model keys (h.0..., no lm_head) with attn.bias and attn.masked_bias buffers",
         dict(n_layer=3, C=4, V=9, T=5, seed=1, prefix=False, masked_bias=True, head=False)),
        ("bare keys without buffers", dict(n_layer=1, C=6, V=7, T=4, seed=2, prefix=False,
                                           buffers=False, head=False)),
    ]
    for layout, kw in layouts:
        hf, want = _hf_state_dict(**kw)
        before = {k: v.clone() for k, v in hf.items()}
        out = convert_hf_state_dict(hf)
        expect(isinstance(out, dict), f"return a dict of tensors, got {type(out).__name__}")
        expect(set(hf) == set(before) and all(torch.equal(hf[k], before[k]) for k in hf),
               f"{layout}: the state dict passed in was changed; build a new dict (and transpose "
               "with .t(), which does not touch the original)")
        problem = _conversion_problem(out, want, layout)
        if problem:
            raise CheckFailed(problem)


# --------------------------------------------------------------------------- 5.10 loading
def _load_problem(load, model, hf, want, layout):
    """None when load(model, hf) fills model with ``want`` (gptlib names) in place, else a hint."""
    tied = model.lm_head.weight is model.transformer.wte.weight
    before = {k: id(p) for k, p in model.named_parameters()}
    dtypes = {k: p.dtype for k, p in model.named_parameters()}
    try:
        out = load(model, hf)
    except ValueError as err:
        if "lm_head" in str(err) and "unexpected" in str(err):
            return (f"{layout}: a state dict that fits was refused ({err}): lm_head.weight is no "
                    "parameter of the tied model; take it out of the converted tensors first")
        return f"{layout}: a state dict that fits was refused: {err}"
    if out is not model:
        return f"{layout}: return the model you loaded into, got {type(out).__name__}"
    params = dict(model.named_parameters())
    if {k: id(p) for k, p in params.items()} != before or (
            tied and model.lm_head.weight is not model.transformer.wte.weight):
        return (f"{layout}: the model's Parameters were replaced (and a tied head comes untied): "
                "copy into each existing parameter in place, param.copy_(tensor)")
    for key, p in params.items():
        if p.dtype != dtypes[key]:
            return (f"{layout}: {key} became {p.dtype}, the model's parameters are {dtypes[key]}: "
                    "copy into the existing parameter, which keeps its dtype (param.copy_)")
        if not torch.equal(p.detach(), want[key].to(p.dtype)):
            if p.shape == want[key].shape and torch.equal(p.detach(), want[key].t().to(p.dtype)):
                return (f"{layout}: {key} holds the untransposed Conv1D weight: load the tensors "
                        "that convert_hf_state_dict returns")
            return f"{layout}: {key} does not hold the checkpoint's numbers after loading"
    return None


@exercise("5.10", "Load the weights into a GPT", builds="gptlib.model:load_hf_state_dict",
          tier="core", difficulty=2, importance=2)
def _(load_hf_state_dict):
    from gptlib.model import GPT, GPTConfig

    layouts = [("GPT2LMHeadModel keys with the tied lm_head.weight",
                dict(n_layer=2, C=8, V=11, T=6, seed=3), torch.float32),
               ("bare GPT2Model keys (h.0..., no lm_head) in float16",
                dict(n_layer=1, C=4, V=9, T=5, seed=4, prefix=False, head=False), torch.float16)]
    for layout, kw, dtype in layouts:
        hf, want = _hf_state_dict(**kw)
        hf = {k: v.to(dtype) for k, v in hf.items()}
        want = {k: v.to(dtype) for k, v in want.items()}     # the numbers the checkpoint holds
        model = GPT(GPTConfig(vocab_size=kw["V"], block_size=kw["T"], n_layer=kw["n_layer"],
                              n_head=2, n_embd=kw["C"]))
        problem = _load_problem(load_hf_state_dict, model, hf, want, layout)
        if problem:
            raise CheckFailed(problem)
    hf, _ = _hf_state_dict(n_layer=1, C=4, V=9, T=5, seed=5)
    model = GPT(GPTConfig(vocab_size=9, block_size=5, n_layer=1, n_head=2, n_embd=4))
    untied = {**hf, "lm_head.weight": hf["transformer.wte.weight"] + 1.0}
    try:
        load_hf_state_dict(model, untied)
    except ValueError:
        pass
    else:
        raise CheckFailed("a checkpoint whose lm_head.weight differs from its wte.weight (an "
                          "untied model) was loaded: gptlib ties the two, so half of it would be "
                          "lost silently; compare them and raise a ValueError")
    gone = "transformer.h.0.mlp.c_fc.bias"
    try:
        load_hf_state_dict(model, {k: v for k, v in hf.items() if k != gone})
    except ValueError as err:
        expect("c_fc.bias" in str(err), f"a checkpoint without {gone} was refused, but the error "
                                        f"does not name the key: {err}")
    except KeyError:
        raise CheckFailed(f"a checkpoint without {gone} raised a KeyError: call _check_fit(model, "
                          "params, tensors) before copying, so the error names every missing "
                          "key") from None
    else:
        raise CheckFailed(f"a checkpoint without {gone} was loaded without a word: call "
                          "_check_fit(model, params, tensors) before copying")


# --------------------------------------------------------------------------- 5.11 breakdown
_GROUPS = ("token embedding", "position embedding", "attention", "MLP", "LayerNorm",
           "LM head (untied)")


def _groups_of(model) -> dict:
    """The private count: parameters by their place in the model, the tied matrix once."""
    out = dict.fromkeys(_GROUPS, 0)
    for name, p in model.named_parameters():
        parts = name.split(".")
        group = ("token embedding" if parts[:2] == ["transformer", "wte"] else
                 "position embedding" if parts[:2] == ["transformer", "wpe"] else
                 "LM head (untied)" if parts[0] == "lm_head" else
                 "attention" if "attn" in parts else "MLP" if "mlp" in parts else "LayerNorm")
        out[group] += p.numel()
    return out


@exercise("5.11", "Where the parameters sit", builds="gptlib.model:parameter_breakdown",
          tier="warm-up", difficulty=1, importance=2)
def _(parameter_breakdown):
    from gptlib.model import GPT, GPTConfig

    torch.manual_seed(case_seed(511))
    cases = [("a tied GPT", GPTConfig(vocab_size=50, block_size=12, n_layer=2, n_head=2, n_embd=16), False),
             ("a GPT with an untied head", GPTConfig(vocab_size=30, block_size=8, n_layer=3, n_head=2,
                                                       n_embd=8), True),
             ("a tied GPT with bias=False", GPTConfig(vocab_size=40, block_size=6, n_layer=1, n_head=4,
                                                      n_embd=24, bias=False), False)]
    for label, cfg, untie in cases:
        m = GPT(cfg)
        if untie:
            m.lm_head.weight = nn.Parameter(m.lm_head.weight.detach().clone())
        want = _groups_of(m)
        where = f"for {label} ({cfg.n_layer} blocks, n_embd={cfg.n_embd}, vocab {cfg.vocab_size})"
        try:
            got = parameter_breakdown(m)
        except ValueError as err:
            raise CheckFailed(f"{where} parameter_breakdown raised {err}: every parameter of a GPT "
                              "belongs to a group (ln_f is a LayerNorm too)") from None
        expect(isinstance(got, dict) and list(got) == list(_GROUPS),
               f"return a dict with the six groups as keys, in the order {list(_GROUPS)}; got "
               f"{list(got) if isinstance(got, dict) else type(got).__name__}")
        if got == want:
            continue
        wrong = [g for g in _GROUPS if got[g] != want[g]]
        if not untie and got["LM head (untied)"] == cfg.vocab_size * cfg.n_embd:
            raise CheckFailed(f"{where} you count the tied head as an LM head of its own: it is "
                              "wte's matrix, listed once by named_parameters() (state_dict() lists "
                              "it under both names)")
        if all(got[g] < want[g] for g in wrong):
            raise CheckFailed(f"{where} the counts of {', '.join(wrong)} are too small ({got}): "
                              "count each parameter's elements, p.numel(), not its first dimension")
        raise CheckFailed(f"{where} you found {got}, the model has {want}: sort each parameter by "
                          f"its name ({', '.join(wrong)} differ)")
    with torch.device("meta"):
        m = GPT(GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=2, n_embd=8))
    expect(parameter_breakdown(m) == _groups_of(m),
           "on the meta device (shapes, no values) the counts differ: count with p.numel()")
    m = GPT(GPTConfig(vocab_size=20, block_size=4, n_layer=1, n_head=2, n_embd=8))
    m.scale = nn.Parameter(torch.ones(1))
    try:
        parameter_breakdown(m)
    except ValueError as err:
        expect("scale" in str(err), f"a parameter in no group raised a ValueError that does not "
                                    f"name it: {err}")
    else:
        raise CheckFailed("a GPT with an extra parameter (m.scale) was counted without a word: a "
                          "parameter in none of the groups must raise a ValueError naming it")


# --------------------------------------------------------------------------- 5.12 parameter count
@exercise("5.12", "Count GPT-2's parameters", tier="warm-up", difficulty=2, importance=2,
          forbids=("GPT",))
def _(count_parameters):
    from gptlib.model import GPTConfig

    configs = [GPTConfig(), GPTConfig(vocab_size=100, block_size=16, n_layer=3, n_head=2, n_embd=8),
               GPTConfig(vocab_size=70, block_size=32, n_layer=2, n_head=4, n_embd=16, bias=False)]
    for cfg in configs:
        ref = _count(cfg)
        got = count_parameters(cfg)
        expect(isinstance(got, int) and not isinstance(got, bool),
               f"return an int, got {type(got).__name__}")
        if got == ref:
            continue
        V, T, L, C = cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd
        diff = got - ref
        n_ln = (2 * L + 1) * C * (2 if cfg.bias else 1)
        n_bias = L * (3 * C + C + 4 * C + C + 2 * C) + C
        hints = {
            V * C: "you counted the LM head as its own V x C matrix: it is tied to the token "
                   "embedding, so it adds nothing",
            -T * C: "you forgot the position embedding (block_size x n_embd)",
            -n_ln: "you forgot the LayerNorms: two per block plus ln_f, each with a weight "
                   "(and a bias when bias=True)",
        }
        if cfg.bias:
            hints.setdefault(-n_bias, "you forgot the biases (of the Linear layers and the LayerNorms)")
        else:
            hints.setdefault(n_bias, "with bias=False there are no biases at all, in the Linear "
                                     "layers and in the LayerNorms")
        if diff in hints:
            raise CheckFailed(hints[diff] + f" (for {cfg} you got {got:,}, expected {ref:,})")
        raise CheckFailed(f"for {cfg} you got {got:,} parameters, expected {ref:,} (off by "
                          f"{diff:+,}): count embeddings, per block attention (c_attn, c_proj), "
                          "MLP (c_fc, c_proj) and two LayerNorms, then ln_f")


# --------------------------------------------------------------------------- 5.13 residual stream
def _stream_stds(model, idx) -> list[float]:
    tr = model.transformer
    x = tr.wte(idx) + tr.wpe(idx)
    out = [x.std().item()]
    for block in tr.h:
        x = block(x)
        out.append(x.std().item())
    return out


def _as_floats(values, n, where):
    expect(isinstance(values, (list, tuple)) and len(values) == n,
           f"{where}: return n_layer + 1 = {n} numbers, the std after the embeddings and after "
           f"each block; got {type(values).__name__} of length "
           f"{len(values) if hasattr(values, '__len__') else '?'}")
    return [float(v) for v in values]


@exercise("5.13", "How fast does the residual stream grow?", tier="stretch", difficulty=2,
          importance=2)
def _(residual_stds):
    from gptlib.model import GPT, GPTConfig

    torch.manual_seed(case_seed(511))
    small = GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, n_embd=32)
    m = GPT(small).eval()
    _randomise(m.transformer.h, scale=0.2)
    idx = torch.randint(64, (2, 16))
    where = "for a 3-block GPT"
    with torch.no_grad():
        got = _as_floats(residual_stds(m, idx), 4, where)
        want = _stream_stds(m, idx)
        tr = m.transformer
    if not all(math.isclose(a, b, rel_tol=1e-2) for a, b in zip(got, want)):
        if not math.isclose(got[0], want[0], rel_tol=1e-2):
            with torch.no_grad():
                no_pos = tr.wte(idx).std().item()
            if math.isclose(got[0], no_pos, rel_tol=1e-2):
                raise CheckFailed(f"{where} the first value leaves out the positions: the stream "
                                  "starts as token plus position embeddings, wte(idx) + wpe(idx)")
        if math.isclose(got[-1], 1.0, abs_tol=0.05) and not math.isclose(want[-1], 1.0, abs_tol=0.05):
            raise CheckFailed(f"{where} the last value is about 1: the residual stream is what "
                              "enters ln_f, not what comes out of it")
        raise CheckFailed(f"{where} you measured {[round(v, 4) for v in got]}, the stream's std is "
                          f"{[round(v, 4) for v in want]}: x = wte(idx) + wpe(idx), then "
                          "x = block(x) for each block, x.std() each time")
    deep = GPTConfig(vocab_size=128, block_size=32, n_layer=8, n_head=4, n_embd=64)
    idx = torch.randint(128, (4, 32))
    ratios = {}
    with torch.no_grad():
        for scaled in (True, False):
            m = GPT(deep).eval()
            if not scaled:
                for name, p in m.named_parameters():
                    if name.endswith("c_proj.weight"):
                        p.normal_(0.0, 0.02)
            s = _as_floats(residual_stds(m, idx), 9, "for an 8-block GPT")
            ratios[scaled] = s[-1] / s[0]
    expect(ratios[False] > ratios[True],
           f"in an 8-block GPT your measurement finds the stream growing {ratios[True]:.2f}x with "
           f"GPT-2's scaled c_proj and {ratios[False]:.2f}x without: the scaled one should grow less")
