"""Chapter 6 checks: the references pass, the usual mistakes fail with the matching hint."""
import math

import pytest

from gptlib.exercises import run_check
from gptlib.training import bits_per_char, lr_at, param_groups


def _failed(exercise_id, candidate, phrase):
    result = run_check(exercise_id, candidate)
    assert result.status == "failed", (result.status, result.message)
    assert phrase in result.message, result.message


# ---- 6.1 warmup + cosine -------------------------------------------------------------------

def test_lr_reference_passes():
    assert run_check("6.1", lr_at).passed


def _cosine(step, max_lr, min_lr, warmup, max_steps, floor=None):
    progress = (step - warmup) / (max_steps - warmup)
    low = min_lr if floor is None else floor
    return low + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - low)


def test_lr_rejects_warmup_starting_at_zero():
    def wrong(step, max_lr, min_lr, warmup, max_steps):
        if step < warmup:
            return max_lr * step / warmup
        return min_lr if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps)
    _failed("6.1", wrong, "off by one")


def test_lr_rejects_warmup_that_never_reaches_max():
    def wrong(step, max_lr, min_lr, warmup, max_steps):
        if step < warmup:
            return max_lr * (step + 1) / (warmup + 1)
        return min_lr if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps)
    _failed("6.1", wrong, "off by one")


def test_lr_rejects_decay_to_zero():
    def wrong(step, max_lr, min_lr, warmup, max_steps):
        if step < warmup:
            return max_lr * (step + 1) / warmup
        return 0.0 if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps, floor=0.0)
    _failed("6.1", wrong, "decays to 0 instead of to min_lr")


def test_lr_rejects_cosine_to_zero_even_if_clamped_at_the_end():
    def wrong(step, max_lr, min_lr, warmup, max_steps):
        if step < warmup:
            return max_lr * (step + 1) / warmup
        return min_lr if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps, floor=0.0)
    _failed("6.1", wrong, "decays to 0 instead of to min_lr")


def test_lr_rejects_linear_decay():
    def wrong(step, max_lr, min_lr, warmup, max_steps):
        if step < warmup:
            return max_lr * (step + 1) / warmup
        if step >= max_steps:
            return min_lr
        return max_lr - (max_lr - min_lr) * (step - warmup) / (max_steps - warmup)
    _failed("6.1", wrong, "straight line")


# ---- 6.2 parameter groups ------------------------------------------------------------------

def test_groups_reference_passes():
    assert run_check("6.2", param_groups).passed


def test_groups_reject_decaying_everything():
    def wrong(model, wd):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": wd}]
    _failed("6.2", wrong, "LayerNorm weights/biases are decayed")


def test_groups_reject_name_based_rule_that_decays_layernorm_gains():
    def wrong(model, wd):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [{"params": [p for n, p in named if not n.endswith("bias")], "weight_decay": wd},
                {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0}]
    _failed("6.2", wrong, "LayerNorm weights/biases are decayed")


def test_groups_reject_tied_weight_twice():
    def wrong(model, wd):
        mats = [m.weight for m in model.modules() if hasattr(m, "weight") and m.weight.requires_grad
                and m.weight.dim() >= 2]
        vecs = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        return [{"params": mats, "weight_decay": wd}, {"params": vecs, "weight_decay": 0.0}]
    _failed("6.2", wrong, "appears twice")


def test_groups_reject_frozen_parameters():
    def wrong(model, wd):
        return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": wd},
                {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    _failed("6.2", wrong, "frozen")


# ---- 6.3 bits per character ----------------------------------------------------------------

def test_bpc_reference_passes():
    assert run_check("6.3", bits_per_char).passed


@pytest.mark.parametrize("wrong, phrase", [
    (lambda loss, t, c: loss * t / c * math.log(2), "multiplied by ln 2"),
    (lambda loss, t, c: math.log2(loss * t / c), "log2 of the loss"),
    (lambda loss, t, c: loss / math.log(2), "bits per token"),
    (lambda loss, t, c: loss * c / t / math.log(2), "swapped"),
    (lambda loss, t, c: loss * t / c, "nats per character"),
])
def test_bpc_rejects_unit_mixups(wrong, phrase):
    _failed("6.3", wrong, phrase)


def test_unsolved_exercise_is_not_done():
    def todo(*args):
        raise NotImplementedError
    for ex in ("6.1", "6.2", "6.3"):
        assert run_check(ex, todo).status == "not done"
