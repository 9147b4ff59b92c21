"""The Chapter 7 checks accept the reference solutions and reject the usual mistakes."""
import pytest
import torch
import torch.nn.functional as F

from gptlib.exercises import run_check
from gptlib.sampling import next_token_probs


# ---- 7.1 temperature -------------------------------------------------------------------------
def temperature_ref(logits, temperature):
    if temperature == 0:
        return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).to(logits.dtype)
    return F.softmax(logits / temperature, dim=-1)


def temperature_multiplied(logits, temperature):
    if temperature == 0:
        return temperature_ref(logits, 0)
    return F.softmax(logits * temperature, dim=-1)


def temperature_divides_by_zero(logits, temperature):
    return F.softmax(logits / temperature, dim=-1)


def temperature_python_division(logits, temperature):
    return F.softmax(logits * (1 / temperature), dim=-1)


def temperature_no_softmax(logits, temperature):
    if temperature == 0:
        return temperature_ref(logits, 0)
    return logits / temperature


def temperature_wrong_axis(logits, temperature):
    if temperature == 0:
        return temperature_ref(logits, 0)
    return F.softmax(logits / temperature, dim=0)


def temperature_ties_spread(logits, temperature):
    if temperature == 0:
        top = logits == logits.max(dim=-1, keepdim=True).values
        return top.float() / top.sum(-1, keepdim=True)
    return F.softmax(logits / temperature, dim=-1)


# ---- 7.2 top-k -------------------------------------------------------------------------------
def top_k_ref(logits, k):
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order[..., :k], True)
    return F.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)


def top_k_plus_one(logits, k):
    kth = torch.sort(logits, dim=-1, descending=True).values[..., min(k, logits.size(-1) - 1), None]
    return F.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)


def top_k_no_renorm(logits, k):
    probs = F.softmax(logits, dim=-1)
    kth = torch.topk(logits, k, dim=-1).values[..., -1, None]
    return probs.masked_fill(logits < kth, 0.0)


def top_k_threshold_keeps_ties(logits, k):
    kth = torch.topk(logits, k, dim=-1).values[..., -1, None]
    return F.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)


def top_k_smallest(logits, k):
    kth = torch.topk(logits, k, dim=-1, largest=False).values[..., -1, None]
    return F.softmax(logits.masked_fill(logits > kth, float("-inf")), dim=-1)


def top_k_ties_high_ids(logits, k):
    flipped = logits.flip(-1)
    return top_k_ref(flipped, k).flip(-1)


# ---- 7.3 top-p -------------------------------------------------------------------------------
def top_p_ref(logits, p):
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    keep_sorted = (sorted_probs.cumsum(-1) - sorted_probs) < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def top_p_drops_crossing_token(logits, p):
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    keep_sorted = sorted_probs.cumsum(-1) <= p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def top_p_no_renorm(logits, p):
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    keep_sorted = (sorted_probs.cumsum(-1) - sorted_probs) < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return probs * keep


def top_p_unsorted(logits, p):
    probs = F.softmax(logits, dim=-1)
    keep = (probs.cumsum(-1) - probs) < p
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


# ---- the library's sampling filter -----------------------------------------------------------
def library_temperature(logits, temperature):
    return next_token_probs(logits, temperature=temperature)


def library_top_k(logits, k):
    return next_token_probs(logits, top_k=k)


def library_top_p(logits, p):
    return next_token_probs(logits, top_p=p)


# ---- the table -------------------------------------------------------------------------------
PASSING = [("7.1", temperature_ref), ("7.2", top_k_ref), ("7.3", top_p_ref),
           ("7.1", library_temperature), ("7.2", library_top_k), ("7.3", library_top_p)]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("7.1", temperature_multiplied, "multiplied"),
    ("7.1", temperature_divides_by_zero, "divides by zero"),
    ("7.1", temperature_python_division, "divided by zero"),
    ("7.1", temperature_no_softmax, "softmax"),
    ("7.1", temperature_wrong_axis, "wrong axis"),
    ("7.1", temperature_ties_spread, "first of"),
    ("7.2", top_k_plus_one, "off by one"),
    ("7.2", top_k_no_renorm, "renormalise"),
    ("7.2", top_k_threshold_keeps_ties, "tie at the k-th place"),
    ("7.2", top_k_smallest, "largest"),
    ("7.2", top_k_ties_high_ids, "lower token ids"),
    ("7.3", top_p_drops_crossing_token, "crosses the threshold"),
    ("7.3", top_p_no_renorm, "renormalise"),
    ("7.3", top_p_unsorted, "Sort the tokens"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING, ids=[c.__name__ for _, c in PASSING])
def test_reference_passes(exercise_id, candidate):
    result = run_check(exercise_id, candidate)
    assert result.status == "passed", result.message


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING,
                         ids=[c.__name__ for _, c, _ in FAILING])
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_unfinished_exercise_is_not_done():
    def todo(logits, arg):
        raise NotImplementedError
    for ex in ("7.1", "7.2", "7.3"):
        assert run_check(ex, todo).status == "not done"
