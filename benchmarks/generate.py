"""Generation speed with and without the KV cache (Chapter 7).

A GPT of 6 layers, 384 channels, 6 heads and a 1024-token context (random weights: speed does
not depend on what the weights say) continues a one-token prompt greedily. For each length we
time ``generate(..., use_cache=False)`` and ``generate(..., use_cache=True)`` side by side in
one run, assert that both wrote exactly the same tokens, and report tokens per second and
their ratio. Without the cache every step re-reads the whole context, so the ratio grows with
the length.

    python benchmarks/generate.py                      # lengths 64 256 512 1024 (minutes on a CPU)
    python benchmarks/generate.py --lengths 64 128     # a quick look
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import print_table, result_name, write_results  # noqa: E402

from gptlib.sampling import generate  # noqa: E402
from gptlib.model import GPT, GPTConfig  # noqa: E402
from gptlib.runtime import get_device  # noqa: E402


def timed_generate(model, prompt, n, use_cache, device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = generate(model, prompt, n, temperature=0, use_cache=use_cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 512, 1024],
                        help="numbers of new tokens to generate")
    parser.add_argument("--vocab-size", type=int, default=50257, help="GPT-2's vocabulary by default")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = get_device(args.device)
    torch.manual_seed(args.seed)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=1024, n_layer=6, n_head=6, n_embd=384)
    model = GPT(config).to(device).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    generate(model, prompt, 8, temperature=0, use_cache=True)   # warm up both paths
    generate(model, prompt, 8, temperature=0, use_cache=False)

    rows = []
    for n in args.lengths:
        with_cache, t_cache = timed_generate(model, prompt, n, True, device)
        without, t_plain = timed_generate(model, prompt, n, False, device)
        assert torch.equal(with_cache, without), f"outputs differ at {n} tokens"
        rows.append({
            "new_tokens": n,
            "no_cache_tok_s": n / t_plain,
            "cache_tok_s": n / t_cache,
            "speedup": t_plain / t_cache,
            "no_cache_s": t_plain,
            "cache_s": t_cache,
            "identical": True,
        })
    print(f"GPT {config.n_layer} layers, n_embd {config.n_embd}, {config.n_head} heads, "
          f"block_size {config.block_size}, vocab {config.vocab_size}, "
          f"{model.num_parameters() / 1e6:.1f}M parameters, {device}, "
          f"{torch.get_num_threads()} threads; greedy, one-token prompt")
    print_table(rows)
    figures = {"config": {k: getattr(config, k) for k in ("n_layer", "n_head", "n_embd",
                                                          "block_size", "vocab_size")},
               "device": str(device), "rows": rows}
    at_512 = [r for r in rows if r["new_tokens"] == 512]
    if at_512:
        figures["speedup_at_512"] = at_512[0]["speedup"]
        figures["target_met_5x_at_512"] = at_512[0]["speedup"] >= 5
    write_results(result_name("generate", device), figures)
    return figures


if __name__ == "__main__":
    main()
