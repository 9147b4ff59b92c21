"""gptlib.block: LayerNorm, GELU, MLP, the Pre-LN Block and the Post-LN block."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlib.block import GELU, MLP, Block, LayerNorm, PostLNBlock


def _conf(**kw):
    base = dict(n_embd=32, n_head=4, dropout=0.0, bias=True, block_size=16)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layernorm_equals_torch(eps, fused):
    torch.manual_seed(0)
    x = torch.randn(3, 7, 24) * 4 + 1
    ours, ref = LayerNorm(24, eps=eps, fused=fused), nn.LayerNorm(24, eps=eps)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5); ref.bias.normal_()
        ours.weight.copy_(ref.weight); ours.bias.copy_(ref.bias)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_layernorm_tiny_variance_and_no_bias(fused):
    x = torch.randn(2, 5, 16) * 3e-3 + 0.5
    ln = LayerNorm(16, bias=False, fused=fused)
    assert ln.bias is None and len(list(ln.parameters())) == 1
    assert torch.allclose(ln(x), F.layer_norm(x, (16,), eps=1e-5), atol=1e-4)


@pytest.mark.parametrize("fused", [False, True])
def test_layernorm_half_precision_keeps_dtype(fused):
    x = torch.randn(2, 4, 8).to(torch.bfloat16)
    y = LayerNorm(8, fused=fused).to(torch.bfloat16)(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), F.layer_norm(x.float(), (8,)), atol=3e-2)


@pytest.mark.parametrize("fused", [False, True])
def test_layernorm_bad_input(fused):
    with pytest.raises(ValueError, match="last dimension is 5"):
        LayerNorm(8, fused=fused)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="positive size"):
        LayerNorm(0)
    with pytest.raises(ValueError, match="eps > 0"):
        LayerNorm(4, eps=0.0)


@pytest.mark.parametrize("fused", [False, True])
def test_gelu_is_tanh_form(fused):
    x = torch.linspace(-8, 8, 2001)
    assert torch.allclose(GELU(fused=fused)(x), F.gelu(x, approximate="tanh"), atol=1e-6)
    assert not torch.allclose(GELU(fused=fused)(x), F.gelu(x), atol=1e-5)  # not the erf form


def test_fused_and_written_out_paths_agree_in_gradients():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 32) * 2
    ln_fused, ln_written = LayerNorm(32), LayerNorm(32, fused=False)
    with torch.no_grad():
        ln_fused.weight.uniform_(0.5, 1.5); ln_fused.bias.normal_()
    ln_written.load_state_dict(ln_fused.state_dict())
    for written, fused in [(GELU(fused=False), GELU()), (ln_written, ln_fused)]:
        grads = []
        for module in (written, fused):
            xi = x.clone().requires_grad_()
            (module(xi) * torch.linspace(-1, 1, 32)).sum().backward()
            grads.append(xi.grad)
        assert torch.allclose(grads[0], grads[1], atol=1e-5)
    assert GELU().fused and LayerNorm(8).fused       # the model uses the fused kernels by default


def test_mlp_shapes_names_and_count():
    mlp = MLP(16)
    assert [n for n, _ in mlp.named_children()] == ["c_fc", "gelu", "c_proj", "dropout"]
    assert mlp.c_fc.out_features == 64 and mlp.c_proj.in_features == 64
    assert sum(p.numel() for p in mlp.parameters()) == 8 * 16 * 16 + 5 * 16
    assert mlp(torch.randn(2, 3, 16)).shape == (2, 3, 16)
    assert sum(p.numel() for p in MLP(16, bias=False).parameters()) == 8 * 16 * 16


def test_block_submodules_and_wiring():
    torch.manual_seed(1)
    block = Block(_conf()).eval()
    assert [n for n, _ in block.named_children()] == ["ln_1", "attn", "ln_2", "mlp"]
    assert type(block.attn).__name__ == "CausalSelfAttention"
    x = torch.randn(2, 8, 32)
    h = x + block.attn(block.ln_1(x))
    assert torch.allclose(block(x), h + block.mlp(block.ln_2(h)), atol=1e-6)


def test_post_ln_block_wiring_and_same_parameters():
    torch.manual_seed(2)
    pre, post = Block(_conf()).eval(), PostLNBlock(_conf()).eval()
    post.load_state_dict(pre.state_dict())
    x = torch.randn(2, 8, 32)
    h = post.ln_1(x + post.attn(x))
    assert torch.allclose(post(x), post.ln_2(h + post.mlp(h)), atol=1e-6)
    assert not torch.allclose(post(x), pre(x), atol=1e-3)
    assert post(x).std(-1).mean().item() == pytest.approx(1.0, abs=0.05)  # ends in a LayerNorm


@pytest.mark.parametrize("block_cls", [Block, PostLNBlock])
def test_blocks_are_causal(block_cls):
    torch.manual_seed(3)
    block = block_cls(_conf()).eval()
    x = torch.randn(1, 10, 32)
    x2 = x.clone()
    x2[:, 7:] += 1.0
    assert torch.allclose(block(x)[:, :7], block(x2)[:, :7], atol=1e-6)


def test_block_without_bias_has_no_bias_parameters():
    block = Block(_conf(bias=False))
    assert not [n for n, _ in block.named_parameters() if n.endswith("bias")]
