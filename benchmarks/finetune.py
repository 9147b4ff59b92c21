"""Chapter 8 benchmark: held-out accuracy and wall time of each fine-tuning method.

Pretrains (or loads from the cache) the chapter's character model, then fine-tunes it on the
"spot the forgery" task with every method of the chapter and the same network from scratch.
Prints a table and writes ``results/finetune.json`` with the figures and the issue's targets:
pretrained + fine-tuned beats from scratch by >= 10 points; LoRA within 2 points of full
fine-tuning while training <= 5% of the parameters.

    python benchmarks/finetune.py [--profile cpu|smoke|gpu] [--seeds 1]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_table, write_results  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=os.environ.get("GPTLIB_PROFILE", "cpu"))
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds to average over")
    args = parser.parse_args(argv)
    os.environ["GPTLIB_PROFILE"] = args.profile

    import torch
    from gptlib.classify import ClassificationData, finetune_run
    from gptlib.datasets import load_text
    from gptlib.forgery import (KINDS, SETTINGS_BY_PROFILE, finetune_config, make_forgery_task,
                                pretrained_char_model)
    from gptlib.instruct import exact_match, sft_pair, train_sft
    from gptlib.model import GPT, GPTConfig
    from gptlib.runtime import by_profile, get_device
    from gptlib.tokenizer import CharTokenizer

    cfg = by_profile(**SETTINGS_BY_PROFILE)            # the notebook's sizes for this profile
    device = get_device()
    text = load_text("tinyshakespeare")
    tok = CharTokenizer(text)
    task = make_forgery_task(text, n_train_per_class=cfg["n_train_per_class"], max_chars=64, n_test=cfg["n_test"])
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                       n_head=cfg["n_head"], n_embd=cfg["n_embd"])
    t0 = time.perf_counter()
    pretrain_config = finetune_config(cfg["pretrain_steps"], cfg["pretrain_batch"], lr=3e-3, weight_decay=0.1)
    pretrained, info = pretrained_char_model(task.pretrain_text, tok, config, pretrain_config)
    pretrain_seconds = info["seconds"] if not info["cached"] else None
    pretrained.to(device)
    train = ClassificationData.from_examples(task.train, tok, 64)
    test = ClassificationData.from_examples(task.test, tok, 64)
    common = dict(train=train, test=test)
    torch.manual_seed(0)
    scratch = GPT(config).to(device)
    r = cfg["lora_r"]
    runs = [("from scratch", scratch, "full", 3e-3, {}),
            ("head only", pretrained, "head", 1e-2, {}),
            ("top block + head", pretrained, "top", 1e-3, {}),
            ("full fine-tuning", pretrained, "full", 3e-4, {}),
            ("full + LM loss (λ=0.2)", pretrained, "full", 3e-4, {"lm_lambda": 0.2}),
            ("full + LM loss (λ=1)", pretrained, "full", 3e-4, {"lm_lambda": 1.0}),
            (f"LoRA (r={r})", pretrained, "lora", 3e-3, {"lora": dict(r=r, alpha=2 * r)})]
    rows = []
    for name, backbone, mode, lr, extra in runs:
        accs, secs = [], []
        for seed in range(args.seeds):
            config = finetune_config(cfg["ft_steps"], cfg["ft_batch"], lr, seed=seed)
            row, _, _ = finetune_run(name, backbone, mode, config=config, **extra, **common)
            accs.append(row["accuracy"])
            secs.append(row["seconds"])
        rows.append({"run": name, "accuracy": sum(accs) / len(accs), "trainable": row["trainable"],
                     "trainable_pct": 100 * row["trainable_fraction"], "seconds": sum(secs) / len(secs)})
        print(f"  {name}: {rows[-1]['accuracy']:.3f}", flush=True)

    sft_train = [sft_pair(e, KINDS) for e in task.train]
    sft_test = [sft_pair(e, KINDS) for e in task.test][: cfg["n_sft_test"]]
    sft_model = copy.deepcopy(pretrained)
    em_before = exact_match(sft_model, tok, sft_test)
    t_sft = time.perf_counter()
    train_sft(sft_model, sft_train, tok, finetune_config(cfg["sft_steps"], cfg["ft_batch"], 1e-3))
    sft_seconds = time.perf_counter() - t_sft
    em_after = exact_match(sft_model, tok, sft_test)
    rows.append({"run": "SFT (exact match)", "accuracy": em_after, "trainable": pretrained.num_parameters(),
                 "trainable_pct": 100.0, "seconds": sft_seconds})

    print_table(rows, ["run", "accuracy", "trainable", "trainable_pct", "seconds"])
    acc = {row["run"]: row["accuracy"] for row in rows}
    lora = rows[len(runs) - 1]
    targets = {
        "pretrained_minus_scratch_points": 100 * (acc["full fine-tuning"] - acc["from scratch"]),
        "full_minus_lora_points": 100 * (acc["full fine-tuning"] - lora["accuracy"]),
        "lora_trainable_pct": lora["trainable_pct"],
    }
    targets["met_pretrained_gain_ge_10"] = targets["pretrained_minus_scratch_points"] >= 10
    targets["met_lora_within_2"] = targets["full_minus_lora_points"] <= 2
    targets["met_lora_le_5pct"] = targets["lora_trainable_pct"] <= 5
    for k, v in targets.items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    write_results("finetune", {"profile": args.profile, "config": cfg, "seeds": args.seeds,
                               "pretrain_seconds": pretrain_seconds, "pretrain_cached": info["cached"],
                               "n_train": len(task.train), "n_test": len(task.test),
                               "sft_exact_match_before": em_before, "sft_exact_match_after": em_after,
                               "rows": rows, "targets": targets,
                               "total_seconds": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
