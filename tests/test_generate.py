"""gptlib.sampling: sampling filters, the generation loop, streaming, stop tokens, the KV cache."""
import math

import pytest
import torch
import torch.nn.functional as F

from gptlib.block import Block, PostLNBlock
from gptlib.sampling import (KVCache, StaticKVCache, apply_temperature, check_sampling_args, generate,
                             next_token_probs, sample_next, stream, top_k_filter, top_p_filter)
from gptlib.model import GPT, GPTConfig

VOCAB, BLOCK = 37, 16


def make_model(dtype=torch.float64, seed=0, block_cls=None, **overrides):
    torch.manual_seed(seed)
    config = GPTConfig(**{**dict(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2,
                                 n_embd=32), **overrides})
    model = GPT(config) if block_cls is None else GPT(config, block_cls=block_cls)
    return model.to(dtype).eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


def naive_greedy(model, idx, n):
    """The textbook loop: recompute everything, crop to block_size, argmax."""
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx[:, -model.config.block_size:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


# ---- filters ---------------------------------------------------------------------------------
def test_temperature_divides_and_zero_is_greedy():
    z = torch.tensor([[1.0, 3.0, 2.0], [0.5, 0.5, -1.0]])
    assert torch.allclose(apply_temperature(z, 2.0), z / 2)
    zero = apply_temperature(z, 0)
    assert torch.isfinite(zero).sum().item() == 2      # one survivor per row, no nan
    assert torch.equal(F.softmax(zero, -1), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.equal(next_token_probs(z, temperature=0).argmax(-1), z.argmax(-1))


def test_small_temperature_approaches_greedy():
    z = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    probs = next_token_probs(z, temperature=1e-3)
    assert torch.allclose(probs, next_token_probs(z, temperature=0), atol=1e-4)


def test_top_k_keeps_exactly_k_with_ties_to_lower_ids():
    z = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    kept = torch.isfinite(top_k_filter(z, 2))
    assert kept.tolist() == [[False, True, True, False, False]]
    z = torch.randn(3, 20, generator=torch.Generator().manual_seed(1))
    for k in (1, 5, 19):
        out = top_k_filter(z, k)
        assert (torch.isfinite(out).sum(-1) == k).all()
        assert torch.equal(out.max(-1).values, z.max(-1).values)
    assert torch.equal(top_k_filter(z, 20), z) and torch.equal(top_k_filter(z, 99), z)


def test_top_p_keeps_the_token_that_crosses_p():
    z = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    for p, n in [(0.3, 1), (0.7, 2), (0.9, 3), (0.99, 4), (1.0, 4)]:
        assert torch.isfinite(top_p_filter(z, p)).sum().item() == n, p
    shuffled = z[[3, 1, 0, 2]]
    assert torch.isfinite(top_p_filter(shuffled, 0.7)).tolist() == [False, True, True, False]


def test_top_p_always_keeps_the_most_likely_token():
    z = torch.randn(5, 30, generator=torch.Generator().manual_seed(2)) * 3
    out = top_p_filter(z, 1e-6)
    assert (torch.isfinite(out).sum(-1) == 1).all()
    assert torch.equal(out.argmax(-1), z.argmax(-1))


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7), dict(top_k=3), dict(top_p=0.8),
                                dict(temperature=1.3, top_k=10, top_p=0.9), dict(temperature=0)])
def test_next_token_probs_is_a_distribution(kw):
    z = torch.randn(4, 25, generator=torch.Generator().manual_seed(3))
    probs = next_token_probs(z, **kw)
    assert torch.allclose(probs.sum(-1), torch.ones(4)) and (probs >= 0).all()


def test_sample_next_respects_the_filter_and_the_seed():
    z = torch.randn(8, 40, generator=torch.Generator().manual_seed(4))
    allowed = torch.isfinite(top_k_filter(z, 3))
    for seed in range(5):
        ids = sample_next(z, top_k=3, generator=torch.Generator().manual_seed(seed))
        assert ids.shape == (8, 1) and allowed.gather(-1, ids).all()
    a = sample_next(z, generator=torch.Generator().manual_seed(9))
    b = sample_next(z, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    assert torch.equal(sample_next(z, temperature=0), z.argmax(-1, keepdim=True))


# ---- the loop --------------------------------------------------------------------------------
@pytest.mark.parametrize("use_cache", [False, True])
def test_greedy_matches_the_textbook_loop(model, use_cache):
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(5))
    out = generate(model, prompt, 30, temperature=0, use_cache=use_cache)
    assert torch.equal(out, naive_greedy(model, prompt, 30))


