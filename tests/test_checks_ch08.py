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


# ------------------------------------------------------------------ 8.5 right padding
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


# ------------------------------------------------------------------ 8.6 last real token
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


# ------------------------------------------------------------------ 8.7 mean pool
def mean_ok(hidden, mask):
    w = mask.to(hidden.dtype)[..., None]
    return (hidden * w).sum(1) / w.sum(1)


def mean_over_padding(hidden, mask):
    return hidden.mean(1)


def mean_divides_by_T(hidden, mask):
    return (hidden * mask.to(hidden.dtype)[..., None]).sum(1) / hidden.size(1)


def mean_forgets_to_divide(hidden, mask):
    return (hidden * mask.to(hidden.dtype)[..., None]).sum(1)


# ------------------------------------------------------------------ 8.8 LM targets
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


# ------------------------------------------------------------------ 8.9 classifier
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


# ------------------------------------------------------------------ 8.10 freezing
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


# ------------------------------------------------------------------ 8.13 confusion matrix
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


# ------------------------------------------------------------------ 8.15 loss masking
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


# ------------------------------------------------------------------ 8.16 collate SFT rows
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


# ------------------------------------------------------------------ 8.18 greedy answers
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


# ------------------------------------------------------------------ 8.19 LoRA linear
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


# ------------------------------------------------------------------ 8.20 apply LoRA
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


# ------------------------------------------------------------------ 8.21 merge LoRA
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


# ------------------------------------------------------------------ 8.22 rank experiment
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


# ------------------------------------------------------------------ 8.1 speeches
from gptlib import forgery as _forgery  # provided pieces the candidates below reuse
from gptlib.forgery import Speech


def _speeches(text, lead=True, sep=2, colon=False, keep_all=False):
    out, pos = [], 0
    for block in text.split("\n\n"):
        start = pos + ((len(block) - len(block.lstrip("\n"))) if lead else 0)
        pos += len(block) + sep
        head, _, body = block.strip("\n").partition("\n")
        if keep_all or (head.endswith(":") and body.strip()):
            out.append(Speech(head if colon else head[:-1], body.strip(), start))
    return out


def _speech_candidate(name, **mistake):
    def split_speeches(text):
        return _speeches(text, **mistake)
    split_speeches.__name__ = name
    return split_speeches


speeches_ok = _speech_candidate("speeches_ok")
speeches_forget_leading_newlines = _speech_candidate("speeches_forget_leading_newlines", lead=False)
speeches_forget_the_separator = _speech_candidate("speeches_forget_the_separator", sep=0)
speeches_keep_the_colon = _speech_candidate("speeches_keep_the_colon", colon=True)
speeches_keep_stage_directions = _speech_candidate("speeches_keep_stage_directions", keep_all=True)


# ------------------------------------------------------------------ 8.2 passage
def passage_ok(text, max_chars):
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    cut = flat.rfind(" ", 0, max_chars + 1)
    return flat[:cut if cut > 0 else max_chars]


def passage_cuts_words(text, max_chars):
    return " ".join(text.split())[:max_chars]


def passage_drops_an_exact_fit(text, max_chars):
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    cut = flat.rfind(" ", 0, max_chars)
    return flat[:cut if cut > 0 else max_chars]


def passage_keeps_newlines(text, max_chars):
    flat = " ".join(w for w in text.strip().split(" ") if w)  # splits at spaces only
    if len(flat) <= max_chars:
        return flat
    cut = flat.rfind(" ", 0, max_chars + 1)
    return flat[:cut if cut > 0 else max_chars]


# ------------------------------------------------------------------ 8.3 forgeries
def _corrupt_with(**swap):
    table = {"genuine": lambda t, g: t, "shuffled words": _forgery._shuffle_words,
             "scrambled letters": _forgery._scramble_letters,
             "random letters": _forgery._random_letters}
    table.update(swap)
    return lambda text, kind, generator: table[kind](text, generator)


corrupt_ok = _corrupt_with()
corrupt_ok.__name__ = "corrupt_ok"


def _shuffle_all(text, g):
    words = text.split(" ")
    return " ".join(words[i] for i in torch.randperm(len(words), generator=g).tolist())


def _scramble_whole_words(text, g):
    return " ".join("".join(w[i] for i in torch.randperm(len(w), generator=g).tolist())
                    if len(w) >= 4 and w.isalpha() else w for w in text.split(" "))


