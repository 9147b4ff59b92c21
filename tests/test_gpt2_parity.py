"""gptlib's GPT computes what Hugging Face's GPT-2 computes, for the same weights (no download)."""
import pytest
import torch

from gptlib.model import GPT, GPTConfig, convert_hf_state_dict, load_hf_state_dict

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402


def make_hf(vocab=97, n_positions=20, n_embd=32, n_layer=2, n_head=4, seed=0, scale=0.2):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function="gelu_new", bos_token_id=None, eos_token_id=None,
                        attn_implementation="eager")
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # make every parameter matter: random LayerNorm gains and biases too
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, scale)
    return config, model


@pytest.mark.parametrize("sizes", [
    dict(n_embd=32, n_layer=2, n_head=4),
    dict(n_embd=48, n_layer=3, n_head=6),
    dict(n_embd=16, n_layer=1, n_head=1),
    dict(n_embd=64, n_layer=4, n_head=16, vocab=211, n_positions=33),
])
def test_logits_match_hugging_face(sizes):
    config, hf = make_hf(**sizes)
    ours = GPT.from_hf_state_dict(hf.state_dict(), GPTConfig.from_hf(config)).eval()
    T = config.n_positions
    for idx in (torch.randint(config.vocab_size, (3, T)), torch.randint(config.vocab_size, (1, 5))):
        with torch.no_grad():
            gap = (ours(idx)[0] - hf(idx).logits).abs().max().item()
        assert gap <= 1e-4, f"max abs logits difference {gap:.2e} for {sizes}"


def test_loss_matches_hugging_face():
    config, hf = make_hf(scale=0.05)
    ours = GPT.from_hf_state_dict(hf.state_dict(), GPTConfig.from_hf(config)).eval()
    idx = torch.randint(config.vocab_size, (2, 20))
    with torch.no_grad():
        # HF shifts labels internally; give ours the shifted targets explicitly
        targets = torch.cat([idx[:, 1:], torch.full((2, 1), -100)], dim=1)
        assert ours(idx, targets)[1].item() == pytest.approx(hf(idx, labels=idx).loss.item(), abs=1e-4)


def bare_keys(state_dict, with_buffers):
    """The released model.safetensors layout: no 'transformer.' prefix, no lm_head."""
    out = {k.removeprefix("transformer."): v for k, v in state_dict.items() if k != "lm_head.weight"}
    if with_buffers:
        n_pos = next(v for k, v in out.items() if k == "wpe.weight").shape[0]
        for k in [k for k in out if k.endswith("ln_1.weight")]:
            layer = k.removesuffix("ln_1.weight")
            out[layer + "attn.bias"] = torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos)
            out[layer + "attn.masked_bias"] = torch.tensor(-1e4)
    return out


@pytest.mark.parametrize("with_buffers", [True, False])
def test_bare_gpt2model_keys_with_and_without_mask_buffers(with_buffers):
    config, hf = make_hf()
    sd = bare_keys(hf.state_dict(), with_buffers)
    ours = GPT.from_hf_state_dict(sd, GPTConfig.from_hf(config)).eval()
    idx = torch.randint(config.vocab_size, (2, 20))
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max().item() <= 1e-4


def test_conv1d_weights_are_transposed():
    config, hf = make_hf()
    converted = convert_hf_state_dict(hf.state_dict())
    hf_w = hf.state_dict()["transformer.h.0.mlp.c_fc.weight"]
    assert tuple(hf_w.shape) == (32, 128)
    assert torch.equal(converted["transformer.h.0.mlp.c_fc.weight"], hf_w.t())
    assert torch.equal(converted["transformer.h.0.attn.c_attn.bias"],
                       hf.state_dict()["transformer.h.0.attn.c_attn.bias"])


def test_missing_keys_are_named():
    config, hf = make_hf()
    sd = dict(hf.state_dict())
    del sd["transformer.h.1.mlp.c_fc.weight"], sd["transformer.ln_f.bias"]
    with pytest.raises(ValueError, match=r"missing keys: transformer\.h\.1\.mlp\.c_fc\.weight, transformer\.ln_f\.bias"):
        GPT.from_hf_state_dict(sd, GPTConfig.from_hf(config))


def test_unexpected_keys_are_named():
    config, hf = make_hf(n_layer=3)
    small = GPTConfig(**{**GPTConfig.from_hf(config).__dict__, "n_layer": 2})
    with pytest.raises(ValueError, match=r"unexpected keys: transformer\.h\.2\."):
        GPT.from_hf_state_dict(hf.state_dict(), small)
    sd = dict(hf.state_dict())
    sd["transformer.h.0.attn.rotary.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"rotary"):
        GPT.from_hf_state_dict(sd, GPTConfig.from_hf(config))


def test_bias_mismatch_is_explained():
    config, hf = make_hf()
    no_bias = GPTConfig(**{**GPTConfig.from_hf(config).__dict__, "bias": False})
    with pytest.raises(ValueError, match="bias=False but the state dict has biases"):
        GPT.from_hf_state_dict(hf.state_dict(), no_bias)


def test_wrong_shapes_are_named():
    config, hf = make_hf()
    wider = GPTConfig(**{**GPTConfig.from_hf(config).__dict__, "vocab_size": 98})
    with pytest.raises(ValueError, match=r"transformer\.wte\.weight has shape \(97, 32\), the model expects \(98, 32\)"):
        GPT.from_hf_state_dict(hf.state_dict(), wider)
    sd = dict(hf.state_dict())
    sd["transformer.h.0.attn.c_proj.weight"] = torch.zeros(32, 33)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_proj\.weight has shape \(33, 32\)"):
        GPT.from_hf_state_dict(sd, GPTConfig.from_hf(config))


def test_untied_head_is_refused():
    config, hf = make_hf()
    sd = dict(hf.state_dict())
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        GPT.from_hf_state_dict(sd, GPTConfig.from_hf(config))


def test_failed_load_leaves_model_untouched():
    config, hf = make_hf()
    model = GPT(GPTConfig.from_hf(config))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = dict(hf.state_dict())
    del sd["transformer.wpe.weight"]
    with pytest.raises(ValueError, match="wpe"):
        load_hf_state_dict(model, sd)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_config_from_hf_refuses_other_activations():
    config, _ = make_hf()
    config.activation_function = "relu"
    with pytest.raises(ValueError, match="tanh GELU"):
        GPTConfig.from_hf(config)
