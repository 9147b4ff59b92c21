"""gptlib.embeddings: token lookups, learned and sinusoidal positions."""
import math

import pytest
import torch
from torch import nn

from gptlib.embeddings import (INIT_STD, PositionalEmbedding, SinusoidalPositionalEncoding, TokenEmbedding,
                               one_hot_embed, position_similarity, sinusoidal_encoding)


def test_token_embedding_is_a_plain_nn_embedding_with_gpt2_init():
    emb = TokenEmbedding(50, 16)
    assert isinstance(emb, nn.Embedding) and emb.weight.shape == (50, 16)
    assert emb.vocab_size == 50 and emb.n_embd == 16
    assert 0.01 < emb.weight.std().item() < 0.03            # GPT-2 initialisation
    assert TokenEmbedding(50, 16, init_std=0.5).weight.std().item() > 0.3
    assert INIT_STD == 0.02
    idx = torch.tensor([[1, 2, 49], [0, 0, 7]])
    assert torch.equal(emb(idx), emb.weight[idx])
    assert list(dict(emb.named_parameters())) == ["weight"]
    # The lookup is not checked again on every call: the ids are validated where they come in
    # (GPT.forward, get_batch), so the forward pass has no host sync.
    assert type(emb).forward is nn.Embedding.forward


def test_token_embedding_rejects_bad_sizes():
    for args in ((0, 4), (5, 0), (5.0, 4)):
        with pytest.raises(ValueError, match="positive int"):
            TokenEmbedding(*args)


def test_one_hot_embed_equals_lookup_and_gives_the_same_gradient():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(11, 5, generator=g, requires_grad=True)
    idx = torch.tensor([[3, 3, 10], [0, 1, 2]])
    by_product = one_hot_embed(idx, weight)
    assert torch.equal(by_product, weight[idx])
    (grad_product,) = torch.autograd.grad(by_product.square().sum(), weight)
    (grad_lookup,) = torch.autograd.grad(weight[idx].square().sum(), weight)
    assert torch.allclose(grad_product, grad_lookup)
    assert grad_product[4:10].abs().sum() == 0            # unused rows get no gradient
    with pytest.raises(ValueError, match="vocab_size"):
        one_hot_embed(idx, torch.randn(11))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        one_hot_embed(idx, torch.randn(4, 5))


@pytest.mark.parametrize("idx, error, phrase", [
    (torch.tensor([[0, 50]]), ValueError, r"\[0, 50\)"),
    (torch.tensor([[-1, 3]]), ValueError, r"\[0, 50\)"),
    (torch.tensor([[0.0, 1.0]]), ValueError, "integer tensor"),
    (torch.tensor([[True]]), ValueError, "integer tensor"),
    ([1, 2], TypeError, "torch.Tensor"),
])
def test_one_hot_embed_rejects_bad_ids(idx, error, phrase):
    with pytest.raises(error, match=phrase):
        one_hot_embed(idx, torch.randn(50, 4))


@pytest.mark.parametrize("cls", [PositionalEmbedding, SinusoidalPositionalEncoding])
def test_positions_forward_shapes_and_limits(cls):
    pos = cls(block_size=16, n_embd=8)
    assert pos.weight.shape == (16, 8)
    for x in (torch.zeros(3, 10, dtype=torch.long), torch.zeros(3, 10, 8)):
        out = pos(x)
        assert out.shape == (10, 8) and torch.equal(out, pos.weight[:10])
    assert pos(torch.zeros(2, 16, dtype=torch.long)).shape == (16, 8)
    with pytest.raises(ValueError, match=r"T=17, start=0\) exceed block_size=16"):
        pos(torch.zeros(2, 17, dtype=torch.long))
    assert torch.equal(pos(torch.zeros(2, 3, dtype=torch.long), start=13), pos.weight[13:16])
    with pytest.raises(ValueError, match=r"T=3, start=14\) exceed block_size=16"):
        pos(torch.zeros(2, 3, dtype=torch.long), start=14)
    for bad in (torch.zeros(5, dtype=torch.long), torch.zeros(1, 2, 3, 4)):
        with pytest.raises(ValueError, match=r"\(B, T\)"):
            pos(bad)
    with pytest.raises(ValueError, match="positive int"):
        cls(block_size=0, n_embd=8)
    assert "block_size=16" in repr(pos)


def test_learned_positions_are_trainable_and_sinusoidal_are_not():
    learned = PositionalEmbedding(8, 4)
    fixed = SinusoidalPositionalEncoding(8, 4)
    assert [n for n, _ in learned.named_parameters()] == ["weight"]
    assert list(fixed.parameters()) == [] and "weight" not in fixed.state_dict()
    assert "weight" in learned.state_dict()
    learned(torch.zeros(1, 5, dtype=torch.long)).sum().backward()
    assert learned.weight.grad[:5].abs().sum() > 0 and learned.weight.grad[5:].abs().sum() == 0


def test_sinusoidal_values_follow_the_formula():
    pe = sinusoidal_encoding(50, 6)
    for t in (0, 1, 17, 49):
        for i in range(3):
            angle = t / 10000 ** (2 * i / 6)
            assert pe[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert pe.dtype == torch.float32


def test_sinusoidal_dot_products_depend_only_on_the_offset():
    sim = position_similarity(sinusoidal_encoding(64, 32), normalize=False)
    for k in (0, 1, 9, 30):
        d = torch.diagonal(sim, offset=k)
        assert torch.allclose(d, d[0].expand_as(d), atol=1e-3)
    assert torch.allclose(torch.diagonal(sim), torch.full((64,), 16.0), atol=1e-4)


def test_sinusoidal_rejects_bad_sizes():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_encoding(8, 5)
    with pytest.raises(ValueError, match="base"):
        sinusoidal_encoding(8, 4, base=1.0)


def test_position_similarity_is_cosine_by_default():
    w = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    sim = position_similarity(w)
    assert torch.allclose(sim, torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match="positions, n_embd"):
        position_similarity(torch.zeros(2, 2, 2))


def test_modules_add_up_like_in_a_gpt():
    tok, pos = TokenEmbedding(20, 8), PositionalEmbedding(6, 8)
    idx = torch.randint(20, (3, 6))
    h = tok(idx) + pos(idx)
    assert h.shape == (3, 6, 8)
    assert torch.allclose(h[1, 2], tok.weight[idx[1, 2]] + pos.weight[2])
