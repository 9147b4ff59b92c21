"""Checks for Chapter 6 (training). Hand-written.

Each check probes the learner's function at points where the usual mistakes give recognisably
different answers (the first warmup step, the end of the schedule, a LayerNorm gain, ln 2 vs
log2, a clipping threshold that bites, a last batch smaller than the others, a model with
dropout), and names the mistake it sees. The references are private, written here with PyTorch's
own pieces (``torch.optim.AdamW``, ``nn.utils.clip_grad_norm_``, ``F.cross_entropy``), never
gptlib.training's functions: a learner's exported code is never compared with itself.

The random models, data, generators and run seeds come from ``case_seed``, and most checks add a
drawn case after their written ones, so the grader's cases are not the notebook's. Exercise 6.20
keeps its experiment: the learner measures it with ``loss_after_budget`` before choosing.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import random
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlib.data import get_batch, iter_batches
from gptlib.exercises import CheckFailed, case_seed, exercise, expect


def _close(a, b, tol: float = 1e-9) -> bool:
    return isinstance(a, (int, float)) and math.isclose(float(a), b, rel_tol=tol, abs_tol=tol)


# ---- 6.1 perplexity ---------------------------------------------------------------------------

@exercise("6.1", "Perplexity from a loss", builds="gptlib.training:perplexity",
          tier="warm-up", difficulty=1, importance=2)
def _(candidate):
    drawn = random.Random(case_seed(61)).uniform(0.05, 6.0)
    for loss in (math.log(65), 0.0, 1.0, 2.5, 0.3, drawn):
        got = candidate(loss)
        want = math.exp(loss)
        expect(isinstance(got, (int, float)), f"return a Python float, got {type(got).__name__}")
        if _close(got, want, 1e-9):
            continue
        if _close(got, 2.0 ** loss, 1e-9):
            raise CheckFailed(f"perplexity({loss:.4g}) is 2 ** loss: the loss is in nats, natural logarithms, "
                              "so undo it with e ** loss (math.exp), not 2 ** loss")
        if _close(got, math.exp(-loss), 1e-9):
            raise CheckFailed(f"perplexity({loss:.4g}) is exp(-loss), the geometric mean probability of the "
                              "right token; perplexity is its inverse, the number of choices: exp(loss)")
        raise CheckFailed(f"perplexity({loss:.4g}) should be {want:.6g}, got {got!r}: a uniform guess over 65 "
                          "characters has loss ln 65 and perplexity 65")


# ---- 6.2 bits per character ------------------------------------------------------------------

@exercise("6.2", "Bits per character from a loss", builds="gptlib.training:bits_per_char",
          tier="warm-up", difficulty=1, importance=2)
def _(candidate):
    cases = [(1.5, 1000, 1000), (3.2, 250, 1000), (0.7, 400, 300)]
    rng = random.Random(case_seed(62))
    cases.append((round(rng.uniform(0.1, 6.0), 3), rng.randrange(1, 5000), rng.randrange(1, 5000)))
    for loss, n_tok, n_chr in cases:
        got = candidate(loss, n_tok, n_chr)
        want = loss * n_tok / n_chr / math.log(2)
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


# ---- 6.3 parameter groups --------------------------------------------------------------------

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


@exercise("6.3", "Parameter groups for weight decay", builds="gptlib.training:param_groups",
          tier="core", difficulty=2, importance=3)
def _(candidate):
    for wd in (0.1, 0.3):
        model = _Tiny()
        groups = candidate(model, wd)
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
            expect(decay_of[id(p)] == wd,
                   f"with weight_decay={wd}, {key} is decayed by {decay_of[id(p)]}: a matrix (dim >= 2) "
                   "is decayed with the weight_decay you were given")
        expect(all(names.get(i) for i in decay_of), "the groups hold tensors that are not the model's parameters")


# ---- 6.4 the optimizer -----------------------------------------------------------------------

@exercise("6.4", "AdamW over the two groups", builds="gptlib.training:configure_optimizer",
          tier="warm-up", difficulty=1, importance=2)
def _(candidate):
    settings = [dict(lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device_type=None),
                dict(lr=1e-2, weight_decay=0.3, betas=(0.8, 0.99), eps=1e-6, device_type="cpu"),
                dict(lr=6e-4, weight_decay=0.05, betas=(0.85, 0.9), eps=1e-8, device_type="cuda")]
    for s in settings:
        model = _Tiny()
        where = f"(lr={s['lr']}, weight_decay={s['weight_decay']}, betas={s['betas']}, eps={s['eps']}, " \
                f"device_type={s['device_type']!r})"
        opt = candidate(model, s["lr"], s["weight_decay"], s["betas"], s["eps"], device_type=s["device_type"])
        expect(isinstance(opt, torch.optim.AdamW),
               f"return a torch.optim.AdamW, got {type(opt).__name__} {where}: Adam's weight_decay is an L2 "
               "term in the gradient, AdamW's is decoupled from it")
        want = {id(p): (s["weight_decay"] if p.dim() >= 2 else 0.0)
                for p in model.parameters() if p.requires_grad}
        got = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        if len(opt.param_groups) == 1:
            raise CheckFailed(f"the optimizer has one group, so every parameter is decayed alike {where}: "
                              "hand AdamW the two groups of param_groups(model, weight_decay)")
        expect(got == want, f"the groups' weight decay per parameter is not param_groups(model, weight_decay)'s "
                            f"{where}: matrices decayed by weight_decay, vectors by 0, frozen ones left out")
        for g in opt.param_groups:
            expect(_close(g["lr"], s["lr"], 1e-12), f"a group has lr {g['lr']}, expected lr={s['lr']} {where}")
            expect(tuple(g["betas"]) == tuple(s["betas"]),
                   f"a group has betas {tuple(g['betas'])}, expected {s['betas']} {where}: pass betas on; "
                   "AdamW's default (0.9, 0.999) averages the squared gradients over ~1000 steps")
            expect(_close(g["eps"], s["eps"], 1e-15), f"a group has eps {g['eps']}, expected {s['eps']} {where}")
        fused = bool(opt.defaults.get("fused"))
        if s["device_type"] == "cuda":
            expect(fused, f"with device_type='cuda' ask for the fused kernel: fused=True {where}")
        else:
            expect(not fused, f"fused=True is for device_type='cuda' only; leave it unset elsewhere {where}")


# ---- 6.5 the schedule ------------------------------------------------------------------------

def _lr_ref(step, hi, lo, warmup, total):
    if step < warmup:
        return hi * (step + 1) / warmup
    if step >= total:
        return lo
    return lo + 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * (hi - lo)


@exercise("6.5", "Warmup then cosine learning rate", builds="gptlib.training:lr_at",
          tier="core", difficulty=2, importance=3)
def _(candidate):
    settings = [dict(max_lr=6e-4, min_lr=6e-5, warmup_steps=10, max_steps=100),
                dict(max_lr=1e-3, min_lr=1e-4, warmup_steps=4, max_steps=20)]
    rng = random.Random(case_seed(65))
    hi, warmup = 10 ** rng.uniform(-4, -2), rng.randrange(1, 15)
    settings.append(dict(max_lr=hi, min_lr=hi * rng.uniform(0.05, 0.5), warmup_steps=warmup,
                         max_steps=warmup + rng.randrange(4, 80)))   # >= 4 decay steps: the cosine shows
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
            ref = _lr_ref(step, hi, lo, W, N)
            expect(_close(lr(step), ref),
                   f"at step {step} (warmup_steps={W}, max_steps={N}) expected {ref:.6g}, got {lr(step)!r}: "
                   "progress = (step - warmup_steps) / (max_steps - warmup_steps), "
                   "lr = min_lr + 0.5 * (1 + cos(pi * progress)) * (max_lr - min_lr)")
    # No warmup at all is allowed: step 0 then starts at max_lr.
    expect(_close(candidate(0, 1e-3, 1e-4, 0, 10), 1e-3),
           "with warmup_steps=0 the first step must use max_lr (no division by zero)")


# ---- 6.6 the training step -------------------------------------------------------------------

class _StepNet(nn.Module):
    """A small classifier with a matrix, biases, a LayerNorm and a frozen layer; its weights drawn
    from ``case_seed(seed)``."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(case_seed(seed))
        self.inp = nn.Linear(5, 8)
        self.ln = nn.LayerNorm(8)
        self.frozen = nn.Linear(8, 8, bias=False)
        self.out = nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.frozen.weight.requires_grad_(False)

    def forward(self, x):
        return self.out(torch.tanh(self.frozen(self.ln(self.inp(x)))))


def _step_optimizer(model, cfg):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=0.5, betas=(cfg.beta1, cfg.beta2))   # lr 0.5: the step must set it


class _MicroLoss:
    """micro_loss(i) for the check: records the calls, scales the loss to make big gradients. The
    micro-batches are drawn from ``case_seed(seed)``."""

    def __init__(self, model, seed, n, scale):
        g = torch.Generator().manual_seed(case_seed(seed))
        self.model, self.scale, self.calls = model, scale, []
        self.x = torch.randn(n, 6, 5, generator=g)
        self.y = torch.randint(0, 3, (n, 6), generator=g)

    def __call__(self, i):
        self.calls.append(i)
        return self.scale * F.cross_entropy(self.model(self.x[i]), self.y[i])


