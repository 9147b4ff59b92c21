"""gptlib.model: GPTConfig, GPT (shapes, loss, tying, init, counts, bad input)."""
import math

import pytest
import torch
import torch.nn as nn

from gptlib.block import Block, PostLNBlock
from gptlib.model import GPT, GPT2_SIZES, IGNORE_INDEX, GPTConfig, parameter_breakdown

TINY = dict(vocab_size=50, block_size=12, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(**TINY)).eval()


def test_config_defaults_are_gpt2_small():
    c = GPTConfig()
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd, c.dropout, c.bias) == \
        (50257, 1024, 12, 12, 768, 0.0, True)
    assert GPTConfig.gpt2("gpt2-medium").n_embd == 1024


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(n_embd=30, n_head=4), "not divisible"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(vocab_size=2.5), "vocab_size must be a positive integer"),
    (dict(dropout=1.0), "dropout"),
])
def test_config_rejects_nonsense(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        GPTConfig(**{**TINY, **kwargs})
    with pytest.raises(ValueError, match="unknown GPT-2 size"):
        GPTConfig.gpt2("gpt5")


def test_structure_and_tying(model):
    assert list(model.transformer.keys()) == ["wte", "wpe", "drop", "h", "ln_f"]
    assert all(isinstance(b, Block) for b in model.transformer.h)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.bias is None
    assert "lm_head.weight" not in dict(model.named_parameters())


def test_forward_shapes_and_loss(model):
    idx = torch.randint(50, (3, 12))
    logits, loss = model(idx)
    assert logits.shape == (3, 12, 50) and loss is None
    targets = torch.randint(50, (3, 12))
    _, loss = model(idx, targets)
    ref = nn.functional.cross_entropy(logits.view(-1, 50), targets.view(-1))
    assert torch.allclose(loss, ref)
    assert model.hidden_states(idx).shape == (3, 12, 32)
    assert torch.allclose(model.lm_head(model.hidden_states(idx)), logits)


def test_loss_ignores_the_ignore_index(model):
    assert IGNORE_INDEX == -100
    idx = torch.randint(50, (2, 12))
    targets = torch.randint(50, (2, 12))
    masked = targets.clone()
    masked[:, :6] = -100
    logits, loss = model(idx, masked)
    ref = nn.functional.cross_entropy(logits[:, 6:].reshape(-1, 50), targets[:, 6:].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)


def test_bad_input_gives_clear_errors(model):
    with pytest.raises(ValueError, match="token id 50"):
        model(torch.tensor([[1, 2, 50]]))
    with pytest.raises(ValueError, match="token id -3"):
        model(torch.tensor([[1, -3]]))
    with pytest.raises(ValueError, match="exceeds block_size 12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"shape \(batch, time\)"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have the shape"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(IndexError, match="out of bounds"):   # cross-entropy's own check
        model(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[1, 2, 3, 77]]))
    from gptlib.sampling import KVCache
    cache = KVCache(model.config.n_layer, 12)
    model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="length 13 after 10 cached positions exceeds block_size 12"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT(dict(TINY))


def test_gpt2_initialisation():
    torch.manual_seed(1)
    m = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=8, n_head=4, n_embd=256))
    blk = m.transformer.h[3]
    assert blk.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for w in (blk.attn.c_proj.weight, blk.mlp.c_proj.weight):
        assert w.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.all(blk.mlp.c_fc.bias == 0) and torch.all(blk.ln_1.weight == 1)


def test_untrained_loss_is_about_ln_vocab():
    torch.manual_seed(2)
    V = 5000
    m = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        _, loss = m(torch.randint(V, (4, 32)), torch.randint(V, (4, 32)))
    assert loss.item() == pytest.approx(math.log(V), abs=0.05)


def test_parameter_counts_of_gpt2_sizes():
    expected = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168,
                "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}
    for name in GPT2_SIZES:
        with torch.device("meta"):
            m = GPT(GPTConfig.gpt2(name))
        assert m.num_parameters() == expected[name]
        groups = parameter_breakdown(m)
        assert sum(groups.values()) == expected[name]
        c = m.config
        assert m.num_parameters(non_embedding=True) == expected[name] - (c.vocab_size + c.block_size) * c.n_embd
        assert groups["LM head (untied)"] == 0


def test_bias_false_equals_zero_biases():
    torch.manual_seed(3)
    with_bias = GPT(GPTConfig(**TINY)).eval()
    no_bias = GPT(GPTConfig(**TINY, bias=False)).eval()
    assert not [n for n, _ in no_bias.named_parameters() if n.endswith(".bias")]
    state = {k: v for k, v in with_bias.state_dict().items() if k in no_bias.state_dict()}
    no_bias.load_state_dict(state, strict=False)
    with torch.no_grad():
        for n, p in with_bias.named_parameters():
            if n.endswith(".bias"):
                p.zero_()
    idx = torch.randint(50, (2, 12))
    assert torch.allclose(with_bias(idx)[0], no_bias(idx)[0], atol=1e-5)


def test_post_ln_variant_builds_and_runs():
    m = GPT(GPTConfig(**TINY), block_cls=PostLNBlock)
    assert all(isinstance(b, PostLNBlock) for b in m.transformer.h)
    assert m(torch.randint(50, (1, 5)))[0].shape == (1, 5, 50)


def test_a_few_steps_of_training_lower_the_loss():
    torch.manual_seed(4)
    m = GPT(GPTConfig(**TINY))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    idx = torch.randint(50, (4, 12))
    losses = []
    for _ in range(15):
        _, loss = m(idx[:, :-1], idx[:, 1:])
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert m.lm_head.weight is m.transformer.wte.weight  # still tied after optimiser steps
