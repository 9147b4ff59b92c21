"""Checks for Chapter 6 (training). Hand-written.

Each check probes the learner's function at points where the usual mistakes give recognisably
different answers (the first warmup step, the end of the schedule, a LayerNorm gain, ln 2 vs
log2), and names the mistake it sees.
"""
from __future__ import annotations

import math

import torch.nn as nn

from gptlib.exercises import CheckFailed, exercise, expect
from gptlib.training import bits_per_char, lr_at


def _close(a, b, tol: float = 1e-9) -> bool:
    return isinstance(a, (int, float)) and math.isclose(float(a), b, rel_tol=tol, abs_tol=tol)


@exercise("6.1", "Warmup then cosine learning rate")
def _(candidate):
    settings = [dict(max_lr=6e-4, min_lr=6e-5, warmup_steps=10, max_steps=100),
                dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=4, max_steps=20)]
    for s in settings:
        W, N, hi, lo = s["warmup_steps"], s["max_steps"], s["max_lr"], s["min_lr"]
        lr = lambda step: candidate(step, hi, lo, W, N)  # noqa: E731
        got0 = lr(0)
        expect(isinstance(got0, (int, float)), f"return a Python float, got {type(got0).__name__}")
        if _close(got0, 0.0):
            raise CheckFailed("the learning rate at step 0 is 0, so the first step is wasted: during "
                              "warmup use max_lr * (step + 1) / warmup_steps (off by one)")
        if _close(lr(W - 1), hi * (W - 1) / W) or _close(lr(W - 1), hi * W / (W + 1)):
            raise CheckFailed("the warmup is off by one: step warmup_steps - 1 must reach max_lr "
                              "exactly; use max_lr * (step + 1) / warmup_steps")
        expect(_close(got0, hi / W) and _close(lr(W - 1), hi),
               "during warmup the rate must rise linearly: max_lr * (step + 1) / warmup_steps")
        end = lr(N)
        if _close(end, 0.0) or _close(lr(N - 1), 0.5 * (1 + math.cos(math.pi * (N - 1 - W) / (N - W))) * hi):
            raise CheckFailed("the cosine decays to 0 instead of to min_lr: use "
                              "min_lr + 0.5 * (1 + cos(pi * progress)) * (max_lr - min_lr)")
        expect(_close(end, lo) and _close(lr(N + 50), lo),
               "at and after max_steps the rate must stay at min_lr")
        q = W + (N - W) // 4
        if _close(lr(q), hi - (hi - lo) * (q - W) / (N - W)):
            raise CheckFailed("the decay is a straight line; use half a cosine: progress = (step - "
                              "warmup_steps) / (max_steps - warmup_steps), lr = min_lr + 0.5 * "
                              "(1 + cos(pi * progress)) * (max_lr - min_lr)")
        for step in range(0, N + 5):
            ref = lr_at(step, hi, lo, W, N)
            expect(_close(lr(step), ref),
                   f"at step {step} (warmup_steps={W}, max_steps={N}) expected {ref:.6g}, got {lr(step)!r}: "
                   "progress = (step - warmup_steps) / (max_steps - warmup_steps), "
                   "lr = min_lr + 0.5 * (1 + cos(pi * progress)) * (max_lr - min_lr)")
    # No warmup at all is allowed: step 0 then starts at max_lr.
    expect(_close(candidate(0, 1e-3, 1e-4, 0, 10), 1e-3),
           "with warmup_steps=0 the first step must use max_lr (no division by zero)")


class _Tiny(nn.Module):
    """Embedding, Linear with bias, LayerNorm, and a tied head: every kind of parameter."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(11, 6)
        self.fc = nn.Linear(6, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.wte.weight
        self.frozen = nn.Linear(6, 6, bias=False)
        self.frozen.weight.requires_grad_(False)


@exercise("6.2", "Parameter groups for weight decay")
def _(candidate):
    model = _Tiny()
    groups = candidate(model, 0.1)
    expect(isinstance(groups, (list, tuple)) and all(isinstance(g, dict) for g in groups),
           "return a list of dicts, each with 'params' and 'weight_decay'")
    expect(all("params" in g and "weight_decay" in g for g in groups),
           "every group needs the keys 'params' and 'weight_decay'")
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [id(p) for g in groups for p in g["params"]]
    expect(len(seen) == len(set(seen)),
           "a parameter appears twice: the tied head weight is the embedding weight; iterate over "
           "model.named_parameters(), which lists it once")
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    expect(id(model.frozen.weight) not in decay_of,
           "frozen parameters (requires_grad=False) do not belong in the optimizer")
    for name in ("wte.weight", "fc.weight", "fc.bias", "ln.weight", "ln.bias"):
        expect(id(dict(model.named_parameters())[name]) in decay_of,
               f"{name} is missing from the groups: every trainable parameter needs a group")
    if decay_of[id(model.ln.weight)] != 0 or decay_of[id(model.ln.bias)] != 0:
        raise CheckFailed("LayerNorm weights/biases are decayed: weight decay pulls LayerNorm's gain "
                          "towards 0; put every parameter with p.dim() < 2 (biases and norms) in the "
                          "group with weight_decay=0.0")
    if decay_of[id(model.fc.bias)] != 0:
        raise CheckFailed("biases are decayed: put every parameter with p.dim() < 2 in the group "
                          "with weight_decay=0.0")
    for key in ("fc.weight", "wte.weight"):
        p = dict(model.named_parameters())[key]
        expect(decay_of[id(p)] == 0.1,
               f"{key} is a matrix (dim >= 2) and must be decayed with the weight_decay you were given")
    expect(all(names.get(i) for i in decay_of), "the groups hold tensors that are not the model's parameters")


@exercise("6.3", "Bits per character from a loss")
def _(candidate):
    cases = [(1.5, 1000, 1000), (3.2, 250, 1000), (0.7, 400, 300)]
    for loss, n_tok, n_chr in cases:
        got = candidate(loss, n_tok, n_chr)
        want = bits_per_char(loss, n_tok, n_chr)
        expect(isinstance(got, (int, float)), f"return a Python float, got {type(got).__name__}")
        if _close(got, want, 1e-6):
            continue
        if _close(got, loss * n_tok / n_chr * math.log(2), 1e-6):
            raise CheckFailed("you multiplied by ln 2: a loss in nats becomes bits by dividing by ln 2 "
                              "(1 bit = ln 2 nats), i.e. loss / math.log(2)")
        if _close(got, math.log2(max(loss * n_tok / n_chr, 1e-300)), 1e-6) or _close(got, math.log2(loss), 1e-6):
            raise CheckFailed("you took log2 of the loss: the loss is already a logarithm (in nats); "
                              "convert units by dividing by ln 2, do not take another log")
        if _close(got, loss / math.log(2), 1e-6):
            raise CheckFailed("that is bits per token: multiply by n_tokens / n_chars to spread the total "
                              "over the characters (loss * n_tokens / n_chars / ln 2)")
        if _close(got, loss * n_chr / n_tok / math.log(2), 1e-6):
            raise CheckFailed("tokens and characters are swapped: total nats = loss * n_tokens, "
                              "then divide by n_chars")
        if _close(got, loss * n_tok / n_chr, 1e-6):
            raise CheckFailed("that is nats per character: divide by ln 2 to get bits")
        raise CheckFailed(f"bits_per_char({loss}, {n_tok}, {n_chr}) should be {want:.6f}, got {got!r}: "
                          "loss * n_tokens / n_chars / ln 2")
