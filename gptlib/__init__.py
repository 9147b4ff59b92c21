"""gptlib: the GPT built in the Build a GPT course, one module per chapter.

The front door: the names a learner reaches for first, importable from ``gptlib`` itself::

    from gptlib import GPT, GPTConfig, BPETokenizer, train, TrainConfig, generate

    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    history = train(model, train_data, val_data, TrainConfig(max_steps=200))
    text_ids = generate(model, prompt_ids, max_new_tokens=100, temperature=0.8)

Where each idea lives (hand-written support modules in brackets):

=================  =======  ==========================================================
module             chapter  what it holds
=================  =======  ==========================================================
ngram, objectives  0        count-based n-gram baselines; the three families' targets and masks
tokenizer          1        ``BPETokenizer`` (training, encoding, tiktoken parity), ``CharTokenizer``
data, embeddings   2        windows and batches (``get_batch``); token and position embeddings
masking            3        the causal mask, masked softmax, padding masks
attention          4        ``CausalSelfAttention`` (its optional ``cache`` serves generation)
block, model       5        LayerNorm, GELU, MLP, ``Block``; ``GPT`` and ``GPTConfig``, GPT-2 weights
training,          6        the one training loop ``train``, recipes, evaluation; safe checkpoints
checkpoint
sampling           7        sampling filters, the one generation loop ``generate``, ``KVCache``
forgery, classify, 8        the fine-tuning task, classification heads, instruction tuning, LoRA
instruct, lora
llama              9        RMSNorm, RoPE, SwiGLU, grouped-query attention: ``Llama``, HF parity
[runtime]                   device, run profile, atomic writes, the artefact cache
[datasets]                  checksummed downloads
[exercises], [viz]          the exercise checks; pictures and widgets (matplotlib stays out of the model)
=================  =======  ==========================================================

The front-door names are imported on first use, so ``import gptlib.model`` stays light. (The
modules are named ``training`` and ``sampling``, not ``train`` and ``generate``, so that
``gptlib.train`` is always the function, whatever else has been imported.)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.2.0"  # pyproject.toml's version; the setup cells install the tag v0.2.0

_FRONT_DOOR = {
    "BPETokenizer": "tokenizer", "CharTokenizer": "tokenizer",
    "get_batch": "data",
    "CausalSelfAttention": "attention",
    "Block": "block",
    "GPT": "model", "GPTConfig": "model",
    "train": "training", "TrainConfig": "training", "load_recipe": "training",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "generate": "sampling", "stream": "sampling", "KVCache": "sampling",
}

__all__ = sorted(_FRONT_DOOR)

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time __getattr__ imports on demand
    from gptlib.attention import CausalSelfAttention as CausalSelfAttention
    from gptlib.block import Block as Block
    from gptlib.checkpoint import load_checkpoint as load_checkpoint, save_checkpoint as save_checkpoint
    from gptlib.data import get_batch as get_batch
    from gptlib.sampling import KVCache as KVCache, generate as generate, stream as stream
    from gptlib.model import GPT as GPT, GPTConfig as GPTConfig
    from gptlib.tokenizer import BPETokenizer as BPETokenizer, CharTokenizer as CharTokenizer
    from gptlib.training import TrainConfig as TrainConfig, load_recipe as load_recipe, train as train


def __getattr__(name: str):
    module = _FRONT_DOOR.get(name)
    if module is None:
        raise AttributeError(f"module 'gptlib' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"gptlib.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FRONT_DOOR))