def _reference_step(model, optimizer, micro_loss, step, cfg, *, divide=True, clip=True):
    """The step as the chapter writes it, with switches for the usual slips (for the hints)."""
    lr = _lr_ref(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = []
    for i in range(cfg.grad_accum_steps):
        loss = micro_loss(i)
        (loss / cfg.grad_accum_steps if divide else loss).backward()
        losses.append(loss.detach().float())
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 and clip else math.inf
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return torch.stack(losses).mean(), norm


def _scaled_step(model, optimizer, micro_loss, step, cfg, scaler):
    """The step with float16's gradient scaler, written with torch.amp.GradScaler's own calls."""
    for group in optimizer.param_groups:
        group["lr"] = _lr_ref(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
    losses = []
    for i in range(cfg.grad_accum_steps):
        loss = micro_loss(i)
        scaler.scale(loss / cfg.grad_accum_steps).backward()
        losses.append(loss.detach().float())
    scaler.unscale_(optimizer)
    norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return torch.stack(losses).mean(), norm


def _check_scaled_step(candidate, base):
    """float16's path: an enabled GradScaler (it works on the CPU too), with finite and with inf gradients."""
    cfg = replace(base, grad_accum_steps=2, grad_clip=0.05)
    for label, blow_up in (("finite gradients", 1.0), ("inf gradients", math.inf)):
        mine, ref = _StepNet(7), _StepNet(7)
        opt_mine, opt_ref = _step_optimizer(mine, cfg), _step_optimizer(ref, cfg)
        s_mine, s_ref = (torch.amp.GradScaler("cpu", init_scale=1024.0) for _ in range(2))
        before = copy.deepcopy(mine)
        where = (f"(float16's step 12 with a GradScaler at scale 1024, 2 micro-batches, clipping at 0.05 that "
                 f"bites, {label})")
        got_loss, got_norm = candidate(mine, opt_mine, _MicroLoss(mine, 7, 2, blow_up), 12, cfg, s_mine)
        _, want_norm = _scaled_step(ref, opt_ref, _MicroLoss(ref, 7, 2, blow_up), 12, cfg, s_ref)
        if blow_up == 1.0:
            if not torch.allclose(got_norm.float(), want_norm.float(), rtol=1e-4):
                if math.isclose(got_norm.item(), 1024 * want_norm.item(), rel_tol=1e-3):
                    raise CheckFailed(f"the norm measured is 1024 times the true one {where}: it is the norm of "
                                      "the scaled gradients, so clipping cuts them to the wrong size; call "
                                      "scaler.unscale_(optimizer) before clipping")
                raise CheckFailed(f"the norm returned is {got_norm.item():.4g}, the true gradient norm before "
                                  f"clipping is {want_norm.item():.4g} {where}")
            expect(_max_diff(mine, ref) < 1e-5,
                   f"after your step the weights differ from the reference's by up to {_max_diff(mine, ref):.2e} "
                   f"{where}: scale, backward, unscale_, clip, scaler.step(optimizer), scaler.update()")
        else:
            expect(all(torch.equal(p, q) for p, q in zip(mine.parameters(), before.parameters())),
                   f"the weights changed (or became NaN) {where}: a step whose gradients hold inf or NaN must be "
                   "skipped; scaler.step(optimizer) does that, optimizer.step() does not")
        expect(s_mine.get_scale() == s_ref.get_scale(),
               f"the scale after the step is {s_mine.get_scale():g}, expected {s_ref.get_scale():g} {where}: call "
               "scaler.update() after scaler.step, so a skipped step lowers the scale")
        expect(all(p.grad is None or not p.grad.abs().sum() > 0 for p in mine.parameters()),
               f"gradients are left after the step {where}: clear them after the step")


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def _moments_differ(a: torch.optim.Optimizer, b: torch.optim.Optimizer, rtol: float = 1e-4) -> bool:
    """Whether two AdamWs over the same kind of model hold different first moments: the gradients
    they were given. The weights alone may not show a gradient scaled as a whole (clipped, or not
    divided by the micro-batches): AdamW's step divides it by its own size."""
    params_a = [p for g in a.param_groups for p in g["params"]]
    params_b = [p for g in b.param_groups for p in g["params"]]
    for p, q in zip(params_a, params_b):
        m, n = a.state.get(p, {}).get("exp_avg"), b.state.get(q, {}).get("exp_avg")
        if (m is None) != (n is None):
            return True
        if m is not None and (m - n).abs().max().item() > rtol * n.abs().max().item() + 1e-12:
            return True
    return False


@exercise("6.6", "One optimizer step", builds="gptlib.training:train_step",
          tier="core", difficulty=3, importance=3)
def _(candidate):
    from gptlib.training import TrainConfig   # the run's settings: a plain dataclass
    base = TrainConfig(max_steps=50, warmup_steps=10, lr=1e-2, min_lr=1e-3, weight_decay=0.1,
                       beta1=0.9, beta2=0.95)
    cases = [  # (what the case shows, steps, config, loss scale)
        ("step 0 of the warmup, one micro-batch, clipping at 1.0", [0], replace(base, grad_clip=1.0), 1.0),
        ("steps 12 and 13, 3 micro-batches, clipping at 0.05 (it bites)", [12, 13],
         replace(base, grad_accum_steps=3, grad_clip=0.05), 1.0),
        ("steps 30 and 31, 2 micro-batches, grad_clip=0 (off) with large gradients", [30, 31],
         replace(base, grad_accum_steps=2, grad_clip=0.0), 50.0),
        ("step 60, past max_steps, 4 micro-batches", [60], replace(base, grad_accum_steps=4, grad_clip=1.0), 1.0),
    ]
    for seed, (label, steps, cfg, scale) in enumerate(cases):
        mine, ref = _StepNet(seed), _StepNet(seed)
        opt_mine, opt_ref = _step_optimizer(mine, cfg), _step_optimizer(ref, cfg)
        for step in steps:
            loss_mine = _MicroLoss(mine, 100 * seed + step, cfg.grad_accum_steps, scale)
            loss_ref = _MicroLoss(ref, 100 * seed + step, cfg.grad_accum_steps, scale)
            out = candidate(mine, opt_mine, loss_mine, step, cfg)
            want_loss, want_norm = _reference_step(ref, opt_ref, loss_ref, step, cfg)
            where = f"({label}, at step {step})"
            expect(isinstance(out, tuple) and len(out) == 2,
                   f"return a tuple (loss, norm), got {type(out).__name__} {where}")
            got_loss, got_norm = out
            expect(isinstance(got_loss, torch.Tensor) and isinstance(got_norm, torch.Tensor)
                   and got_loss.dim() == 0 and got_norm.dim() == 0,
                   f"loss and norm must be 0-dim tensors (no .item(): that would make the CPU wait "
                   f"for the GPU at every step) {where}")
            expect(not got_loss.requires_grad,
                   f"the loss you return still carries the graph: return it detached {where}")
            want_lr = _lr_ref(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
            lrs = [g["lr"] for g in opt_mine.param_groups]
            expect(all(_close(lr, want_lr, 1e-12) for lr in lrs),
                   f"the optimizer's groups have lr {lrs}, the schedule says {want_lr:.6g} {where}: set "
                   "group['lr'] = lr_at(step, ...) in every group before the optimizer steps")
            expect(loss_mine.calls == list(range(cfg.grad_accum_steps)),
                   f"micro_loss was called with {loss_mine.calls}; with grad_accum_steps="
                   f"{cfg.grad_accum_steps} call it once per micro-batch, with i = 0, 1, ... {where}")
            expect(torch.allclose(got_loss.float(), want_loss, rtol=1e-5, atol=1e-6),
                   f"the loss returned is {got_loss.item():.6f}, the mean of the micro-batch losses is "
                   f"{want_loss.item():.6f} {where}")
            grads_left = [n for n, p in mine.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
            expect(not grads_left,
                   f"gradients are left in {grads_left[0] if grads_left else ''} after the step {where}: "
                   "the next step's backward would add to them; clear them after optimizer.step()")
            if _max_diff(mine, ref) > 1e-5 or _moments_differ(opt_mine, opt_ref):
                for kw, hint in ((dict(divide=False), "the micro-batch losses are not divided by "
                                  "grad_accum_steps: the gradients add up to k times the batch's"),
                                 (dict(clip=False), "the gradients were not clipped: with grad_clip > 0 "
                                  "scale them down when their global norm exceeds it")):
                    # the case so far with the slip, from its first step
                    alt = _StepNet(seed)
                    alt_opt = _step_optimizer(alt, cfg)
                    for s in steps[:steps.index(step) + 1]:
                        _reference_step(alt, alt_opt, _MicroLoss(alt, 100 * seed + s, cfg.grad_accum_steps, scale),
                                        s, cfg, **kw)
                    if _max_diff(alt, mine) < 1e-6 and not _moments_differ(alt_opt, opt_mine):
                        raise CheckFailed(f"{hint} {where}")
                if _max_diff(mine, ref) > 1e-5:
                    raise CheckFailed(f"after your step the weights differ from torch.optim.AdamW's by up to "
                                      f"{_max_diff(mine, ref):.2e} {where}: backward on each loss / "
                                      "grad_accum_steps, clip, optimizer.step(), then zero_grad")
                raise CheckFailed(f"after your step AdamW's first moments (the gradients it was given) differ from "
                                  f"the reference's {where}: backward on each loss / grad_accum_steps, clip, "
                                  "optimizer.step(), then zero_grad")
            if not torch.allclose(got_norm.float(), want_norm.float(), rtol=1e-4):
                clipped = min(want_norm.item(), cfg.grad_clip) if cfg.grad_clip > 0 else want_norm.item()
                if cfg.grad_accum_steps > 1 and math.isclose(got_norm.item(), cfg.grad_accum_steps * want_norm.item(),
                                                             rel_tol=1e-4):
                    raise CheckFailed(f"the gradient norm is {cfg.grad_accum_steps} times too large: the micro-batch "
                                      "losses are not divided by grad_accum_steps, so the gradients add up to k "
                                      f"times the batch's (clipping hides it in the weights) {where}")
                if math.isclose(got_norm.item(), clipped, rel_tol=1e-4):
                    raise CheckFailed(f"the norm returned is the one after clipping ({got_norm.item():.4g}); "
                                      f"return the norm before clipping ({want_norm.item():.4g}): it is what "
                                      f"clip_grad_norm_ returns {where}")
                raise CheckFailed(f"the norm returned is {got_norm.item():.4g}, the global gradient norm "
                                  f"before clipping is {want_norm.item():.4g} {where}")
    _check_scaled_step(candidate, base)


# ---- precision by what the GPU has --------------------------------------------------------------

_GPUS = [  # (device, CUDA available, compute capability, expected, what it is)
    ("cuda", True, (7, 5), "float16", "a T4 (compute capability 7.5)"),
    ("cuda", True, (8, 0), "bfloat16", "an A100 (compute capability 8.0)"),
    ("cpu", True, (8, 0), "float32", "the CPU of a machine with an A100"),
    ("cuda:0", True, (9, 0), "bfloat16", "an H100 (compute capability 9.0)"),
    ("cuda", True, (6, 1), "float16", "a GTX 1080 (compute capability 6.1)"),
    ("mps", False, (8, 0), "float32", "Apple MPS"),
    ("cuda", True, (8, 6), "bfloat16", "an RTX 3090 (compute capability 8.6)"),
    ("cuda", False, (8, 0), "float32", "a CUDA device on a machine where CUDA is not available"),
]


@exercise("6.9", "Precision by what the GPU has", builds="gptlib.training:resolve_precision",
          tier="core", difficulty=2, importance=2, forbids=("torch.cuda.is_bf16_supported",))
def _(candidate):
    from unittest import mock
    for device, available, capability, want, what in _GPUS:
        asked = []

        def capability_of(device=None, capability=capability):
            asked.append(device)
            return capability
        with mock.patch.object(torch.cuda, "is_available", lambda: available), \
                mock.patch.object(torch.cuda, "get_device_capability", capability_of), \
                mock.patch.object(torch.cuda, "is_bf16_supported", lambda *a, **k: True):
            got = candidate(device)
        where = f"(precision='auto' on {what}; is_bf16_supported() says True, as it does on a T4)"
        if got == want:
            continue
        if want == "float16" and got == "bfloat16":
            raise CheckFailed(f"auto picked bfloat16 {where}: below 8.0 bf16 runs only through slow emulation; "
                              "read the compute capability, not is_bf16_supported()")
        if want == "float16" and got == "float32":
            raise CheckFailed(f"auto picked float32 {where}: a GPU older than 8.0 still has fast float16, "
                              "which trains with a gradient scaler")
        if want == "bfloat16" and got == "float16":
            raise CheckFailed(f"auto picked float16 {where}: from compute capability 8.0 on (the major number "
                              "is 8 or more) bf16 is native and needs no scaler")
        if want == "float32":
            raise CheckFailed(f"auto picked {got} {where}: off a usable CUDA GPU train in float32")
        raise CheckFailed(f"auto picked {got!r}, expected {want!r} {where}")


# ---- 6.7 / 6.8 evaluation --------------------------------------------------------------------

class _EvalLM(nn.Module):
    """A tiny language model with dropout that records, at each forward pass, whether it was in
    train mode and whether gradients were on. Its weights are drawn from ``case_seed(seed)``."""

    def __init__(self, vocab: int = 7, width: int = 8, seed: int = 0):
        super().__init__()
        self.vocab = vocab
        with torch.random.fork_rng():   # leave the caller's random state alone
            torch.manual_seed(case_seed(seed))
            self.emb = nn.Embedding(vocab, width)
            self.head = nn.Linear(width, vocab)
        self.drop = nn.Dropout(0.5)
        self.seen: list[tuple[bool, bool]] = []   # (training, grad enabled) per forward pass

    def forward(self, idx, targets=None):
        self.seen.append((self.training, torch.is_grad_enabled()))
        logits = self.head(self.drop(self.emb(idx)))
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1))
        return logits, loss


def _eval_data(n: int, vocab: int = 7, seed: int = 0) -> torch.Tensor:
    """``n`` token ids drawn from ``case_seed(seed)``."""
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(case_seed(seed)))


def _mode_checks(candidate_call, model, name):
    """Run ``candidate_call()`` from train mode and from eval mode; check the modes seen and restored."""
    results = []
    for start in (True, False):
        model.train(start)
        model.seen.clear()
        results.append(candidate_call())
        expect(model.seen, f"{name} never called the model")
        expect(not any(training for training, _ in model.seen),
               f"{name} ran the model in train mode: dropout then zeroes random activations and the "
               "estimate is noisy and too high; call model.eval() first")
        expect(not any(grad for _, grad in model.seen),
               f"{name} ran the model with gradients on: every forward pass then keeps its graph "
               "in memory for a backward that never comes; run it under torch.no_grad()")
        expect(model.training == start,
               f"called on a model in {'train' if start else 'eval'} mode, {name} left it in "
               f"{'train' if model.training else 'eval'} mode: remember model.training first and "
               "put it back with model.train(was_training)")
    return results


@exercise("6.7", "Estimate the loss on fixed batches", builds="gptlib.training:evaluate",
          tier="core", difficulty=2, importance=3)
def _(candidate):
    for block, batch, iters, k, n in ((4, 3, 3, 0, 200), (6, 2, 5, 7, 150)):
        model, data, seed = _EvalLM(seed=k), _eval_data(n, seed=k), case_seed(k)
        got = _mode_checks(lambda: candidate(model, data, block, batch, iters, seed=seed), model, "evaluate")
        expect(all(isinstance(v, float) for v in got),
               f"return a Python float (.item()), got {type(got[0]).__name__}")
        expect(len(model.seen) == iters,
               f"with eval_iters={iters} the model ran {len(model.seen)} times: one batch per iteration")
        model.eval()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            losses = [model(*get_batch(data, block, batch, generator=g))[1].item() for _ in range(iters)]
        want = sum(losses) / iters
        state = torch.get_rng_state()
        again = candidate(model, data, block, batch, iters, seed=seed)
        expect(torch.equal(state, torch.get_rng_state()),
               "evaluate drew from torch's global generator: it would change the batches (and dropout "
               "masks) the training run draws next; use a torch.Generator of its own, seeded with seed")
        expect(got[0] == got[1] == again,
               f"two calls on the same model gave {got[0]:.6f} and {again:.6f}: every call must score "
               "the same windows (a new generator seeded with seed at each call)")
        if math.isclose(got[0], want, rel_tol=1e-5):
            continue
        if math.isclose(got[0], sum(losses), rel_tol=1e-5):
            raise CheckFailed(f"that is the sum of the {iters} batch losses: divide by eval_iters")
        if math.isclose(got[0], losses[-1], rel_tol=1e-5):
            raise CheckFailed("that is the last batch's loss: average over all eval_iters batches")
        raise CheckFailed(f"evaluate(block_size={block}, batch_size={batch}, eval_iters={iters}, seed={seed}) "
                          f"should be {want:.6f} (the mean loss of the windows get_batch draws from a "
                          f"generator seeded with {seed}), got {got[0]:.6f}")


@exercise("6.8", "Score every token once", builds="gptlib.training:evaluate_full",
          tier="core", difficulty=2, importance=2)
def _(candidate):
    for block, batch, n in ((4, 3, 4 * 7 + 3), (5, 4, 5 * 10 + 1), (3, 8, 3 * 4 + 2)):
        model, data = _EvalLM(seed=n), _eval_data(n, seed=n)
        got = _mode_checks(lambda: candidate(model, data, block, batch), model, "evaluate_full")
        expect(all(isinstance(v, tuple) and len(v) == 2 for v in got),
               "return a tuple (mean loss, number of tokens scored)")
        (mean, count), _ = got
        expect(isinstance(mean, float), f"return the mean loss as a Python float, got {type(mean).__name__}")
        model.eval()
        total, tokens, batch_means = 0.0, 0, []
        with torch.no_grad():
            for x, y in iter_batches(data, block, batch):
                logits, _ = model(x)
                total += F.cross_entropy(logits.reshape(-1, model.vocab), y.reshape(-1), reduction="sum").item()
                tokens += y.numel()
                batch_means.append(model(x, y)[1].item())
        windows = tokens // block
        where = f"(len(data)={n}, block_size={block}, batch_size={batch}: {windows} windows, the last batch of " \
                f"{windows - (len(batch_means) - 1) * batch})"
        if count != tokens:
            if count in (windows, len(batch_means)):
                raise CheckFailed(f"the count is {count}, the number of {'windows' if count == windows else 'batches'}; "
                                  f"return the number of target tokens scored, {tokens} {where}")
            raise CheckFailed(f"the count is {count}; {tokens} target tokens are scored {where}")
        if math.isclose(mean, total / tokens, rel_tol=1e-5):
            continue
        if math.isclose(mean, sum(batch_means) / len(batch_means), rel_tol=1e-5):
            raise CheckFailed(f"that is the mean of the batch means: the smaller last batch weighs as much as a "
                              f"full one {where}; weigh each batch's mean loss by its number of targets")
        raise CheckFailed(f"the mean loss over every target should be {total / tokens:.6f}, got {mean:.6f} {where}")


class _PosLM(_EvalLM):
    """_EvalLM with a learned position embedding: a target's loss depends on where in the window it sits."""

    def __init__(self, vocab: int = 7, width: int = 8, block: int = 8, seed: int = 0):
        super().__init__(vocab, width, seed)
        with torch.random.fork_rng():
            torch.manual_seed(case_seed(seed) + 1)
            self.pos = nn.Embedding(block, width)

    def forward(self, idx, targets=None):
        self.seen.append((self.training, torch.is_grad_enabled()))
        logits = self.head(self.drop(self.emb(idx) + 3 * self.pos(torch.arange(idx.size(1)))))
        return logits, None


def _sliding_ref(model, data, block, stride):
    """Per target, the loss from the window that scores it: the first window all its targets, each later
    window (every ``stride``, and one ending at the end) only the targets past the previous window's end."""
    last = len(data) - 1 - block
    starts = sorted(set(range(0, last + 1, stride)) | {last})
    losses, done = [], 0
    with torch.no_grad():
        for start in starts:
            logits = model(data[start:start + block][None])[0][0]
            per = F.cross_entropy(logits, data[start + 1:start + block + 1], reduction="none")
            losses.append(per[done - start:] if done > start else per)
            done = start + block
    every = torch.cat(losses).double()
    return every.mean().item(), len(every)


@exercise("6.18", "Score every token with context", builds="gptlib.training:evaluate_sliding",
          tier="core", difficulty=3, importance=2)
def _(candidate):
    for block, stride, batch, n in ((4, 2, 3, 4 * 7 + 3), (6, 3, 2, 40), (5, 1, 4, 23), (4, 4, 8, 4 * 6 + 1),
                                    (6, 4, 1, 33)):
        model, data = _PosLM(block=block, seed=n), _eval_data(n, seed=n)
        where = f"(block_size={block}, stride={stride}, batch_size={batch}, {n} tokens)"
        got = _mode_checks(lambda: candidate(model, data, block, stride, batch), model, "evaluate_sliding")
        expect(all(isinstance(v, tuple) and len(v) == 2 for v in got),
               "return a tuple (mean loss, number of targets scored)")
        (mean, count), _ = got
        model.eval()
        want, total = _sliding_ref(model, data, block, stride)
        last = n - 1 - block
        if count > total:
            raise CheckFailed(f"{count} targets were scored, but there are {total} {where}: a later window scores "
                              "only the targets past the end of the one before it, not all of its own")
        if count < total and last % stride:
            raise CheckFailed(f"{count} targets were scored, but there are {total} {where}: when the steps of "
                              "stride miss the end, add one last window that ends at the end of data")
        expect(count == total, f"{count} targets were scored, expected {total} (every target once) {where}")
        expect(isinstance(mean, float), f"return the mean as a Python float (.item()), got {type(mean).__name__}")
        expect(math.isclose(mean, want, rel_tol=1e-5),
               f"the mean loss is {mean:.6f}, expected {want:.6f} {where}: each window scores its last "
               "start + block_size - (targets scored so far) positions, the first window all of them")


# ---- 6.10 / 6.11 / 6.12 checkpoints -------------------------------------------------------------

def _capture_ref(generator=None) -> dict:
    """The documented format of ``_rng_state``, written out privately."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def _restore_ref(state: dict, generator=None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None:
        generator.set_state(state["generator"])


_SOURCES = {"python": "Python's random module", "numpy": "NumPy's global generator",
            "torch": "torch's CPU generator (dropout, torch.rand)", "generator": "the batch generator"}


def _draws(generator) -> dict:
    out = {"python": random.random(), "numpy": float(np.random.rand()), "torch": torch.rand(1).item()}
    if generator is not None:
        out["generator"] = torch.rand(1, generator=generator).item()
    return out


def _expect_same_draws(first: dict, second: dict, message: str) -> None:
    for key in first:
        expect(first[key] == second[key],
               message.format(source=_SOURCES[key], got=second[key], want=first[key], key=key))


def _weights_only_roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@exercise("6.10", "Capture every random state", builds="gptlib.checkpoint:_rng_state",
          tier="core", difficulty=2, importance=2)
def _(candidate):
    for generator in (torch.Generator().manual_seed(case_seed(3)), None):
        state = candidate(generator)
        expect(isinstance(state, dict), f"return a dict, got {type(state).__name__}")
        for key in ("python", "numpy", "torch"):
            expect(key in state, f"the state has no {key!r} entry: {_SOURCES[key]} is not captured")
        if generator is not None:
            expect("generator" in state, "called with a batch generator, the state has no 'generator' "
                                         "entry: a resumed run would draw other batches")
        else:
            expect("generator" not in state, "called without a generator, the state has a 'generator' entry")
        try:
            loaded = _weights_only_roundtrip(state)
        except Exception as err:
            raise CheckFailed("torch.load(weights_only=True) cannot read your state back "
                              f"({type(err).__name__}): store tensors and plain values only, e.g. "
                              "NumPy's through _numpy_state()") from None
        first = _draws(generator)
        _restore_ref(loaded, generator)
        _expect_same_draws(first, _draws(generator), "after restoring your state, {source} draws {got:.6f} "
                           "instead of {want:.6f}: the {key!r} entry is not its current state")


@exercise("6.11", "Restore every random state", builds="gptlib.checkpoint:_set_rng_state",
          tier="core", difficulty=2, importance=2)
def _(candidate):
    for generator in (torch.Generator().manual_seed(case_seed(5)), None):
        state = _weights_only_roundtrip(_capture_ref(generator))
        first = _draws(generator)
        _draws(generator)   # move every source on
        candidate(state, generator)
        _expect_same_draws(first, _draws(generator), "after your restore, {source} does not continue where "
                           "it was captured (draws {got:.6f}, expected {want:.6f}): restore state[{key!r}]")


class _Noisy(nn.Module):
    """A small model whose forward pass draws dropout masks from torch's global generator; its
    weights drawn from ``case_seed(seed)``."""

    def __init__(self, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(case_seed(seed))
            self.inp, self.out = nn.Linear(5, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.out(F.dropout(torch.tanh(self.inp(x)), 0.3, training=True))


class _Hist:
    def __init__(self, losses):
        self.losses = list(losses)

    def to_dict(self):
        return {"losses": self.losses}


def _noisy_steps(model, optimizer, generator, steps, data):
    x_all, y_all = data
    losses = []
    for step in steps:
        for group in optimizer.param_groups:
            group["lr"] = 0.05 / (1 + step)
        rows = torch.randint(0, len(x_all), (8,), generator=generator)
        loss = F.cross_entropy(model(x_all[rows]), y_all[rows])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@dataclass
class _RunConfig:
    """A run's settings as a dataclass, as TrainConfig is."""
    lr: float = 0.1
    steps: int = 3


class _Wrapper(nn.Module):
    """What torch.compile returns: the model kept as ``._orig_mod``."""

    def __init__(self, model):
        super().__init__()
        self._orig_mod = model

    def forward(self, x):
        return self._orig_mod(x)


@exercise("6.12", "What a checkpoint holds", builds="gptlib.checkpoint:save_checkpoint",
          tier="core", difficulty=2, importance=3)
def _(candidate):
    import tempfile
    from pathlib import Path
    g = torch.Generator().manual_seed(case_seed(0))
    data = (torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g))
    for split in (2, 4):
        torch.manual_seed(case_seed(11))
        whole = _Noisy(0)
        opt = torch.optim.AdamW(whole.parameters(), lr=0.05)
        losses = _noisy_steps(whole, opt, torch.Generator().manual_seed(case_seed(1)), range(7), data)

        torch.manual_seed(case_seed(11))
        first = _Noisy(0)
        opt1, gen1 = torch.optim.AdamW(first.parameters(), lr=0.05), torch.Generator().manual_seed(case_seed(1))
        before = _noisy_steps(first, opt1, gen1, range(split), data)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ckpt.pt"
            candidate(path, first, opt1, split, {"lr": 0.05}, gen1, _Hist(before), {"note": "check"})
            expect(path.is_file(), "save_checkpoint wrote no file at the path it was given")
            payload = torch.load(path, weights_only=True)
        where = f"(a run saved after step {split} of 7)"
        for key in ("step", "model", "optimizer", "rng", "history", "train_config", "extra", "model_config"):
            expect(key in payload, f"the checkpoint has no {key!r} entry {where}")
        expect(payload["step"] == split, f"'step' is {payload['step']!r}, expected {split}: the step the "
                                         f"run continues at {where}")
        state = first.state_dict()
        expect(isinstance(payload["model"], dict) and set(payload["model"]) == set(state)
               and all(torch.equal(payload["model"][k], state[k]) for k in state),
               f"'model' must be the model's state_dict, every tensor as it is at the save {where}")
        expect(isinstance(payload["optimizer"], dict) and payload["optimizer"].get("state"),
               f"'optimizer' must be optimizer.state_dict(): without AdamW's moments a resumed run "
               f"restarts them from zero and takes different steps {where}")
        expect(isinstance(payload["rng"], dict) and "generator" in payload["rng"],
               f"'rng' must be _rng_state(generator), the batch generator's state included {where}")
        expect(payload["history"] == {"losses": before} and payload["train_config"] == {"lr": 0.05}
               and payload["extra"] == {"note": "check"},
               f"'history' must be history.to_dict(), 'train_config' the config as given and 'extra' "
               f"the extra dict {where}")
        expect(payload["model_config"] is None, "'model_config' must be _model_config(model): None for a "
                                                "model without a config")
        torch.manual_seed(case_seed(123))   # a fresh process: every random state elsewhere
        resumed = _Noisy(1)
        opt2, gen2 = torch.optim.AdamW(resumed.parameters(), lr=0.05), torch.Generator().manual_seed(case_seed(99))
        resumed.load_state_dict(payload["model"])
        opt2.load_state_dict(payload["optimizer"])
        _restore_ref(payload["rng"], gen2)
        after = _noisy_steps(resumed, opt2, gen2, range(split, 7), data)
        expect(before + after == losses,
               f"the run resumed from your checkpoint gives the losses {[round(v, 4) for v in after]}, the "
               f"uninterrupted run {[round(v, 4) for v in losses[split:]]} {where}")
        expect(all(torch.equal(p, q) for p, q in zip(resumed.parameters(), whole.parameters())),
               f"the resumed run ends with other weights than the uninterrupted one {where}")
    # a compiled model inside a DDP-like wrapper, and a dataclass config: the plain model's weights, a dict
    inner = _Noisy(0)
    inner.config = _RunConfig(lr=0.2, steps=1)
    wrapped = _Wrapper(_Wrapper(inner))
    where = "(a model wrapped twice, as torch.compile wraps in ._orig_mod, and a dataclass train_config)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        candidate(path, wrapped, None, 0, _RunConfig())
        try:
            payload = torch.load(path, weights_only=True)
        except Exception as err:
            raise CheckFailed(f"torch.load(weights_only=True) cannot read the checkpoint back {where} "
                              f"({type(err).__name__}): store the config as a dict (dataclasses.asdict)") from None
    keys = sorted(payload["model"])
    expect(keys == sorted(inner.state_dict()),
           f"the weights are saved under the names {keys[:2]}... {where}: a wrapper's names do not load into a "
           "plain model; save the model inside every wrapper (unwrap until none is left)")
    expect(payload["model_config"] == {"lr": 0.2, "steps": 1},
           f"'model_config' is {payload['model_config']!r} {where}, the plain model's config is _RunConfig(lr=0.2, "
           "steps=1): store _model_config(model), the dataclass in model.config as a dict")
    expect(payload["train_config"] == {"lr": 0.1, "steps": 3},
           f"'train_config' is {payload['train_config']!r} {where}: a dataclass goes in as asdict(train_config)")


