"""Chapter 3 checks: each reference passes and each typical mistake is rejected with its hint."""
import pytest
import torch
import torch.nn.functional as F

from gptlib.exercises import run_check
from gptlib.masking import (apply_mask, causal_mask, causal_padding_mask, future_influence, leaks_future,
                            masked_softmax, padding_mask, prefix_shuffle_change)
from gptlib.runtime import positive_int


# ---------------------------------------------------------------- 3.1 the causal mask
def _tri(diagonal, upper=False, dtype=torch.bool):
    def candidate(T, device=None):
        positive_int("T", T)
        ones = torch.ones(T, T, dtype=dtype, device=device)
        return ones.triu(diagonal) if upper else ones.tril(diagonal)
    return candidate


def _arange_mask(T, device=None):
    positive_int("T", T)
    pos = torch.arange(T, device=device)
    return pos[None, :] <= pos[:, None]


def _ignores_device(T, device=None):
    return torch.ones(T, T, dtype=torch.bool).tril()


# ---------------------------------------------------------------- 3.2 apply_mask
def _fill(value, where="disallowed"):
    def candidate(scores, mask):
        return scores.masked_fill(~mask if where == "disallowed" else mask, value)
    return candidate


def _apply_in_place(scores, mask):
    return scores.masked_fill_(~mask, float("-inf"))


def _apply_then_softmax(scores, mask):
    return F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


def _apply_by_addition(scores, mask):   # an additive mask: 0 where allowed, -inf elsewhere
    return scores + torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))


# ---------------------------------------------------------------- 3.3 masked_softmax
def _softmax_of(fill, after=None, dim=-1, empty_rows=None, finite_first=False):
    """softmax over `dim` of scores filled with `fill` where masked; `after` post-processes."""
    def candidate(scores, mask):
        masked = scores.masked_fill(~mask, fill)
        empty = ~mask.any(dim=-1, keepdim=True)
        if finite_first:
            masked = masked.masked_fill(empty, 0.0)
        w = F.softmax(masked, dim=dim)
        if after == "zero-masked":
            w = w.masked_fill(~mask, 0.0)
        elif after == "nan-to-num":
            w = w.nan_to_num(0.0)
        if empty_rows == "zero":
            w = w.masked_fill(empty, 0.0)
        return w
    return candidate


def _renorm(scores, mask):      # softmax, zero the masked keys, renormalise: right, if roundabout
    w = F.softmax(scores, dim=-1) * mask
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(1e-30), torch.zeros_like(w))


def _softmax_in_place(scores, mask):
    empty = ~mask.any(dim=-1, keepdim=True)
    masked = scores.masked_fill_(~mask, float("-inf")).masked_fill(empty, 0.0)
    return F.softmax(masked, dim=-1).masked_fill(empty, 0.0)


def _scaled(scores, mask):
    return masked_softmax(scores / 2, mask)


# ---------------------------------------------------------------- 3.5 leak detector
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


@torch.no_grad()
def _influence(perturb=lambda x, s: (x[:, s] + 1) % (int(x.max()) + 1), transpose=False, upper_only=False):
    """A future_influence with one knob per mistake."""
    def future_influence(model, x):
        ref, T = model(x), x.shape[1]
        out = torch.zeros(T, T)
        for s in range(T):
            changed = x.clone()
            changed[:, s] = perturb(x, s)
            diff = (model(changed) - ref).abs()
            out[:, s] = diff.transpose(0, 1).reshape(T, -1).amax(1)
        if upper_only:
            out = out.triu(1)
        return out.T if transpose else out
    return future_influence


# ---------------------------------------------------------------- 3.6 padding_mask
def _pad(right=lambda pos, L, T: pos[None, :] < L[:, None],
         left=lambda pos, L, T: pos[None, :] >= (T - L)[:, None], dtype=None):
    def candidate(lengths=None, T=None, *, attention_mask=None, side="right", device=None):
        if attention_mask is not None:
            return attention_mask.to(device=device or attention_mask.device, dtype=torch.bool)
        L = torch.as_tensor(lengths)
        pos = torch.arange(T)
        out = (right if side == "right" else left)(pos, L, T)
        return out if dtype is None else out.to(dtype)
    return candidate


def _pad_loop(guard_zero=True):
    """A Python loop over the batch; without `guard_zero`, left padding slices out[b, -n:] with n = 0."""
    def candidate(lengths=None, T=None, *, attention_mask=None, side="right", device=None):
        if attention_mask is not None:
            return attention_mask.to(device=device or attention_mask.device, dtype=torch.bool)
        out = torch.zeros(len(lengths), T, dtype=torch.bool)
        for b, n in enumerate(torch.as_tensor(lengths).tolist()):
            if side == "right":
                out[b, :n] = True
            elif n or not guard_zero:
                out[b, -n:] = True           # -0 is 0: a length-0 sequence becomes all real
        return out
    return candidate