def _scramble_once(text, g):  # no second draw when the permutation leaves the word as it was
    def scramble(w):
        inner = torch.randperm(len(w) - 2, generator=g).tolist()
        return w[0] + "".join(w[1:-1][i] for i in inner) + w[-1]
    return " ".join(scramble(w) if len(w) >= 4 and w.isalpha() else w for w in text.split(" "))


def _random_letters_inserted(text, g):
    return "".join(c + ("x" if c.islower() and torch.rand(1, generator=g).item() < 0.2 else "")
                   for c in text)


def _random_letters_everywhere(text, g):
    return "".join("abcdefghijklmnopqrstuvwxyz"[torch.randint(26, (1,), generator=g).item()]
                   if torch.rand(1, generator=g).item() < 0.2 else c for c in text)


def _shuffle_global_rng(text, g):
    words = text.split(" ")
    inner = [words[1:-1][i] for i in torch.randperm(len(words) - 2).tolist()]
    return " ".join([words[0]] + inner + [words[-1]])


corrupt_unchanged = _corrupt_with(**{k: (lambda t, g: t) for k in
                                     ("shuffled words", "scrambled letters", "random letters")})
corrupt_shuffles_all_words = _corrupt_with(**{"shuffled words": _shuffle_all})
corrupt_scrambles_whole_words = _corrupt_with(**{"scrambled letters": _scramble_whole_words})
corrupt_scrambles_once = _corrupt_with(**{"scrambled letters": _scramble_once})
corrupt_changes_the_length = _corrupt_with(**{"random letters": _random_letters_inserted})
corrupt_touches_capitals = _corrupt_with(**{"random letters": _random_letters_everywhere})
corrupt_global_rng = _corrupt_with(**{"shuffled words": _shuffle_global_rng})
for _name in ("corrupt_unchanged", "corrupt_shuffles_all_words", "corrupt_scrambles_whole_words",
              "corrupt_scrambles_once", "corrupt_changes_the_length", "corrupt_touches_capitals",
              "corrupt_global_rng"):
    globals()[_name].__name__ = _name


# ------------------------------------------------------------------ 8.4 the split
def _task(text, val_fraction=0.1, n_train_per_class=32, max_chars=64, min_words=6, n_test=None,
          seed=0, held_if=None, pretrain_all=False, filter_words=True, cut_side=False):
    cut = int(len(text) * (val_fraction if cut_side else 1.0 - val_fraction))
    speeches = [s for s in _forgery.split_speeches(text)
                if not filter_words or len(_forgery.passage(s.text, max_chars).split()) >= min_words]
    seen = [s for s in speeches if s.start + len(s.text) < cut]
    held = [s for s in speeches if (held_if or (lambda s: s.start >= cut))(s)]
    g = torch.Generator().manual_seed(seed)
    pick = sorted(torch.randperm(len(seen), generator=g)[:4 * n_train_per_class].tolist())
    train = _forgery._examples([seen[i] for i in pick], max_chars, g)
    test = _forgery._examples(held[:n_test] if n_test else held, max_chars, g)
    return _forgery.ForgeryTask(text if pretrain_all else text[:cut], train, test)


def task_ok(text, **kw):
    return _task(text, **kw)


def task_straddling_speech_held_out(text, **kw):
    cut = int(len(text) * (1.0 - kw["val_fraction"]))
    return _task(text, held_if=lambda s: s.start + len(s.text) >= cut, **kw)


def task_pretrains_on_everything(text, **kw):
    return _task(text, pretrain_all=True, **kw)


def task_cut_on_the_wrong_side(text, **kw):
    return _task(text, cut_side=True, **kw)


def task_keeps_short_passages(text, **kw):
    return _task(text, filter_words=False, **kw)


# ------------------------------------------------------------------ 8.11 the batch loss
def _train_then_eval(model, config, batch_loss, progress):
    from gptlib.training import train
    history = train(model, None, None, config, batch_loss=batch_loss, progress=progress)
    model.eval()
    return history