def test_kv_cache_equals_no_cache_for_many_prompts_and_lengths(model):
    g = torch.Generator().manual_seed(6)
    for prompt_len in (1, 2, 7, BLOCK - 1, BLOCK, BLOCK + 5, 3 * BLOCK):
        for n_new in (1, 5, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 2):
            prompt = torch.randint(0, VOCAB, (3, prompt_len), generator=g)
            a = generate(model, prompt, n_new, temperature=0, use_cache=True)
            b = generate(model, prompt, n_new, temperature=0, use_cache=False)
            assert torch.equal(a, b), (prompt_len, n_new)


def test_kv_cache_equals_no_cache_in_float32():
    model = make_model(torch.float32, seed=1)
    g = torch.Generator().manual_seed(7)
    for prompt_len, n_new in [(1, 40), (10, 30), (BLOCK, 20)]:
        prompt = torch.randint(0, VOCAB, (2, prompt_len), generator=g)
        assert torch.equal(generate(model, prompt, n_new, temperature=0, use_cache=True),
                           generate(model, prompt, n_new, temperature=0, use_cache=False))


def test_kv_cache_with_sampling_gives_the_same_text(model):
    prompt = torch.tensor([[1, 2, 3]])
    kw = dict(temperature=0.9, top_k=20, top_p=0.95)
    a = generate(model, prompt, 3 * BLOCK, use_cache=True, generator=torch.Generator().manual_seed(0), **kw)
    b = generate(model, prompt, 3 * BLOCK, use_cache=False, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b)


# ---- the static cache ---------------------------------------------------------------------------
def test_static_cache_equals_no_cache_greedy_in_a_batch_and_past_block_size(model):
    g = torch.Generator().manual_seed(16)
    for prompt_len in (1, 7, BLOCK, BLOCK + 5):
        for n_new in (1, BLOCK - 1, BLOCK + 1, 3 * BLOCK + 2):
            prompt = torch.randint(0, VOCAB, (3, prompt_len), generator=g)
            a = generate(model, prompt, n_new, temperature=0, use_cache="static")
            b = generate(model, prompt, n_new, temperature=0, use_cache=False)
            assert torch.equal(a, b), (prompt_len, n_new)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_static_cache_with_sampling_past_block_size_gives_the_same_text(dtype):
    model = make_model(dtype, seed=2)
    prompt = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(3))
    kw = dict(temperature=0.9, top_k=20, top_p=0.95, max_new_tokens=3 * BLOCK + 1)
    runs = [generate(model, prompt, use_cache=use, generator=torch.Generator().manual_seed(0), **kw)
            for use in ("static", True, False)]
    assert torch.equal(runs[0], runs[2]) and torch.equal(runs[1], runs[2])


def test_static_cache_streams_and_stops_like_the_plain_loop(model):
    plain, static = (list(stream(model, [3, 4], 40, temperature=0.8, use_cache=use,
                                 generator=torch.Generator().manual_seed(2)))
                     for use in (False, "static"))
    assert plain == static
    free = generate(model, [1, 2], 30, temperature=0, use_cache=False)
    stop = int(free[6])
    assert torch.equal(generate(model, [1, 2], 30, temperature=0, stop_tokens=stop, use_cache="static"),
                       generate(model, [1, 2], 30, temperature=0, stop_tokens=stop, use_cache=False))