def _pad_attention(cast=True, invert=False, use_device=True):
    """Right for lengths; the attention_mask path keeps the ints, inverts, or ignores `device`."""
    def candidate(lengths=None, T=None, *, attention_mask=None, side="right", device=None):
        if attention_mask is None:
            return _pad()(lengths, T, side=side)
        out = attention_mask == 0 if invert else attention_mask
        out = out.bool() if cast else out
        return out.to(device) if use_device and device is not None else out
    return candidate


# ---------------------------------------------------------------- 3.7 causal + padding
def _combined(axes=("keys",), causal=True, checked=True):
    def candidate(pad):
        if checked and (pad.dtype != torch.bool or pad.dim() != 2):
            raise ValueError("pad must be a (B, T) bool tensor")
        B, T = pad.shape
        mask = torch.ones(B, 1, T, T, dtype=torch.bool)
        if "keys" in axes:
            mask = mask & pad[:, None, None, :]
        if "queries" in axes:
            mask = mask & pad[:, None, :, None]
        return mask & causal_mask(T) if causal else mask
    return candidate


def _unchecked_length(T, device=None):
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


# ---------------------------------------------------------------- 3.9 prefix shuffle
def _shuffle(keep_last=True, last_only=True, shuffled=True, reduce="max"):
    @torch.no_grad()
    def candidate(model, x, generator=None):
        T = x.shape[1]
        n = T - 1 if keep_last else T
        order = torch.randperm(n, generator=generator) if shuffled else torch.arange(n)
        other = torch.cat([x[:, order], x[:, n:]], dim=1)
        moved = (model(other) - model(x)).abs()
        moved = moved[:, -1] if last_only else moved
        return float(moved.max() if reduce == "max" else moved.mean())
    return candidate


# ---------------------------------------------------------------- 3.8 attention offset
def _offset(sign=1, reduce="sum"):
    def candidate(weights):
        T = weights.shape[-1]
        pos = torch.arange(T, dtype=weights.dtype)
        off = sign * (pos[None, :] - pos[:, None])
        if reduce == "sum":
            return (weights * off).sum(-1)
        if reduce == "mean":
            return (weights * off).mean(-1)
        return off.expand_as(weights).sum(-1)          # unweighted
    return candidate


def _argmax_offset(weights):
    T = weights.shape[-1]
    return (weights.argmax(-1) - torch.arange(T)).to(weights.dtype)


# ---------------------------------------------------------------- the table
PASSING = [  # (exercise, candidate); the id names it
    pytest.param("3.1", causal_mask, id="3.1-library"),
    pytest.param("3.1", _tri(0), id="3.1-reference"),
    pytest.param("3.1", _arange_mask, id="3.1-compare-positions"),
    pytest.param("3.2", apply_mask, id="3.2-library"),
    pytest.param("3.2", _fill(float("-inf")), id="3.2-reference"),
    pytest.param("3.2", _apply_by_addition, id="3.2-additive-mask"),
    pytest.param("3.3", masked_softmax, id="3.3-library"),
    pytest.param("3.3", _softmax_of(float("-inf"), finite_first=True, empty_rows="zero"), id="3.3-reference"),
    pytest.param("3.3", _renorm, id="3.3-renormalise-after-softmax"),
    pytest.param("3.3", _softmax_of(float("-inf"), after="nan-to-num"), id="3.3-nan-to-num"),
    pytest.param("3.4", future_influence, id="3.4-library"),
    pytest.param("3.4", _influence(), id="3.4-reference"),
    pytest.param("3.5", leaks_future, id="3.5-library"),
    pytest.param("3.5", _detector(0), id="3.5-reference"),
    pytest.param("3.6", padding_mask, id="3.6-library"),
    pytest.param("3.6", _pad(), id="3.6-reference"),
    pytest.param("3.6", _pad_loop(), id="3.6-python-loop"),
    pytest.param("3.7", causal_padding_mask, id="3.7-library"),
    pytest.param("3.7", _combined(), id="3.7-reference"),
    pytest.param("3.8", _offset(), id="3.8-reference"),
    pytest.param("3.9", prefix_shuffle_change, id="3.9-library"),
    pytest.param("3.9", _shuffle(), id="3.9-reference"),
]

