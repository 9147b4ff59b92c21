"""The command line: train a GPT from a recipe file, or write a corpus into token shards.

Hand-written (not exported from a notebook). Chapter 6 builds everything this runs; this module
only reads the arguments, loads the recipe's text and calls :func:`gptlib.training.train`::

    python -m gptlib --config configs/shakespeare_char_cpu.json [--out-dir DIR] [--resume]
                     [--until STEP] [--no-progress]
    torchrun --standalone --nproc_per_node=8 -m gptlib --config configs/shakespeare_char_gpu.json
    python -m gptlib prepare CORPUS OUT_DIR [--tokenizer gpt2] [--workers N] [--shard-size N]

RECIPE is a JSON file (``configs/shakespeare_char_cpu.json``) or the name of one in ``configs/``
(``shakespeare_char_cpu``). The run writes ``ckpt.pt`` and ``history.json`` (and
``ckpt.best.pt`` with ``keep_best``) into the recipe's ``out_dir``, or ``--out-dir``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from gptlib.checkpoint import best_checkpoint_path
from gptlib.model import GPT
from gptlib.runtime import atomic_write, positive_int
from gptlib.training import (History, Recipe, _cleanup_distributed, _setup_distributed, load_recipe,
                             load_text_data, train)

__all__ = ["main", "run_recipe"]


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


def main(argv: list[str] | None = None) -> int:
    """``python -m gptlib --config RECIPE [--out-dir DIR] [--resume] [--until STEP]
    [--no-progress]`` (also under torchrun). RECIPE is a JSON file
    (``configs/shakespeare_char_cpu.json``) or the name of one in ``configs/``
    (``shakespeare_char_cpu``). ``python -m gptlib prepare ...`` runs Chapter 2's
    :func:`gptlib.shards.main` instead (a corpus into token shards)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["prepare"]:
        from gptlib.shards import main as prepare_main
        prepare_main(argv)
        return 0
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
