"""Chapter 8 checks accept the reference solutions and reject the usual mistakes, with hints."""
import pytest
import torch
import torch.nn as nn

from gptlib.exercises import run_check
from gptlib.model import IGNORE_INDEX


# ------------------------------------------------------------------ 8.1 last real token
def pool_ref(hidden, mask):
    return hidden[torch.arange(hidden.size(0)), mask.long().sum(1) - 1]


def pool_last_position(hidden, mask):
    return hidden[:, -1]


def pool_off_by_one(hidden, mask):
    idx = mask.long().sum(1).clamp(max=hidden.size(1) - 1)
    return hidden[torch.arange(hidden.size(0)), idx]


def pool_mean(hidden, mask):
    m = mask.float()[..., None]
    return (hidden * m).sum(1) / m.sum(1)


def pool_todo(hidden, mask):
    raise NotImplementedError


# ------------------------------------------------------------------ 8.2 loss masking
def mask_ref(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], [IGNORE_INDEX] * (len(prompt) - 1) + seq[len(prompt):]


def mask_response_instead(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], seq[1:len(prompt)] + [IGNORE_INDEX] * len(response)


def mask_nothing(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], seq[1:]


def mask_one_too_many(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], [IGNORE_INDEX] * len(prompt) + seq[len(prompt) + 1:]


# ------------------------------------------------------------------ 8.3 LoRA linear
class LoRARef(nn.Module):
    def __init__(self, base, r=4, alpha=8.0, scale=True, zero_b=True, order="AB"):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scaling = alpha / r if scale is True else (scale if scale else 1.0)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.1)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r) if zero_b
                                   else torch.randn(base.out_features, r) * 0.1)

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)


class LoRANoScaling(LoRARef):
    def __init__(self, base, r=4, alpha=8.0):
        super().__init__(base, r, alpha, scale=False)


class LoRAInverseScaling(LoRARef):
    def __init__(self, base, r=4, alpha=8.0):
        super().__init__(base, r, alpha, scale=r / alpha)


class LoRARandomB(LoRARef):
    def __init__(self, base, r=4, alpha=8.0):
        super().__init__(base, r, alpha, zero_b=False)


class LoRAUnfrozenBase(LoRARef):
    def __init__(self, base, r=4, alpha=8.0):
        super().__init__(base, r, alpha)
        for p in base.parameters():
            p.requires_grad_(True)


class LoRAZeroA(LoRARef):
    def __init__(self, base, r=4, alpha=8.0):
        super().__init__(base, r, alpha)
        with torch.no_grad():
            self.lora_A.zero_()


# ------------------------------------------------------------------ the table
PASSING = [("8.1", pool_ref), ("8.2", mask_ref), ("8.3", LoRARef)]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("8.1", pool_last_position, "padding"),
    ("8.1", pool_off_by_one, "off by one"),
    ("8.1", pool_mean, "mean pool"),
    ("8.2", mask_response_instead, "masked the response"),
    ("8.2", mask_nothing, "nothing is masked"),
    ("8.2", mask_one_too_many, "first response token"),
    ("8.3", LoRANoScaling, "forgot the scaling"),
    ("8.3", LoRAInverseScaling, "upside down"),
    ("8.3", LoRARandomB, "initialise lora_B to zero"),
    ("8.3", LoRAUnfrozenBase, "freeze the base"),
    ("8.3", LoRAZeroA, "lora_A is all zeros"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING, ids=[c.__name__ for _, c in PASSING])
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING,
                         ids=[c.__name__ for _, c, _ in FAILING])
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_unfinished_exercise_is_not_done():
    assert run_check("8.1", pool_todo).status == "not done"