def _train_clf(sample="queue", pass_lambda=True, trim=True, use_generator=True):
    def train_classifier(clf, data, config, lm_lambda=0.0, progress=False):
        order = []

        def batch_loss(net, generator, device):
            nonlocal order
            gen = generator if use_generator else None
            if sample == "replacement":
                index = torch.randint(len(data), (config.batch_size,), generator=gen)
            elif sample == "fresh":
                index = torch.randperm(len(data), generator=gen)[:config.batch_size]
            else:
                if len(order) < config.batch_size:
                    order = order + torch.randperm(len(data), generator=gen).tolist()
                index, order = torch.tensor(order[:config.batch_size]), order[config.batch_size:]
            if trim:
                ids, mask, labels = data.batch(index, device)
            else:
                ids, mask, labels = data.ids[index], data.attention_mask[index], data.labels[index]
            return net(ids, mask, labels, lm_lambda=lm_lambda if pass_lambda else 0.0)[1]

        return _train_then_eval(clf, config, batch_loss, progress)
    return train_classifier


train_clf_ok = _train_clf()
train_clf_with_replacement = _train_clf(sample="replacement")
train_clf_fresh_permutation_each_step = _train_clf(sample="fresh")
train_clf_drops_lm_lambda = _train_clf(pass_lambda=False)
train_clf_untrimmed = _train_clf(trim=False)
train_clf_global_rng = _train_clf(use_generator=False)
for _name in ("train_clf_ok", "train_clf_with_replacement", "train_clf_fresh_permutation_each_step",
              "train_clf_drops_lm_lambda", "train_clf_untrimmed", "train_clf_global_rng"):
    globals()[_name].__name__ = _name


# ------------------------------------------------------------------ 8.12 predict
def _predict(last_batch=True, evaluate=True, dim=-1):
    @torch.no_grad()
    def predict(clf, data, batch_size=64):
        if evaluate:
            clf.eval()
        stop = len(data) if last_batch else len(data) - len(data) % batch_size
        preds = []
        for i in range(0, stop, batch_size):
            ids, mask, _ = data.batch(torch.arange(i, min(i + batch_size, len(data))))
            logits = clf(ids, mask)[0]
            preds.append(logits.argmax(dim=-1) if dim == -1 else logits.max(dim=-1).values)
        return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    return predict


predict_ok = _predict()
predict_drops_the_last_batch = _predict(last_batch=False)
predict_in_train_mode = _predict(evaluate=False)
predict_returns_the_top_logit = _predict(dim=0)
for _name in ("predict_ok", "predict_drops_the_last_batch", "predict_in_train_mode",
              "predict_returns_the_top_logit"):
    globals()[_name].__name__ = _name


# ------------------------------------------------------------------ 8.14 one run
def _run(copy_backbone=True, merge=True, lora_first=True, seed_first=True):
    import copy as _copy
    import time as _time
    from gptlib.classify import GPTClassifier, accuracy, set_trainable, train_classifier
    from gptlib.lora import apply_lora, merge_lora

    def finetune_run(name, backbone, mode, train, test, config, lm_lambda=0.0, lora=None,
                     n_top=1, pooling="mean"):
        if seed_first:
            torch.manual_seed(config.seed)
        model = _copy.deepcopy(backbone) if copy_backbone else backbone
        n_classes = int(train.labels.max()) + 1
        if lora is not None and lora_first:
            apply_lora(model, **lora)
        clf = GPTClassifier(model, n_classes, pooling)
        trainable = set_trainable(clf, mode if lora_first or lora is None else "top", n_top=n_top)
        if lora is not None and not lora_first:
            apply_lora(model, **lora)
            set_trainable(clf, "lora")
        total = sum(p.numel() for p in clf.parameters())
        t0 = _time.perf_counter()
        history = train_classifier(clf, train, config, lm_lambda=lm_lambda)
        if lora is not None and merge:
            merge_lora(clf.backbone)
        row = {"run": name, "accuracy": accuracy(clf, test), "trainable": trainable,
               "trainable_fraction": trainable / total, "seconds": _time.perf_counter() - t0}
        return row, clf, history
    return finetune_run


run_ok = _run()
run_trains_the_backbone_itself = _run(copy_backbone=False)
run_keeps_the_adapters = _run(merge=False)
run_counts_before_the_adapters = _run(lora_first=False)
run_unseeded_head = _run(seed_first=False)
for _name in ("run_ok", "run_trains_the_backbone_itself", "run_keeps_the_adapters",
              "run_counts_before_the_adapters", "run_unseeded_head"):
    globals()[_name].__name__ = _name


