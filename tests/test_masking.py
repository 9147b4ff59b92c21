"""gptlib.masking: the causal mask, applying masks, padding masks and the fully-masked-row rule."""
import pytest
import torch
import torch.nn.functional as F

from gptlib.masking import apply_mask, causal_mask, causal_padding_mask, masked_softmax, padding_mask


# ---------------------------------------------------------------- causal_mask
@pytest.mark.parametrize("T", [1, 2, 5, 16])
def test_causal_mask_is_lower_triangle_with_diagonal(T):
    m = causal_mask(T)
    assert m.dtype == torch.bool and m.shape == (T, T)
    for i in range(T):
        for j in range(T):
            assert bool(m[i, j]) == (j <= i)


def test_causal_mask_device():
    assert causal_mask(3, device="cpu").device.type == "cpu"
    assert causal_mask(3, device=torch.device("cpu")).device.type == "cpu"


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4", None])
def test_causal_mask_rejects_bad_length(bad):
    with pytest.raises(ValueError, match="T must be a positive int"):
        causal_mask(bad)


# ---------------------------------------------------------------- apply_mask
def test_apply_mask_sets_disallowed_to_minus_inf_and_keeps_the_rest():
    scores = torch.randn(4, 4)
    out = apply_mask(scores, causal_mask(4))
    future = ~causal_mask(4)
    assert torch.isneginf(out[future]).all()
    assert torch.equal(out[~future], scores[~future])


def test_apply_mask_does_not_modify_its_input():
    scores = torch.randn(3, 3)
    before = scores.clone()
    apply_mask(scores, causal_mask(3))
    assert torch.equal(scores, before)


@pytest.mark.parametrize("mask_shape", [(5, 5), (1, 5, 5), (1, 1, 5, 5), (2, 1, 5, 5), (2, 3, 5, 5)])
def test_apply_mask_broadcasts_over_batch_and_heads(mask_shape):
    scores = torch.randn(2, 3, 5, 5)
    mask = causal_mask(5).expand(mask_shape).clone()
    out = apply_mask(scores, mask)
    assert out.shape == scores.shape
    assert torch.equal(out, apply_mask(scores, causal_mask(5)))


@pytest.mark.parametrize("scores_shape, mask_shape, phrase", [
    ((2, 4, 4), (5, 5), "last two dims"),
    ((2, 4, 5), (4, 4), "last two dims"),
    ((2, 3, 4, 4), (3, 1, 4, 4), "does not broadcast"),
    ((4, 4), (2, 4, 4), "does not broadcast"),
    ((4,), (4, 4), "at least 2 dims"),
])
def test_apply_mask_rejects_shapes_that_do_not_fit(scores_shape, mask_shape, phrase):
    with pytest.raises(ValueError, match=phrase):
        apply_mask(torch.randn(scores_shape), torch.ones(mask_shape, dtype=torch.bool))


def test_apply_mask_rejects_wrong_dtypes():
    with pytest.raises(TypeError, match="bool tensor"):
        apply_mask(torch.randn(3, 3), causal_mask(3).int())
    with pytest.raises(TypeError, match="floating-point"):
        apply_mask(torch.ones(3, 3, dtype=torch.long), causal_mask(3))
    with pytest.raises(TypeError, match="must be tensors"):
        apply_mask([[1.0]], causal_mask(1))


# ---------------------------------------------------------------- masked_softmax
def test_masked_softmax_rows_sum_to_one_and_future_is_zero():
    scores = torch.randn(2, 3, 6, 6)
    w = masked_softmax(scores, causal_mask(6))
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 6))
    assert (w[..., ~causal_mask(6)] == 0).all()
    assert torch.allclose(w, F.softmax(apply_mask(scores, causal_mask(6)), dim=-1))


def test_masked_softmax_matches_torch_sdpa():
    q, k, v = torch.randn(3, 2, 2, 7, 8).unbind(0)
    w = masked_softmax(q @ k.transpose(-2, -1) / 8 ** 0.5, causal_mask(7))
    assert torch.allclose(w @ v, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5)


def test_fully_masked_rows_give_zeros_without_nan_forward_and_backward():
    pad = padding_mask([2, 4], 4, side="left")
    mask = causal_padding_mask(pad)                     # sequence 0: rows 0 and 1 allow nothing
    scores = torch.randn(2, 3, 4, 4, requires_grad=True)
    w = masked_softmax(scores, mask)
    assert not w.isnan().any()
    assert (w[0, :, :2] == 0).all()
    assert torch.allclose(w[0, :, 2:].sum(-1), torch.ones(3, 2))
    (w * torch.randn_like(w)).sum().backward()
    assert not scores.grad.isnan().any()
    assert (scores.grad[0, :, :2] == 0).all()


# ---------------------------------------------------------------- padding masks
def test_padding_mask_from_lengths_right_and_left():
    right = padding_mask([1, 3, 0], 3)
    assert right.tolist() == [[True, False, False], [True, True, True], [False, False, False]]
    left = padding_mask(torch.tensor([1, 3, 0]), 3, side="left")
    assert left.tolist() == [[False, False, True], [True, True, True], [False, False, False]]
    assert right.dtype == left.dtype == torch.bool


def test_padding_mask_from_attention_mask():
    am = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert torch.equal(padding_mask(attention_mask=am), am.bool())
    assert torch.equal(padding_mask(attention_mask=[[1, 0]]), torch.tensor([[True, False]]))
    assert torch.equal(padding_mask(attention_mask=am.bool()), am.bool())


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(), "exactly one"),
    (dict(lengths=[1], T=2, attention_mask=torch.ones(1, 2)), "exactly one"),
    (dict(lengths=[3], T=2), "between 0 and T=2"),
    (dict(lengths=[-1], T=2), "between 0 and T=2"),
    (dict(lengths=[1.5], T=2), "1-D sequence of ints"),
    (dict(lengths=[[1]], T=2), "1-D sequence of ints"),
    (dict(lengths=[1], T=0), "T must be a positive int"),
    (dict(lengths=[1], T=None), "T must be a positive int"),
    (dict(lengths=[1], T=2, side="middle"), "side must be"),
    (dict(attention_mask=torch.ones(2, 3, 4)), r"must be \(B, T\)"),
    (dict(attention_mask=torch.tensor([[1, 2]])), "only integers 0"),
    (dict(attention_mask=torch.tensor([[1.0, 0.0]])), "only integers 0"),
])
def test_padding_mask_rejects_bad_input(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        padding_mask(**kwargs)


def test_causal_padding_mask_combines_both():
    lengths, T = [2, 4, 3], 4
    m = causal_padding_mask(padding_mask(lengths, T))
    assert m.shape == (3, 1, T, T) and m.dtype == torch.bool
    for b, n in enumerate(lengths):
        for i in range(T):
            for j in range(T):
                assert bool(m[b, 0, i, j]) == (j <= i and j < n)


def test_causal_padding_mask_feeds_apply_mask_over_heads():
    m = causal_padding_mask(padding_mask([2, 4], 4))
    out = apply_mask(torch.randn(2, 5, 4, 4), m)
    assert torch.isneginf(out[0, :, :, 2:]).all()


@pytest.mark.parametrize("bad", [torch.ones(2, 3), torch.ones(2, 3, 3, dtype=torch.bool), [[True]]])
def test_causal_padding_mask_rejects_bad_input(bad):
    with pytest.raises(ValueError, match=r"\(B, T\) bool tensor"):
        causal_padding_mask(bad)
