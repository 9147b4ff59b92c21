"""Chapter 3 checks: each reference passes and each typical mistake is rejected with its hint."""
import pytest
import torch
import torch.nn.functional as F

from gptlib.exercises import run_check
from gptlib.masking import causal_mask, causal_padding_mask, masked_softmax, padding_mask


# ---------------------------------------------------------------- 3.1 the causal mask
def _tri(diagonal, upper=False, dtype=torch.bool):
    def candidate(T):
        ones = torch.ones(T, T, dtype=dtype)
        return ones.triu(diagonal) if upper else ones.tril(diagonal)
    return candidate


# ---------------------------------------------------------------- 3.2 causal attention weights
def _with_mask(allowed_fn, dim=-1):
    def candidate(scores):
        T = scores.shape[-1]
        return F.softmax(scores.masked_fill(~allowed_fn(T), float("-inf")), dim=dim)
    return candidate


def _renorm(scores):
    w = F.softmax(scores, dim=-1) * causal_mask(scores.shape[-1])
    return w / w.sum(-1, keepdim=True)


def _fill_zero(scores):
    return F.softmax(scores.masked_fill(~causal_mask(scores.shape[-1]), 0.0), dim=-1)


def _mask_after_softmax(scores):
    return F.softmax(scores, dim=-1).masked_fill(~causal_mask(scores.shape[-1]), 0.0)


def _mask_after_softmax_multiply(scores):
    return F.softmax(scores, dim=-1) * causal_mask(scores.shape[-1])


def _in_place(scores):
    return F.softmax(scores.masked_fill_(~causal_mask(scores.shape[-1]), float("-inf")), dim=-1)


def _only_2d(scores):       # uses dim=1, which is the key axis only for a 2-D input
    return F.softmax(scores.masked_fill(~causal_mask(scores.shape[-1]), float("-inf")), dim=1)


def _scaled(scores):
    return _with_mask(causal_mask)(scores / 2)


# ---------------------------------------------------------------- 3.3 causal + padding
def _combined(pad_index, causal=True, extra=0):
    def candidate(lengths, T):
        pos = torch.arange(T)
        real = pos[None, :] < torch.as_tensor(lengths)[:, None] + extra
        pad = real[:, None, None, :] if pad_index == "keys" else real[:, None, :, None]
        mask = pad.expand(len(lengths), 1, T, T)
        return mask & causal_mask(T) if causal else mask
    return candidate


def _both_axes(lengths, T):
    return _combined("keys")(lengths, T) & _combined("queries")(lengths, T)


# ---------------------------------------------------------------- 3.4 leak detector
@torch.no_grad()
def _detector(compare_upto, positions=None, perturb=lambda x, t: (x[:, t] + 1) % (int(x.max()) + 1)):
    """A leak detector that changes x[:, t] for t in `positions` and compares outputs [:t + compare_upto]."""
    def leaks_future(model, x):
        reference = model(x)
        for t in (positions(x.shape[1]) if positions else range(1, x.shape[1])):
            changed = x.clone()
            changed[:, t] = perturb(x, t)
            if not torch.allclose(model(changed)[:, :t + compare_upto], reference[:, :t + compare_upto]):
                return True
        return False
    return leaks_future


@torch.no_grad()
def _one_step(model, x):   # only asks: does the output at t depend on x[t + 1]?
    ref = model(x)
    for t in range(x.shape[1] - 1):
        changed = x.clone()
        changed[:, t + 1] = (x[:, t + 1] + 1) % (int(x.max()) + 1)
        if not torch.allclose(model(changed)[:, t], ref[:, t]):
            return True
    return False


# ---------------------------------------------------------------- the table
PASSING = [  # (exercise, candidate); the id names it
    pytest.param("3.1", causal_mask, id="3.1-library"),
    pytest.param("3.1", _tri(0), id="3.1-reference"),
    pytest.param("3.2", lambda s: masked_softmax(s, causal_mask(s.shape[-1])), id="3.2-library"),
    pytest.param("3.2", _with_mask(causal_mask), id="3.2-reference"),
    pytest.param("3.2", _renorm, id="3.2-mask-after-softmax-with-renormalization"),
    pytest.param("3.3", _combined("keys"), id="3.3-reference"),
    pytest.param("3.3", lambda lengths, T: causal_padding_mask(padding_mask(lengths, T)), id="3.3-library"),
    pytest.param("3.4", _detector(0), id="3.4-reference"),
]