# ------------------------------------------------------------------ 8.17 train_sft
def _sft(targets="masked", draw="random", use_generator=True):
    from gptlib.instruct import mask_prompt, pad_rows

    def train_sft(model, pairs, tokenizer, config, progress=False):
        rows = [mask_prompt(tokenizer.encode(p), tokenizer.encode(r)) for p, r in pairs]
        if targets == "unmasked":
            rows = [(x, (tokenizer.encode(p) + tokenizer.encode(r))[1:]) for (x, _), (p, r)
                    in zip(rows, pairs)]

        def batch_loss(net, generator, device):
            if draw == "first":
                index = list(range(config.batch_size))
            else:
                index = torch.randint(len(rows), (config.batch_size,),
                                      generator=generator if use_generator else None).tolist()
            ids, tgt = pad_rows([rows[i] for i in index])
            return net(ids.to(device), (ids if targets == "inputs" else tgt).to(device))[1]

        return _train_then_eval(model, config, batch_loss, progress)
    return train_sft


sft_ok = _sft()
sft_learns_the_prompt = _sft(targets="unmasked")
sft_targets_are_the_inputs = _sft(targets="inputs")
sft_same_rows_every_step = _sft(draw="first")
sft_global_rng = _sft(use_generator=False)
for _name in ("sft_ok", "sft_learns_the_prompt", "sft_targets_are_the_inputs",
              "sft_same_rows_every_step", "sft_global_rng"):
    globals()[_name].__name__ = _name


# ------------------------------------------------------------------ 8.23 GPT-1's pair input
def _pair_ids(special_tokens):
    return (special_tokens[t] for t in ("<|start|>", "<|delim|>", "<|classify|>"))