# ---- load_checkpoint: the restore -----------------------------------------------------------

def _private_checkpoint(path, model, optimizer, step, generator, model_config=None):
    """A checkpoint file in save_checkpoint's documented format, written here."""
    torch.save({"format": "gptlib-checkpoint", "version": 1, "torch_version": str(torch.__version__),
                "step": step, "model_config": model_config, "train_config": None,
                "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "rng": _capture_ref(generator), "history": None, "extra": {}}, path)


def _load_refusal(candidate, path, model) -> str | None:
    try:
        candidate(path, model)
    except ValueError as err:       # CheckpointError is a ValueError
        return str(err)
    return None


@exercise("6.13", "Resume from a checkpoint", builds="gptlib.checkpoint:load_checkpoint",
          tier="core", difficulty=2, importance=3)
def _(candidate):
    import tempfile
    from pathlib import Path
    g = torch.Generator().manual_seed(case_seed(0))
    data = (torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g))
    for split in (3, 5):
        torch.manual_seed(case_seed(21))
        whole = _Noisy(0)
        opt = torch.optim.AdamW(whole.parameters(), lr=0.05)
        losses = _noisy_steps(whole, opt, torch.Generator().manual_seed(case_seed(2)), range(8), data)
        torch.manual_seed(case_seed(21))
        first = _Noisy(0)
        opt1, gen1 = torch.optim.AdamW(first.parameters(), lr=0.05), torch.Generator().manual_seed(case_seed(2))
        before = _noisy_steps(first, opt1, gen1, range(split), data)
        where = f"(a run of 8 steps saved after step {split})"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ckpt.pt"
            _private_checkpoint(path, first, opt1, split, gen1)
            saved = torch.load(path, weights_only=True)
            # restore_rng=False: the weights and the optimizer only; every random state left alone
            torch.manual_seed(case_seed(5))
            other, gen_other = _Noisy(3), torch.Generator().manual_seed(case_seed(8))
            torch_state, gen_state = torch.get_rng_state(), gen_other.get_state()
            candidate(path, other, torch.optim.AdamW(other.parameters(), lr=0.05), gen_other, restore_rng=False)
            expect(torch.equal(torch.get_rng_state(), torch_state) and torch.equal(gen_other.get_state(), gen_state),
                   f"with restore_rng=False the random states changed {where}: restore them only when restore_rng")
            torch.manual_seed(case_seed(123))   # a fresh process: every random state elsewhere
            resumed = _Noisy(1)
            opt2, gen2 = torch.optim.AdamW(resumed.parameters(), lr=0.05), torch.Generator().manual_seed(case_seed(99))
            payload = candidate(path, resumed, opt2, gen2)
        expect(isinstance(payload, dict) and payload.get("step") == split,
               f"load_checkpoint must return the checkpoint's dict (payload['step'] == {split}), got "
               f"{type(payload).__name__} {where}")
        expect(all(torch.equal(resumed.state_dict()[k], v) for k, v in saved["model"].items()),
               f"the model's weights are not the checkpoint's {where}: load payload['model'] into it")
        expect(bool(opt2.state_dict()["state"]),
               f"the optimizer has no state after loading {where}: without AdamW's moments a resumed run "
               "restarts them from zero; load payload['optimizer'] into it")
        expect(torch.equal(torch.get_rng_state(), saved["rng"]["torch"]),
               f"torch's generator is not where the checkpoint left it {where}: the dropout masks of the resumed "
               "run differ; restore every random state (_set_rng_state)")
        expect(torch.equal(gen2.get_state(), saved["rng"]["generator"]),
               f"the batch generator is not where the checkpoint left it {where}: the resumed run draws other "
               "batches; give the generator to _set_rng_state")
        after = _noisy_steps(resumed, opt2, gen2, range(split, 8), data)
        expect(before + after == losses,
               f"the run resumed with your load_checkpoint gives the losses {[round(v, 4) for v in after]}, the "
               f"uninterrupted run {[round(v, 4) for v in losses[split:]]} {where}")
    # a checkpoint for another configuration: refused, with the fields that differ
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        _private_checkpoint(path, _Noisy(0), None, 1, None, model_config={"lr": 0.1, "steps": 2})
        other = _Noisy(0)
        other.config = _RunConfig(lr=0.3, steps=2)
        where = "(a checkpoint saved from a model with config lr=0.1, steps=2, loaded into one with lr=0.3, steps=2)"
        refusal = _load_refusal(candidate, path, other)
        expect(refusal is not None, f"it loaded without complaint {where}: compare the configs first, "
                                    "_config_mismatch(payload['model_config'], _model_config(model))")
        expect("lr: checkpoint 0.1, model 0.3" in refusal and "steps" not in refusal,
               f"the error says {refusal!r} {where}: name each field that differs, 'lr: checkpoint 0.1, model 0.3', "
               "and only those (a config is a dataclass: _model_config gives asdict(model.config))")
        refusal = _load_refusal(candidate, path, _Noisy(0))
        expect(refusal is not None and "model config" in refusal,
               "a checkpoint saved from a model with a config loaded into a model without one without complaint: "
               "when only one side has a config, say so ('model config: checkpoint ..., model None')")


# ---- 6.14 the best evaluation -----------------------------------------------------------------

@exercise("6.14", "The best evaluation so far", builds="gptlib.training:History",
          tier="warm-up", difficulty=1, importance=2)
def _(candidate):
    empty = candidate()
    try:
        best, at = empty.best_val, empty.best_step
    except ValueError:
        raise CheckFailed("before the first evaluation best_val raises ValueError (min of an empty list): "
                          "return math.inf then, and best_step None") from None
    expect(best == math.inf and at is None,
           f"before any evaluation best_val must be math.inf and best_step None, got {best!r} and {at!r}")
    cases = [([0, 250, 500, 750], [4.2, 2.1, 2.4, 2.6], 2.1, 250),   # overfits: the last is not the best
             ([0, 100, 200, 300], [3.0, 2.5, 1.9, 1.7], 1.7, 300),
             ([0, 40, 80, 120, 160], [2.0, 1.5, 1.8, 1.5, 1.6], 1.5, 40),   # a tie: the first one
             ([60], [2.2], 2.2, 60)]
    rng = random.Random(case_seed(614))
    steps = sorted(rng.sample(range(0, 2000, 50), rng.randrange(2, 9)))
    vals = [round(rng.uniform(1.0, 2.0), 1) for _ in steps]          # one decimal: ties happen
    cases.append((steps, vals, min(vals), steps[vals.index(min(vals))]))
    for steps, vals, want_val, want_step in cases:
        h = candidate(eval_step=list(steps), val_loss=list(vals))
        where = f"(eval_step={steps}, val_loss={vals})"
        got_val, got_step = h.best_val, h.best_step
        if got_val == vals[-1] and want_val != vals[-1]:
            raise CheckFailed(f"best_val is the last validation loss, {got_val} {where}: the best is the lowest")
        expect(got_val == want_val, f"best_val is {got_val!r}, the lowest validation loss is {want_val} {where}")
        if got_step == vals.index(want_val) and got_step != want_step:
            raise CheckFailed(f"best_step is {got_step}, the position in val_loss {where}: return the step "
                              f"measured there, eval_step[i] = {want_step}")
        if got_step == steps[len(vals) - 1 - vals[::-1].index(want_val)] and got_step != want_step:
            raise CheckFailed(f"best_step is {got_step}, the last of the tied evaluations {where}: return the "
                              f"first one, {want_step} (list.index finds the first)")
        expect(got_step == want_step, f"best_step is {got_step!r}, expected {want_step} {where}")
    h = candidate(step=[0, 1], lr=[0.1, 0.2], train_loss=[2.0, 1.5], grad_norm=[0.3, 0.4], eval_step=[2],
                  val_loss=[1.4], eval_train_loss=[1.3])
    values = h.to_dict()
    expect(isinstance(values, dict) and values.get("val_loss") == [1.4] and values.get("step") == [0, 1],
           f"to_dict() gave {values!r}: every field by its name, as plain lists (dataclasses.asdict)")
    back = candidate.from_dict(values)
    expect(isinstance(back, candidate) and back.to_dict() == values,
           "from_dict(h.to_dict()) is not the same History again: build it from the dict's fields")
    for empty in (None, {}):
        try:
            fresh = candidate.from_dict(empty)
        except TypeError:
            raise CheckFailed(f"from_dict({empty!r}) raises TypeError: a checkpoint saved without a history "
                              "holds None; return an empty History") from None
        expect(isinstance(fresh, candidate) and fresh.to_dict() == candidate().to_dict(),
               f"from_dict({empty!r}) must be an empty History")


# ---- 6.15 one global batch, sliced -----------------------------------------------------------

@exercise("6.15", "Each process's slice of one global batch", builds="gptlib.training:draw_batch",
          tier="core", difficulty=2, importance=1)
def _(candidate):
    from gptlib.training import DistInfo   # where a process sits: a plain dataclass
    data = torch.arange(500)
    for world, batch, block in ((1, 4, 8), (2, 3, 8), (3, 2, 5)):
        seed = case_seed(world)
        full = get_batch(data, block, batch * world, generator=torch.Generator().manual_seed(seed))
        after = torch.Generator().manual_seed(seed)
        get_batch(data, block, batch * world, generator=after)
        parts = []
        for rank in range(world):
            g = torch.Generator().manual_seed(seed)
            x, y = candidate(data, block, batch, g, DistInfo(rank=rank, world_size=world))
            where = f"(world_size={world}, rank={rank}, batch_size={batch})"
            expect(tuple(x.shape) == (batch, block) and tuple(y.shape) == (batch, block),
                   f"x and y must be (batch_size, block_size) = ({batch}, {block}), got {tuple(x.shape)} {where}")
            expect(torch.equal(g.get_state(), after.get_state()),
                   f"the generator did not draw one global batch of batch_size * world_size = {batch * world} "
                   f"windows {where}: every process must draw the same windows, or they fall out of step")
            expect(torch.equal(y, x + 1), f"y must be x shifted by one token {where}")
            parts.append(x)
        got = torch.cat(parts)
        if world > 1 and torch.equal(parts[0], parts[1]) and not torch.equal(full[0][:batch],
                                                                              full[0][batch:2 * batch]):
            raise CheckFailed(f"ranks 0 and 1 got the same windows (world_size={world}): each process keeps "
                              "its own slice of the global batch")
        expect(torch.equal(got, full[0]),
               f"with world_size={world}, the ranks' slices put together in rank order are not the global "
               f"batch of {batch * world} windows: rank r keeps rows r * batch_size to (r + 1) * batch_size")


# ---- where a process sits (torchrun's environment) ----------------------------------------------

_ENVIRONMENTS = [  # (what, environment, CUDA available, already joined, expected (rank, world, local), backend)
    ("torchrun with one process", {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, True, False, (0, 1, 0), None),
    ("a plain run (no torchrun variables)", {}, True, False, (0, 1, 0), None),
    ("rank 5 of 8 on a machine with 4 GPUs", {"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"}, True, False,
     (5, 8, 1), "nccl"),
    ("rank 1 of 2 on CPUs, LOCAL_RANK unset", {"WORLD_SIZE": "2", "RANK": "1"}, False, False, (1, 2, 0), "gloo"),
    ("rank 3 of 4, the group already joined", {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3"}, True, True,
     (3, 4, 3), None),
]


@exercise("6.16", "Where a process sits", builds="gptlib.training:_setup_distributed",
          tier="warm-up", difficulty=1, importance=2)
def _(candidate):
    import os
    from unittest import mock
    for what, env, cuda, joined, (rank, world, local), backend in _ENVIRONMENTS:
        inits, devices = [], []
        clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        with mock.patch.dict(os.environ, {**clean, **env}, clear=True), \
                mock.patch.object(torch.cuda, "is_available", lambda: cuda), \
                mock.patch.object(torch.cuda, "set_device", lambda d: devices.append(d)), \
                mock.patch.object(torch.distributed, "is_initialized", lambda: joined), \
                mock.patch.object(torch.distributed, "init_process_group",
                                  lambda backend=None, **kw: inits.append(backend)):
            info = candidate()
        where = f"({what}: {env or 'no variables'})"
        got = tuple(getattr(info, name, None) for name in ("rank", "world_size", "local_rank"))
        expect(got == (rank, world, local),
               f"(rank, world_size, local_rank) is {got}, expected {(rank, world, local)} {where}: RANK is the "
               "process's number among all, LOCAL_RANK its number on this machine (0 when unset)")
        if backend is None:
            expect(not inits, f"init_process_group was called {where}: "
                              + ("join only when WORLD_SIZE > 1" if world == 1 else
                                 "the group is joined already (torch.distributed.is_initialized())"))
            continue
        expect(inits == [backend], f"init_process_group was called with the backends {inits}, expected "
                                   f"['{backend}'] {where}: NCCL when CUDA is available, gloo otherwise")
        expect(devices == ([local] if backend == "nccl" else []),
               f"torch.cuda.set_device was called with {devices} {where}: with NCCL, each process first takes "
               "its own GPU, set_device(local_rank); without CUDA, none")


# ---- 6.17 the training loop -------------------------------------------------------------------

def _loop_config(**changes):
    from gptlib.training import TrainConfig   # the run's settings: a plain dataclass
    values = dict(max_steps=7, batch_size=3, grad_accum_steps=2, lr=1e-2, min_lr=1e-3, warmup_steps=2,
                  weight_decay=0.1, beta1=0.8, beta2=0.95, grad_clip=0.5, eval_interval=3, eval_iters=2,
                  log_interval=2, seed=case_seed(5), device="cpu", precision="float32", compile=False)
    values.update(changes)
    return TrainConfig(**values)


class _LoopData:
    """Classification data for the hook runs (drawn from ``case_seed(0)``), and hooks that record how
    they were called."""

    def __init__(self):
        g = torch.Generator().manual_seed(case_seed(0))
        self.x, self.y = torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g)
        self.vx, self.vy = torch.randn(32, 5, generator=g), torch.randint(0, 3, (32,), generator=g)
        self.modes = []

    def batch_loss(self, net, generator, device):
        rows = torch.randint(0, len(self.x), (3,), generator=generator)
        return F.cross_entropy(net(self.x[rows]), self.y[rows])

    def eval_loss(self, model):
        self.modes.append((model.training, torch.is_grad_enabled()))
        return F.cross_entropy(model(self.vx), self.vy).item()


def _eval_ref(model, data, block_size, batch_size, iters, seed):
    g = torch.Generator().manual_seed(seed)
    losses = [model(*get_batch(data, block_size, batch_size, generator=g))[1] for _ in range(iters)]
    return torch.stack(losses).float().mean().item()


def _loop_ref(model, cfg, batch_loss, scores, until=None):
    """The loop as the chapter writes it: evaluate before the step when due, one step, record."""
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = _step_optimizer(model, cfg)
    hist = {k: [] for k in ("step", "lr", "train_loss", "grad_norm", "eval_step", "val_loss", "eval_train_loss")}

    def evaluate_now(step):
        model.eval()
        with torch.no_grad():
            train_est, val_est = scores(model)
        model.train()
        hist["eval_train_loss"].append(train_est)
        hist["val_loss"].append(val_est)
        hist["eval_step"].append(step)

    end = cfg.max_steps if until is None else min(until, cfg.max_steps)
    model.train()
    for step in range(end):
        if step % cfg.eval_interval == 0 and (step > 0 or cfg.eval_interval <= cfg.max_steps):
            evaluate_now(step)
        loss, norm = _reference_step(model, optimizer, lambda i: batch_loss(model, generator, "cpu"), step, cfg)
        hist["step"].append(step)
        hist["lr"].append(optimizer.param_groups[0]["lr"])
        hist["train_loss"].append(loss.item())
        hist["grad_norm"].append(norm.item())
    if end == cfg.max_steps:
        evaluate_now(end)
    return hist


def _same(a, b, tol=1e-5):
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=tol, abs_tol=tol)
                                    for x, y in zip(a, b))