FAILING = [  # (exercise, candidate, a phrase its hint must contain); the id names the mistake
    pytest.param("3.1", _tri(-1), "diagonal is excluded", id="3.1-diagonal-excluded"),
    pytest.param("3.1", _unchecked_length, "was accepted", id="3.1-zero-length-accepted"),
    pytest.param("3.7", _combined(checked=False), "was not rejected", id="3.7-int-mask-accepted"),
    pytest.param("3.9", _shuffle(keep_last=False), "Keep the last token in place", id="3.9-last-token-shuffled"),
    pytest.param("3.9", _shuffle(last_only=False), "last position only", id="3.9-every-position-compared"),
    pytest.param("3.9", _shuffle(shuffled=False), "was not shuffled", id="3.9-not-shuffled"),
    pytest.param("3.9", _shuffle(reduce="mean"), "largest absolute change", id="3.9-mean-not-max"),
    pytest.param("3.1", _tri(1), "off by one", id="3.1-one-future-token"),
    pytest.param("3.1", _tri(0, upper=True), "upper- instead of lower-triangular", id="3.1-upper-triangular"),
    pytest.param("3.1", _tri(1, upper=True), "True on the future", id="3.1-inverted"),
    pytest.param("3.1", lambda T, device=None: torch.ones(T, T, dtype=torch.bool), "nothing is masked",
                 id="3.1-no-mask"),
    pytest.param("3.1", _tri(0, dtype=torch.float32), "dtype is torch.float32", id="3.1-float-dtype"),
    pytest.param("3.1", lambda T, device=None: torch.zeros(T, T).masked_fill(~causal_mask(T), float("-inf")),
                 "bool tensor", id="3.1-additive-mask"),
    pytest.param("3.1", lambda T, device=None: causal_mask(T + 1), "must have shape", id="3.1-wrong-shape"),
    pytest.param("3.1", lambda T, device=None: causal_mask(T).tolist(), "return a torch tensor",
                 id="3.1-not-a-tensor"),
    pytest.param("3.1", _ignores_device, "create the mask on `device`", id="3.1-ignores-device"),
    pytest.param("3.2", _fill(0.0), "filled with 0 instead of -inf", id="3.2-fill-zero"),
    pytest.param("3.2", _fill(-1e4), "exactly -inf", id="3.2-finite-fill"),
    pytest.param("3.2", _fill(float("-inf"), where="allowed"), "hid the allowed positions", id="3.2-inverted"),
    pytest.param("3.2", _apply_in_place, "in place", id="3.2-in-place"),
    pytest.param("3.2", _apply_then_softmax, "you returned weights", id="3.2-returns-weights"),
    pytest.param("3.2", lambda s, m: s.masked_fill(~m, float("-inf"))[..., :-1], "scores' shape",
                 id="3.2-wrong-shape"),
    pytest.param("3.3", _softmax_of(0.0), "filled with 0 instead of -inf", id="3.3-fill-zero"),
    pytest.param("3.3", _softmax_of(float("-inf"), finite_first=True, empty_rows="zero", dim=-2),
                 "wrong axis", id="3.3-softmax-over-queries"),
    pytest.param("3.3", lambda s, m: F.softmax(s, dim=-1).masked_fill(~m, 0.0), "applied after the softmax",
                 id="3.3-mask-after-softmax"),
    pytest.param("3.3", lambda s, m: F.softmax(s, dim=-1), "nothing is masked", id="3.3-no-mask"),
    pytest.param("3.3", _softmax_of(float("-inf")), "allows no key at all", id="3.3-nan-on-empty-rows"),
    pytest.param("3.3", _softmax_of(float("-inf"), finite_first=True), "uniform", id="3.3-uniform-empty-rows"),
    pytest.param("3.3", _softmax_in_place, "in place", id="3.3-in-place"),
    pytest.param("3.3", _scaled, "did you scale", id="3.3-scaled"),
    pytest.param("3.3", lambda s, m: masked_softmax(s, m)[..., :-1], "scores' shape", id="3.3-wrong-shape"),
    pytest.param("3.4", _influence(transpose=True), "transposed", id="3.4-transposed"),
    pytest.param("3.4", _influence(perturb=lambda x, s: torch.zeros_like(x[:, s])), "changing token 1 moved nothing",
                 id="3.4-zero-perturbation"),
    pytest.param("3.4", _influence(upper_only=True), "only the entries above the diagonal",
                 id="3.4-upper-triangle-only"),
    pytest.param("3.4", lambda model, x: -_influence()(model, x), "absolute difference", id="3.4-negated"),
    pytest.param("3.4", lambda model, x: _influence()(model, x)[:-1], "(7, 7)", id="3.4-wrong-shape"),
    pytest.param("3.5", _detector(1), "but it is causal", id="3.5-compares-position-t"),
    pytest.param("3.5", _detector(0, positions=lambda T: [T - 1]), "missed a model", id="3.5-only-last-token"),
    pytest.param("3.5", _detector(0, positions=lambda T: range(2, T)), "leaks only at position 0",
                 id="3.5-skips-early-positions"),
    pytest.param("3.5", _detector(0, perturb=lambda x, t: torch.zeros_like(x[:, t])), "missed a model",
                 id="3.5-zero-perturbation"),                                # may not change the token
    pytest.param("3.5", lambda model, x: False, "missed a model", id="3.5-always-false"),
    pytest.param("3.5", lambda model, x: True, "but it is causal", id="3.5-always-true"),
    pytest.param("3.5", lambda model, x: "no", "return True or False", id="3.5-not-a-bool"),
    pytest.param("3.5", _one_step, "two steps ahead", id="3.5-one-step-misses-two-step-leak"),
    pytest.param("3.6", _pad(left=lambda pos, L, T: pos[None, :] < L[:, None]), "you padded on the right",
                 id="3.6-ignores-side"),
    pytest.param("3.6", _pad(right=lambda pos, L, T: pos[None, :] >= (T - L)[:, None]), "padded on the left",
                 id="3.6-right-is-left"),
    pytest.param("3.6", _pad(right=lambda pos, L, T: pos[None, :] <= L[:, None]), "off by one",
                 id="3.6-right-off-by-one"),
    pytest.param("3.6", _pad(left=lambda pos, L, T: pos[None, :] > (T - L - 1)[:, None] - 1), "off by one",
                 id="3.6-left-off-by-one"),
    pytest.param("3.6", _pad(right=lambda pos, L, T: pos[None, :] >= L[:, None]), "True at padding",
                 id="3.6-inverted"),
    pytest.param("3.6", _pad_loop(guard_zero=False), "row 0 should be", id="3.6-negative-slice-length-0"),
    pytest.param("3.6", _pad(dtype=torch.long), "dtype is torch.int64", id="3.6-long-dtype"),
    pytest.param("3.6", lambda lengths=None, T=None, **kw: _pad()(lengths, T, **kw).T, "return shape",
                 id="3.6-transposed"),
    pytest.param("3.6", _pad_attention(cast=False), "as a bool tensor", id="3.6-attention-mask-kept-int"),
    pytest.param("3.6", _pad_attention(invert=True), "as a bool tensor", id="3.6-attention-mask-inverted"),
    pytest.param("3.6", _pad_attention(use_device=False), "on `device`", id="3.6-attention-mask-ignores-device"),
    pytest.param("3.7", lambda pad: causal_mask(pad.shape[1]).expand(pad.shape[0], 1, *pad.shape[1:] * 2),
                 "padding keys are not masked", id="3.7-no-padding"),
    pytest.param("3.7", _combined(causal=False), "causal part is missing", id="3.7-no-causal"),
    pytest.param("3.7", _combined(("queries",)), "query axis (rows)", id="3.7-rows-not-columns"),
    pytest.param("3.7", _combined(("keys", "queries")), "query axis (rows)", id="3.7-rows-and-columns"),
    pytest.param("3.7", lambda pad: _combined()(pad)[:, 0], "lacks the head dim", id="3.7-no-head-dim"),
    pytest.param("3.7", lambda pad: _combined()(pad).float(), "dtype is torch.float32", id="3.7-float-dtype"),
    pytest.param("3.7", lambda pad: _combined()(pad).transpose(-1, -2), "upper- instead of lower",
                 id="3.7-transposed"),
    pytest.param("3.8", _offset(sign=-1), "sign is flipped", id="3.8-sign-flipped"),
    pytest.param("3.8", _offset(reduce="mean"), "must give offset +1", id="3.8-mean-not-sum"),
    pytest.param("3.8", _offset(reduce="unweighted"), "offset +1", id="3.8-unweighted"),
    pytest.param("3.8", _argmax_offset, "do not average", id="3.8-argmax"),
    pytest.param("3.8", lambda w: _offset()(w)[..., None], "one offset per query", id="3.8-wrong-shape"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING)
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING)
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


@pytest.mark.parametrize("exercise_id", ["3.1", "3.2", "3.3", "3.5", "3.6", "3.7", "3.8", "3.9"])
def test_unsolved_exercises_report_not_done(exercise_id):
    def todo(*args, **kwargs):
        raise NotImplementedError
    assert run_check(exercise_id, todo).status == "not done"
