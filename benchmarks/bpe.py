"""BPE benchmark: training time (gptlib's incremental trainer, the chapter's obvious trainer,
Hugging Face `tokenizers`) and encoding time against tiktoken, on Tiny Shakespeare.

    .venv/bin/python benchmarks/bpe.py [--vocab 1024] [--naive-chars 200000] [--naive-vocab 320]

The obvious trainer recounts every pair before each merge and would take minutes on the whole
text at vocab 1024, so it runs on a sample (--naive-chars, --naive-vocab); the incremental trainer
runs on the same sample too, the two merge lists are asserted equal, and the table says which
rows ran on the sample. Encoding ids are asserted identical to tiktoken's.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import print_table, write_results  # noqa: E402

import regex  # noqa: E402

from gptlib.datasets import load_text  # noqa: E402
from gptlib.tokenizer import (GPT2_SPLIT_PATTERN, BPETokenizer, train_merges,  # noqa: E402
                              train_merges_naive)


def best_of(fn, repeats: int):
    """(fastest wall time in seconds, last result) over ``repeats`` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def train_hf(text: str, vocab_size: int):
    """Byte-level BPE with Hugging Face tokenizers (GPT-2 pre-tokenization), or None if missing."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        return None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--naive-chars", type=int, default=200_000)
    parser.add_argument("--naive-vocab", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    text = load_text("tinyshakespeare")
    n_bytes = len(text.encode("utf-8"))
    rows, figures = [], {"text_bytes": n_bytes, "vocab_size": args.vocab}

    # -- training -------------------------------------------------------------------------------
    t_fast, tok = best_of(lambda: BPETokenizer().train(text, args.vocab), args.repeats)
    assert tok.vocab_size == args.vocab
    rows.append({"task": "train", "implementation": "gptlib BPETokenizer.train (incremental)",
                 "data": f"full text, vocab {args.vocab}", "seconds": t_fast, "ratio": 1.0})
    figures["train_gptlib_s"] = t_fast

    sample = text[: args.naive_chars]
    chunks = [list(c.encode("utf-8")) for c in regex.findall(GPT2_SPLIT_PATTERN, sample)]
    words = Counter(tuple(c) for c in chunks)
    n_merges = args.naive_vocab - 256
    t_naive, slow = best_of(lambda: train_merges_naive(chunks, n_merges), 1)
    t_inc, fast = best_of(lambda: train_merges(words, n_merges), args.repeats)
    assert slow == fast, "the obvious and the incremental trainer learned different merges"
    sample_desc = f"sample {len(sample):,} chars, vocab {args.naive_vocab}"
    rows.append({"task": "train", "implementation": "chapter's obvious trainer (train_merges_naive)",
                 "data": sample_desc, "seconds": t_naive, "ratio": t_naive / t_inc})
    rows.append({"task": "train", "implementation": "gptlib train_merges (incremental), same merges",
                 "data": sample_desc, "seconds": t_inc, "ratio": 1.0})
    figures.update(naive_sample_chars=len(sample), naive_vocab=args.naive_vocab, train_naive_sample_s=t_naive,
                   train_incremental_sample_s=t_inc, naive_over_incremental=t_naive / t_inc,
                   same_merges=True)

    t_hf, hf = best_of(lambda: train_hf(text, args.vocab), args.repeats)
    if hf is not None:
        import tokenizers
        rows.append({"task": "train", "implementation": f"HF tokenizers {tokenizers.__version__} BPE (Rust)",
                     "data": f"full text, vocab {args.vocab}", "seconds": t_hf, "ratio": t_hf / t_fast})
        figures.update(train_hf_tokenizers_s=t_hf, hf_vocab_size=hf.get_vocab_size(),
                       gptlib_over_hf=t_fast / t_hf)
    else:
        rows.append({"task": "train", "implementation": "HF tokenizers", "data": "not installed",
                     "seconds": "", "ratio": ""})

    # -- encoding -------------------------------------------------------------------------------
    try:
        import tiktoken
    except ImportError:
        tiktoken = None
    if tiktoken is not None:
        for name in ("gpt2", "cl100k_base"):
            mine = BPETokenizer.from_tiktoken(name)
            ref = tiktoken.get_encoding(name)

            def cold():                                  # a fresh chunk cache every time
                mine._cache = {}
                return mine.encode(text)

            t_mine, ids = best_of(cold, args.repeats)
            t_ref, ref_ids = best_of(lambda: ref.encode(text), args.repeats)
            assert ids == ref_ids, f"{name}: gptlib and tiktoken disagree"
            rows.append({"task": f"encode ({name})", "implementation": "gptlib from_tiktoken (cold cache)",
                         "data": f"full text, {len(ids):,} tokens", "seconds": t_mine, "ratio": t_mine / t_ref})
            rows.append({"task": f"encode ({name})", "implementation": f"tiktoken {tiktoken.__version__}",
                         "data": "identical ids", "seconds": t_ref, "ratio": 1.0})
            figures[f"encode_{name}"] = {"gptlib_s": t_mine, "tiktoken_s": t_ref, "ratio": t_mine / t_ref,
                                        "tokens": len(ids), "identical_ids": True}
    own_ids = tok.encode(text)
    assert tok.decode(own_ids) == text
    figures["bytes_per_token_own"] = n_bytes / len(own_ids)

    print(f"Tiny Shakespeare: {n_bytes:,} bytes; best of {args.repeats} runs (the naive trainer: 1 run); "
          f"ratio = seconds / the row it is compared with (the first train row, the incremental trainer "
          f"on the same sample, or tiktoken)")
    print_table(rows, ["task", "implementation", "data", "seconds", "ratio"])
    print(f"target: gptlib training at vocab {args.vocab} <= 2 s on this machine: "
          f"{'met' if t_fast <= 2 else 'NOT met'} ({t_fast:.2f} s); cpu_count={os.cpu_count()}")
    figures["rows"] = rows
    write_results("bpe", figures)


if __name__ == "__main__":
    main()