def _compare_run(got, want, cfg, where, default_hooks):
    for key in ("step", "lr", "train_loss", "grad_norm", "eval_step", "val_loss", "eval_train_loss"):
        expect(isinstance(getattr(got, key, None), list), f"train must return the History; got {type(got).__name__}")
    expect(got.step == want["step"], f"history.step is {got.step}, expected {want['step']} {where}: record every "
                                     "step's number once")
    if got.eval_step != want["eval_step"]:
        end = want["step"][-1] + 1 if want["step"] else 0
        if cfg.max_steps in want["eval_step"] and cfg.max_steps not in got.eval_step:
            raise CheckFailed(f"evaluations at steps {got.eval_step}, expected {want['eval_step']} {where}: no "
                              "evaluation at the end; a run that reached max_steps evaluates once more after the loop")
        if end < cfg.max_steps and end in got.eval_step:
            raise CheckFailed(f"evaluations at steps {got.eval_step}, expected {want['eval_step']} {where}: a run "
                              "stopped early by until_step does not evaluate at its end, only a run that reached "
                              "max_steps")
        if 0 in got.eval_step and 0 not in want["eval_step"]:
            raise CheckFailed(f"evaluations at steps {got.eval_step}, expected {want['eval_step']} {where}: "
                              "eval_interval exceeds max_steps, which means evaluate at the end only, not at step 0")
        raise CheckFailed(f"evaluations at steps {got.eval_step}, expected {want['eval_step']} {where}: evaluate "
                          "before step s when s % eval_interval == 0")
    if not _same(got.lr, want["lr"], 1e-9):
        shifted = [_lr_ref(s + 1, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps) for s in want["step"]]
        if _same(got.lr, shifted, 1e-9):
            raise CheckFailed(f"history.lr is the schedule one step ahead {where}: call train_step with step, "
                              "the step's own number counting from 0")
        raise CheckFailed(f"history.lr is {[round(v, 6) for v in got.lr]}, the rates the steps used are "
                          f"{[round(v, 6) for v in want['lr']]} {where}: record optimizer.param_groups[0]['lr'] "
                          "after train_step")
    expect(len(got.train_loss) == len(want["step"]) and len(got.grad_norm) == len(want["step"]),
           f"history.train_loss has {len(got.train_loss)} entries for {len(want['step'])} steps {where}: queue "
           "torch.stack([loss.float(), norm.float()]) in pending at every step (flush moves them to history)")
    expect(_same(got.train_loss, want["train_loss"]) and _same(got.grad_norm, want["grad_norm"], 1e-4),
           f"the training losses differ from the reference run's {where}: one train_step per step on micro_loss, "
           "with AdamW from configure_optimizer(raw, config.lr, config.weight_decay, (config.beta1, config.beta2)) "
           "and the batches drawn with a generator seeded with config.seed")
    evaluated = "evaluate(raw, val_data, block_size, eval_bs, config.eval_iters, seed=config.seed + 1, ...)" \
        if default_hooks else "float(eval_loss(raw))"
    for i, (s, g_val, w_val) in enumerate(zip(got.eval_step, got.val_loss, want["val_loss"])):
        expect(_same([g_val], [w_val]),
               f"val_loss at step {s} is {g_val:.6f}, the model before step {s} scores {w_val:.6f} {where}: "
               f"evaluate before the step with {evaluated}")
    if default_hooks:
        expect(_same(got.eval_train_loss, want["eval_train_loss"]),
               f"eval_train_loss is {got.eval_train_loss}, expected {want['eval_train_loss']} {where}: the same "
               "evaluate on train_data, with the same fixed windows (seed=config.seed + 1)")
    else:
        expect(len(got.eval_train_loss) == len(got.eval_step) and all(math.isnan(v) for v in got.eval_train_loss),
               f"with the eval_loss hook there is no training estimate: record math.nan in eval_train_loss {where}")


