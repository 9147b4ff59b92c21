"""Chapter 8 checks accept the reference solutions and reject the usual mistakes, with hints."""
import torch
import torch.nn as nn

from gptlib.exercises import run_check


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


def test_81_reference_passes():
    assert run_check("8.1", pool_ref).status == "passed"


def test_81_rejects_pooling_a_padding_position():
    r = run_check("8.1", pool_last_position)
    assert r.status == "failed" and "padding" in r.message


def test_81_rejects_off_by_one():
    r = run_check("8.1", pool_off_by_one)
    assert r.status == "failed" and "off by one" in r.message


def test_81_rejects_mean_pool_and_reports_not_done():
    r = run_check("8.1", pool_mean)
    assert r.status == "failed" and "mean pool" in r.message
    assert run_check("8.1", pool_todo).status == "not done"


# ------------------------------------------------------------------ 8.2 loss masking
def mask_ref(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], [-100] * (len(prompt) - 1) + seq[len(prompt):]


def mask_response_instead(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], seq[1:len(prompt)] + [-100] * len(response)


def mask_nothing(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], seq[1:]


def mask_one_too_many(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], [-100] * len(prompt) + seq[len(prompt) + 1:]


def test_82_reference_passes():
    assert run_check("8.2", mask_ref).status == "passed"


def test_82_rejects_masking_the_response_instead_of_the_prompt():
    r = run_check("8.2", mask_response_instead)
    assert r.status == "failed" and "masked the response" in r.message


def test_82_rejects_no_masking_and_off_by_one():
    r = run_check("8.2", mask_nothing)
    assert r.status == "failed" and "nothing is masked" in r.message
    r = run_check("8.2", mask_one_too_many)
    assert r.status == "failed" and "first response token" in r.message


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


def test_83_reference_passes():
    assert run_check("8.3", LoRARef).status == "passed"


def test_83_rejects_forgetting_the_scaling():
    r = run_check("8.3", LoRANoScaling)
    assert r.status == "failed" and "forgot the scaling" in r.message
    r = run_check("8.3", LoRAInverseScaling)
    assert r.status == "failed" and "upside down" in r.message


def test_83_rejects_b_not_zero_initialised():
    r = run_check("8.3", LoRARandomB)
    assert r.status == "failed" and "initialise lora_B to zero" in r.message


def test_83_rejects_unfrozen_base_and_zero_a():
    r = run_check("8.3", LoRAUnfrozenBase)
    assert r.status == "failed" and "freeze the base" in r.message
    r = run_check("8.3", LoRAZeroA)
    assert r.status == "failed" and "lora_A is all zeros" in r.message
