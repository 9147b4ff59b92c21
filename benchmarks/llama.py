"""Chapter 9's side by side: GPT-2-style and Llama-style models of equal parameter count, and three
ablations of the Llama-style model (no positions, Post-norm, GELU MLP), trained with the course's
CPU recipe (configs/shakespeare_char_course.json) for the same wall-clock budget, several seeds;
validation loss over every validation character.

    python benchmarks/llama.py                  # five seeds, 92 s a run (run it on a quiet machine)
    python benchmarks/llama.py --quick          # smoke: a few steps, one seed, no record written
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks._common import print_table, write_results  # noqa: E402
from gptlib.llama import Llama, PostNormLlamaBlock, matched_llama_config  # noqa: E402
from gptlib.model import GPT  # noqa: E402
from gptlib.training import evaluate_full, load_recipe, load_text_data, train  # noqa: E402


def variants(recipe, vocab_size):
    gpt_cfg = recipe.model_config(vocab_size)
    llama_cfg = matched_llama_config(
        GPT(gpt_cfg).num_parameters(), vocab_size=vocab_size, block_size=gpt_cfg.block_size,
        n_layer=gpt_cfg.n_layer, n_head=gpt_cfg.n_head, n_kv_head=max(1, gpt_cfg.n_head // 2), n_embd=gpt_cfg.n_embd)
    return {"gpt2": lambda: GPT(gpt_cfg), "llama": lambda: Llama(llama_cfg),
            "llama-no-positions": lambda: Llama(replace(llama_cfg, rope=False)),
            "llama-post-norm": lambda: Llama(llama_cfg, block_cls=PostNormLlamaBlock),
            "llama-gelu": lambda: Llama(replace(llama_cfg, mlp="gelu"))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke: 20 steps, one seed, nothing recorded")
    parser.add_argument("--budget", type=float, default=92.0, help="wall-clock seconds per run")
    parser.add_argument("--seeds", default="1337,1,2,3,4")
    parser.add_argument("--models", default="gpt2,llama,llama-no-positions,llama-post-norm,llama-gelu")
    args = parser.parse_args(argv)
    recipe = load_recipe("shakespeare_char_course")
    tok, train_ids, val_ids, _ = load_text_data(recipe.data)
    makers = variants(recipe, tok.vocab_size)
    seeds = [1337] if args.quick else [int(s) for s in args.seeds.split(",")]
    rows = []
    for name in args.models.split(","):
        for seed in seeds:
            torch.manual_seed(seed)
            model = makers[name]()
            if args.quick:
                steps = 20
            else:     # fit the schedule to the budget from a short timing of this model's own step
                probe = replace(recipe.train, max_steps=10, warmup_steps=0, seed=seed)
                t0 = time.perf_counter()
                train(makers[name](), train_ids, None, probe, progress=False)
                steps = max(100, int(0.92 * args.budget / ((time.perf_counter() - t0) / 10)))
            cfg = replace(recipe.train, max_steps=steps, seed=seed,
                          warmup_steps=min(recipe.train.warmup_steps, steps // 10))
            t0 = time.perf_counter()
            train(model, train_ids, None, cfg, progress=False)
            seconds = time.perf_counter() - t0
            loss, _ = evaluate_full(model, val_ids, model.config.block_size)
            rows.append(dict(model=name, seed=seed, params=model.num_parameters(), steps=steps,
                             seconds=round(seconds, 1), val_loss=round(loss, 4)))
            print_table(rows[-1:])
    summary = []
    for name in dict.fromkeys(r["model"] for r in rows):
        losses = [r["val_loss"] for r in rows if r["model"] == name]
        summary.append(dict(model=name, runs=len(losses), mean=statistics.mean(losses),
                            sd=statistics.stdev(losses) if len(losses) > 1 else 0.0, best=min(losses), worst=max(losses)))
    print()
    print_table(summary)
    if not args.quick:
        write_results("llama", {"budget_s": args.budget, "runs": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
