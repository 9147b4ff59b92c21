"""Chapter 5 checks accept the reference solutions and reject the usual mistakes, with hints."""
import pytest
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


# ------------------------------------------------------------------ the table
PASSING = [("5.1", ln_ref), ("5.2", block_ref), ("5.3", tie_ref), ("5.4", count_ref)]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("5.1", ln_eps_outside, "inside the square root"),
    ("5.1", ln_unbiased, "unbiased"),
    ("5.1", ln_no_affine, "scale and shift"),
    ("5.1", ln_wrong_axis, "last dimension"),
    ("5.2", block_post_ln, "Post-LN"),
    ("5.2", block_no_residual, "residual connections are missing"),
    ("5.2", block_attn_no_residual, "attention sublayer has no residual"),
    ("5.2", block_norm_on_residual, "carry x itself"),
    ("5.3", tie_copy, "copied the values"),
    ("5.3", tie_with_bias, "no bias"),
    ("5.3", tie_transposed, "no transpose is needed"),
    ("5.4", count_untied, "tied"),
    ("5.4", count_no_positions, "position embedding"),
    ("5.4", count_no_layernorm, "LayerNorms"),
    ("5.4", count_always_bias, "bias=False"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING, ids=[c.__name__ for _, c in PASSING])
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING,
                         ids=[c.__name__ for _, c, _ in FAILING])
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_unfinished_exercise_is_not_done():
    assert run_check("5.1", ln_todo).status == "not done"
