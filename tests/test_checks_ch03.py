"""Chapter 3 checks: each reference passes and each typical mistake is rejected with its hint."""
import pytest
import torch
import torch.nn.functional as F

from gptlib.exercises import run_check
from gptlib.masking import causal_mask, causal_padding_mask, masked_softmax, padding_mask


def _assert_fails(exercise_id, candidate, phrase):
    result = run_check(exercise_id, candidate)
    assert result.status == "failed", (result.status, result.message)
    assert phrase in result.message, result.message


# ---------------------------------------------------------------- 3.1 the causal mask
def _tri(diagonal, upper=False, dtype=torch.bool):
    def candidate(T):
        ones = torch.ones(T, T, dtype=dtype)
        return ones.triu(diagonal) if upper else ones.tril(diagonal)
    return candidate


def test_3_1_reference_and_library_pass():
    assert run_check("3.1", causal_mask).status == "passed"
    assert run_check("3.1", _tri(0)).status == "passed"


@pytest.mark.parametrize("candidate, phrase", [
    (_tri(-1), "diagonal is excluded"),
    (_tri(1), "off by one"),
    (_tri(0, upper=True), "upper- instead of lower-triangular"),
    (_tri(1, upper=True), "True on the future"),
    (lambda T: torch.ones(T, T, dtype=torch.bool), "nothing is masked"),
    (_tri(0, dtype=torch.float32), "dtype is torch.float32"),
    (lambda T: torch.zeros(T, T).masked_fill(~causal_mask(T), float("-inf")), "bool tensor"),
    (lambda T: causal_mask(T + 1), "must have shape"),
    (lambda T: causal_mask(T).tolist(), "return a torch tensor"),
], ids=["diagonal-excluded", "one-future-token", "upper-triangular", "inverted", "no-mask",
        "float-dtype", "additive-mask", "wrong-shape", "not-a-tensor"])
def test_3_1_rejects_usual_mistakes(candidate, phrase):
    _assert_fails("3.1", candidate, phrase)


def test_3_1_not_done():
    def todo(T):
        raise NotImplementedError
    assert run_check("3.1", todo).status == "not done"


# ---------------------------------------------------------------- 3.2 causal attention weights
def _with_mask(allowed_fn, dim=-1):
    def candidate(scores):
        T = scores.shape[-1]
        return F.softmax(scores.masked_fill(~allowed_fn(T), float("-inf")), dim=dim)
    return candidate


def test_3_2_reference_passes():
    assert run_check("3.2", lambda s: masked_softmax(s, causal_mask(s.shape[-1]))).status == "passed"
    assert run_check("3.2", _with_mask(causal_mask)).status == "passed"


def test_3_2_accepts_mask_after_softmax_with_renormalization():
    def renorm(scores):
        w = F.softmax(scores, dim=-1) * causal_mask(scores.shape[-1])
        return w / w.sum(-1, keepdim=True)
    assert run_check("3.2", renorm).status == "passed"


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


@pytest.mark.parametrize("candidate, phrase", [
    (_fill_zero, "filled with 0 instead of -inf"),
    (_mask_after_softmax, "applied after the softmax"),
    (_mask_after_softmax_multiply, "applied after the softmax"),
    (_with_mask(causal_mask, dim=-2), "wrong axis"),
    (_with_mask(lambda T: causal_mask(T).tril(-1)), "diagonal is excluded"),
    (_with_mask(lambda T: torch.ones(T, T, dtype=torch.bool).tril(1)), "off by one"),
    (_with_mask(lambda T: torch.ones(T, T, dtype=torch.bool).triu()), "upper- instead of lower"),
    (lambda s: F.softmax(s, dim=-1), "nothing is masked"),
    (_in_place, "in place"),
    (_only_2d, "NaN"),
    (_scaled, "did you scale"),
    (lambda s: s[..., :-1], "same shape"),
], ids=["fill-zero", "mask-after-softmax", "multiply-after-softmax", "softmax-over-queries",
        "diagonal-excluded", "one-future-token", "upper-triangular", "no-mask", "in-place",
        "softmax-over-heads", "scaled", "wrong-shape"])
def test_3_2_rejects_usual_mistakes(candidate, phrase):
    _assert_fails("3.2", candidate, phrase)


# ---------------------------------------------------------------- 3.3 causal + padding
def _combined(pad_index, causal=True, extra=0):
    def candidate(lengths, T):
        pos = torch.arange(T)
        real = pos[None, :] < torch.as_tensor(lengths)[:, None] + extra
        pad = real[:, None, None, :] if pad_index == "keys" else real[:, None, :, None]
        mask = pad.expand(len(lengths), 1, T, T)
        return mask & causal_mask(T) if causal else mask
    return candidate


def test_3_3_reference_passes():
    assert run_check("3.3", _combined("keys")).status == "passed"
    assert run_check("3.3", lambda lengths, T: causal_padding_mask(padding_mask(lengths, T))).status == "passed"


def _both_axes(lengths, T):
    return _combined("keys")(lengths, T) & _combined("queries")(lengths, T)


@pytest.mark.parametrize("candidate, phrase", [
    (lambda lengths, T: causal_mask(T).expand(len(lengths), 1, T, T), "padding keys are not masked"),
    (_combined("keys", causal=False), "causal part is missing"),
    (_combined("queries"), "query axis (rows)"),
    (_both_axes, "mask padded *keys* (columns)"),
    (_combined("keys", extra=1), "off by one in the lengths"),
    (lambda lengths, T: _combined("keys")(lengths, T)[:, 0], "lacks the head dim"),
    (lambda lengths, T: _combined("keys")(lengths, T).float(), "dtype is torch.float32"),
    (lambda lengths, T: _combined("keys")(lengths, T).transpose(-1, -2), "upper- instead of lower"),
], ids=["no-padding", "no-causal", "rows-not-columns", "rows-and-columns", "length-off-by-one",
        "no-head-dim", "float-dtype", "transposed"])
def test_3_3_rejects_usual_mistakes(candidate, phrase):
    _assert_fails("3.3", candidate, phrase)


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


def test_3_4_reference_passes():
    assert run_check("3.4", _detector(0)).status == "passed"


@pytest.mark.parametrize("candidate, phrase", [
    (_detector(1), "but it is causal"),                                         # compares position t too
    (_detector(0, positions=lambda T: [T - 1]), "missed a model"),              # only the last token
    (_detector(0, positions=lambda T: range(2, T)), "leaks only at position 0"),
    (_detector(0, perturb=lambda x, t: torch.zeros_like(x[:, t])), "missed a model"),  # may not change
    (lambda model, x: False, "missed a model"),
    (lambda model, x: True, "but it is causal"),
    (lambda model, x: "no", "return True or False"),
], ids=["compares-position-t", "only-last-token", "skips-early-positions", "zero-perturbation",
        "always-false", "always-true", "not-a-bool"])
def test_3_4_rejects_usual_mistakes(candidate, phrase):
    _assert_fails("3.4", candidate, phrase)


def test_3_4_one_step_detector_misses_two_step_leak():
    @torch.no_grad()
    def one_step(model, x):   # only asks: does the output at t depend on x[t + 1]?
        ref = model(x)
        for t in range(x.shape[1] - 1):
            changed = x.clone()
            changed[:, t + 1] = (x[:, t + 1] + 1) % (int(x.max()) + 1)
            if not torch.allclose(model(changed)[:, t], ref[:, t]):
                return True
        return False
    _assert_fails("3.4", one_step, "two steps ahead")
