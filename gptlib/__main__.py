"""The command line: train a GPT from a recipe file, write a corpus into token shards, or train a
BPE tokenizer on a corpus file.

Hand-written (not exported from a notebook). Chapters 1, 2 and 6 build everything this runs; this
module only reads the arguments, loads the recipe's text and calls :func:`gptlib.training.train`::

    python -m gptlib --config configs/shakespeare_char_cpu.json [--out-dir DIR] [--resume]
                     [--until STEP] [--no-progress]
    torchrun --standalone --nproc_per_node=8 -m gptlib --config configs/shakespeare_char_gpu.json
    python -m gptlib prepare CORPUS OUT_DIR [--tokenizer gpt2] [--workers N] [--shard-size N]
    python -m gptlib train-bpe CORPUS OUT_FILE --vocab-size N [--workers N]

RECIPE is a JSON file (``configs/shakespeare_char_cpu.json``) or the name of one in ``configs/``
(``shakespeare_char_cpu``). The run writes ``ckpt.pt`` and ``history.json`` (and
``ckpt.best.pt`` with ``keep_best``) into the recipe's ``out_dir``, or ``--out-dir``. ``train-bpe``
writes the tokenizer that :meth:`gptlib.tokenizer.BPETokenizer.load` reads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from gptlib.checkpoint import best_checkpoint_path
from gptlib.model import GPT
from gptlib.runtime import atomic_write, positive_int
from gptlib.tokenizer import ENDOFTEXT, BPETokenizer
from gptlib.training import (History, Recipe, _cleanup_distributed, _setup_distributed, load_recipe,
                             load_text_data, train)

__all__ = ["main", "run_recipe", "train_bpe"]


def run_recipe(recipe: Recipe, out_dir: str | None = None, resume: bool = False,
               until_step: int | None = None, progress: bool = True) -> History:
    """Train a GPT as ``recipe`` says; write ``ckpt.pt`` and ``history.json`` (and ``ckpt.best.pt``
    with ``keep_best``) into ``out_dir`` (default: the recipe's); ``resume`` continues from
    ``ckpt.pt``."""
    out_dir = Path(recipe.out_dir if out_dir is None else out_dir)
    ckpt = out_dir / "ckpt.pt"
    if resume and not ckpt.is_file():
        raise FileNotFoundError(f"--resume was given but there is no checkpoint at {ckpt}")
    tokenizer, train_ids, val_ids, _ = load_text_data(recipe.data)
    torch.manual_seed(recipe.train.seed)  # the weights' initialisation
    model = GPT(recipe.model_config(tokenizer.vocab_size))
    history = train(model, train_ids, val_ids, recipe.train, checkpoint_path=ckpt,
                    resume_from=ckpt if resume else None, until_step=until_step, progress=progress)
    if _setup_distributed().is_main:
        atomic_write(out_dir / "history.json", lambda tmp: tmp.write_text(json.dumps(history.to_dict())))
        last = history.val_loss[-1] if history.val_loss else float("nan")
        best = f", best {best_checkpoint_path(ckpt)}" if recipe.train.keep_best else ""
        print(f"step {history.step[-1] + 1 if history.step else 0}: val loss {last:.4f} "
              f"(best {history.best_val:.4f}); checkpoint {ckpt}{best}")
    return history


def train_bpe(argv: list[str]) -> int:
    """``python -m gptlib train-bpe CORPUS OUT_FILE --vocab-size N [--workers N]``: Chapter 1's
    :meth:`~gptlib.tokenizer.BPETokenizer.train_file` on CORPUS (a UTF-8 text file, documents
    separated by ``<|endoftext|>``, which gets the last id), saved to OUT_FILE."""
    parser = argparse.ArgumentParser(prog="python -m gptlib train-bpe", description=train_bpe.__doc__)
    parser.add_argument("corpus", help="a UTF-8 text file, documents separated by <|endoftext|>")
    parser.add_argument("out_file", help="where the tokenizer is written (JSON; BPETokenizer.load reads it)")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="256 bytes + the merges + 1 for <|endoftext|>")
    parser.add_argument("--workers", type=int, default=None, help="processes that count (default: one per core)")
    args = parser.parse_args(argv)
    corpus, out = Path(args.corpus), Path(args.out_file)
    if not corpus.is_file():
        parser.error(f"{corpus} is not a file")
    if out.is_dir():
        parser.error(f"{out} is a folder: give the path of the file to write")
    t0 = time.perf_counter()
    try:
        tok = BPETokenizer().train_file(corpus, args.vocab_size, special_tokens=[ENDOFTEXT],
                                        workers=args.workers)
    except ValueError as err:                  # a bad --vocab-size or --workers, or a file that is not UTF-8
        parser.error(str(err))
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    print(f"{tok} trained on {corpus} ({corpus.stat().st_size:,} bytes) in "
          f"{time.perf_counter() - t0:.1f} s; written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m gptlib --config RECIPE [--out-dir DIR] [--resume] [--until STEP]
    [--no-progress]`` (also under torchrun). RECIPE is a JSON file
    (``configs/shakespeare_char_cpu.json``) or the name of one in ``configs/``
    (``shakespeare_char_cpu``). ``python -m gptlib prepare ...`` runs Chapter 2's
    :func:`gptlib.shards.main` instead (a corpus into token shards), and ``python -m gptlib
    train-bpe ...`` runs :func:`train_bpe` (a BPE tokenizer trained on a corpus file)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["prepare"]:
        from gptlib.shards import main as prepare_main
        prepare_main(argv)
        return 0
    if argv[:1] == ["train-bpe"]:
        return train_bpe(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m gptlib", description=main.__doc__)
    parser.add_argument("--config", required=True, help="a recipe: a JSON file, or a name in configs/")
    parser.add_argument("--out-dir", default=None, help="where ckpt.pt and history.json go (default: the recipe's out_dir)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/ckpt.pt")
    parser.add_argument("--until", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.config)
        if args.until is not None:
            positive_int("--until", args.until)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    torch.set_num_threads(int(os.environ.get("GPTLIB_THREADS", torch.get_num_threads())))
    try:
        run_recipe(recipe, args.out_dir, resume=args.resume, until_step=args.until,
                   progress=not args.no_progress)
    finally:
        _cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