def pair_ok(a_ids, b_ids, special_tokens, max_len):
    start, delim, classify = _pair_ids(special_tokens)
    budget = max_len - 3
    n_a = min(len(a_ids), max(budget // 2, budget - len(b_ids)))
    return [start, *a_ids[:n_a], delim, *b_ids[:budget - n_a], classify]


def pair_without_delimiter(a_ids, b_ids, special_tokens, max_len):
    start, _, classify = _pair_ids(special_tokens)
    return [start, *a_ids, *b_ids, classify][:max_len - 1] + [classify]


def pair_order_swapped(a_ids, b_ids, special_tokens, max_len):
    return pair_ok(b_ids, a_ids, special_tokens, max_len)


def pair_classify_first(a_ids, b_ids, special_tokens, max_len):
    ids = pair_ok(a_ids, b_ids, special_tokens, max_len)
    return [ids[-1]] + ids[:-1]


def pair_cut_after_building(a_ids, b_ids, special_tokens, max_len):
    start, delim, classify = _pair_ids(special_tokens)
    return [start, *a_ids, delim, *b_ids, classify][:max_len]


def pair_halves_only(a_ids, b_ids, special_tokens, max_len):
    start, delim, classify = _pair_ids(special_tokens)
    half = (max_len - 3) // 2
    return [start, *a_ids[:half], delim, *b_ids[:half], classify]


# ------------------------------------------------------------------ 8.24 new tokens
def add_tokens_ok(model, names):
    from dataclasses import replace

    from gptlib.embeddings import TokenEmbedding
    old = model.transformer.wte
    n = old.num_embeddings
    wte = TokenEmbedding(n + len(names), old.embedding_dim)
    with torch.no_grad():
        wte.weight[:n] = old.weight
    model.transformer.wte = wte
    model.lm_head.weight = wte.weight
    model.lm_head.out_features = n + len(names)
    model.config = replace(model.config, vocab_size=n + len(names))
    return {name: n + k for k, name in enumerate(names)}


def add_tokens_untied(model, names):
    ids = add_tokens_ok(model, names)
    model.lm_head = nn.Linear(model.config.n_embd, model.config.vocab_size, bias=False)
    return ids


def add_tokens_redraws_everything(model, names):
    ids = add_tokens_ok(model, names)
    with torch.no_grad():
        model.transformer.wte.weight.normal_(0.0, 0.02)
    return ids


def add_tokens_mutates_config(model, names):
    config = model.config
    ids = add_tokens_ok(model, names)
    config.vocab_size = model.config.vocab_size      # the shared object changed in place
    model.config = config
    return ids


def add_tokens_ids_from_zero(model, names):
    add_tokens_ok(model, names)
    return {name: k for k, name in enumerate(names)}


def add_tokens_zero_rows(model, names):
    ids = add_tokens_ok(model, names)
    with torch.no_grad():
        model.transformer.wte.weight[min(ids.values()):] = 0.0
    return ids


# ------------------------------------------------------------------ the table
PASSING = [("8.1", speeches_ok), ("8.2", passage_ok), ("8.3", corrupt_ok), ("8.4", task_ok),
           ("8.5", encode_ok), ("8.6", pool_ref), ("8.7", mean_ok), ("8.8", targets_ok),
           ("8.9", ClassifierOk), ("8.10", trainable_ok), ("8.11", train_clf_ok), ("8.12", predict_ok),
           ("8.13", confusion_ok), ("8.14", run_ok), ("8.15", mask_ref),
           ("8.16", collate_ok), ("8.17", sft_ok), ("8.18", answers_one_by_one), ("8.19", LoRARef),
           ("8.20", apply_ok), ("8.21", merge_ok), ("8.22", fit_ok), ("8.23", pair_ok),
           ("8.24", add_tokens_ok)]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("8.1", speeches_forget_leading_newlines, "newlines a block"),
    ("8.1", speeches_forget_the_separator, "count the separators"),
    ("8.1", speeches_keep_the_colon, "without its colon"),
    ("8.1", speeches_keep_stage_directions, "stage direction"),
    ("8.2", passage_cuts_words, "never inside it"),
    ("8.2", passage_drops_an_exact_fit, "ends exactly at max_chars"),
    ("8.2", passage_keeps_newlines, "one space"),
    ("8.3", corrupt_unchanged, "unchanged"),
    ("8.3", corrupt_shuffles_all_words, "first and last words stay"),
    ("8.3", corrupt_scrambles_whole_words, "first and last letters"),
    ("8.3", corrupt_scrambles_once, "again while it is unchanged"),
    ("8.3", corrupt_changes_the_length, "changed the passage's length"),
    ("8.3", corrupt_touches_capitals, "lowercase letters only"),
    ("8.3", corrupt_global_rng, "generator g you are given"),
    ("8.4", task_straddling_speech_held_out, "pretraining read it"),
    ("8.4", task_pretrains_on_everything, "training split"),
    ("8.4", task_cut_on_the_wrong_side, "training split"),
    ("8.4", task_keeps_short_passages, "min_words"),
    ("8.5", encode_to_max_len, "not max_len"),
    ("8.5", encode_left_padded, "left padding"),
    ("8.5", encode_pads_with_zero, "must hold pad_id"),
    ("8.5", encode_inverted_mask, "True on each row's real tokens"),
    ("8.6", pool_last_position, "padding"),
    ("8.6", pool_off_by_one, "off by one"),
    ("8.6", pool_mean_instead, "mean pool"),
    ("8.7", mean_over_padding, "padding entered the mean"),
    ("8.7", mean_divides_by_T, "divided by T"),
    ("8.7", mean_forgets_to_divide, "sum over the real tokens"),
    ("8.8", targets_learn_padding, "must be IGNORE_INDEX, not a padding token"),
    ("8.8", targets_mask_of_this_position, "mask of the NEXT position"),
    ("8.8", targets_not_shifted, "the NEXT token"),
    ("8.9", ClassifierLastPosition, "which is padding"),
    ("8.9", ClassifierAlwaysLastToken, "POOLING[self.pooling]"),
    ("8.9", ClassifierIgnoresLambda, "added unscaled"),
    ("8.9", ClassifierNoAuxLoss, "adds nothing to the loss"),
    ("8.9", ClassifierLMLearnsPadding, "learns the padding"),
    ("8.9", ClassifierHeadOnVocabulary, "nn.Linear(8, 3)"),
    ("8.10", trainable_top_without_ln_f, "final LayerNorm"),
    ("8.10", trainable_first_blocks, "the LAST n_top blocks"),
    ("8.10", trainable_only_switches_on, "even one a previous call switched on"),
    ("8.10", trainable_lora_without_head, "the new head must train too"),
    ("8.11", train_clf_with_replacement, "came twice"),
    ("8.11", train_clf_fresh_permutation_each_step, "came twice"),
    ("8.11", train_clf_drops_lm_lambda, "pass lm_lambda on"),
    ("8.11", train_clf_untrimmed, "data.batch"),
    ("8.11", train_clf_global_rng, "generator train gives you"),
    ("8.12", predict_drops_the_last_batch, "last batch may be shorter"),
    ("8.12", predict_in_train_mode, "eval mode"),
    ("8.12", predict_returns_the_top_logit, "argmax"),
    ("8.13", confusion_transposed, "swapped"),
    ("8.13", confusion_without_accumulate, "count once"),
    ("8.13", confusion_sized_by_max_label, "even when a class never occurs"),
    ("8.14", run_trains_the_backbone_itself, "deep copy"),
    ("8.14", run_keeps_the_adapters, "merge"),
    ("8.14", run_counts_before_the_adapters, "add the adapters before"),
    ("8.14", run_unseeded_head, "seed torch with"),
    ("8.15", mask_response_instead, "masked the response"),
    ("8.15", mask_nothing, "nothing is masked"),
    ("8.15", mask_one_too_many, "first response token"),
    ("8.16", collate_targets_padded_with_pad_id, "must be IGNORE_INDEX"),
    ("8.16", collate_left_padded, "right padding"),
    ("8.16", collate_ignores_pad_id, "must hold pad_id (40)"),
    ("8.17", sft_learns_the_prompt, "mask_prompt"),
    ("8.17", sft_targets_are_the_inputs, "the next token"),
    ("8.17", sft_same_rows_every_step, "at random"),
    ("8.17", sft_global_rng, "generator train gives you"),
    ("8.18", answers_grouped_order, "wrong order"),
    ("8.18", answers_not_cut, "cut each answer at the first stop"),
    ("8.18", answers_with_prompt, "repeat their prompts"),
    ("8.18", answers_right_padded, "batch only prompts of the same length"),
    ("8.19", LoRANoScaling, "forgot the scaling"),
    ("8.19", LoRAInverseScaling, "upside down"),
    ("8.19", LoRARandomB, "initialise lora_B to zero"),
    ("8.19", LoRAUnfrozenBase, "freeze the base"),
    ("8.19", LoRAZeroA, "lora_A is all zeros"),
    ("8.19", LoRAForwardIgnoresMerged, "counted twice"),
    ("8.19", LoRAMergeUnscaled, "merge() adds delta_weight"),
    ("8.19", LoRAFloat32Only, "base weight's dtype"),
    ("8.20", apply_freezes_after_wrapping, "nothing trains, not even the adapters"),
    ("8.20", apply_never_freezes, "must be frozen"),
    ("8.20", apply_one_per_module, "still a plain nn.Linear"),
    ("8.20", apply_short_names, "full names"),
    ("8.21", merge_forgets_the_update, "computes something else"),
    ("8.21", merge_leaves_weights_frozen, "trainable again"),
    ("8.21", merge_in_place_only, "replaced by its base"),
    ("8.22", fit_too_few_steps, "train longer"),
    ("8.22", fit_teacher_without_delta, "cannot express a change"),
    ("8.22", fit_returns_a_tensor, "as a float"),
    ("8.23", pair_without_delimiter, "delimiter id"),
    ("8.23", pair_order_swapped, "a comes before"),
    ("8.23", pair_classify_first, "must be the last id"),
    ("8.23", pair_cut_after_building, "never the special tokens"),
    ("8.23", pair_halves_only, "more when b is short"),
    ("8.24", add_tokens_untied, "stay tied"),
    ("8.24", add_tokens_redraws_everything, "old rows must be kept"),
    ("8.24", add_tokens_ids_from_zero, "after the old"),
    ("8.24", add_tokens_mutates_config, "dataclasses.replace"),
    ("8.24", add_tokens_zero_rows, "not zeros"),
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
    assert run_check("8.6", pool_todo).status == "not done"


def _todo(*args, **kwargs):
    raise NotImplementedError


@pytest.mark.parametrize("exercise_id", ["8.1", "8.2", "8.3", "8.4", "8.11", "8.12", "8.14", "8.17", "8.23", "8.24"])
def test_new_exercises_not_done(exercise_id):
    assert run_check(exercise_id, _todo).status == "not done"
