"""Chapter 9's Llama: logits equal Hugging Face's LlamaForCausalLM (random weights, offline), and
the course's generate runs it with the cache giving exactly the uncached tokens."""
import pytest
import torch

from gptlib.llama import Llama, LlamaConfig, RollingKVCache, kv_cache_bytes, matched_llama_config
from gptlib.model import GPT, GPTConfig
from gptlib.sampling import KVCache, generate

transformers = pytest.importorskip("transformers")


def _hf(**extra):
    from transformers import LlamaConfig as HFConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = HFConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=32, **extra)
    return cfg, LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("extra", [
    dict(num_key_value_heads=4, tie_word_embeddings=True),                       # multi-head, tied
    dict(num_key_value_heads=2, tie_word_embeddings=False),                      # GQA, untied
    dict(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500000.0),  # MQA, other theta
    dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=31.0, rms_norm_eps=1e-5),
], ids=["mha-tied", "gqa-untied", "mqa-theta", "gqa-small-theta"])
def test_logits_match_hugging_face(extra):
    hf_cfg, hf = _hf(**extra)
    config = LlamaConfig.from_hf(hf_cfg)
    assert (config.n_kv_head, config.tie_embeddings) == (extra["num_key_value_heads"], extra["tie_word_embeddings"])
    assert config.rope_theta == extra.get("rope_theta", 10000.0)
    ours = Llama.from_hf_state_dict(hf.state_dict(), config).eval()
    idx = torch.randint(0, 97, (2, 32))
    with torch.no_grad():
        diff = (ours(idx)[0] - hf(idx).logits).abs().max().item()
    assert diff < 1e-4
    # the cache runs the same positions in pieces
    cache = KVCache(config.n_layer, 32)
    with torch.no_grad():
        pieces = [ours(idx[:, a:b], cache=cache)[0] for a, b in ((0, 5), (5, 6), (6, 32))]
    assert torch.allclose(torch.cat(pieces, 1), ours(idx)[0], atol=1e-5)


def test_a_wrong_state_dict_is_refused():
    hf_cfg, hf = _hf(num_key_value_heads=2, tie_word_embeddings=False)
    config = LlamaConfig.from_hf(hf_cfg)
    sd = hf.state_dict()
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        Llama.from_hf_state_dict(sd, LlamaConfig(**{**config.__dict__, "tie_embeddings": True}))
    sd.pop("model.norm.weight")
    with pytest.raises(ValueError, match="missing keys: model.norm.weight"):
        Llama.from_hf_state_dict(sd, config)


def test_from_hf_refuses_what_it_cannot_build():
    from transformers import LlamaConfig as HFConfig
    with pytest.raises(ValueError, match="SiLU"):
        LlamaConfig.from_hf(HFConfig(hidden_act="gelu"))
    with pytest.raises(ValueError, match="biases"):
        LlamaConfig.from_hf(HFConfig(attention_bias=True))


@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_generate_with_and_without_the_cache_agree_past_block_size(n_kv_head):
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=30, block_size=12, n_layer=2, n_head=4, n_kv_head=n_kv_head,
                              n_embd=32, hidden_dim=40))
    for temperature in (0, 1.0):
        a = generate(model, [1, 2, 3], 30, temperature=temperature, generator=torch.Generator().manual_seed(1))
        b = generate(model, [1, 2, 3], 30, temperature=temperature, generator=torch.Generator().manual_seed(1),
                     use_cache=False)
        assert torch.equal(a, b) and len(a) == 33


def test_the_rolling_cache_goes_past_block_size_and_equals_the_window_in_one_layer():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=16,
                              hidden_dim=24, rope_theta=100.0)).eval()
    idx = torch.randint(0, 30, (2, 30))
    cache = RollingKVCache(1, 8)
    with torch.no_grad():
        for t in range(8, 31):
            logits = model.next_token_logits(cache.next_input(idx[:, :t]), cache=cache)
            window = model.next_token_logits(idx[:, :t][:, -8:])
            assert torch.allclose(logits, window, atol=1e-4), t
    assert len(cache) == 30 and cache.layers[0].length == 8 and cache.dropped == 22
    with pytest.raises(ValueError, match="exceeds block_size"):    # a plain KVCache cannot go on
        full = KVCache(1, 8)
        model(idx[:, :8], cache=full)
        model(idx[:, 8:9], cache=full)


def test_cache_memory_and_equal_parameter_count():
    gpt_cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False)
    target = GPT(gpt_cfg).num_parameters()
    cfg = matched_llama_config(target, vocab_size=65, block_size=64, n_layer=4, n_head=4, n_kv_head=2, n_embd=128)
    assert abs(Llama(cfg).num_parameters() / target - 1) < 0.01
    assert kv_cache_bytes(cfg, 1, 64) * 2 == kv_cache_bytes(gpt_cfg, 1, 64)


def test_the_trainer_trains_it():
    from gptlib.training import TrainConfig, train
    torch.manual_seed(0)
    data = torch.arange(400) % 7
    model = Llama(LlamaConfig(vocab_size=7, block_size=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=16, hidden_dim=24))
    history = train(model, data, data, TrainConfig(max_steps=40, batch_size=8, lr=1e-2, warmup_steps=4,
                                                   eval_interval=40, eval_iters=2, device="cpu"), progress=False)
    assert history.val_loss[-1] < 0.5