def test_static_cache_is_allocated_once_and_written_in_place(model):
    cache = StaticKVCache.for_model(model, 2)
    assert cache.nbytes() == 2 * model.config.n_layer * 2 * BLOCK * model.config.n_embd * 8
    ptrs = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    idx = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for _ in range(2 * BLOCK + 1):                  # through two refills
            logits = model.next_token_logits(cache.next_input(idx), cache=cache)
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
    assert ptrs == [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    assert torch.equal(idx, naive_greedy(model, idx[:, :3], 2 * BLOCK + 1))


def test_static_cache_refuses_another_shape(model):
    layer = StaticKVCache.for_model(model, 2).layers[0]
    head = model.config.n_embd // model.config.n_head
    with pytest.raises(ValueError, match="static cache takes keys"):
        layer.update(torch.zeros(1, model.config.n_head, 1, head, dtype=torch.float64),
                     torch.zeros(1, model.config.n_head, 1, head, dtype=torch.float64))
    with pytest.raises(ValueError, match="static cache takes keys"):
        layer.update(torch.zeros(2, model.config.n_head, 1, head), torch.zeros(2, model.config.n_head, 1, head))


def test_whole_buffer_with_the_mask_equals_the_filled_prefix(model):
    """What a fixed-shape step would compute: attention over every slot, hiding unfilled ones."""
    attn, layer = model.transformer.h[0].attn, StaticKVCache.for_model(model, 2).layers[0]
    x = torch.randn(2, 9, model.config.n_embd, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for a, b in [(0, 5), (5, 6), (6, 9)]:
            q, k, v = attn.qkv(x[:, a:b])
            mask = layer.visible(b - a)
            k_prefix, v_prefix = layer.update(k, v)
            whole = F.scaled_dot_product_attention(q, layer.keys, layer.values, attn_mask=mask)
            prefix = F.scaled_dot_product_attention(q, k_prefix, v_prefix, attn_mask=mask[:, :b])
            assert torch.allclose(whole, prefix, atol=1e-12)
            causal = F.scaled_dot_product_attention(q, k_prefix, v_prefix,
                                                    attn_mask=torch.ones(b - a, b, dtype=torch.bool).tril(a))
            assert torch.allclose(prefix, causal, atol=1e-12)


def test_compile_step_changes_nothing_off_cuda(model, monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("compiled on a CPU")
    monkeypatch.setattr(torch, "compile", no_compile)
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(model, prompt, 20, temperature=0, use_cache="static", compile_step=True),
                       generate(model, prompt, 20, temperature=0, use_cache=False))


def test_use_cache_takes_true_false_or_static(model):
    with pytest.raises(ValueError, match="use_cache"):
        generate(model, [1, 2], 3, use_cache="yes")


def test_kv_cache_works_with_post_ln_blocks():
    model = make_model(block_cls=PostLNBlock)
    prompt = torch.tensor([[4, 5, 6]])
    assert torch.equal(generate(model, prompt, 2 * BLOCK, temperature=0, use_cache=True),
                       naive_greedy(model, prompt, 2 * BLOCK))


class HalfResidualBlock(Block):
    """A block wired differently from both built-in ones: its branches are scaled by one half."""

    def forward(self, x, cache=None):
        x = x + 0.5 * self.attn(self.ln_1(x), cache=cache)
        return x + 0.5 * self.mlp(self.ln_2(x))


def test_kv_cache_works_with_any_block_that_passes_the_cache_on():
    model = make_model(block_cls=HalfResidualBlock)
    prompt = torch.tensor([[4, 5, 6], [7, 8, 9]])

    def sample(m, use_cache):
        return generate(m, prompt, 3 * BLOCK, temperature=1.0, use_cache=use_cache,
                        generator=torch.Generator().manual_seed(0))
    with_cache = sample(model, True)
    assert torch.equal(with_cache, sample(model, False))
    assert torch.equal(model(prompt)[0], make_model(block_cls=HalfResidualBlock)(prompt)[0])
    # the scaling matters: a plain Pre-LN model with the same weights writes another text, so a
    # cache path that re-wired the blocks itself (as Block does) would fail the equality above
    plain = make_model()
    plain.load_state_dict(model.state_dict())
    assert not torch.equal(sample(plain, True), with_cache)


def test_model_with_cache_matches_one_forward_pass(model):
    idx = torch.randint(0, VOCAB, (2, BLOCK), generator=torch.Generator().manual_seed(8))
    cache = KVCache(model.config.n_layer, BLOCK)
    with torch.no_grad():
        parts = [model.hidden_states(idx[:, a:b], cache=cache) for a, b in [(0, 5), (5, 6), (6, 11), (11, 16)]]
        assert torch.allclose(torch.cat(parts, 1), model.hidden_states(idx), atol=1e-10)
        assert len(cache) == BLOCK
        assert cache.nbytes() == 2 * model.config.n_layer * 2 * BLOCK * model.config.n_embd * 8
        with pytest.raises(ValueError, match="block_size"):
            model(idx[:, :1], cache=cache)     # full: the caller must reset and crop
        cache.reset()
        assert len(cache) == 0
        logits, _ = model(idx[:, :3], cache=cache)
        assert torch.allclose(logits, model(idx[:, :3])[0])


def test_same_seed_same_text_different_seed_different_text(model):
    run = lambda seed: generate(model, [1, 2], 40, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_shapes_and_list_prompts(model):
    assert generate(model, [1, 2, 3], 4, temperature=0).shape == (7,)
    assert generate(model, torch.tensor([1, 2, 3]), 4, temperature=0).shape == (7,)
    assert generate(model, torch.tensor([[1, 2, 3]]), 4, temperature=0).shape == (1, 7)
    assert torch.equal(generate(model, [1, 2, 3], 0), torch.tensor([1, 2, 3]))


def test_training_mode_is_restored():
    model = make_model().train()
    generate(model, [1], 3)
    assert model.training
    model.eval()
    generate(model, [1], 3)
    assert not model.training


# ---- stop tokens and streaming -----------------------------------------------------------------
def test_stop_token_ends_the_sequence(model):
    free = generate(model, [1, 2], 30, temperature=0)
    stop = int(free[5])                        # the 4th new token: stop there
    first = (free[2:] == stop).nonzero()[0].item()
    out = generate(model, [1, 2], 30, temperature=0, stop_tokens=stop)
    assert torch.equal(out, free[:2 + first + 1]) and out[-1] == stop
    assert torch.equal(generate(model, [1, 2], 30, temperature=0, stop_tokens=[stop, 10**6]), out)


def test_stop_tokens_in_a_batch_pad_finished_rows(model):
    prompts = torch.randint(0, VOCAB, (4, 3), generator=torch.Generator().manual_seed(9))
    free = generate(model, prompts, 20, temperature=0)
    stop = int(free[0, 4])
    out = generate(model, prompts, 20, temperature=0, stop_tokens=stop)
    for row, full in zip(out, free):
        new, free_new = row[3:], full[3:3 + len(row) - 3]
        hits = (free_new == stop).nonzero()
        if len(hits):
            k = hits[0].item()
            assert torch.equal(new[:k + 1], free_new[:k + 1]) and (new[k:] == stop).all()
        else:
            assert torch.equal(new, free_new)
    finished = (out[:, 3:] == stop).any(-1)
    assert finished.all() or out.size(1) == 23


def test_stream_yields_the_tokens_generate_writes(model):
    kw = dict(temperature=0.8, top_p=0.9)
    tokens = list(stream(model, [3, 4], 25, generator=torch.Generator().manual_seed(1), **kw))
    whole = generate(model, [3, 4], 25, generator=torch.Generator().manual_seed(1), **kw)
    assert all(isinstance(t, int) for t in tokens) and tokens == whole[2:].tolist()
    it = stream(model, [3, 4], 10, temperature=0)
    assert next(it) == generate(model, [3, 4], 1, temperature=0)[-1].item()


def test_stream_checks_its_arguments_before_the_first_token(model):
    with pytest.raises(ValueError, match="temperature"):
        stream(model, [1], 5, temperature=-1)
    with pytest.raises(ValueError, match="one sequence"):
        stream(model, torch.zeros(2, 3, dtype=torch.long), 5)


# ---- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, phrase", [
    (dict(temperature=-0.5), "temperature"), (dict(temperature=math.nan), "temperature"),
    (dict(temperature="hot"), "temperature"), (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_k=True), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.1), "top_p"), (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2.0), "max_new_tokens"), (dict(stop_tokens="a"), "stop_tokens"),
])
def test_bad_settings_raise_value_error(model, kw, phrase):
    args = dict(max_new_tokens=3, **kw) if "max_new_tokens" not in kw else kw
    with pytest.raises(ValueError, match=phrase):
        generate(model, [1, 2], **args)


