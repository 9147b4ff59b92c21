"""Chapter 6 checks: the references pass, the usual mistakes fail with the matching hint."""
import math

import pytest

from gptlib.exercises import run_check
from gptlib.training import bits_per_char, lr_at, param_groups


# ---- 6.1 warmup + cosine -------------------------------------------------------------------

def _cosine(step, max_lr, min_lr, warmup, max_steps, floor=None):
    progress = (step - warmup) / (max_steps - warmup)
    low = min_lr if floor is None else floor
    return low + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - low)


def lr_warmup_starting_at_zero(step, max_lr, min_lr, warmup, max_steps):
    if step < warmup:
        return max_lr * step / warmup
    return min_lr if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps)


def lr_warmup_that_never_reaches_max(step, max_lr, min_lr, warmup, max_steps):
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    return min_lr if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps)


def lr_decay_to_zero(step, max_lr, min_lr, warmup, max_steps):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    return 0.0 if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps, floor=0.0)


def lr_cosine_to_zero_clamped_at_the_end(step, max_lr, min_lr, warmup, max_steps):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    return min_lr if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps, floor=0.0)


def lr_linear_decay(step, max_lr, min_lr, warmup, max_steps):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= max_steps:
        return min_lr
    return max_lr - (max_lr - min_lr) * (step - warmup) / (max_steps - warmup)


# ---- 6.2 parameter groups ------------------------------------------------------------------

def groups_decaying_everything(model, wd):
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": wd}]


def groups_by_name_decaying_layernorm_gains(model, wd):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not n.endswith("bias")], "weight_decay": wd},
            {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0}]


def groups_with_tied_weight_twice(model, wd):
    mats = [m.weight for m in model.modules() if hasattr(m, "weight") and m.weight.requires_grad
            and m.weight.dim() >= 2]
    vecs = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": mats, "weight_decay": wd}, {"params": vecs, "weight_decay": 0.0}]


def groups_with_frozen_parameters(model, wd):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": wd},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


# ---- 6.3 bits per character ----------------------------------------------------------------

def bpc_times_ln2(loss, t, c):
    return loss * t / c * math.log(2)


def bpc_log2_of_loss(loss, t, c):
    return math.log2(loss * t / c)


def bpc_per_token(loss, t, c):
    return loss / math.log(2)


def bpc_ratio_swapped(loss, t, c):
    return loss * c / t / math.log(2)


def bpc_nats(loss, t, c):
    return loss * t / c


# ---- the table -----------------------------------------------------------------------------

PASSING = [("6.1", lr_at), ("6.2", param_groups), ("6.3", bits_per_char)]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("6.1", lr_warmup_starting_at_zero, "off by one"),
    ("6.1", lr_warmup_that_never_reaches_max, "off by one"),
    ("6.1", lr_decay_to_zero, "decays to 0 instead of to min_lr"),
    ("6.1", lr_cosine_to_zero_clamped_at_the_end, "decays to 0 instead of to min_lr"),
    ("6.1", lr_linear_decay, "straight line"),
    ("6.2", groups_decaying_everything, "LayerNorm weights/biases are decayed"),
    ("6.2", groups_by_name_decaying_layernorm_gains, "LayerNorm weights/biases are decayed"),
    ("6.2", groups_with_tied_weight_twice, "appears twice"),
    ("6.2", groups_with_frozen_parameters, "frozen"),
    ("6.3", bpc_times_ln2, "multiplied by ln 2"),
    ("6.3", bpc_log2_of_loss, "log2 of the loss"),
    ("6.3", bpc_per_token, "bits per token"),
    ("6.3", bpc_ratio_swapped, "swapped"),
    ("6.3", bpc_nats, "nats per character"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING, ids=[c.__name__ for _, c in PASSING])
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING,
                         ids=[c.__name__ for _, c, _ in FAILING])
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_unsolved_exercise_is_not_done():
    def todo(*args):
        raise NotImplementedError
    for ex in ("6.1", "6.2", "6.3"):
        assert run_check(ex, todo).status == "not done"