FAILING = [  # (exercise, candidate, a phrase its hint must contain); the id names the mistake
    pytest.param("3.1", _tri(-1), "diagonal is excluded", id="3.1-diagonal-excluded"),
    pytest.param("3.1", _tri(1), "off by one", id="3.1-one-future-token"),
    pytest.param("3.1", _tri(0, upper=True), "upper- instead of lower-triangular", id="3.1-upper-triangular"),
    pytest.param("3.1", _tri(1, upper=True), "True on the future", id="3.1-inverted"),
    pytest.param("3.1", lambda T: torch.ones(T, T, dtype=torch.bool), "nothing is masked", id="3.1-no-mask"),
    pytest.param("3.1", _tri(0, dtype=torch.float32), "dtype is torch.float32", id="3.1-float-dtype"),
    pytest.param("3.1", lambda T: torch.zeros(T, T).masked_fill(~causal_mask(T), float("-inf")),
                 "bool tensor", id="3.1-additive-mask"),
    pytest.param("3.1", lambda T: causal_mask(T + 1), "must have shape", id="3.1-wrong-shape"),
    pytest.param("3.1", lambda T: causal_mask(T).tolist(), "return a torch tensor", id="3.1-not-a-tensor"),
    pytest.param("3.2", _fill_zero, "filled with 0 instead of -inf", id="3.2-fill-zero"),
    pytest.param("3.2", _mask_after_softmax, "applied after the softmax", id="3.2-mask-after-softmax"),
    pytest.param("3.2", _mask_after_softmax_multiply, "applied after the softmax",
                 id="3.2-multiply-after-softmax"),
    pytest.param("3.2", _with_mask(causal_mask, dim=-2), "wrong axis", id="3.2-softmax-over-queries"),
    pytest.param("3.2", _with_mask(lambda T: causal_mask(T).tril(-1)), "diagonal is excluded",
                 id="3.2-diagonal-excluded"),
    pytest.param("3.2", _with_mask(lambda T: torch.ones(T, T, dtype=torch.bool).tril(1)), "off by one",
                 id="3.2-one-future-token"),
    pytest.param("3.2", _with_mask(lambda T: torch.ones(T, T, dtype=torch.bool).triu()),
                 "upper- instead of lower", id="3.2-upper-triangular"),
    pytest.param("3.2", lambda s: F.softmax(s, dim=-1), "nothing is masked", id="3.2-no-mask"),
    pytest.param("3.2", _in_place, "in place", id="3.2-in-place"),
    pytest.param("3.2", _only_2d, "NaN", id="3.2-softmax-over-heads"),
    pytest.param("3.2", _scaled, "did you scale", id="3.2-scaled"),
    pytest.param("3.2", lambda s: s[..., :-1], "same shape", id="3.2-wrong-shape"),
    pytest.param("3.3", lambda lengths, T: causal_mask(T).expand(len(lengths), 1, T, T),
                 "padding keys are not masked", id="3.3-no-padding"),
    pytest.param("3.3", _combined("keys", causal=False), "causal part is missing", id="3.3-no-causal"),
    pytest.param("3.3", _combined("queries"), "query axis (rows)", id="3.3-rows-not-columns"),
    pytest.param("3.3", _both_axes, "mask padded *keys* (columns)", id="3.3-rows-and-columns"),
    pytest.param("3.3", _combined("keys", extra=1), "off by one in the lengths", id="3.3-length-off-by-one"),
    pytest.param("3.3", lambda lengths, T: _combined("keys")(lengths, T)[:, 0], "lacks the head dim",
                 id="3.3-no-head-dim"),
    pytest.param("3.3", lambda lengths, T: _combined("keys")(lengths, T).float(), "dtype is torch.float32",
                 id="3.3-float-dtype"),
    pytest.param("3.3", lambda lengths, T: _combined("keys")(lengths, T).transpose(-1, -2),
                 "upper- instead of lower", id="3.3-transposed"),
    pytest.param("3.4", _detector(1), "but it is causal", id="3.4-compares-position-t"),
    pytest.param("3.4", _detector(0, positions=lambda T: [T - 1]), "missed a model", id="3.4-only-last-token"),
    pytest.param("3.4", _detector(0, positions=lambda T: range(2, T)), "leaks only at position 0",
                 id="3.4-skips-early-positions"),
    pytest.param("3.4", _detector(0, perturb=lambda x, t: torch.zeros_like(x[:, t])), "missed a model",
                 id="3.4-zero-perturbation"),                                # may not change the token
    pytest.param("3.4", lambda model, x: False, "missed a model", id="3.4-always-false"),
    pytest.param("3.4", lambda model, x: True, "but it is causal", id="3.4-always-true"),
    pytest.param("3.4", lambda model, x: "no", "return True or False", id="3.4-not-a-bool"),
    pytest.param("3.4", _one_step, "two steps ahead", id="3.4-one-step-misses-two-step-leak"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING)
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING)
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_3_1_not_done():
    def todo(T):
        raise NotImplementedError
    assert run_check("3.1", todo).status == "not done"
