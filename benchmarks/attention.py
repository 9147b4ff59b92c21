"""Forward + backward time of CausalSelfAttention: PyTorch's fused SDPA path vs the explicit path.

    python benchmarks/attention.py                 # B=8, n_embd=384, n_head=6, T=256 and 1024
    python benchmarks/attention.py --T 128 256 --repeat 3

Both paths run the same module with the same weights and input: ``attn(x)`` calls
``F.scaled_dot_product_attention(is_causal=True)``; ``attn(x, need_weights=True)`` builds the
(B, n_head, T, T) weights explicitly (the from-scratch path of Chapter 4). Their outputs and input
gradients are asserted equal before anything is timed. Prints a table and writes
``results/attention.json``; the ratio is explicit time / SDPA time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import print_table, result_name, write_results  # noqa: E402

from gptlib.attention import CausalSelfAttention  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fwd_bwd(attn: CausalSelfAttention, x: torch.Tensor, explicit: bool):
    """One forward and backward pass; returns the output and the gradient of the input."""
    x = x.detach().requires_grad_()
    y = attn(x, need_weights=True)[0] if explicit else attn(x)
    y.square().mean().backward()
    return y.detach(), x.grad


def time_path(attn, x, explicit: bool, warmup: int, repeat: int) -> float:
    """Median seconds per forward+backward over ``repeat`` runs after ``warmup`` runs."""
    device = x.device
    for _ in range(warmup):
        fwd_bwd(attn, x, explicit)
    times = []
    for _ in range(repeat):
        attn.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        fwd_bwd(attn, x, explicit)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-embd", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    attn = CausalSelfAttention(args.n_embd, args.n_head, block_size=max(args.T)).to(device).eval()
    rows = []
    for T in args.T:
        x = torch.randn(args.batch, T, args.n_embd, device=device)
        y_fast, g_fast = fwd_bwd(attn, x, explicit=False)
        y_expl, g_expl = fwd_bwd(attn, x, explicit=True)
        # TF32 / reduced-precision kernels on GPUs loosen agreement; float32 CPU is tight.
        tol = dict(atol=1e-5, rtol=1e-4) if device.type == "cpu" else dict(atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(y_fast, y_expl, **tol)
        torch.testing.assert_close(g_fast, g_expl, **tol)
        max_diff = (y_fast - y_expl).abs().max().item()
        t_fast = time_path(attn, x, False, args.warmup, args.repeat)
        t_expl = time_path(attn, x, True, args.warmup, args.repeat)
        rows.append({"T": T, "B": args.batch, "n_embd": args.n_embd, "n_head": args.n_head,
                     "sdpa_ms": 1000 * t_fast, "explicit_ms": 1000 * t_expl,
                     "explicit/sdpa": t_expl / t_fast, "max_abs_diff": max_diff})
    print(f"CausalSelfAttention forward+backward on {device} "
          f"(median of {args.repeat}, torch threads {torch.get_num_threads()})")
    print_table(rows)
    write_results(result_name("attention", device), {"device": str(device), "repeat": args.repeat,
                                "warmup": args.warmup, "rows": rows})


if __name__ == "__main__":
    main()