class _FakeDDP(nn.Module):
    """DistributedDataParallel's stand-in for one process: it records, per forward pass, whether the
    gradients would be averaged across the processes (outside ``no_sync``) or not."""
    made: list = []

    def __init__(self, module, device_ids=None):
        super().__init__()
        self.module, self.syncing, self.calls = module, True, []
        _FakeDDP.made.append(self)

    def forward(self, *args):
        self.calls.append(self.syncing)
        return self.module(*args)

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True


def _check_switches(candidate):
    """float16 and compile asked for on the CPU: the forward pass under float16 autocast, torch.compile
    called (recorded, not run), the scaler's state in the checkpoint; no evaluation without anything to
    score; compile='auto' and precision='auto' on the CPU: neither."""
    import tempfile
    from pathlib import Path
    from unittest import mock
    data, compiled = _LoopData(), []
    seen = []

    def batch_loss(net, generator, device):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return data.batch_loss(net, generator, device)
    for precision, compile_, want_dtype, want_compiled in (("float16", True, torch.float16, 1),
                                                           ("auto", "auto", None, 0)):
        cfg = _loop_config(max_steps=2, grad_accum_steps=1, precision=precision, compile=compile_)
        where = f"(precision={precision!r}, compile={compile_!r} on the CPU, no val_data and no eval_loss)"
        seen.clear()
        compiled.clear()
        with tempfile.TemporaryDirectory() as tmp, \
                mock.patch.object(torch, "compile", lambda model, *a, **k: compiled.append(1) or model):
            path = Path(tmp) / "ckpt.pt"
            got = candidate(_StepNet(2), None, None, cfg, batch_loss=batch_loss, checkpoint_path=path, progress=False)
            expect(path.is_file(), f"the run did not end saved {where}: with a checkpoint_path, save(end) after "
                                   "the loop")
            scaler_state = torch.load(path, weights_only=True).get("scaler")
        expect(got.eval_step == [], f"the run evaluated at {got.eval_step} {where}: with nothing to score "
                                    "(no val_data, no eval_loss) a run does not evaluate")
        expect(seen and all(d == want_dtype for d in seen),
               f"the forward pass ran under autocast to {seen[0] if seen else None}, expected {want_dtype} {where}: "
               "autocast_context gives torch.autocast with the dtype resolve_precision picks, a no-op for float32")
        expect(len(compiled) == want_compiled,
               f"torch.compile was called {len(compiled)} times, expected {want_compiled} {where}: maybe_compile "
               "compiles when compile is True, and for 'auto' on CUDA only")
        expect(bool(scaler_state) == (precision == "float16"),
               f"the checkpoint's scaler state is {scaler_state!r} {where}: grad_scaler is enabled for float16 "
               "only")


