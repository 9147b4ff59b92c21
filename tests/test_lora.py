"""gptlib.lora: LoRALinear starts as its base, scales by alpha / r, merges exactly."""
import pytest
import torch
import torch.nn as nn

from gptlib.classify import GPTClassifier, count_trainable, set_trainable
from gptlib.lora import LoRALinear, apply_lora, lora_layers, merge_lora


@pytest.fixture
def tiny(tiny_gpt):
    """``tiny()``: a fresh 2-layer, 16-wide GPT (vocabulary 20, context 16)."""
    return lambda: tiny_gpt(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16)


def test_lora_linear_starts_as_base_and_scales():
    base = nn.Linear(8, 6)
    layer = LoRALinear(base, r=2, alpha=6)
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), base(x))
    assert layer.lora_A.shape == (2, 8) and layer.lora_B.shape == (6, 2)
    assert not base.weight.requires_grad and layer.lora_B.requires_grad
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = base(x) + 3.0 * x @ layer.lora_A.T @ layer.lora_B.T
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_lora_bad_arguments():
    with pytest.raises(TypeError):
        LoRALinear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), r=0)
    with pytest.raises(ValueError, match="exceeds"):
        LoRALinear(nn.Linear(4, 4), r=5)


def test_merge_and_unmerge():
    layer = LoRALinear(nn.Linear(8, 6), r=2, alpha=4)
    w0 = layer.base.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 8)
    before = layer(x)
    layer.merge()
    assert torch.allclose(layer(x), before, atol=1e-5)
    with pytest.raises(RuntimeError):
        layer.merge()
    layer.unmerge()
    assert torch.allclose(layer.base.weight, w0, atol=1e-6) and torch.allclose(layer(x), before, atol=1e-5)


def test_apply_lora_counts_and_merged_model_equals_unmerged(tiny):
    model = tiny()
    names = apply_lora(model, r=2, alpha=4)
    assert len(names) == 2 * 4 and all(n.startswith("transformer.h.") for n in names)
    per_block = 2 * (16 + 48) + 2 * (16 + 16) + 2 * (16 + 64) + 2 * (64 + 16)
    assert count_trainable(model) == 2 * per_block
    with torch.no_grad():
        for m in lora_layers(model):
            m.lora_B.normal_(0, 0.1)
    idx = torch.randint(20, (2, 10))
    with torch.no_grad():
        unmerged = model(idx)[0]
        merge_lora(model)
        merged = model(idx)[0]
    assert not lora_layers(model) and torch.allclose(merged, unmerged, atol=1e-5)
    assert isinstance(model.transformer.h[0].attn.c_attn, nn.Linear)
    assert set(model.state_dict()) == set(tiny().state_dict())


def test_apply_lora_errors_and_gradients(tiny):
    model = tiny()
    with pytest.raises(ValueError, match="no nn.Linear named"):
        apply_lora(model, targets=("q_proj",))
    apply_lora(model, targets=("c_attn",), r=2)
    with pytest.raises(ValueError, match="already"):
        apply_lora(model)
    clf = GPTClassifier(model, 3)
    n = set_trainable(clf, "lora")
    assert n == 2 * 2 * (16 + 48) + 16 * 3 + 3
    ids = torch.randint(20, (2, 6))
    loss = clf(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor([0, 2]))[1]
    loss.backward()
    frozen = clf.backbone.transformer.h[0].attn.c_attn.base.weight
    assert frozen.grad is None and clf.backbone.transformer.h[0].attn.c_attn.lora_B.grad is not None