@pytest.mark.parametrize("prompt, phrase", [
    ([], "empty"), (torch.zeros(1, 0, dtype=torch.long), "empty"),
    (torch.tensor([1.0, 2.0]), "integer"), ([1.5, 2], "integer"), ("hello", "encode"),
    ([VOCAB], "outside"), ([-1, 2], "outside"), (torch.zeros(1, 1, 2, dtype=torch.long), "shape"),
])
def test_bad_prompts_raise_value_error(model, prompt, phrase):
    with pytest.raises(ValueError, match=phrase):
        generate(model, prompt, 3)


def test_check_sampling_args_accepts_the_edges():
    check_sampling_args(0, 1, 1.0)
    check_sampling_args(2.5, None, 1e-9)


def test_next_input_fills_then_feeds_one_token_then_refills():
    cache = KVCache(2, 4)
    idx = torch.arange(12).view(2, 6)
    assert torch.equal(cache.next_input(idx), idx[:, -4:])          # empty: fill
    for layer in cache.layers:
        layer.update(torch.zeros(2, 1, 3, 5), torch.zeros(2, 1, 3, 5))
    assert torch.equal(cache.next_input(idx), idx[:, -1:]) and len(cache) == 3
    for layer in cache.layers:
        layer.update(torch.zeros(2, 1, 1, 5), torch.zeros(2, 1, 1, 5))
    assert torch.equal(cache.next_input(idx), idx[:, -4:]) and len(cache) == 0   # full: refill


