"""Generation speed with and without the KV cache (Chapter 7).

A GPT of 6 layers, 384 channels, 6 heads and a 1024-token context (random weights: speed does
not depend on what the weights say) continues a one-token prompt greedily. For each length we
time ``generate`` without the cache, with the growing ``KVCache`` (``use_cache=True``) and with
the ``StaticKVCache`` allocated up front (``use_cache="static"``) side by side in one run, assert
that all wrote exactly the same tokens, and report tokens per second and the ratios to the
uncached loop. Without the cache every step re-reads the whole context, so the ratios grow with
the length. ``--compile-step`` adds the static cache with its step compiled for CUDA graphs
(``compile_step=True``; on a CUDA device only, elsewhere it changes nothing and is skipped).

    python benchmarks/generate.py                      # lengths 64 256 512 1024 (minutes on a CPU)
    python benchmarks/generate.py --lengths 64 128     # a quick look
    python benchmarks/generate.py --device cuda --compile-step
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


def timed_generate(model, prompt, n, use_cache, device,
                   compile_step: bool = False) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = generate(model, prompt, n, temperature=0, use_cache=use_cache, compile_step=compile_step)
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
    parser.add_argument("--compile-step", action="store_true",
                        help="also time the static cache with compile_step=True (CUDA only)")
    args = parser.parse_args(argv)

    device = get_device(args.device)
    torch.manual_seed(args.seed)
    config = GPTConfig(vocab_size=args.vocab_size, block_size=1024, n_layer=6, n_head=6, n_embd=384)
    model = GPT(config).to(device).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    graphs = args.compile_step and device.type == "cuda"
    paths = {"no_cache": (False, False), "cache": (True, False), "static": ("static", False)}
    if graphs:
        paths["static_graphs"] = ("static", True)
    for use_cache, compile_step in paths.values():             # warm up every path
        generate(model, prompt, 8, temperature=0, use_cache=use_cache, compile_step=compile_step)

    rows = []
    for n in args.lengths:
        outs, row = [], {"new_tokens": n}
        for name, (use_cache, compile_step) in paths.items():
            out, seconds = timed_generate(model, prompt, n, use_cache, device, compile_step)
            outs.append(out)
            row[f"{name}_tok_s"], row[f"{name}_s"] = n / seconds, seconds
        assert all(torch.equal(out, outs[0]) for out in outs), f"outputs differ at {n} tokens"
        for name in list(paths)[1:]:
            row["speedup" if name == "cache" else f"{name}_speedup"] = row["no_cache_s"] / row[f"{name}_s"]
        row["identical"] = True
        rows.append(row)
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
