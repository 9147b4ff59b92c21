"""Chapter 8 checks accept correct solutions and reject the usual mistakes, with hints.

Every candidate here is written in this file (none is gptlib's own component): a correct one per
exercise that passes, and for each exercise at least two plausible mistakes, each named, that the
check must reject with a hint containing the given phrase.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlib.exercises import run_check
from gptlib.lora import LoRALinear  # the adapters the merge candidates below recognise
from gptlib.masking import padding_mask
from gptlib.model import IGNORE_INDEX
from gptlib.sampling import generate

I = IGNORE_INDEX


# ------------------------------------------------------------------ 8.1 right padding
def _rows(texts, tokenizer, max_len):
    return [tokenizer.encode(t)[:max_len] for t in texts]


def encode_ok(texts, tokenizer, max_len, pad_id=0):
    rows = _rows(texts, tokenizer, max_len)
    T = max(map(len, rows))
    return (torch.tensor([r + [pad_id] * (T - len(r)) for r in rows]),
            padding_mask([len(r) for r in rows], T))


def encode_to_max_len(texts, tokenizer, max_len, pad_id=0):
    rows = _rows(texts, tokenizer, max_len)
    return (torch.tensor([r + [pad_id] * (max_len - len(r)) for r in rows]),
            padding_mask([len(r) for r in rows], max_len))


def encode_left_padded(texts, tokenizer, max_len, pad_id=0):
    rows = _rows(texts, tokenizer, max_len)
    T = max(map(len, rows))
    return (torch.tensor([[pad_id] * (T - len(r)) + r for r in rows]),
            padding_mask([len(r) for r in rows], T))


def encode_pads_with_zero(texts, tokenizer, max_len, pad_id=0):
    return encode_ok(texts, tokenizer, max_len, pad_id=0)


def encode_inverted_mask(texts, tokenizer, max_len, pad_id=0):
    ids, mask = encode_ok(texts, tokenizer, max_len, pad_id)
    return ids, ~mask


# ------------------------------------------------------------------ 8.2 last real token
def pool_ref(hidden, mask):
    return hidden[torch.arange(hidden.size(0)), mask.long().sum(1) - 1]


def pool_last_position(hidden, mask):
    return hidden[:, -1]


def pool_off_by_one(hidden, mask):
    idx = mask.long().sum(1).clamp(max=hidden.size(1) - 1)
    return hidden[torch.arange(hidden.size(0)), idx]


def pool_mean_instead(hidden, mask):
    m = mask.float()[..., None]
    return (hidden * m).sum(1) / m.sum(1)


def pool_todo(hidden, mask):
    raise NotImplementedError


# ------------------------------------------------------------------ 8.3 mean pool
def mean_ok(hidden, mask):
    w = mask.to(hidden.dtype)[..., None]
    return (hidden * w).sum(1) / w.sum(1)


def mean_over_padding(hidden, mask):
    return hidden.mean(1)


def mean_divides_by_T(hidden, mask):
    return (hidden * mask.to(hidden.dtype)[..., None]).sum(1) / hidden.size(1)


def mean_forgets_to_divide(hidden, mask):
    return (hidden * mask.to(hidden.dtype)[..., None]).sum(1)


# ------------------------------------------------------------------ 8.4 LM targets
def targets_ok(ids, mask):
    out = torch.full_like(ids, I)
    out[:, :-1] = ids[:, 1:].masked_fill(~mask[:, 1:].bool(), I)
    return out


def targets_learn_padding(ids, mask):
    out = torch.full_like(ids, I)
    out[:, :-1] = ids[:, 1:]
    return out


def targets_mask_of_this_position(ids, mask):
    out = torch.full_like(ids, I)
    out[:, :-1] = ids[:, 1:].masked_fill(~mask[:, :-1].bool(), I)
    return out


def targets_not_shifted(ids, mask):
    return ids.masked_fill(~mask.bool(), I)


# ------------------------------------------------------------------ 8.5 classifier
class ClassifierOk(nn.Module):
    def __init__(self, backbone, n_classes, pooling="last"):
        super().__init__()
        self.backbone, self.pooling = backbone, pooling
        self.head = nn.Linear(backbone.config.n_embd, n_classes)

    def pool(self, hidden, mask):
        return (pool_ref if self.pooling == "last" else mean_ok)(hidden, mask)

    def lm_loss(self, hidden, ids, mask):
        logits = self.backbone.lm_head(hidden)
        return F.cross_entropy(logits.flatten(0, 1), targets_ok(ids, mask).flatten(),
                               ignore_index=I)

    def forward(self, ids, mask, labels=None, lm_lambda=0.0):
        hidden = self.backbone.hidden_states(ids)
        logits = self.head(self.pool(hidden, mask))
        if labels is None:
            return logits, None
        loss = F.cross_entropy(logits, labels)
        if lm_lambda:
            loss = loss + lm_lambda * self.lm_loss(hidden, ids, mask)
        return logits, loss


class ClassifierLastPosition(ClassifierOk):
    def pool(self, hidden, mask):
        return hidden[:, -1]


class ClassifierAlwaysLastToken(ClassifierOk):
    def pool(self, hidden, mask):
        return pool_ref(hidden, mask)


class ClassifierIgnoresLambda(ClassifierOk):
    def forward(self, ids, mask, labels=None, lm_lambda=0.0):
        return super().forward(ids, mask, labels, lm_lambda=1.0 if lm_lambda else 0.0)


class ClassifierNoAuxLoss(ClassifierOk):
    def forward(self, ids, mask, labels=None, lm_lambda=0.0):
        return super().forward(ids, mask, labels, lm_lambda=0.0)


class ClassifierLMLearnsPadding(ClassifierOk):
    def lm_loss(self, hidden, ids, mask):
        logits = self.backbone.lm_head(hidden)[:, :-1]
        return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


class ClassifierHeadOnVocabulary(ClassifierOk):
    def __init__(self, backbone, n_classes, pooling="last"):
        super().__init__(backbone, n_classes, pooling)
        self.head = nn.Linear(backbone.config.vocab_size, n_classes)


# ------------------------------------------------------------------ 8.6 freezing
def _set(clf, keep):
    for name, p in clf.named_parameters():
        p.requires_grad_(keep(name))
    return sum(p.numel() for p in clf.parameters() if p.requires_grad)


def _top(clf, n_top):
    n = len(clf.backbone.transformer.h)
    return tuple(f"backbone.transformer.h.{i}." for i in range(n - n_top, n))


def trainable_ok(clf, mode, n_top=1):
    top = _top(clf, n_top)
    return _set(clf, lambda n: mode == "full" or n.startswith("head.")
                or (mode == "lora" and ".lora_" in n)
                or (mode == "top" and (n.startswith(top) or n.startswith("backbone.transformer.ln_f."))))


def trainable_top_without_ln_f(clf, mode, n_top=1):
    top = _top(clf, n_top)
    return _set(clf, lambda n: mode == "full" or n.startswith("head.")
                or (mode == "lora" and ".lora_" in n) or (mode == "top" and n.startswith(top)))


def trainable_first_blocks(clf, mode, n_top=1):
    first = tuple(f"backbone.transformer.h.{i}." for i in range(n_top))
    return _set(clf, lambda n: mode == "full" or n.startswith("head.")
                or (mode == "lora" and ".lora_" in n)
                or (mode == "top" and (n.startswith(first) or n.startswith("backbone.transformer.ln_f."))))


def trainable_only_switches_on(clf, mode, n_top=1):
    top = _top(clf, n_top)
    for n, p in clf.named_parameters():
        if (mode == "full" or n.startswith("head.") or (mode == "lora" and ".lora_" in n)
                or (mode == "top" and (n.startswith(top) or n.startswith("backbone.transformer.ln_f.")))):
            p.requires_grad_(True)
    return sum(p.numel() for p in clf.parameters() if p.requires_grad)


def trainable_lora_without_head(clf, mode, n_top=1):
    if mode == "lora":
        return _set(clf, lambda n: ".lora_" in n)
    return trainable_ok(clf, mode, n_top)


# ------------------------------------------------------------------ 8.7 confusion matrix
def confusion_ok(labels, preds, n_classes):
    return torch.bincount(labels * n_classes + preds, minlength=n_classes ** 2).view(n_classes, n_classes)


def confusion_transposed(labels, preds, n_classes):
    return confusion_ok(labels, preds, n_classes).T


def confusion_without_accumulate(labels, preds, n_classes):
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long)
    cm[labels, preds] += 1
    return cm


def confusion_sized_by_max_label(labels, preds, n_classes):
    n = int(max(labels.max(), preds.max())) + 1
    return confusion_ok(labels, preds, n)


# ------------------------------------------------------------------ 8.8 loss masking
def mask_ref(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], [I] * (len(prompt) - 1) + seq[len(prompt):]


def mask_response_instead(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], seq[1:len(prompt)] + [I] * len(response)


def mask_nothing(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], seq[1:]


def mask_one_too_many(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], [I] * len(prompt) + seq[len(prompt) + 1:]


# ------------------------------------------------------------------ 8.9 collate SFT rows
def _collate(rows, pad_id, target_pad, left=False):
    T = max(len(x) for x, _ in rows)
    def pad(seq, value):
        return [value] * (T - len(seq)) + seq if left else seq + [value] * (T - len(seq))
    return (torch.tensor([pad(x, pad_id) for x, _ in rows]),
            torch.tensor([pad(y, target_pad) for _, y in rows]))


def collate_ok(rows, pad_id=0):
    return _collate(rows, pad_id, I)


def collate_targets_padded_with_pad_id(rows, pad_id=0):
    return _collate(rows, pad_id, pad_id)


def collate_left_padded(rows, pad_id=0):
    return _collate(rows, pad_id, I, left=True)


def collate_ignores_pad_id(rows, pad_id=0):
    return _collate(rows, 0, I)


# ------------------------------------------------------------------ 8.10 greedy answers
def _alone(model, tokenizer, prompt, max_new_tokens, stop):
    ids = torch.tensor([tokenizer.encode(prompt)])
    out = generate(model, ids, max_new_tokens, temperature=0)
    text = tokenizer.decode(out[0, ids.size(1):].tolist())
    return text.split(stop)[0] if stop else text


def answers_one_by_one(model, tokenizer, prompts, max_new_tokens=20, stop="\n", batch_size=64):
    return [_alone(model, tokenizer, p, max_new_tokens, stop) for p in prompts]


def answers_grouped_order(model, tokenizer, prompts, max_new_tokens=20, stop="\n", batch_size=64):
    order = sorted(range(len(prompts)), key=lambda i: len(tokenizer.encode(prompts[i])))
    return [_alone(model, tokenizer, prompts[i], max_new_tokens, stop) for i in order]


def answers_not_cut(model, tokenizer, prompts, max_new_tokens=20, stop="\n", batch_size=64):
    return [_alone(model, tokenizer, p, max_new_tokens, "") for p in prompts]


def answers_with_prompt(model, tokenizer, prompts, max_new_tokens=20, stop="\n", batch_size=64):
    return [p + _alone(model, tokenizer, p, max_new_tokens, stop) for p in prompts]


def answers_right_padded(model, tokenizer, prompts, max_new_tokens=20, stop="\n", batch_size=64):
    rows = [tokenizer.encode(p) for p in prompts]
    T = max(map(len, rows))
    out = generate(model, torch.tensor([r + [0] * (T - len(r)) for r in rows]), max_new_tokens,
                   temperature=0)
    texts = [tokenizer.decode(o[T:].tolist()) for o in out]
    return [t.split(stop)[0] if stop else t for t in texts]


# ------------------------------------------------------------------ 8.11 LoRA linear
class LoRARef(nn.Module):
    def __init__(self, base, r=4, alpha=8.0, scale=True, zero_b=True):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scaling = alpha / r if scale is True else (scale if scale else 1.0)
        w = base.weight
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features, dtype=w.dtype) * 0.1)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=w.dtype) if zero_b
                                   else torch.randn(base.out_features, r, dtype=w.dtype) * 0.1)
        self.merged = False

    @property
    def delta_weight(self):
        return self.scaling * self.lora_B @ self.lora_A

    def forward(self, x):
        y = self.base(x)
        return y if self.merged else y + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)

    @torch.no_grad()
    def merge(self):
        self.base.weight += self.delta_weight
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        self.base.weight -= self.delta_weight
        self.merged = False


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


class LoRAForwardIgnoresMerged(LoRARef):
    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)


class LoRAMergeUnscaled(LoRARef):
    @torch.no_grad()
    def merge(self):
        self.base.weight += self.lora_B @ self.lora_A
        self.merged = True


class LoRAFloat32Only(LoRARef):
    def __init__(self, base, r=4, alpha=8.0):
        super().__init__(base, r, alpha)
        self.lora_A = nn.Parameter(self.lora_A.detach().float())
        self.lora_B = nn.Parameter(self.lora_B.detach().float())


# ------------------------------------------------------------------ 8.12 apply LoRA
def _wrap(model, targets, r, alpha, freeze_first=True, full_names=True, first_only=False):
    if freeze_first:
        for p in model.parameters():
            p.requires_grad_(False)
    found = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRARef(child, r, alpha))
                found.append(f"{name}.{child_name}" if full_names else child_name)
                if first_only:
                    break
    return found


def apply_ok(model, targets=("c_attn", "c_proj", "c_fc"), r=4, alpha=8.0, dropout=0.0):
    return _wrap(model, targets, r, alpha)


def apply_freezes_after_wrapping(model, targets=("c_attn", "c_proj", "c_fc"), r=4, alpha=8.0,
                                 dropout=0.0):
    found = _wrap(model, targets, r, alpha, freeze_first=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return found


def apply_never_freezes(model, targets=("c_attn", "c_proj", "c_fc"), r=4, alpha=8.0, dropout=0.0):
    return _wrap(model, targets, r, alpha, freeze_first=False)


def apply_one_per_module(model, targets=("c_attn", "c_proj", "c_fc"), r=4, alpha=8.0, dropout=0.0):
    return _wrap(model, targets, r, alpha, first_only=True)


def apply_short_names(model, targets=("c_attn", "c_proj", "c_fc"), r=4, alpha=8.0, dropout=0.0):
    return _wrap(model, targets, r, alpha, full_names=False)


# ------------------------------------------------------------------ 8.13 merge LoRA
def _unwrap(model, merge=True, unfreeze=True):
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                if merge and not child.merged:
                    child.merge()
                if unfreeze:
                    for p in child.base.parameters():
                        p.requires_grad_(True)
                setattr(module, child_name, child.base)
    return model


def merge_ok(model):
    return _unwrap(model)


def merge_forgets_the_update(model):
    return _unwrap(model, merge=False)


def merge_leaves_weights_frozen(model):
    return _unwrap(model, unfreeze=False)


def merge_in_place_only(model):
    for m in model.modules():
        if isinstance(m, LoRALinear) and not m.merged:
            m.merge()
    return model


# ------------------------------------------------------------------ 8.14 rank experiment
def fit_ok(lora_cls, r, W0, delta, steps=300, lr=0.02):
    base = nn.Linear(W0.shape[1], W0.shape[0], bias=False)
    with torch.no_grad():
        base.weight.copy_(W0)
    layer = lora_cls(base, r=r, alpha=r)
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=lr)
    target = W0 + delta
    for _ in range(steps):
        x = torch.randn(64, W0.shape[1])
        loss = F.mse_loss(layer(x), x @ target.T)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(256, W0.shape[1])
    with torch.no_grad():
        return F.mse_loss(layer(x), x @ target.T).item()


def fit_too_few_steps(lora_cls, r, W0, delta):
    return fit_ok(lora_cls, r, W0, delta, steps=5)


def fit_teacher_without_delta(lora_cls, r, W0, delta):
    return fit_ok(lora_cls, r, W0, torch.zeros_like(delta))


def fit_returns_a_tensor(lora_cls, r, W0, delta):
    return torch.tensor(fit_ok(lora_cls, r, W0, delta))


# ------------------------------------------------------------------ the table
PASSING = [("8.1", encode_ok), ("8.2", pool_ref), ("8.3", mean_ok), ("8.4", targets_ok),
           ("8.5", ClassifierOk), ("8.6", trainable_ok), ("8.7", confusion_ok), ("8.8", mask_ref),
           ("8.9", collate_ok), ("8.10", answers_one_by_one), ("8.11", LoRARef),
           ("8.12", apply_ok), ("8.13", merge_ok), ("8.14", fit_ok)]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("8.1", encode_to_max_len, "not max_len"),
    ("8.1", encode_left_padded, "left padding"),
    ("8.1", encode_pads_with_zero, "must hold pad_id"),
    ("8.1", encode_inverted_mask, "True on each row's real tokens"),
    ("8.2", pool_last_position, "padding"),
    ("8.2", pool_off_by_one, "off by one"),
    ("8.2", pool_mean_instead, "mean pool"),
    ("8.3", mean_over_padding, "padding entered the mean"),
    ("8.3", mean_divides_by_T, "divided by T"),
    ("8.3", mean_forgets_to_divide, "sum over the real tokens"),
    ("8.4", targets_learn_padding, "must be IGNORE_INDEX, not a padding token"),
    ("8.4", targets_mask_of_this_position, "mask of the NEXT position"),
    ("8.4", targets_not_shifted, "the NEXT token"),
    ("8.5", ClassifierLastPosition, "which is padding"),
    ("8.5", ClassifierAlwaysLastToken, "POOLING[self.pooling]"),
    ("8.5", ClassifierIgnoresLambda, "added unscaled"),
    ("8.5", ClassifierNoAuxLoss, "adds nothing to the loss"),
    ("8.5", ClassifierLMLearnsPadding, "learns the padding"),
    ("8.5", ClassifierHeadOnVocabulary, "nn.Linear(8, 3)"),
    ("8.6", trainable_top_without_ln_f, "final LayerNorm"),
    ("8.6", trainable_first_blocks, "the LAST n_top blocks"),
    ("8.6", trainable_only_switches_on, "even one a previous call switched on"),
    ("8.6", trainable_lora_without_head, "the new head must train too"),
    ("8.7", confusion_transposed, "swapped"),
    ("8.7", confusion_without_accumulate, "count once"),
    ("8.7", confusion_sized_by_max_label, "even when a class never occurs"),
    ("8.8", mask_response_instead, "masked the response"),
    ("8.8", mask_nothing, "nothing is masked"),
    ("8.8", mask_one_too_many, "first response token"),
    ("8.9", collate_targets_padded_with_pad_id, "must be IGNORE_INDEX"),
    ("8.9", collate_left_padded, "right padding"),
    ("8.9", collate_ignores_pad_id, "must hold pad_id (40)"),
    ("8.10", answers_grouped_order, "wrong order"),
    ("8.10", answers_not_cut, "cut each answer at the first stop"),
    ("8.10", answers_with_prompt, "repeat their prompts"),
    ("8.10", answers_right_padded, "batch only prompts of the same length"),
    ("8.11", LoRANoScaling, "forgot the scaling"),
    ("8.11", LoRAInverseScaling, "upside down"),
    ("8.11", LoRARandomB, "initialise lora_B to zero"),
    ("8.11", LoRAUnfrozenBase, "freeze the base"),
    ("8.11", LoRAZeroA, "lora_A is all zeros"),
    ("8.11", LoRAForwardIgnoresMerged, "counted twice"),
    ("8.11", LoRAMergeUnscaled, "merge() adds delta_weight"),
    ("8.11", LoRAFloat32Only, "base weight's dtype"),
    ("8.12", apply_freezes_after_wrapping, "nothing trains, not even the adapters"),
    ("8.12", apply_never_freezes, "must be frozen"),
    ("8.12", apply_one_per_module, "still a plain nn.Linear"),
    ("8.12", apply_short_names, "full names"),
    ("8.13", merge_forgets_the_update, "computes something else"),
    ("8.13", merge_leaves_weights_frozen, "trainable again"),
    ("8.13", merge_in_place_only, "replaced by its base"),
    ("8.14", fit_too_few_steps, "train longer"),
    ("8.14", fit_teacher_without_delta, "cannot express a change"),
    ("8.14", fit_returns_a_tensor, "as a float"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING, ids=[c.__name__ for _, c in PASSING])
def test_reference_passes(exercise_id, candidate):
    result = run_check(exercise_id, candidate)
    assert result.status == "passed", result.message


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING,
                         ids=[c.__name__ for _, c, _ in FAILING])
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_every_exercise_rejects_at_least_two_mistakes():
    from gptlib.exercises import registry
    ids = [e for e in registry() if e.startswith("8.")]
    assert ids == [e for e, _ in PASSING]
    for e in ids:
        assert sum(row[0] == e for row in FAILING) >= 2, e


def test_unfinished_exercise_is_not_done():
    assert run_check("8.2", pool_todo).status == "not done"
