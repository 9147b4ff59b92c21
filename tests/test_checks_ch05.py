"""Chapter 5 checks accept the reference solutions and reject the usual mistakes, with hints."""
import torch
import torch.nn as nn

from gptlib.exercises import run_check


# ------------------------------------------------------------------ 5.1 LayerNorm
def ln_ref(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def ln_eps_outside(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / (x.std(-1, unbiased=False, keepdim=True) + eps) * w + b


def ln_unbiased(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b


def ln_no_affine(x, w, b, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)


def ln_wrong_axis(x, w, b, eps=1e-5):
    mean = x.mean(0, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + eps) * w + b


def ln_todo(x, w, b, eps=1e-5):
    raise NotImplementedError


def test_51_reference_passes():
    assert run_check("5.1", ln_ref).status == "passed"


def test_51_rejects_epsilon_outside_the_sqrt():
    r = run_check("5.1", ln_eps_outside)
    assert r.status == "failed" and "inside the square root" in r.message


def test_51_rejects_unbiased_variance():
    r = run_check("5.1", ln_unbiased)
    assert r.status == "failed" and "unbiased" in r.message


def test_51_rejects_missing_scale_and_shift():
    r = run_check("5.1", ln_no_affine)
    assert r.status == "failed" and "scale and shift" in r.message


def test_51_rejects_wrong_axis():
    r = run_check("5.1", ln_wrong_axis)
    assert r.status == "failed" and "last dimension" in r.message


def test_51_not_done():
    assert run_check("5.1", ln_todo).status == "not done"


# ------------------------------------------------------------------ 5.2 block wiring
def block_ref(block, x):
    x = x + block.attn(block.ln_1(x))
    return x + block.mlp(block.ln_2(x))


def block_post_ln(block, x):
    x = block.ln_1(x + block.attn(x))
    return block.ln_2(x + block.mlp(x))


def block_no_residual(block, x):
    return block.mlp(block.ln_2(block.attn(block.ln_1(x))))


def block_attn_no_residual(block, x):
    x = block.attn(block.ln_1(x))
    return x + block.mlp(block.ln_2(x))


def block_norm_on_residual(block, x):
    x = block.ln_1(x) + block.attn(block.ln_1(x))
    return block.ln_2(x) + block.mlp(block.ln_2(x))


def test_52_reference_passes():
    assert run_check("5.2", block_ref).status == "passed"


def test_52_rejects_post_ln_wiring():
    r = run_check("5.2", block_post_ln)
    assert r.status == "failed" and "Post-LN" in r.message


def test_52_rejects_missing_residuals():
    r = run_check("5.2", block_no_residual)
    assert r.status == "failed" and "residual connections are missing" in r.message
    r = run_check("5.2", block_attn_no_residual)
    assert r.status == "failed" and "attention sublayer has no residual" in r.message


def test_52_rejects_normalised_residual_path():
    r = run_check("5.2", block_norm_on_residual)
    assert r.status == "failed" and "carry x itself" in r.message


# ------------------------------------------------------------------ 5.3 weight tying
def tie_ref(wte):
    head = nn.Linear(wte.weight.shape[1], wte.weight.shape[0], bias=False)
    head.weight = wte.weight
    return head


def tie_copy(wte):
    head = nn.Linear(wte.weight.shape[1], wte.weight.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(wte.weight)
    return head


def tie_with_bias(wte):
    head = nn.Linear(wte.weight.shape[1], wte.weight.shape[0])
    head.weight = wte.weight
    return head


def tie_transposed(wte):
    head = nn.Linear(wte.weight.shape[0], wte.weight.shape[1], bias=False)
    head.weight = nn.Parameter(wte.weight.T)
    return head


def test_53_reference_passes():
    assert run_check("5.3", tie_ref).status == "passed"


def test_53_rejects_a_copy():
    r = run_check("5.3", tie_copy)
    assert r.status == "failed" and "copied the values" in r.message


def test_53_rejects_a_bias():
    r = run_check("5.3", tie_with_bias)
    assert r.status == "failed" and "no bias" in r.message


def test_53_rejects_a_transpose():
    r = run_check("5.3", tie_transposed)
    assert r.status == "failed" and "no transpose is needed" in r.message


# ------------------------------------------------------------------ 5.4 parameter count
def count_ref(c):
    V, T, L, C, b = c.vocab_size, c.block_size, c.n_layer, c.n_embd, int(c.bias)
    ln = C + b * C
    block = 2 * ln + (3 * C * C + 3 * b * C + C * C + b * C) + (8 * C * C + 4 * b * C + b * C)
    return V * C + T * C + L * block + ln


def count_untied(c):
    return count_ref(c) + c.vocab_size * c.n_embd


def count_no_positions(c):
    return count_ref(c) - c.block_size * c.n_embd


def count_no_layernorm(c):
    return count_ref(c) - (2 * c.n_layer + 1) * c.n_embd * (2 if c.bias else 1)


def count_always_bias(c):
    from dataclasses import replace
    return count_ref(replace(c, bias=True))


def test_54_reference_passes():
    assert run_check("5.4", count_ref).status == "passed"


def test_54_rejects_an_untied_head():
    r = run_check("5.4", count_untied)
    assert r.status == "failed" and "tied" in r.message


def test_54_rejects_missing_position_embedding():
    r = run_check("5.4", count_no_positions)
    assert r.status == "failed" and "position embedding" in r.message


def test_54_rejects_missing_layernorms():
    r = run_check("5.4", count_no_layernorm)
    assert r.status == "failed" and "LayerNorms" in r.message


def test_54_rejects_biases_when_bias_false():
    r = run_check("5.4", count_always_bias)
    assert r.status == "failed" and "bias=False" in r.message