def _check_two_processes(candidate):
    """Rank 0 of two, faked in one process: DDP is _FakeDDP, all_reduce adds the other rank's numbers
    (each 1 more than this rank's), barrier counts."""
    import tempfile
    from pathlib import Path
    from unittest import mock
    from gptlib import training
    DistInfo = candidate.__globals__.get("DistInfo", training.DistInfo)   # yours, beside your train
    cfg = _loop_config(max_steps=4, grad_accum_steps=3, eval_interval=2, log_interval=2, checkpoint_interval=2)
    where = "(rank 0 of 2 under torchrun, 4 steps of 3 micro-batches, a checkpoint every 2 steps)"
    barriers, names, saved_steps = [], candidate.__globals__, []
    real_save = torch.save

    def recording_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("format") == "gptlib-checkpoint":
            saved_steps.append(obj.get("step"))
        return real_save(obj, f, *args, **kwargs)
    saved_setup = names.get("_setup_distributed")
    _FakeDDP.made.clear()
    data, ref_data = _LoopData(), _LoopData()
    try:
        names["_setup_distributed"] = lambda: DistInfo(rank=0, world_size=2)
        with tempfile.TemporaryDirectory() as tmp, \
                mock.patch.object(nn.parallel, "DistributedDataParallel", _FakeDDP), \
                mock.patch.object(torch.distributed, "all_reduce", lambda t, *a, **k: t.mul_(2).add_(1.0)), \
                mock.patch.object(torch.distributed, "barrier", lambda *a, **k: barriers.append(1)), \
                mock.patch.object(torch, "save", recording_save):
            got = candidate(_StepNet(5), None, None, cfg, batch_loss=data.batch_loss, eval_loss=data.eval_loss,
                            checkpoint_path=Path(tmp) / "ckpt.pt", progress=False)
    except AttributeError as err:
        if "no_sync" in str(err) and not _FakeDDP.made:
            raise CheckFailed(f"{type(err).__name__}: {err} {where}: the model was not wrapped in "
                              "DistributedDataParallel, whose no_sync it calls; under torchrun (world_size > 1) "
                              "wrap net in nn.parallel.DistributedDataParallel") from None
        raise
    finally:
        if saved_setup is None:
            names.pop("_setup_distributed", None)
        else:
            names["_setup_distributed"] = saved_setup
    want = _loop_ref(_StepNet(5), cfg, ref_data.batch_loss, lambda m: (math.nan, ref_data.eval_loss(m)))
    expect(_FakeDDP.made, f"the model was not wrapped in DistributedDataParallel {where}: under torchrun "
                          "(world_size > 1) wrap net in nn.parallel.DistributedDataParallel")
    calls = _FakeDDP.made[-1].calls
    expect(calls == [False, False, True] * cfg.max_steps,
           f"per micro-batch, DDP would average the gradients {['yes' if c else 'no' for c in calls[:3]]} in a "
           f"step, expected ['no', 'no', 'yes'] {where}: run all but the last micro-batch inside net.no_sync(), "
           "so the gradients cross the network once per step")
    plain, summed = want["train_loss"], [2 * v + 1 for v in want["train_loss"]]
    if _same(got.train_loss, plain):
        raise CheckFailed(f"the recorded losses are this process's own {where}: in flush, all_reduce the queued "
                          "values across the processes before moving them to history")
    if _same(got.train_loss, [v / 2 for v in plain]):
        raise CheckFailed(f"the recorded losses are half this process's own {where}: all_reduce the queued values "
                          "across the processes (it sums them) before dividing by world_size")
    if _same(got.train_loss, summed):
        raise CheckFailed(f"the recorded losses are the sum over the processes {where}: after all_reduce, "
                          "divide by world_size")
    expect(_same(got.train_loss, [v + 0.5 for v in plain]),
           f"the recorded losses are not the mean over the two processes {where}")
    expect(saved_steps == [2, 4, 4], f"rank 0 wrote checkpoints of the steps {saved_steps}, expected [2, 4, 4] {where}: "
                                      "the main process (DistInfo.is_main: rank 0) writes them")
    expect(len(barriers) == 3, f"torch.distributed.barrier() was called {len(barriers)} times for 3 saves {where}: "
                               "after each save, every process waits until rank 0 has written it")


