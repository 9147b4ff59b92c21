"""Checks for Chapter 8 (fine-tuning: a classification head, instruction tuning, LoRA).

Hand-written. Each check compares the learner's code with gptlib's reference on probes chosen
so that the usual mistakes give visibly different answers, and names the mistake it sees.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from gptlib.exercises import CheckFailed, exercise, expect
from gptlib.masking import padding_mask
from gptlib.model import IGNORE_INDEX


def _close(a, b, atol: float = 1e-5) -> bool:
    return (isinstance(a, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-5))


# --------------------------------------------------------------------------- 8.1 last real token
@exercise("8.1", "Pool the last real token of a padded batch")
def _(pool_last_token):
    g = torch.Generator().manual_seed(8)
    probes = [([3, 5, 1, 5], 5), ([2, 7, 4], 7), ([1, 1], 3), ([6], 6)]
    for lengths, T in probes:
        hidden = torch.randn(len(lengths), T, 4, generator=g)
        mask = padding_mask(lengths, T)
        ref = hidden[torch.arange(len(lengths)), torch.tensor(lengths) - 1]
        for mask_in in (mask, mask.long()):  # a bool mask and a 0/1 integer mask
            out = pool_last_token(hidden.clone(), mask_in.clone())
            expect(isinstance(out, torch.Tensor), f"return a tensor, got {type(out).__name__}")
            expect(out.shape == ref.shape, f"return one vector per row: shape {tuple(ref.shape)}, "
                                           f"got {tuple(out.shape)}")
            if _close(out, ref):
                continue
            if _close(out, hidden[:, -1]):
                raise CheckFailed("you took the last position, hidden[:, -1], which is padding in "
                                  "every shorter row: take each row's last REAL token, at "
                                  "index attention_mask.sum(1) - 1")
            idx = torch.tensor(lengths).clamp(max=T - 1)
            if _close(out, hidden[torch.arange(len(lengths)), idx]):
                raise CheckFailed("off by one: the number of real tokens L is not an index; the "
                                  "last real token sits at index L - 1")
            if _close(out, hidden[:, 0]):
                raise CheckFailed("you took the first token; a causal model has read the whole "
                                  "text only at its last real token")
            lens = mask.sum(1, keepdim=True).float()
            if _close(out, (hidden * mask[..., None]).sum(1) / lens) or _close(out, hidden.mean(1)):
                raise CheckFailed("this is a mean pool; the exercise asks for the hidden state of "
                                  "each row's last real token")
            raise CheckFailed("the result differs from the last real token's hidden state: for "
                              "row b, take hidden[b, L_b - 1] with L_b = attention_mask[b].sum()")


# --------------------------------------------------------------------------- 8.2 loss masking
def _reference_mask(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], [IGNORE_INDEX] * (len(prompt) - 1) + seq[len(prompt):]


@exercise("8.2", "Mask the prompt in instruction tuning")
def _(mask_prompt):
    probes = [([5, 6, 7, 8], [1, 2, 3]), ([9], [4, 4]), ([3, 1, 4, 1, 5, 9], [2]),
              ([10, 11], [12, 13, 14, 15])]
    for prompt, response in probes:
        out = mask_prompt(list(prompt), list(response))
        expect(isinstance(out, tuple) and len(out) == 2,
               "return a pair (inputs, targets) of lists")
        inputs, targets = (list(map(int, x)) for x in out)
        ref_in, ref_tg = _reference_mask(prompt, response)
        expect(len(inputs) == len(ref_in),
               f"inputs are prompt + response without its last token: {len(ref_in)} ids for a "
               f"{len(prompt)}-token prompt and a {len(response)}-token response, got {len(inputs)}")
        expect(inputs == ref_in, "inputs should be (prompt + response)[:-1]")
        expect(len(targets) == len(inputs), "targets must have one entry per input position")
        if targets == ref_tg:
            continue
        seq = list(prompt) + list(response)
        shifted = seq[1:]
        kept = [t != IGNORE_INDEX for t in targets]
        if not any(kept[len(prompt) - 1:]) and any(kept):
            raise CheckFailed("you masked the response and kept the prompt: the model should learn "
                              "to answer, so the PROMPT's targets become -100 and the response's "
                              "stay")
        if targets == shifted:
            raise CheckFailed("nothing is masked: set the targets that are prompt tokens to -100")
        if targets == [IGNORE_INDEX] * len(prompt) + shifted[len(prompt):]:
            raise CheckFailed("off by one: you also masked the first response token; the target "
                              "at position len(prompt) - 1 is the first response token and must "
                              "be kept")
        if targets == [IGNORE_INDEX] * (len(prompt) - 2) + shifted[len(prompt) - 2:]:
            raise CheckFailed("off by one: the last prompt token's target is still kept; mask "
                              "len(prompt) - 1 targets")
        if IGNORE_INDEX not in targets:
            raise CheckFailed("use -100 (cross_entropy's ignore_index) for masked targets")
        raise CheckFailed("targets should be (prompt + response)[1:] with the first "
                          "len(prompt) - 1 entries (the prompt's own tokens) replaced by -100")


# --------------------------------------------------------------------------- 8.3 LoRA linear
@exercise("8.3", "A LoRA linear layer")
def _(lora_cls):
    torch.manual_seed(0)
    for in_f, out_f, r, alpha in [(8, 12, 2, 4.0), (16, 6, 4, 4.0), (10, 10, 1, 3.0)]:
        base = nn.Linear(in_f, out_f)
        w0 = base.weight.detach().clone()
        layer = lora_cls(base, r=r, alpha=alpha)
        for name, shape in (("lora_A", (r, in_f)), ("lora_B", (out_f, r))):
            p = getattr(layer, name, None)
            expect(isinstance(p, nn.Parameter), f"the layer needs an nn.Parameter named {name}")
            expect(tuple(p.shape) == shape, f"{name} should have shape {shape} (rank r={r}), got "
                                            f"{tuple(p.shape)}")
        expect(not base.weight.requires_grad,
               "freeze the base layer: its weight must have requires_grad=False, only A and B train")
        expect(layer.lora_A.requires_grad and layer.lora_B.requires_grad,
               "lora_A and lora_B must be trainable (requires_grad=True)")
        x = torch.randn(3, 5, in_f)
        y0 = layer(x)
        expect(isinstance(y0, torch.Tensor) and y0.shape == (3, 5, out_f),
               f"forward should return a tensor of shape (3, 5, {out_f})")
        expect(torch.equal(base.weight.detach(), w0), "forward must not change the base weight")
        expect(bool(layer.lora_A.detach().abs().sum() > 0),
               "lora_A is all zeros: initialise A randomly (e.g. kaiming_uniform_) and B to zero, "
               "otherwise no gradient ever reaches B")
        expect(_close(y0, base(x)),
               "at initialisation the output must equal the base layer's: initialise lora_B to "
               "zero (A random), so the update B @ A starts at zero")
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn(out_f, r))
        y = layer(x)
        A, B = layer.lora_A.detach(), layer.lora_B.detach()
        low_rank = x @ A.T @ B.T
        ref = base(x) + (alpha / r) * low_rank
        if _close(y, ref, atol=1e-4):
            continue
        if _close(y, base(x) + low_rank, atol=1e-4):
            raise CheckFailed("you forgot the scaling: multiply the low-rank path by alpha / r")
        if _close(y, base(x) + (r / alpha) * low_rank, atol=1e-4):
            raise CheckFailed("the scaling is upside down: it is alpha / r, not r / alpha")
        if _close(y, base(x) + alpha * low_rank, atol=1e-4):
            raise CheckFailed("scale by alpha / r, not alpha alone")
        if _close(y, base(x) + (alpha / r) * (x @ B @ A), atol=1e-4) if in_f == out_f else False:
            raise CheckFailed("the order of the factors is wrong: x goes through A first "
                              "(x @ A.T), then B (@ B.T)")
        raise CheckFailed("forward should be base(x) + (alpha / r) * (x @ A.T @ B.T)")
