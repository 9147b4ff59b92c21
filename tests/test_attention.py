"""gptlib.attention: shapes, parity with PyTorch, causality, dropout, and clear errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptlib.attention import (CausalSelfAttention, attention_entropy, attention_weights,
                              merge_heads, scaled_dot_product_attention, split_heads)
from gptlib.masking import causal_mask


@pytest.fixture
def g():
    return torch.Generator().manual_seed(0)


def test_sdpa_matches_torch_with_and_without_mask(g):
    q, k, v = (torch.randn(2, 3, 9, 8, generator=g) for _ in range(3))
    out, w = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=1e-5)
    out, w = scaled_dot_product_attention(q, k, v, mask=causal_mask(9))
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               atol=1e-6, rtol=1e-5)
    assert w.shape == (2, 3, 9, 9)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 9))
    assert (w.triu(1) == 0).all()


def test_weights_are_the_scaled_softmax(g):
    q, k = torch.randn(5, 16, generator=g), torch.randn(7, 16, generator=g)
    expected = torch.softmax(q @ k.T / 4.0, dim=-1)
    torch.testing.assert_close(attention_weights(q, k), expected)


def test_cross_attention_shapes_and_dv(g):
    q = torch.randn(4, 3, 8, generator=g)
    k = torch.randn(4, 6, 8, generator=g)
    v = torch.randn(4, 6, 5, generator=g)
    out, w = scaled_dot_product_attention(q, k, v)
    assert out.shape == (4, 3, 5) and w.shape == (4, 3, 6)


def test_sdpa_dropout_keeps_expectation_and_pattern(g):
    q, k, v = (torch.randn(1, 4, 8, generator=g) for _ in range(3))
    torch.manual_seed(0)
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    ref_out, ref_w = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(w, ref_w)           # the returned pattern is before dropout
    assert not torch.allclose(out, ref_out)


@pytest.mark.parametrize("args, words", [
    ((torch.randn(2, 4, 8), torch.randn(2, 4, 6), torch.randn(2, 4, 8)), "same last dimension"),
    ((torch.randn(2, 4, 8), torch.randn(2, 5, 8), torch.randn(2, 4, 8)), "number of positions"),
    ((torch.randn(2, 4, 8), torch.randn(3, 4, 8), torch.randn(3, 4, 8)), "leading"),
    ((torch.randn(8), torch.randn(4, 8), torch.randn(4, 8)), "shape (..., T, d)"),
])
def test_sdpa_bad_shapes(args, words):
    with pytest.raises(ValueError, match=None) as err:
        scaled_dot_product_attention(*args)
    assert words in str(err.value)


def test_sdpa_bad_mask_and_dropout():
    q = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="mask of shape"):
        scaled_dot_product_attention(q, q, q, mask=causal_mask(5))
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product_attention(q, q, q, mask=causal_mask(4).float())
    with pytest.raises(ValueError, match="dropout_p"):
        scaled_dot_product_attention(q, q, q, dropout_p=1.0)
    with pytest.raises(TypeError, match="floating-point"):
        scaled_dot_product_attention(q.long(), q, q)


def test_split_merge_roundtrip_and_layout(g):
    x = torch.randn(2, 5, 12, generator=g)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    assert torch.equal(heads[:, 2], x[..., 8:12])
    assert torch.equal(merge_heads(heads), x)
    with pytest.raises(ValueError, match="cannot be split"):
        split_heads(x, 5)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        split_heads(x[0], 3)
    with pytest.raises(ValueError, match="head_size"):
        merge_heads(x)


def test_entropy_extremes():
    uniform = torch.full((1, 8), 1 / 8)
    one_hot = torch.eye(8)[:1]
    torch.testing.assert_close(attention_entropy(uniform), torch.tensor([math.log(8)]))
    torch.testing.assert_close(attention_entropy(one_hot), torch.tensor([0.0]))


def test_module_names_and_parameter_count():
    attn = CausalSelfAttention(48, 6, dropout=0.1, block_size=16)
    assert attn.n_head == 6 and attn.n_embd == 48 and attn.head_size == 8
    assert attn.c_attn.weight.shape == (144, 48) and attn.c_proj.weight.shape == (48, 48)
    assert isinstance(attn.attn_dropout, nn.Dropout) and isinstance(attn.resid_dropout, nn.Dropout)
    assert sum(p.numel() for p in attn.parameters()) == 4 * 48 * 48 + 4 * 48
    no_bias = CausalSelfAttention(48, 6, bias=False)
    assert no_bias.c_attn.bias is None and no_bias.c_proj.bias is None


def test_fast_path_equals_explicit_path_forward_and_backward(g):
    attn = CausalSelfAttention(32, 4).eval()
    x = torch.randn(3, 17, 32, generator=g)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = attn(xa)
    yb, w = attn(xb, need_weights=True)
    assert w.shape == (3, 4, 17, 17)
    torch.testing.assert_close(ya, yb, atol=1e-6, rtol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)


def test_matches_nn_multiheadattention(g):
    C, n_head, T = 24, 3, 10
    attn = CausalSelfAttention(C, n_head).eval()
    mha = nn.MultiheadAttention(C, n_head, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.c_attn.weight)
        mha.in_proj_bias.copy_(attn.c_attn.bias)
        mha.out_proj.weight.copy_(attn.c_proj.weight)
        mha.out_proj.bias.copy_(attn.c_proj.bias)
        x = torch.randn(2, T, C, generator=g)
        y, w = attn(x, need_weights=True)
        y_ref, w_ref = mha(x, x, x, attn_mask=~causal_mask(T), average_attn_weights=False)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-5)


def test_causal_no_future_leak(g):
    attn = CausalSelfAttention(16, 2).eval()
    x = torch.randn(1, 8, 16, generator=g)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 16, generator=g)
    with torch.no_grad():
        assert torch.allclose(attn(x)[:, :5], attn(x2)[:, :5], atol=1e-6)
        assert not torch.allclose(attn(x)[:, 5:], attn(x2)[:, 5:])


def test_dropout_only_in_training(g):
    attn = CausalSelfAttention(16, 2, dropout=0.3)
    x = torch.randn(2, 6, 16, generator=g)
    attn.train()
    assert not torch.equal(attn(x), attn(x))
    attn.eval()
    with torch.no_grad():
        assert torch.equal(attn(x), attn(x))
        assert torch.equal(attn(x, need_weights=True)[0], attn(x, need_weights=True)[0])


@pytest.mark.parametrize("kwargs, words", [
    (dict(n_embd=48, n_head=5), "not divisible"),
    (dict(n_embd=0, n_head=1), "positive int"),
    (dict(n_embd=48, n_head=6, dropout=1.0), "dropout"),
    (dict(n_embd=48, n_head=6, block_size=0), "block_size"),
])
def test_bad_construction(kwargs, words):
    with pytest.raises(ValueError) as err:
        CausalSelfAttention(**kwargs)
    assert words in str(err.value)


@pytest.mark.parametrize("shape, words", [
    ((2, 17, 32), "exceeds block_size"),
    ((2, 8, 30), "n_embd = 32"),
    ((8, 32), "(B, T, n_embd)"),
    ((2, 0, 32), "T = 0"),
])
def test_bad_input(shape, words):
    attn = CausalSelfAttention(32, 4, block_size=16)
    with pytest.raises(ValueError) as err:
        attn(torch.randn(*shape))
    assert words in str(err.value)
    with pytest.raises(ValueError):
        attn(torch.randn(*shape), need_weights=True)


def test_fully_masked_row_gives_zero_weights_not_nan(g):
    q, k, v = (torch.randn(1, 3, 4, generator=g) for _ in range(3))
    mask = torch.tensor([[False, False, False], [True, False, False], [True, True, True]])
    out, w = scaled_dot_product_attention(q, k, v, mask=mask)
    assert not torch.isnan(out).any()
    assert (w[0, 0] == 0).all() and (out[0, 0] == 0).all()


@pytest.mark.parametrize("need_weights", [False, True])
def test_cache_pieces_equal_one_pass(g, need_weights):
    from gptlib.sampling import LayerKVCache
    attn = CausalSelfAttention(32, 4).eval().double()
    x = torch.randn(2, 11, 32, generator=g, dtype=torch.float64)
    cache = LayerKVCache(capacity=16)
    with torch.no_grad():
        pieces = []
        for a, b in [(0, 4), (4, 5), (5, 9), (9, 11)]:     # a prompt, one token, a refill-sized chunk
            out = attn(x[:, a:b], need_weights=need_weights, cache=cache)
            pieces.append(out[0] if need_weights else out)
        full = attn(x)
    assert cache.length == 11
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)
