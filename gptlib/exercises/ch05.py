"""Checks for Chapter 5 (the transformer block and the GPT model).

Hand-written. Each check compares the learner's code with gptlib's reference on probes chosen
so that the usual mistakes give visibly different answers, and names the mistake it sees.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlib.exercises import CheckFailed, exercise, expect


def _close(a, b, atol: float = 1e-4) -> bool:
    return (isinstance(a, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-4))


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
    "unbiased": "you used the unbiased variance (divide by C-1); LayerNorm divides by C: "
                "use x.var(-1, unbiased=False) or ((x - mean)**2).mean(-1)",
    "eps_outside": "epsilon belongs inside the square root: (x - mean) / sqrt(var + eps), "
                   "not (x - mean) / (sqrt(var) + eps)",
    "no_affine": "you normalised but forgot the learned scale and shift: multiply by weight, "
                 "then add bias",
    "no_eps": "add eps to the variance before the square root (it matters when the variance is tiny)",
    "wrong_axis": "normalise each token vector over its features (the last dimension, dim=-1), "
                  "not over the batch",
}


@exercise("5.1", "LayerNorm from scratch")
def _(layer_norm):
    g = torch.Generator().manual_seed(5)
    probes = [  # (x, eps): ordinary values, tiny variance (eps matters), few features (C-1 vs C)
        (torch.randn(3, 5, 8, generator=g) * 2 + 1, 1e-5),
        (torch.randn(4, 6, 16, generator=g) * 3e-3 + 0.5, 1e-5),
        (torch.randn(6, 4, generator=g), 1e-5),
        (torch.randn(2, 3, 8, generator=g) * 0.1, 1e-2),
    ]
    for x, eps in probes:
        C = x.shape[-1]
        w = torch.randn(C, generator=g) * 0.5 + 1
        b = torch.randn(C, generator=g) * 0.5
        ref = F.layer_norm(x, (C,), w, b, eps)
        out = layer_norm(x.clone(), w.clone(), b.clone(), eps)
        expect(isinstance(out, torch.Tensor), f"layer_norm should return a tensor, got {type(out).__name__}")
        expect(out.shape == x.shape, f"the output should have the input's shape {tuple(x.shape)}, "
                                     f"got {tuple(out.shape)}")
        if _close(out, ref):
            continue
        for name, wrong in _ln_variants(x, w, b, eps).items():
            if _close(out, wrong):
                raise CheckFailed(_LN_HINTS[name])
        raise CheckFailed("the output differs from F.layer_norm: compute mean and variance over "
                          "the last dimension, (x - mean) / sqrt(var + eps), then * weight + bias")


# --------------------------------------------------------------------------- 5.2 block wiring
def _wirings(block, x):
    a, m = block.attn, block.mlp
    l1, l2 = block.ln_1, block.ln_2

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

    return {
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
    }


@exercise("5.2", "Wire a Pre-LN block")
def _(block_forward):
    from gptlib.block import Block
    from types import SimpleNamespace

    torch.manual_seed(52)
    cfg = SimpleNamespace(n_embd=16, n_head=2, dropout=0.0, bias=True, block_size=8)
    block = Block(cfg).eval()
    with torch.no_grad():  # make every part matter: non-trivial norms, visible sublayers
        for ln in (block.ln_1, block.ln_2):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.normal_(0, 0.5)
        for p in list(block.attn.parameters()) + list(block.mlp.parameters()):
            p.normal_(0, 0.3)
    x = torch.randn(2, 8, 16) * 2 + 0.5
    with torch.no_grad():
        ref = block(x)
        out = block_forward(block, x.clone())
    expect(isinstance(out, torch.Tensor), f"block_forward should return a tensor, got {type(out).__name__}")
    expect(out.shape == x.shape, f"the block must keep the shape {tuple(x.shape)}, got {tuple(out.shape)}")
    if _close(out, ref):
        return
    with torch.no_grad():
        for fn, hint in _wirings(block, x).values():
            if _close(out, fn(x)):
                raise CheckFailed(hint)
    raise CheckFailed("the output differs from the Pre-LN block: x = x + attn(ln_1(x)), "
                      "then x = x + mlp(ln_2(x)), using the block's own submodules")


# --------------------------------------------------------------------------- 5.3 weight tying
@exercise("5.3", "Tie the LM head to the token embedding")
def _(tie_lm_head):
    wte = nn.Embedding(11, 6)
    head = tie_lm_head(wte)
    expect(isinstance(head, nn.Linear), f"return an nn.Linear, got {type(head).__name__}")
    expect(head.bias is None, "GPT-2's LM head has no bias: nn.Linear(n_embd, vocab_size, bias=False)")
    expect(tuple(head.weight.shape) == (11, 6),
           f"the head's weight should have shape (vocab_size, n_embd) = (11, 6), got "
           f"{tuple(head.weight.shape)}: nn.Linear stores (out_features, in_features), "
           "which is already the embedding's shape, so no transpose is needed")
    if head.weight is not wte.weight:
        if torch.equal(head.weight.detach(), wte.weight.detach()):
            raise CheckFailed("you copied the values: a copy is a second matrix that drifts away "
                              "during training. Assign the Parameter itself: head.weight = wte.weight")
        raise CheckFailed("the head's weight must be the embedding's Parameter itself: "
                          "head.weight = wte.weight")
    h = torch.randn(3, 6)
    expect(torch.allclose(head(h), h @ wte.weight.T), "head(h) should equal h @ wte.weight.T")
    n_params = sum(p.numel() for p in nn.ModuleList([wte, head]).parameters())
    expect(n_params == 11 * 6, "embedding and head together should hold one matrix (66 numbers)")


# --------------------------------------------------------------------------- 5.4 parameter count
def _reference_count(config) -> int:
    from gptlib.model import GPT
    with torch.device("meta"):
        return GPT(config).num_parameters()


@exercise("5.4", "Count GPT-2's parameters")
def _(count_parameters):
    from gptlib.model import GPTConfig

    configs = [GPTConfig(), GPTConfig(vocab_size=100, block_size=16, n_layer=3, n_head=2, n_embd=8),
               GPTConfig(vocab_size=70, block_size=32, n_layer=2, n_head=4, n_embd=16, bias=False)]
    for cfg in configs:
        ref = _reference_count(cfg)
        got = count_parameters(cfg)
        expect(isinstance(got, int) and not isinstance(got, bool),
               f"return an int, got {type(got).__name__}")
        if got == ref:
            continue
        V, T, L, C = cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_embd
        diff = got - ref
        n_ln = (2 * L + 1) * C * (2 if cfg.bias else 1)
        n_bias = L * (3 * C + C + 4 * C + C + 2 * C) + C if cfg.bias else 0
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
            hints.setdefault(L * (3 * C + C + 4 * C + C + 2 * C) + C,
                             "with bias=False there are no biases at all, in the Linear layers "
                             "and in the LayerNorms")
        if diff in hints:
            raise CheckFailed(hints[diff] + f" (for {cfg} you got {got:,}, expected {ref:,})")
        raise CheckFailed(f"for {cfg} you got {got:,} parameters, expected {ref:,} (off by "
                          f"{diff:+,}): count embeddings, per block attention (c_attn, c_proj), "
                          "MLP (c_fc, c_proj) and two LayerNorms, then ln_f")