@exercise("6.17", "The training loop", builds="gptlib.training:train", tier="core", difficulty=3, importance=3)
def _(candidate):
    import tempfile
    from pathlib import Path
    from gptlib.model import GPT, GPTConfig
    _check_switches(candidate)
    # 1. any nn.Module through the hooks: an evaluation every 3 steps and at the end
    for cfg in (_loop_config(), _loop_config(eval_interval=20, max_steps=5, grad_accum_steps=1)):
        data = _LoopData()
        mine, ref = _StepNet(3), _StepNet(3)
        where = f"(a 5-input classifier through batch_loss and eval_loss, max_steps={cfg.max_steps}, " \
                f"eval_interval={cfg.eval_interval})"
        got = candidate(mine, None, None, cfg, batch_loss=data.batch_loss, eval_loss=data.eval_loss, progress=False)
        ref_data = _LoopData()
        want = _loop_ref(ref, cfg, ref_data.batch_loss, lambda m: (math.nan, ref_data.eval_loss(m)))
        expect(all(not training for training, _ in data.modes),
               f"eval_loss ran with the model in train mode {where}: put raw in eval mode first (raw.eval()) "
               "and back in the mode it had afterwards")
        expect(all(not grad for _, grad in data.modes),
               f"eval_loss ran with gradients on {where}: call it under torch.no_grad()")
        expect(mine.training, f"the model is left in eval mode after training {where}: restore its mode after "
                              "each evaluation")
        _compare_run(got, want, cfg, where, default_hooks=False)
        expect(_max_diff(mine, ref) < 1e-5, f"the trained weights differ from the reference run's {where}")
    # 2. a GPT with the default hooks: windows of the token stream, evaluate on fixed windows
    g = torch.Generator().manual_seed(case_seed(1))
    tokens_train, tokens_val = torch.randint(0, 11, (300,), generator=g), torch.randint(0, 11, (120,), generator=g)
    gpt_cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    cfg = _loop_config(max_steps=5, eval_interval=2, grad_accum_steps=1, eval_batch_size=5)
    torch.manual_seed(case_seed(0))
    mine = GPT(gpt_cfg)
    ref = copy.deepcopy(mine)
    where = f"(a GPT on a token stream with the default hooks, max_steps={cfg.max_steps}, eval_interval=2)"
    got = candidate(mine, tokens_train, tokens_val, cfg, progress=False)

    def scores(model):
        return tuple(_eval_ref(model, d, 8, 5, cfg.eval_iters, cfg.seed + 1) for d in (tokens_train, tokens_val))
    want = _loop_ref(ref, cfg, lambda net, gen, dev: net(*get_batch(tokens_train, 8, cfg.batch_size, generator=gen))[1],
                     scores)
    if got is not None and len(getattr(got, "train_loss", [])) == len(want["train_loss"]) \
            and not _same(got.train_loss, want["train_loss"]):
        raise CheckFailed(f"the training losses differ from the reference run's {where}: the default batch_loss "
                          "returns net(x, y)[1] on draw_batch(train_data, block_size, config.batch_size, generator, "
                          "dist_info, device)")
    _compare_run(got, want, cfg, where, default_hooks=True)
    # 3. checkpoints along the way: every checkpoint_interval steps, at the end, and the best (keep_best)
    cfg = _loop_config(max_steps=7, eval_interval=2, checkpoint_interval=3, keep_best=True)
    scripted = iter([3.0, 2.0, 2.5, 1.5, 1.8])
    where = ("(7 steps, eval_interval=2, checkpoint_interval=3, keep_best=True, validation losses 3.0, 2.0, 2.5, "
             "1.5, 1.8 at steps 0, 2, 4, 6, 7)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        seen = []

        def look(step, history, model):
            seen.append(torch.load(path, weights_only=True) if path.is_file() else None)
        data = _LoopData()
        candidate(_StepNet(4), None, None, cfg, batch_loss=data.batch_loss, eval_loss=lambda m: next(scripted),
                  checkpoint_path=path, callbacks=[look], progress=False)
        steps = [p if p is None else p["step"] for p in seen]
        expect(steps == [None, None, 3, 6, 6],
               f"at the evaluations of steps 0, 2, 4, 6, 7 the checkpoint file held the steps {steps}, expected "
               f"[None, None, 3, 6, 6] {where}: after step s, when (s + 1) % checkpoint_interval == 0, save the "
               "run as it continues, at step s + 1")
        for payload in filter(None, seen):
            kept = len(payload["history"]["train_loss"])
            expect(kept == payload["step"],
                   f"the checkpoint of step {payload['step']} holds {kept} training losses {where}: flush() before "
                   "saving, or the history saved misses the losses still queued in pending")
        expect(path.is_file() and torch.load(path, weights_only=True)["step"] == 7,
               f"the run did not end saved at step 7 {where}: with a checkpoint_path, save(end) after the loop")
        best = path.with_name("ckpt.best.pt")
        expect(best.is_file(), f"no best checkpoint at {best.name} {where}: with keep_best, save one at each new "
                               "low of the validation loss (best_checkpoint_path(checkpoint_path))")
        best_step = torch.load(best, weights_only=True)["step"]
        expect(best_step == 6, f"the best checkpoint is of step {best_step}, expected 6 (validation loss 1.5) "
                               f"{where}: save it only when val is below history.best_val, compared before val "
                               "is recorded")
    _check_two_processes(candidate)
    # 4. stopped with until_step, then resumed from its checkpoint: the same run as without the break
    cfg = _loop_config(max_steps=7, eval_interval=2)
    whole_data, split_data = _LoopData(), _LoopData()
    whole = candidate(_StepNet(4), None, None, cfg, batch_loss=whole_data.batch_loss, eval_loss=whole_data.eval_loss,
                      progress=False)
    where = "(a run of 7 steps stopped with until_step=3, then resumed from its checkpoint)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        first = candidate(_StepNet(4), None, None, cfg, batch_loss=split_data.batch_loss,
                          eval_loss=split_data.eval_loss, checkpoint_path=path, until_step=3, progress=False)
        expect(first.step == [0, 1, 2], f"with until_step=3 the run took the steps {first.step} {where}: stop "
                                        "before step until_step (the schedule still ends at max_steps)")
        expect(3 not in first.eval_step, f"the first part evaluated at {first.eval_step}, expected [0, 2] {where}: "
                                         "a run stopped early by until_step does not evaluate at its end, only a "
                                         "run that reached max_steps")
        expect(first.eval_step == [0, 2], f"the first part evaluated at {first.eval_step}, expected [0, 2] {where}")
        rest = candidate(_StepNet(9), None, None, cfg, batch_loss=split_data.batch_loss,
                         eval_loss=split_data.eval_loss, resume_from=path, progress=False)
    expect(rest.step == whole.step, f"the resumed run's history.step is {rest.step}, expected {whole.step} {where}: "
                                    "continue at payload['step'] with the saved history, "
                                    "History.from_dict(payload['history'])")
    expect(rest.train_loss == whole.train_loss and rest.val_loss == whole.val_loss,
           f"the resumed run's losses differ from the uninterrupted run's {where}")