# ---- one graph per step with the static cache ----------------------------------------------------
def _recording_backend(graphs):
    """A torch.compile backend that runs each graph as traced and keeps its inputs."""
    def backend(gm, example_inputs):
        graphs.append([n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"])
        return gm.forward
    return backend


@pytest.mark.parametrize("prompt", [[[1, 2, 3], [4, 5, 6]], [[1, 2, 3]]])
def test_static_cache_step_compiles_one_graph_per_input_length(model, monkeypatch, prompt):
    """With the static cache, the compiled step reads only tensors of fixed shape: one graph per
    length of input (the prompt, the refill, one token), no Python number among its inputs (which
    would be a new constant, or a recompile, at every token), and the tokens of the plain loop."""
    import gptlib.sampling as sampling
    torch._dynamo.reset()
    graphs = []
    monkeypatch.setattr(sampling, "_decode_step", lambda m, compile_step: sampling._compiled_step(
        m, backend=_recording_backend(graphs), dynamic=False))
    prompt = torch.tensor(prompt)
    n_new = 2 * BLOCK + 3                               # the prompt, one token at a time, two refills
    got = generate(model, prompt, n_new, temperature=0, use_cache="static")
    torch._dynamo.reset()
    assert torch.equal(got, naive_greedy(model, prompt, n_new))
    assert len(graphs) == 3                             # feeds of 3, 1 and BLOCK tokens
    for inputs in graphs:
        assert all(isinstance(t, torch.Tensor) for t in inputs), inputs


def test_dynamic_cache_step_reads_a_python_number(model, monkeypatch):
    """The contrast: through the growing KVCache the compiled step depends on len(cache)."""
    import gptlib.sampling as sampling
    torch._dynamo.reset()
    graphs = []
    monkeypatch.setattr(sampling, "_decode_step", lambda m, compile_step: sampling._compiled_step(
        m, backend=_recording_backend(graphs), dynamic=False))
    generate(model, [1, 2, 3], 6, temperature=0, use_cache=True)
    torch._dynamo.reset()
    assert len(graphs) > 2


def test_static_cache_keeps_its_device_positions_with_its_length(model):
    cache = StaticKVCache.for_model(model, 1)
    idx = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        for _ in range(BLOCK + 2):                      # through a refill
            logits = model.next_token_logits(cache.next_input(idx), cache=cache)
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
            assert all(layer.pos.tolist() == [len(cache)] for layer in cache.layers)
    assert torch.equal(cache.positions(2), torch.tensor([len(cache), len(cache) + 1]))