# ---- load_text_data: a recipe's data ---------------------------------------------------------

def _recipe_text() -> str:
    """About 3,000 characters whose last part holds letters the first 600 do not (Q, X, Z, !); the
    words of the first part are drawn from ``case_seed(4)``."""
    g = torch.Generator().manual_seed(case_seed(4))
    words = ["the", "king", "and", "queen", "sat", "in", "a", "hall", "of", "stone", "bread", "wine"]
    picks = torch.randint(0, len(words), (520,), generator=g).tolist()
    head = " ".join(words[i] for i in picks)
    return head[:2400] + "\nQUIZ: XYZZY, ZAX! " * 30


@exercise("6.19", "A recipe's data, tokenized and split", builds="gptlib.training:load_text_data",
          tier="core", difficulty=2, importance=2)
def _(candidate):
    import gptlib.datasets
    from gptlib.data import train_val_split
    from gptlib.tokenizer import BPETokenizer, CharTokenizer
    text, asked = _recipe_text(), []

    def fake_load_text(name):
        asked.append(name)
        return text
    cases = [dict(dataset="check-text", tokenizer="char", val_fraction=0.1, max_chars=None),
             dict(dataset="other-text", tokenizer="char", val_fraction=0.25, max_chars=600),
             dict(dataset="check-text", tokenizer="bpe", bpe_vocab_size=270, val_fraction=0.2, max_chars=900)]
    real = gptlib.datasets.load_text
    gptlib.datasets.load_text = fake_load_text
    try:
        for data in cases:
            where = f"(data={data})"
            got = candidate(dict(data))
            expect(isinstance(got, tuple) and len(got) == 4,
                   f"return the tuple (tokenizer, train, val, text), got {type(got).__name__} {where}")
            tokenizer, train, val, got_text = got
            expect(asked and asked[-1] == data["dataset"],
                   f"the text loaded was {asked[-1:] or 'none'}, not load_text(data['dataset']) {where}")
            want_text = text[: data["max_chars"]] if data["max_chars"] else text
            expect(got_text == want_text,
                   f"the text returned has {len(got_text)} characters, expected {len(want_text)} {where}: keep the "
                   "first max_chars characters when max_chars is set")
            kind = CharTokenizer if data["tokenizer"] == "char" else BPETokenizer
            expect(isinstance(tokenizer, kind), f"tokenizer={data['tokenizer']!r} asks for a {kind.__name__}, got "
                                                f"{type(tokenizer).__name__} {where}")
            want_tok = CharTokenizer(want_text) if kind is CharTokenizer \
                else BPETokenizer().train(want_text, data["bpe_vocab_size"])
            if tokenizer.vocab_size != want_tok.vocab_size:
                raise CheckFailed(f"the tokenizer has {tokenizer.vocab_size} ids, expected {want_tok.vocab_size} "
                                  f"{where}: build it on the text after the max_chars cut"
                                  + (", trained to bpe_vocab_size ids" if kind is BPETokenizer else ""))
            ids = torch.tensor(want_tok.encode(want_text), dtype=torch.long)
            want_train, want_val = train_val_split(ids, data["val_fraction"])
            expect(isinstance(train, torch.Tensor) and isinstance(val, torch.Tensor)
                   and train.dtype == val.dtype == torch.long,
                   f"train and val must be torch.long tensors of token ids {where}")
            expect(len(train) + len(val) == len(ids),
                   f"train and val hold {len(train) + len(val)} tokens, the encoded text {len(ids)} {where}: encode "
                   "the whole text, then split the ids")
            expect(torch.equal(train, want_train) and torch.equal(val, want_val),
                   f"train/val hold {len(train)}/{len(val)} tokens, expected {len(want_train)}/{len(want_val)} "
                   f"{where}: train_val_split(ids, data['val_fraction'])")
    finally:
        gptlib.datasets.load_text = real


# ---- 6.20 stretch: a loss target within a step budget ----------------------------------------

BUDGET_STEPS, BUDGET_TARGET = 40, 0.88


def _budget_stream(n: int, vocab: int = 16, seed: int = 0) -> torch.Tensor:
    """A token stream where each token has two equally likely successors: ln 2 = 0.693 nats is
    the best loss any model can reach."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab, (vocab, 2), generator=g)
    choice = torch.randint(0, 2, (n,), generator=g).tolist()
    out = [0]
    for c in choice[:-1]:
        out.append(int(successors[out[-1], c]))
    return torch.tensor(out)


def loss_after_budget(lr: float, warmup_steps: int, seed: int = 0) -> float:
    """Validation loss of a 1-layer GPT after ``BUDGET_STEPS`` AdamW steps on a two-successor
    token stream, with peak rate ``lr``, ``warmup_steps`` of linear warmup, then a cosine down to
    ``lr / 10``, clipping at 1.0. ``seed`` sets the initial weights. About half a second on a CPU."""
    from gptlib.model import GPT, GPTConfig
    if not lr > 0 or not 0 <= warmup_steps <= BUDGET_STEPS:
        raise ValueError(f"need lr > 0 and 0 <= warmup_steps <= {BUDGET_STEPS}, got {lr} and {warmup_steps}")
    data = _budget_stream(6000)
    train, val = data[:5000], data[5000:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=1, n_head=2, n_embd=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for step in range(BUDGET_STEPS):
        for group in optimizer.param_groups:
            group["lr"] = _lr_ref(step, lr, lr / 10, warmup_steps, BUDGET_STEPS)
        x, y = get_batch(train, 16, 16, generator=g)
        model(x, y)[1].backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        n = (len(val) - 1) // 16 * 16
        return model(val[:n].view(-1, 16), val[1:n + 1].view(-1, 16))[1].item()


@exercise("6.20", f"Reach {BUDGET_TARGET} nats in {BUDGET_STEPS} steps", tier="stretch", difficulty=2, importance=2)
def _(candidate):
    settings = candidate()
    expect(isinstance(settings, dict) and set(settings) == {"lr", "warmup_steps"},
           "return a dict with the keys 'lr' and 'warmup_steps'")
    lr, warmup = settings["lr"], settings["warmup_steps"]
    expect(isinstance(lr, (int, float)) and lr > 0 and isinstance(warmup, int) and 0 <= warmup <= BUDGET_STEPS,
           f"lr must be a number > 0 and warmup_steps an int from 0 to {BUDGET_STEPS}, got {lr!r} and {warmup!r}")
    for seed in (0, 1):
        loss = loss_after_budget(lr, warmup, seed)
        if loss <= BUDGET_TARGET:
            continue
        if not math.isfinite(loss) or loss > math.log(16):
            raise CheckFailed(f"with lr={lr:g} and warmup_steps={warmup} the loss ends at {loss:.3f}, above the "
                              f"{math.log(16):.3f} of a model that knows nothing (seed {seed}): the rate is too high "
                              "for these first steps")
        raise CheckFailed(f"with lr={lr:g} and warmup_steps={warmup} the validation loss after {BUDGET_STEPS} "
                          f"steps is {loss:.3f} (seed {seed}), above the target {BUDGET_TARGET}: measure a few "
                          "rates a factor of 3 apart with loss_after_budget, then the warmup at the best one")
