"""Checks for Chapter 8 (fine-tuning: a classification head, instruction tuning, LoRA).

Hand-written. The learner writes the chapter's components in the cells that export them
(``gptlib.classify``, ``gptlib.instruct``, ``gptlib.lora``); each check compares the candidate with
a small private reference written here (never with the gptlib component it builds) and with exact
properties: padding never leaks into a result, a LoRA layer with ``B = 0`` equals its base, only
``A`` and ``B`` train, merged weights give the unmerged forward. Probes use several shapes and
values, so a hard-coded size fails, and each hint names the property that broke and the input that
shows it before it names a fix. Random inputs, models and seeds come from ``case_seed``, so the
grader checks on cases the notebook never saw; the hand-picked probes stay, and each check adds
random ones after them.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlib.exercises import CheckFailed, case_seed, exercise, expect
from gptlib.masking import padding_mask
from gptlib.model import IGNORE_INDEX


def _close(a, b, atol: float = 1e-5) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-5))


def _tiny_gpt(seed: int = 0, n_layer: int = 2, vocab_size: int = 11, block_size: int = 32,
              n_embd: int = 8, std: float | None = None):
    """A small random GPT in eval mode, drawn from ``case_seed(seed)`` (under the grader: its own
    weights)."""
    from gptlib.model import GPT, GPTConfig
    torch.manual_seed(case_seed(seed))
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=2,
                          n_embd=n_embd))
    if std is not None:
        model.reset_parameters(std=std)
    return model.eval()


_WORDS = ("thou", "art", "noble", "sweet", "lord", "heaven", "night", "crown", "blood", "grace",
          "honour", "speak", "gentle", "fair", "death", "love")


def _gen(seed: int) -> torch.Generator:
    """A generator for case ``seed``: the notebook's case, or the grader's hidden one."""
    return torch.Generator().manual_seed(case_seed(seed))


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """One integer in [low, high] drawn from g."""
    return low + int(torch.randint(high - low + 1, (1,), generator=g))


def _words(k: int, g: torch.Generator) -> list[str]:
    return [_WORDS[int(j)] for j in torch.randint(len(_WORDS), (k,), generator=g)]


def _ids(low: int, high: int, n: int, g: torch.Generator) -> list[int]:
    """n token ids in [low, high), drawn from g."""
    return torch.randint(low, high, (n,), generator=g).tolist()


def _padded(lengths, T, vocab, g):
    """Random ids (B, T) whose padding holds random tokens too (so that reading it shows)."""
    return torch.randint(vocab, (len(lengths), T), generator=g), padding_mask(lengths, T)


# --------------------------------------------------------------------------- 8.1 speeches
_SPEECH_PROBES = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n",
    "\n\nKING:\nWhat news?\n\n\nQUEEN:\nNone, my lord;\nnone at all.\n\nExeunt\n\nGHOST:\n   \n\n"
    "HAMLET:\n  Words with spaces around  \n",
    "A:\nx\n\n\n\nB:\ny y\n\nC:\nlast",
]


def _random_play(seed: int, n: int = 9) -> str:
    """Case ``seed``: speeches, stage directions and empty speeches, 2 to 4 newlines apart."""
    g = _gen(seed)
    text = ""
    for i in range(n):
        kind = _randint(0, 4, g)
        if kind == 0:
            block = " ".join(_words(2, g)).capitalize()           # a stage direction
        elif kind == 1:
            block = f"SPEAKER{i}:\n" + " " * _randint(0, 2, g)     # an empty speech
        else:
            lines = [" ".join(_words(_randint(1, 5, g), g)) for _ in range(kind - 1)]
            block = f"SPEAKER{i}:\n" + "\n".join(lines)
        text += "\n" * (_randint(2, 4, g) if text else _randint(0, 2, g)) + block
    return text


def _ref_speeches(text):
    """(speaker, text, start) of every speech: a private reference for 8.1."""
    out, offset = [], 0
    for block in text.split("\n\n"):
        start = offset + len(block) - len(block.lstrip("\n"))
        offset += len(block) + len("\n\n")
        lines = block.strip("\n").split("\n", 1)
        body = lines[1].strip() if len(lines) == 2 else ""
        if lines[0].endswith(":") and body:
            out.append((lines[0][:-1], body, start))
    return out


@exercise("8.1", "Cut the corpus into speeches", builds="gptlib.forgery:split_speeches",
          tier="warm-up", difficulty=2, importance=1)
def _(split_speeches):
    for text in _SPEECH_PROBES + [_random_play(801), _random_play(811)]:
        ref = _ref_speeches(text)
        got = split_speeches(text)
        expect(isinstance(got, list), f"return a list of speeches, got {type(got).__name__}")
        try:
            got = [(s.speaker, s.text, s.start) for s in got]
        except AttributeError:
            raise CheckFailed("each speech is a Speech(speaker, text, start)") from None
        if [g[0] for g in got] != [r[0] for r in ref]:
            if [g[0].rstrip(":") for g in got] == [r[0] for r in ref]:
                raise CheckFailed("the speaker is the name without its colon ('All', not 'All:')")
            raise CheckFailed(f"in {text!r} the speeches are those of {[r[0] for r in ref]}, got "
                              f"{[g[0] for g in got]}: keep a block only when its first line ends "
                              "with ':' and the rest has words (a stage direction or an empty "
                              "speech is skipped)")
        for (speaker, body, start), (_, ref_body, ref_start) in zip(got, ref):
            expect(body == ref_body, f"the text of {speaker}'s speech in {text!r} should be "
                                     f"{ref_body!r} (the block after the speaker line, stripped), "
                                     f"got {body!r}")
            if start != ref_start:
                raise CheckFailed(f"{speaker}'s speech starts at offset {ref_start} of {text!r} "
                                  f"(text[start:] begins with {speaker + ':'!r}), got {start}: "
                                  "count the separators you split at and the newlines a block "
                                  "may begin with")


# --------------------------------------------------------------------------- 8.2 passage
def _ref_passage(text, max_chars):
    words, kept = text.split(), ""
    for w in words:
        longer = f"{kept} {w}" if kept else w
        if len(longer) > max_chars:
            break
        kept = longer
    return kept or " ".join(words)[:max_chars]


@exercise("8.2", "A passage of whole words", builds="gptlib.forgery:passage", tier="warm-up",
          difficulty=1, importance=1)
def _(passage):
    probes = [("To be, or not\nto be: that is the question", 12), ("ab cd ef", 5),
              ("  short\n  text ", 64), ("Honorificabilitudinitatibus is long", 10),
              ("one two\tthree four five", 13), ("Now is the winter of our discontent", 35)]
    g = _gen(802)
    for _ in range(4):  # hidden cases: words apart by runs of whitespace, a random budget
        words = _words(_randint(1, 8, g), g)
        text = "".join(w + " \n\t  "[_randint(0, 4, g):][:_randint(1, 2, g)] for w in words)
        probes.append((text, _randint(3, 40, g)))
    for text, max_chars in probes:
        ref = _ref_passage(text, max_chars)
        got = passage(text, max_chars)
        expect(isinstance(got, str), f"return a string, got {type(got).__name__}")
        if got == ref:
            continue
        if len(got) > max_chars:
            raise CheckFailed(f"passage({text!r}, {max_chars}) is {len(got)} characters long: "
                              f"at most max_chars={max_chars}")
        if any(c in got for c in "\n\t") or "  " in got or got != got.strip():
            raise CheckFailed(f"every run of whitespace becomes one space: for {text!r} expect "
                              f"{ref!r}, got {got!r}")
        if len(got) < len(ref) and ref.startswith(got):
            raise CheckFailed(f"passage({text!r}, {max_chars}) should keep {ref!r} "
                              f"({len(ref)} characters fit), got {got!r}: a word that ends "
                              "exactly at max_chars still fits")
        raise CheckFailed(f"passage({text!r}, {max_chars}) should be {ref!r}, got {got!r}: cut "
                          "before a word that does not fit, never inside it (unless the first "
                          "word alone is too long)")


# --------------------------------------------------------------------------- 8.3 forgeries
_FORGERY_TEXTS = [
    "Before we proceed any further, hear me speak.",
    "You are all resolved rather to die than to famish?",
    "Speak, speak. Nay, but speak not maliciously; sir, here comes Menenius.",
    "O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name;",
    "What say you to this part of the thing, good cousin?",
]


def _check_shuffle(corrupt, text, out):
    words, got = text.split(" "), out.split(" ")
    expect(len(got) == len(words) and sorted(got) == sorted(words),
           f"shuffled words must be the same words in another order: {text!r} became {out!r}")
    expect(got[0] == words[0] and got[-1] == words[-1],
           f"the first and last words stay in place (a capital or a final '?' would give the "
           f"forgery away): {text!r} became {out!r}")
    expect(out != text, f"'shuffled words' left {text!r} unchanged: draw the order again while "
                        "it is the identity")


def _check_scramble(text, out):
    for w, v in zip(text.split(" "), out.split(" ")):  # (a word left as it was may be chance)
        if len(w) < 4 or not w.isalpha():
            expect(v == w, f"only words of 4+ letters, all alphabetic, are scrambled: {w!r} "
                           f"became {v!r} (in {text!r})")
            continue
        expect(v[0] == w[0] and v[-1] == w[-1] and sorted(v) == sorted(w),
               f"a scrambled word keeps its first and last letters and its letters: {w!r} "
               f"became {v!r}")


@exercise("8.3", "Forge a passage", builds="gptlib.forgery:corrupt", tier="core", difficulty=2,
          importance=2)
def _(corrupt):
    kinds = ("genuine", "shuffled words", "scrambled letters", "random letters")
    for i, text in enumerate(_FORGERY_TEXTS):
        for kind in kinds[1:] + kinds[:1]:
            out = corrupt(text, kind, _gen(i))
            expect(isinstance(out, str), f"corrupt returns a string, got {type(out).__name__}")
            if len(out) != len(text):
                raise CheckFailed(f"{kind!r} changed the passage's length ({len(text)} -> "
                                  f"{len(out)}: {text!r} became {out!r}); a forgery keeps the "
                                  "length, or the length alone would give it away")
            torch.manual_seed(case_seed(1000 + i))  # another global state: only g may decide
            again = corrupt(text, kind, _gen(i))
            expect(again == out, f"{kind!r} of {text!r} differs between two calls with "
                                 "generators seeded alike: draw every random number from the "
                                 "generator g you are given, never from torch's global one")
            if kind == "genuine":
                expect(out == text, f"a genuine passage is returned unchanged, got {out!r}")
            elif kind == "shuffled words":
                _check_shuffle(corrupt, text, out)
            elif kind == "scrambled letters":
                _check_scramble(text, out)
            else:
                for a, b in zip(text, out):
                    expect(a == b or (a.islower() and b.islower() and b.isalpha()),
                           f"'random letters' replaces lowercase letters only, by lowercase "
                           f"letters: {a!r} became {b!r} in {out!r}")
    # A word may come back unchanged by chance (one draw in two for 'What'); many may not.
    words = "hear what part deny thou name came sure".split() * 5
    scrambled = corrupt(" ".join(words), "scrambled letters", _gen(8)).split(" ")
    same = sum(v == w for v, w in zip(scrambled, words))
    expect(same <= 3, f"'scrambled letters' left {same} of {len(words)} four-letter words as they "
                      "were: permute a word's inner letters again while it is unchanged")
    long_text = " ".join(_FORGERY_TEXTS * 8)
    lower = sum(c.islower() for c in long_text)
    changed = sum(a != b for a, b in zip(long_text, corrupt(long_text, "random letters", _gen(7))))
    rate = changed / lower
    expect(0.12 <= rate <= 0.28,
           f"'random letters' changed {100 * rate:.0f}% of the {lower} lowercase letters of a "
           "long text; about one in five is replaced (20%, less the draws of the same letter)")


# --------------------------------------------------------------------------- 8.4 the split
def _tag(i):
    """A word of letters unique to speech i (so a genuine passage can be found in the text)."""
    s = ""
    for _ in range(3):
        s, i = s + "bcdfghjklmnpqrstvwxz"[i % 20], i // 20
    return "q" + s


def _forgery_corpus(n=60):
    """(text, speeches): speeches of a few words each; every seventh one too short."""
    g = _gen(84)
    blocks = []
    for i in range(n):
        k = 2 if i % 7 == 3 else 6 + int(torch.randint(4, (1,), generator=g))
        words = [_WORDS[int(j)] for j in torch.randint(len(_WORDS), (k,), generator=g)]
        words.insert(1, _tag(i))
        blocks.append(f"SPEAKER{i % 5}:\n" + " ".join(words).capitalize() + ".")
    text = "\n\n".join(blocks) + "\n"
    return text, _ref_speeches(text)


@exercise("8.4", "A held-out split that stays held out", builds="gptlib.forgery:make_forgery_task",
          tier="core", difficulty=2, importance=3)
def _(make_forgery_task):
    text, speeches = _forgery_corpus()
    for seed, n_per, n_test, straddle in [(case_seed(0), 3, None, 45), (case_seed(1), 2, 5, 50)]:
        sp = speeches[straddle]  # the cut falls inside this speech: it is in neither split
        cut = sp[2] + 12
        vf = 1.0 - (cut + 0.5) / len(text)
        kw = dict(val_fraction=vf, n_train_per_class=n_per, max_chars=40, min_words=5,
                  n_test=n_test, seed=seed)
        task = make_forgery_task(text, **kw)
        expect(all(hasattr(task, a) for a in ("pretrain_text", "train", "test")),
               "return a ForgeryTask(pretrain_text, train, test)")
        if task.pretrain_text != text[:cut]:
            raise CheckFailed(f"pretrain_text should be the training split, text[:cut] with cut = "
                              f"int(len(text) * (1 - val_fraction)) = {cut} characters, got "
                              f"{len(task.pretrain_text)} characters")
        long_enough = [s for s in speeches if len(_ref_passage(s[1], 40).split()) >= 5]
        held = [s for s in long_enough if s[2] >= cut][:n_test]
        train_labels = [e.label for e in task.train]
        expect(len(task.train) == 4 * n_per and all(train_labels.count(c) == n_per
                                                     for c in range(4)),
               f"n_train_per_class={n_per}: {4 * n_per} training passages, {n_per} of each class; "
               f"got labels {train_labels}")
        expect([e.label for e in task.test] == [i % 4 for i in range(len(task.test))],
               f"label the speeches in turn (0, 1, 2, 3, 0, ...); the test labels are "
               f"{[e.label for e in task.test]}")
        for e in task.train + task.test:
            expect(len(e.text.split()) >= 5, f"{e.text!r} has fewer than min_words=5 words: "
                                             "keep only the speeches whose passage has enough")
        for i, e in enumerate(task.test):
            if e.label != 0:
                continue
            at = text.find(e.text)
            expect(at >= 0, f"the genuine test passage {e.text!r} is not in the text unchanged")
            if at < cut:
                raise CheckFailed(f"the test passage {e.text!r} starts at offset {at}, before the "
                                  f"cut at {cut}: pretraining read it. A held-out speech starts "
                                  "at or after the cut; one that straddles it is in neither split")
            expect(i < len(held) and e.text == _ref_passage(held[i][1], 40),
                   f"test passage {i} should come from held-out speech {i} (in corpus order"
                   + (f", the first n_test={n_test}" if n_test else "") + f"), got {e.text!r}")
        expect(len(task.test) == len(held),
               f"{len(held)} held-out speeches are long enough"
               + (f" (n_test={n_test} keeps the first ones)" if n_test else "")
               + f", so {len(held)} test passages; got {len(task.test)}")
        for e in task.train:
            if e.label == 0:
                at = text.find(e.text)
                ends = [s[2] + len(s[0]) + 2 + len(s[1]) for s in speeches if s[1].startswith(e.text)]
                expect(at >= 0 and ends and ends[0] < cut,
                       f"the training passage {e.text!r} must come from a speech that ends "
                       f"before the cut at {cut}")
        torch.manual_seed(case_seed(99) + seed)  # another global state: only seed may decide
        again = make_forgery_task(text, **kw)
        expect([(e.text, e.label) for e in again.train + again.test]
               == [(e.text, e.label) for e in task.train + task.test],
               f"two calls with seed={seed} gave different tasks: draw everything from one "
               "torch.Generator seeded with seed")
    other_seed = case_seed(7)
    other = make_forgery_task(text, **dict(kw, seed=other_seed))
    expect([e.text for e in other.train] != [e.text for e in task.train],
           f"seed={seed} and seed={other_seed} drew the same training passages: draw them at "
           "random with the seeded generator")


# --------------------------------------------------------------------------- 8.5 right padding
class _Chars:
    """A stand-in tokenizer: 'a' -> 1, 'b' -> 2, ..."""

    def encode(self, text):
        return [ord(c) - 96 for c in text]


def _ref_encode(texts, max_len, pad_id):
    rows = [[ord(c) - 96 for c in t][:max_len] for t in texts]
    T = max(len(r) for r in rows)
    ids = torch.tensor([r + [pad_id] * (T - len(r)) for r in rows], dtype=torch.long)
    return ids, padding_mask([len(r) for r in rows], T)


@exercise("8.5", "Right-pad a batch", builds="gptlib.classify:encode_batch", tier="warm-up",
          difficulty=1, importance=2)
def _(encode_batch):
    probes = [(["abc", "a", "abcdefgh", "ba"], 5, 0), (["dcb", "abcd"], 8, 30), (["e"], 3, 7),
              (["ab", "cdef", "g"], 16, 0)]
    g = _gen(805)
    for _ in range(3):  # hidden cases: random texts of a to h, a random max_len and pad_id
        texts = ["".join("abcdefgh"[j] for j in _ids(0, 8, _randint(1, 10, g), g))
                 for _ in range(_randint(1, 5, g))]
        probes.append((texts, _randint(2, 12, g), _randint(0, 40, g)))
    for texts, max_len, pad_id in probes:
        out = encode_batch(list(texts), _Chars(), max_len, pad_id=pad_id)
        expect(isinstance(out, tuple) and len(out) == 2, "return a pair (ids, attention_mask)")
        ids, mask = out
        ref_ids, ref_mask = _ref_encode(texts, max_len, pad_id)
        lengths = ref_mask.sum(1).tolist()
        expect(isinstance(ids, torch.Tensor) and ids.dtype == torch.long,
               "ids must be a torch.long tensor (token ids index an embedding)")
        expect(tuple(ids.shape) == tuple(ref_ids.shape),
               f"texts of kept lengths {lengths} (max_len={max_len}) make a batch of shape "
               f"{tuple(ref_ids.shape)}: T is the longest row, not max_len; got {tuple(ids.shape)}")
        expect(isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
               and torch.equal(mask, ref_mask),
               f"attention_mask should be True on each row's real tokens and False after them "
               f"(lengths {lengths}): padding_mask(lengths, T) builds it")
        if torch.equal(ids, ref_ids):
            continue
        left = torch.stack([torch.cat([r[m], r[~m]]).roll(int((~m).sum())) for r, m in
                            zip(ref_ids, ref_mask)])
        if torch.equal(ids, left):
            raise CheckFailed(f"the tokens sit at the end of each row (left padding); this batch "
                              f"is right-padded: row b's tokens at positions 0 .. L_b - 1, the "
                              f"padding after them (lengths {lengths})")
        if torch.equal(ids[ref_mask], ref_ids[ref_mask]):
            raise CheckFailed(f"the real tokens are right, but the padding must hold pad_id "
                              f"({pad_id}); got {ids[~ref_mask].unique().tolist()}")
        raise CheckFailed(f"for texts {texts} (max_len={max_len}) the ids should be "
                          f"{ref_ids.tolist()}, got {ids.tolist()}")


# --------------------------------------------------------------------------- 8.6 last real token
@exercise("8.6", "Pool the last real token", builds="gptlib.classify:pool_last", tier="core",
          difficulty=2, importance=3)
def _(pool_last):
    g = _gen(8)
    probes = [([3, 5, 1, 5], 5), ([2, 7, 4], 7), ([1, 1], 3), ([6], 6)]
    for lengths, T in probes:
        hidden = torch.randn(len(lengths), T, 4, generator=g)
        mask = padding_mask(lengths, T)
        ref = hidden[torch.arange(len(lengths)), torch.tensor(lengths) - 1]
        for mask_in in (mask, mask.long()):  # a bool mask and a 0/1 integer mask
            out = pool_last(hidden.clone(), mask_in.clone())
            expect(isinstance(out, torch.Tensor), f"return a tensor, got {type(out).__name__}")
            expect(out.shape == ref.shape, f"return one vector per row: shape {tuple(ref.shape)}, "
                                           f"got {tuple(out.shape)}")
            if _close(out, ref):
                continue
            if _close(out, hidden[:, -1]):
                raise CheckFailed("you took the last position, hidden[:, -1], which is padding in "
                                  f"every shorter row (lengths {lengths}, T={T}): take each row's "
                                  "last REAL token, at index attention_mask.sum(1) - 1")
            idx = torch.tensor(lengths).clamp(max=T - 1)
            if _close(out, hidden[torch.arange(len(lengths)), idx]):
                raise CheckFailed("off by one: the number of real tokens L is not an index; the "
                                  "last real token sits at index L - 1")
            if _close(out, hidden[:, 0]):
                raise CheckFailed("you took the first token; a causal model has read the whole "
                                  "text only at its last real token")
            lens = mask.sum(1, keepdim=True).float()
            if _close(out, (hidden * mask[..., None]).sum(1) / lens) or _close(out, hidden.mean(1)):
                raise CheckFailed("this is a mean pool; the exercise asks for the hidden state of "
                                  "each row's last real token")
            raise CheckFailed("the result differs from the last real token's hidden state: for "
                              "row b, take hidden[b, L_b - 1] with L_b = attention_mask[b].sum()")


# --------------------------------------------------------------------------- 8.7 mean pool
@exercise("8.7", "Mean over the real tokens", builds="gptlib.classify:pool_mean", tier="warm-up",
          difficulty=1, importance=2)
def _(pool_mean):
    g = _gen(83)
    for lengths, T in [([3, 5, 1, 5], 5), ([2, 7, 4], 7), ([1], 4), ([6, 6], 6)]:
        hidden = torch.randn(len(lengths), T, 3, generator=g) + 5.0  # padding far from zero
        mask = padding_mask(lengths, T)
        lens = torch.tensor(lengths, dtype=torch.float)[:, None]
        ref = (hidden * mask[..., None]).sum(1) / lens
        for mask_in in (mask, mask.long()):
            out = pool_mean(hidden.clone(), mask_in.clone())
            expect(isinstance(out, torch.Tensor) and out.shape == ref.shape,
                   f"return one vector per row: shape {tuple(ref.shape)}, got "
                   f"{tuple(getattr(out, 'shape', ()))}")
            if _close(out, ref):
                continue
            if _close(out, hidden.mean(1)):
                raise CheckFailed(f"the padding entered the mean (lengths {lengths}, T={T}): "
                                  "average over each row's real tokens only")
            if _close(out, ref * lens / T):
                raise CheckFailed(f"you divided by T={T}; divide each row's sum by its number of "
                                  f"real tokens ({lengths})")
            if _close(out, ref * lens):
                raise CheckFailed("this is the sum over the real tokens; divide it by their number")
            raise CheckFailed("the result differs from the mean over each row's real tokens: "
                              "sum hidden * mask over T, divide by mask.sum(1)")


# --------------------------------------------------------------------------- 8.8 LM targets
def _ref_lm_targets(ids, mask):
    out = torch.full_like(ids, IGNORE_INDEX)
    nxt = ids[:, 1:].clone()
    nxt[~mask[:, 1:].bool()] = IGNORE_INDEX
    out[:, :-1] = nxt
    return out


@exercise("8.8", "Language-model targets of a padded batch", builds="gptlib.classify:lm_targets",
          tier="warm-up", difficulty=2, importance=2)
def _(lm_targets):
    g = _gen(84)
    for lengths, T in [([4, 2, 3], 4), ([5, 1], 6), ([3], 3), ([2, 7, 5, 7], 7)]:
        ids, mask = _padded(lengths, T, 50, g)
        ref = _ref_lm_targets(ids, mask)
        for mask_in in (mask, mask.long()):
            out = lm_targets(ids.clone(), mask_in.clone())
            expect(isinstance(out, torch.Tensor) and out.shape == ids.shape,
                   f"return one target per position: shape {tuple(ids.shape)}")
            if torch.equal(out, ref):
                continue
            real = ref != IGNORE_INDEX
            if not torch.equal(out[real], ref[real]):
                raise CheckFailed(f"the target at position t is the NEXT token, ids[:, t + 1] "
                                  f"(row 0 is {ids[0].tolist()}, its targets start "
                                  f"{ref[0, :2].tolist()}); got {out[0, :2].tolist()}")
            if not bool((out[:, -1] == IGNORE_INDEX).all()):
                raise CheckFailed("the last position has no next token: its target is "
                                  "IGNORE_INDEX")
            shifted = ids.clone()
            shifted[:, :-1] = ids[:, 1:]
            b, t = next(((b, t) for b in range(len(lengths)) for t in range(T)
                         if out[b, t] != ref[b, t]))
            if lengths[b] <= t + 1 and out[b, t] == shifted[b, t]:
                raise CheckFailed(f"row {b} has {lengths[b]} real tokens, so position {t + 1} is "
                                  f"padding: the target at position {t} must be IGNORE_INDEX, "
                                  "not a padding token (look at the mask of the NEXT position)")
            raise CheckFailed(f"row {b}, position {t}: the target should be {int(ref[b, t])}, "
                              f"got {int(out[b, t])}")


# --------------------------------------------------------------------------- 8.9 classifier
def _ref_pool(hidden, mask, pooling):
    if pooling == "last":
        return hidden[torch.arange(hidden.size(0)), mask.long().sum(1) - 1]
    w = mask.to(hidden.dtype)[..., None]
    return (hidden * w).sum(1) / w.sum(1)


@exercise("8.9", "The classification head", builds="gptlib.classify:GPTClassifier", tier="core",
          difficulty=2, importance=3)
def _(classifier_cls):
    g = _gen(85)
    for seed, n_classes, pooling, lengths in [(0, 3, "last", [7, 4, 2]), (1, 5, "mean", [3, 6]),
                                              (2, 4, "last", [5, 5, 1, 3]), (3, 2, "mean", [2])]:
        backbone = _tiny_gpt(seed)
        C = backbone.config.n_embd
        clf = classifier_cls(backbone, n_classes, pooling=pooling).eval()
        head = getattr(clf, "head", None)
        expect(isinstance(head, nn.Linear) and head.in_features == C
               and head.out_features == n_classes,
               f"the head maps one pooled hidden state (n_embd={C}) to one logit per class: "
               f"nn.Linear({C}, {n_classes}), stored as self.head")
        expect(clf.backbone is backbone, "keep the backbone as self.backbone")
        ids, mask = _padded(lengths, max(lengths), backbone.config.vocab_size, g)
        labels = torch.randint(n_classes, (len(lengths),), generator=g)
        with torch.no_grad():
            hidden = backbone.hidden_states(ids)
            ref = head(_ref_pool(hidden, mask, pooling))
            out = clf(ids, mask)
        expect(isinstance(out, tuple) and len(out) == 2,
               "forward returns a pair (logits, loss)")
        logits, loss = out
        expect(loss is None, "without labels the loss is None")
        expect(isinstance(logits, torch.Tensor) and logits.shape == ref.shape,
               f"logits are (B, n_classes) = {tuple(ref.shape)}, got "
               f"{tuple(getattr(logits, 'shape', ()))}")
        if not _close(logits, ref):
            other = "mean" if pooling == "last" else "last"
            if _close(logits, head(hidden[:, -1])):
                raise CheckFailed(f"the logits come from the last position, which is padding in "
                                  f"the shorter rows (lengths {lengths}): pool with "
                                  "POOLING[self.pooling]")
            if _close(logits, head(_ref_pool(hidden, mask, other))):
                raise CheckFailed(f"this classifier was built with pooling={pooling!r}, but the "
                                  f"logits come from the {other!r} pool: use "
                                  "POOLING[self.pooling]")
            raise CheckFailed("the logits should be the head applied to the pooled hidden states "
                              "of backbone.hidden_states(ids)")
        with torch.no_grad():
            ce = F.cross_entropy(ref, labels)
            lm = F.cross_entropy(backbone.lm_head(hidden).flatten(0, 1),
                                 _ref_lm_targets(ids, mask).flatten(), ignore_index=IGNORE_INDEX)
            loss = clf(ids, mask, labels)[1]
            expect(isinstance(loss, torch.Tensor) and loss.dim() == 0,
                   "with labels the loss is a scalar tensor")
            expect(_close(loss, ce), "with labels the loss is F.cross_entropy(logits, labels)")
            for lam in (0.5, 2.0):
                aux = clf(ids, mask, labels, lm_lambda=lam)[1]
                if _close(aux, ce + lam * lm):
                    continue
                if _close(aux, ce):
                    raise CheckFailed(f"lm_lambda={lam} adds nothing to the loss: add lm_lambda "
                                      "times the backbone's language-model loss")
                if _close(aux, ce + lm):
                    raise CheckFailed(f"the LM loss is added unscaled; with lm_lambda={lam} the "
                                      "loss is task + lm_lambda * LM")
                full = F.cross_entropy(backbone.lm_head(hidden)[:, :-1].flatten(0, 1),
                                       ids[:, 1:].flatten())
                if _close(aux, ce + lam * full):
                    raise CheckFailed(f"the LM loss learns the padding too (lengths {lengths}): "
                                      "use lm_targets(ids, attention_mask), whose padding targets "
                                      "are IGNORE_INDEX, and ignore_index=IGNORE_INDEX")
                raise CheckFailed(f"with lm_lambda={lam} the loss should be cross_entropy(logits, "
                                  f"labels) + {lam} * the LM loss on lm_targets; got "
                                  f"{float(aux):.5f}, expected {float(ce + lam * lm):.5f}")


# --------------------------------------------------------------------------- 8.10 freezing
class _Adapter(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 2):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.1)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + x @ self.lora_A.T @ self.lora_B.T


class _Classifier(nn.Module):
    def __init__(self, backbone, n_classes=3):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, n_classes)


def _ref_trainable(clf, mode, n_top):
    n = len(clf.backbone.transformer.h)
    top = tuple(f"backbone.transformer.h.{i}." for i in range(n - n_top, n))
    keep = set()
    for name, _ in clf.named_parameters():
        if (mode == "full" or name.startswith("head.")
                or (mode == "lora" and ".lora_" in name)
                or (mode == "top" and (name.startswith(top)
                                       or name.startswith("backbone.transformer.ln_f.")))):
            keep.add(name)
    return keep


@exercise("8.10", "Choose what trains", builds="gptlib.classify:set_trainable", tier="core",
          difficulty=2, importance=2)
def _(set_trainable):
    clf = _Classifier(_tiny_gpt(0, n_layer=3))
    lora = _Classifier(_tiny_gpt(1, n_layer=2))
    for block in lora.backbone.transformer.h:
        block.attn.c_attn = _Adapter(block.attn.c_attn)
    g = _gen(86)
    # Each call starts from the previous one's state, with some flags flipped at random: a mode
    # must switch parameters off as well as on.
    for model, mode, n_top in [(clf, "full", 1), (clf, "head", 1), (clf, "top", 1), (clf, "top", 2),
                               (clf, "full", 1), (clf, "top", 1), (lora, "full", 1),
                               (lora, "lora", 1), (lora, "head", 1)]:
        for p in model.parameters():
            if torch.rand(1, generator=g).item() < 0.3:
                p.requires_grad_(not p.requires_grad)
        count = set_trainable(model, mode, n_top=n_top)
        got = {n for n, p in model.named_parameters() if p.requires_grad}
        ref = _ref_trainable(model, mode, n_top)
        where = f"mode={mode!r}" + (f", n_top={n_top}" if mode == "top" else "")
        missing, extra = sorted(ref - got), sorted(got - ref)
        if not got and ref:
            raise CheckFailed(f"{where}: nothing trains; the head at least must")
        if mode == "top" and any(e.startswith("backbone.transformer.h.0.") for e in extra):
            raise CheckFailed(f"{where}: block 0 trains, but 'top' means the LAST n_top blocks "
                              f"(the model has {len(model.backbone.transformer.h)})")
        if missing:
            if mode == "top" and all(m.startswith("backbone.transformer.ln_f.") for m in missing):
                raise CheckFailed(f"{where}: the final LayerNorm (transformer.ln_f) sits after "
                                  "the top block and shapes what the head sees: it trains too")
            if mode == "lora" and all(m.startswith("head.") for m in missing):
                raise CheckFailed(f"{where}: the adapters train, but the new head must train too")
            raise CheckFailed(f"{where}: these parameters should train and do not: "
                              f"{', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
        if extra:
            raise CheckFailed(f"{where}: these parameters should be frozen (requires_grad=False) "
                              f"and are not: {', '.join(extra[:3])}"
                              + (" ..." if len(extra) > 3 else "")
                              + "; every parameter the mode does not name must be switched off, "
                                "even one a previous call switched on")
        expect(count == sum(p.numel() for n, p in model.named_parameters() if n in ref),
               f"{where}: return the number of trainable parameters")


# --------------------------------------------------------------------------- 8.11 the batch loss
class _RecordingClassifier(nn.Module):
    """Stands in for a classifier: records every batch it is given, returns a real loss."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n_classes))
        self.calls = []

    def forward(self, ids, attention_mask, labels=None, lm_lambda=0.0):
        self.calls.append((ids.detach().cpu().clone(), attention_mask.detach().cpu().clone(),
                           None if labels is None else labels.detach().cpu().clone(), lm_lambda))
        logits = self.bias.expand(ids.size(0), -1) + 0.01 * ids[:, :1].float()
        return logits, (None if labels is None else F.cross_entropy(logits, labels))


def _row_data(n: int, T: int = 9, seed: int = 0):
    """A ClassificationData whose row i starts with token i + 1 (so a batch shows its rows)."""
    from gptlib.classify import ClassificationData
    g = _gen(seed)
    lengths = [1 + int(torch.randint(T - 2, (1,), generator=g)) for _ in range(n)]
    lengths[0] = T
    mask = padding_mask(lengths, T)
    ids = torch.randint(1, 30, (n, T), generator=g).masked_fill(~mask, 0)
    ids[:, 0] = torch.arange(1, n + 1)
    return ClassificationData(ids, mask, torch.arange(n) % 3)


def _cpu_config(steps, batch_size, seed=3):
    from gptlib.training import TrainConfig
    return TrainConfig(max_steps=steps, batch_size=batch_size, lr=1e-2, min_lr=1e-3,
                       warmup_steps=0, eval_interval=10_000, seed=case_seed(seed), device="cpu",
                       compile=False, precision="float32")


@exercise("8.11", "Feed the training loop", builds="gptlib.classify:train_classifier", tier="core",
          difficulty=2, importance=3)
def _(train_classifier):
    runs = []
    for n, bs, steps in [(10, 4, 5), (7, 3, 7)]:
        data = _row_data(n, seed=n)
        for global_seed in (0, 1):
            torch.manual_seed(case_seed(global_seed))  # only the run's generator may decide
            clf = _RecordingClassifier()
            train_classifier(clf, data, _cpu_config(steps, bs), lm_lambda=0.25)
            expect(len(clf.calls) == steps, f"{steps} steps should call the classifier {steps} "
                                            f"times, got {len(clf.calls)}")
            rows = []
            for ids, mask, labels, lam in clf.calls:
                expect(labels is not None, "give the labels to the classifier: it returns the loss")
                expect(ids.size(0) == bs, f"each batch holds config.batch_size={bs} rows, got "
                                          f"{ids.size(0)}")
                index = ids[:, 0] - 1
                expect(ids.size(1) == int(data.attention_mask[index].sum(1).max()),
                       "a batch is trimmed to its longest real row: take it with "
                       "data.batch(index, device)")
                expect(torch.equal(labels, data.labels[index]),
                       "the labels must be those of the batch's rows")
                expect(lam == 0.25, f"pass lm_lambda on to the classifier: train_classifier was "
                                    f"given lm_lambda=0.25, the classifier got {lam}")
                rows += index.tolist()
            for start in range(0, len(rows) - n + 1, n):
                one_pass = rows[start:start + n]
                if sorted(one_pass) != list(range(n)):
                    raise CheckFailed(f"with {n} rows and batches of {bs}, the rows drawn were "
                                      f"{rows}: row {max(set(one_pass), key=one_pass.count)} "
                                      "came twice before every row was seen once. Take rows "
                                      "from a queue refilled with a fresh permutation when it "
                                      "runs short")
            runs.append(rows)
        expect(runs[-1] == runs[-2], "two runs with the same config.seed drew different batches: "
                                     "draw the permutation with the generator train gives you")


# --------------------------------------------------------------------------- 8.12 predict
class _RuleClassifier(nn.Module):
    """Predicts (first token + number of real tokens) % n_classes; records its batches."""

    def __init__(self, n_classes: int = 3):
        super().__init__()
        self.n_classes = n_classes
        self.scale = nn.Parameter(torch.ones(()))
        self.batches = []

    def forward(self, ids, attention_mask, labels=None, lm_lambda=0.0):
        self.batches.append((ids.size(0), self.training))
        cls = (ids[:, 0] + attention_mask.long().sum(1)) % self.n_classes
        return self.scale * F.one_hot(cls, self.n_classes).float() * 3.0, None


@exercise("8.12", "Predict in batches", builds="gptlib.classify:predict", tier="warm-up",
          difficulty=1, importance=2)
def _(predict):
    for n, bs in [(11, 4), (5, 8), (9, 3)]:
        data = _row_data(n, seed=n)
        ref = (data.ids[:, 0] + data.attention_mask.sum(1)) % 3
        clf = _RuleClassifier().train()
        out = predict(clf, data, batch_size=bs)
        expect(isinstance(out, torch.Tensor), f"return a tensor of classes, got {type(out).__name__}")
        expect(out.shape == ref.shape, f"{n} rows in batches of {bs}: one class per row, shape "
                                       f"{tuple(ref.shape)}, got {tuple(out.shape)} (the last "
                                       "batch may be shorter)")
        expect(all(not training for _, training in clf.batches),
               "predict in eval mode (clf.eval()): dropout must be off")
        expect(all(size <= bs for size, _ in clf.batches),
               f"batch_size={bs}, but a batch of {max(s for s, _ in clf.batches)} rows was given")
        expect(not out.is_floating_point() and torch.equal(out.long(), ref),
               f"the prediction is the class of highest logit (argmax over the classes, dim=-1) "
               f"of each row, in order: expected {ref.tolist()}, got {out.tolist()}")


# --------------------------------------------------------------------------- 8.13 confusion matrix
@exercise("8.13", "A confusion matrix", builds="gptlib.classify:confusion_matrix", tier="warm-up",
          difficulty=1, importance=1)
def _(confusion_matrix):
    probes = [([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3),
              ([1, 1, 1, 0], [0, 0, 0, 0], 4),          # classes 2 and 3 never occur
              ([2, 0, 1, 2, 1], [2, 1, 1, 0, 1], 5)]
    g = _gen(813)
    for _ in range(3):  # hidden cases: random labels and predictions
        n, k = _randint(2, 6, g), _randint(1, 15, g)
        probes.append((_ids(0, n, k, g), _ids(0, n, k, g), n))
    for labels, preds, n in probes:
        ref = torch.zeros(n, n, dtype=torch.long)
        for y, p in zip(labels, preds):
            ref[y, p] += 1
        out = confusion_matrix(torch.tensor(labels), torch.tensor(preds), n)
        expect(isinstance(out, torch.Tensor) and tuple(out.shape) == (n, n),
               f"with n_classes={n} the matrix is ({n}, {n}), one row and one column per class "
               f"even when a class never occurs (labels {labels})")
        if torch.equal(out.long(), ref):
            expect(out.dtype == torch.long, "counts are integers: use dtype=torch.long")
            continue
        if torch.equal(out.long(), ref.T):
            raise CheckFailed(f"rows and columns are swapped: labels {labels}, predictions "
                              f"{preds}; the row is the true class, the column the prediction")
        if torch.equal(out.long(), (ref > 0).long()):
            raise CheckFailed(f"repeated pairs count once (labels {labels}, predictions {preds}): "
                              "each example must add one, e.g. index_put_ with accumulate=True")
        raise CheckFailed(f"labels {labels} and predictions {preds} give {ref.tolist()}, got "
                          f"{out.tolist()}")


# --------------------------------------------------------------------------- 8.14 one run
def _lora_params(model, r):
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.split(".")[-1] in ("c_attn", "c_proj", "c_fc"))


@exercise("8.14", "One fine-tuning run", builds="gptlib.classify:finetune_run", tier="core",
          difficulty=2, importance=2)
def _(finetune_run):
    from gptlib.classify import ClassificationData
    backbone = _tiny_gpt(seed=14, vocab_size=31)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    g = _gen(14)
    mask = padding_mask([5, 3, 7, 2, 6, 4, 7, 1], 7)
    data = ClassificationData(torch.randint(31, (8, 7), generator=g), mask, torch.arange(8) % 4)
    n_embd, head = backbone.config.n_embd, backbone.config.n_embd * 4 + 4
    total = sum(p.numel() for p in backbone.parameters()) + head
    for mode, lora, trains in [("head", None, head), ("full", None, total),
                               ("lora", dict(r=2, alpha=4), head + _lora_params(backbone, 2))]:
        torch.manual_seed(case_seed(100))
        row, clf, _ = finetune_run("probe", backbone, mode, data, data, _cpu_config(3, 4),
                                   lora=lora, pooling="mean")
        expect(all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items()),
               f"mode={mode!r} changed the backbone it was given: fine-tune a deep copy "
               "(copy.deepcopy), so that every run starts from the same pretrained weights")
        expect(isinstance(row, dict) and {"run", "accuracy", "trainable", "trainable_fraction",
                                          "seconds"} <= set(row),
               "row holds run, accuracy, trainable, trainable_fraction and seconds")
        expect(row["trainable"] == trains,
               f"mode={mode!r} trains {trains} parameters of this tiny model, the row says "
               f"{row['trainable']}" + (": add the adapters before choosing what trains"
                                        if mode == "lora" else ""))
        expect(abs(row["trainable_fraction"] - trains / (total + (trains - head if lora else 0)))
               < 1e-9, "trainable_fraction is trainable / all the classifier's parameters, "
                       "counted before merging")
        expect(not any(".lora_" in k for k in clf.state_dict()),
               f"mode={mode!r}: the classifier still holds LoRA adapters after the run: merge "
               "them (merge_lora) after training, so it is a plain GPT again")
        with torch.no_grad():
            logits = clf(data.ids, data.attention_mask)[0]
        acc = (logits.argmax(-1) == data.labels).float().mean().item()
        expect(abs(row["accuracy"] - acc) < 1e-6, f"row['accuracy'] should be the classifier's "
                                                  f"accuracy on test ({acc:.3f}), got "
                                                  f"{row['accuracy']}")
        if mode == "head":
            torch.manual_seed(case_seed(200))
            _, clf2, _ = finetune_run("probe", backbone, mode, data, data, _cpu_config(3, 4),
                                      pooling="mean")
            expect(torch.equal(clf.head.weight, clf2.head.weight),
                   "two runs with the same config.seed gave different heads: seed torch with "
                   "config.seed before the classifier (and its head) is made")


# --------------------------------------------------------------------------- 8.15 loss masking
def _reference_mask(prompt, response):
    seq = list(prompt) + list(response)
    return seq[:-1], [IGNORE_INDEX] * (len(prompt) - 1) + seq[len(prompt):]


@exercise("8.15", "Mask the prompt", builds="gptlib.instruct:mask_prompt", tier="core",
          difficulty=2, importance=3)
def _(mask_prompt):
    probes = [([5, 6, 7, 8], [1, 2, 3]), ([9], [4, 4]), ([3, 1, 4, 1, 5, 9], [2]),
              ([10, 11], [12, 13, 14, 15])]
    g = _gen(815)
    for _ in range(3):  # hidden cases: a random prompt and response
        probes.append((_ids(1, 50, _randint(2, 7, g), g), _ids(1, 50, _randint(1, 5, g), g)))
    for prompt, response in probes:
        out = mask_prompt(list(prompt), list(response))
        expect(isinstance(out, tuple) and len(out) == 2,
               "return a pair (inputs, targets) of lists")
        inputs, targets = (list(map(int, x)) for x in out)
        ref_in, ref_tg = _reference_mask(prompt, response)
        expect(len(inputs) == len(ref_in),
               f"inputs are prompt + response without its last token: {len(ref_in)} ids for a "
               f"{len(prompt)}-token prompt and a {len(response)}-token response, got {len(inputs)}")
        expect(inputs == ref_in, "inputs should be (prompt + response)[:-1]")
        expect(len(targets) == len(inputs), "targets must have one entry per input position")
        if targets == ref_tg:
            continue
        seq = list(prompt) + list(response)
        shifted = seq[1:]
        kept = [t != IGNORE_INDEX for t in targets]
        if not any(kept[len(prompt) - 1:]) and any(kept):
            raise CheckFailed("you masked the response and kept the prompt: the model should learn "
                              "to answer, so the PROMPT's targets become -100 and the response's "
                              "stay")
        if targets == shifted:
            raise CheckFailed("nothing is masked: set the targets that are prompt tokens to -100")
        if targets == [IGNORE_INDEX] * len(prompt) + shifted[len(prompt):]:
            raise CheckFailed("off by one: you also masked the first response token; the target "
                              "at position len(prompt) - 1 is the first response token and must "
                              "be kept")
        if targets == [IGNORE_INDEX] * (len(prompt) - 2) + shifted[len(prompt) - 2:]:
            raise CheckFailed("off by one: the last prompt token's target is still kept; mask "
                              "len(prompt) - 1 targets")
        if IGNORE_INDEX not in targets:
            raise CheckFailed("use -100 (cross_entropy's ignore_index) for masked targets")
        raise CheckFailed("targets should be (prompt + response)[1:] with the first "
                          "len(prompt) - 1 entries (the prompt's own tokens) replaced by -100")


# --------------------------------------------------------------------------- 8.16 collate SFT rows
@exercise("8.16", "Collate a batch of SFT rows", builds="gptlib.instruct:pad_rows", tier="core",
          difficulty=2, importance=2)
def _(pad_rows):
    I = IGNORE_INDEX
    probes = [([([5, 6, 7], [I, 7, 8]), ([1], [2]), ([3, 4, 5, 6, 7], [I, I, 6, 7, 8])], 0),
              ([([9, 8], [I, 4]), ([2, 3, 4, 5], [I, I, I, 1])], 40),
              ([([4, 4, 4], [I, 5, 6])], 0)]
    g = _gen(816)
    for _ in range(3):  # hidden cases: rows of random lengths, their prompts masked
        rows = []
        for _ in range(_randint(1, 4, g)):
            seq = _ids(1, 30, _randint(2, 8, g), g)
            n_prompt = _randint(1, len(seq) - 1, g)
            rows.append((seq[:-1], [I] * (n_prompt - 1) + seq[n_prompt:]))
        probes.append((rows, _randint(0, 40, g)))
    for rows, pad_id in probes:
        out = pad_rows([(list(x), list(y)) for x, y in rows], pad_id=pad_id)
        expect(isinstance(out, tuple) and len(out) == 2, "return a pair (ids, targets)")
        ids, targets = out
        T = max(len(x) for x, _ in rows)
        lengths = [len(x) for x, _ in rows]
        ref_ids = torch.tensor([x + [pad_id] * (T - len(x)) for x, _ in rows])
        ref_tg = torch.tensor([y + [I] * (T - len(y)) for _, y in rows])
        for name, t, ref in (("ids", ids, ref_ids), ("targets", targets, ref_tg)):
            expect(isinstance(t, torch.Tensor) and t.dtype == torch.long,
                   f"{name} must be a torch.long tensor")
            expect(tuple(t.shape) == tuple(ref.shape),
                   f"rows of lengths {lengths} make (B, T) = {tuple(ref.shape)} tensors (T is the "
                   f"longest row); {name} has shape {tuple(t.shape)}")
        mask = padding_mask(lengths, T)
        if not (torch.equal(ids[mask], ref_ids[mask]) and torch.equal(targets[mask], ref_tg[mask])):
            raise CheckFailed(f"row b's inputs and targets go at positions 0 .. L_b - 1, the "
                              f"padding after them (right padding, lengths {lengths}); got ids "
                              f"{ids.tolist()}")
        if not torch.equal(targets, ref_tg):
            raise CheckFailed(f"the padding of the targets holds {targets[~mask].unique().tolist()}"
                              f"; it must be IGNORE_INDEX ({I}), or the model learns to predict "
                              "padding")
        expect(torch.equal(ids, ref_ids),
               f"the padding of the ids must hold pad_id ({pad_id}), got "
               f"{ids[~mask].unique().tolist()}")


# --------------------------------------------------------------------------- 8.17 train_sft
class _RecordingLM(nn.Module):
    """Stands in for a GPT: ``forward(ids, targets)`` records the batch, returns a real loss."""

    def __init__(self, vocab: int = 40):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab))
        self.calls = []

    def forward(self, ids, targets=None):
        self.calls.append((ids.detach().cpu().clone(),
                           None if targets is None else targets.detach().cpu().clone()))
        logits = self.bias.expand(*ids.shape, -1)
        loss = None if targets is None else F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss


def _sft_row(prompt, response):
    p, r = [ord(c) - 96 for c in prompt], [ord(c) - 96 for c in response]
    seq = p + r
    return seq[:-1], [IGNORE_INDEX] * (len(p) - 1) + r


@exercise("8.17", "Instruction tuning with the course's loop", builds="gptlib.instruct:train_sft",
          tier="core", difficulty=2, importance=2)
def _(train_sft):
    pairs = [("abc", "de"), ("fgh", "i"), ("jklm", "no"), ("pq", "rst"), ("uvw", "x"),
             ("yza", "bc"), ("de", "fghi"), ("jk", "lm")]
    rows = {tuple(_sft_row(p, r)[0]): _sft_row(p, r)[1] for p, r in pairs}
    draws = []
    for global_seed in (0, 1):
        torch.manual_seed(case_seed(global_seed))  # only the run's generator may decide the batches
        model = _RecordingLM()
        train_sft(model, pairs, _Chars(), _cpu_config(6, 3))
        expect(len(model.calls) == 6, f"6 steps should call the model 6 times, got {len(model.calls)}")
        drawn = []
        for ids, targets in model.calls:
            expect(targets is not None, "give the model the targets: net(ids, targets) returns the loss")
            expect(ids.size(0) == 3, f"each batch holds config.batch_size=3 rows, got {ids.size(0)}")
            for b in range(ids.size(0)):
                key = next((k for k in rows if ids[b, :len(k)].tolist() == list(k)
                            and (ids[b, len(k):] == 0).all()), None)
                expect(key is not None, f"row {ids[b].tolist()} is not the inputs of one pair, "
                                        "right-padded: collate the rows with pad_rows")
                want = rows[key] + [IGNORE_INDEX] * (ids.size(1) - len(key))
                if targets[b].tolist() != want:
                    raise CheckFailed(f"the targets of inputs {list(key)} should be {want} (the "
                                      f"next token, the prompt and the padding IGNORE_INDEX), "
                                      f"got {targets[b].tolist()}: encode each pair and mask it "
                                      "with mask_prompt")
                drawn.append(key)
        draws.append(drawn)
        expect(len(set(drawn)) > 3, f"6 steps of 3 rows drew only {len(set(drawn))} different "
                                    f"pairs of {len(pairs)}: draw the rows of every batch at random")
    expect(draws[0] == draws[1], "two runs with the same config.seed drew different batches: "
                                 "draw with the generator train gives you (torch.randint(..., "
                                 "generator=generator))")


# --------------------------------------------------------------------------- 8.18 greedy answers
def _greedy_alone(model, tok, prompt, max_new_tokens):
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = model(ids)[0][:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return tok.decode(ids[0, len(tok.encode(prompt)):].tolist())


@exercise("8.18", "Greedy answers in batches", builds="gptlib.instruct:greedy_answers",
          tier="core", difficulty=3, importance=2)
def _(greedy_answers):
    from gptlib.tokenizer import CharTokenizer
    tok = CharTokenizer("abcdefgh \n")
    for seed, prompts, batch_size in [
            (0, ["ab", "abcd", "ba", "dcba", "ca", "c", "hgfe"], 2),
            (1, ["h", "bad cab", "ag", "e", "fed"], 64),
            (2, ["abc", "cab", "bca", "g", "gg"], 1)]:
        model = _tiny_gpt(seed, n_layer=1, vocab_size=tok.vocab_size, n_embd=16,
                          std=0.5).double()
        n = 6
        full = [_greedy_alone(model, tok, p, n) for p in prompts]
        # The stop: the character the answers hold most often after their first one, among those
        # that leave some answer non-empty (the model is the grader's own under a salt).
        counts = {}
        for a in full:
            for ch in a[1:]:
                if any(b[:1] != ch for b in full):
                    counts[ch] = counts.get(ch, 0) + 1
        stop = max(sorted(counts), key=counts.get) if counts else "\n"
        for s in ("", stop):  # the whole answers first: they tell more mistakes apart
            ref = [a.split(s)[0] if s else a for a in full]
            got = greedy_answers(model, tok, list(prompts), max_new_tokens=n, stop=s,
                                 batch_size=batch_size)
            expect(isinstance(got, list) and len(got) == len(prompts),
                   f"return one answer per prompt ({len(prompts)}), as a list")
            if got == ref:
                continue
            where = f"prompts {prompts}, stop={s!r}"
            if sorted(got) == sorted(ref):
                raise CheckFailed(f"the right answers in the wrong order ({where}): answer i "
                                  "belongs to prompts[i], however the prompts were grouped")
            if s and all(g.startswith(r) for g, r in zip(got, ref)) and any(
                    s in g for g in got):
                raise CheckFailed(f"cut each answer at the first stop and drop the stop itself "
                                  f"({where}): expected {ref}, got {got}")
            if all(g.startswith(p) for g, p in zip(got, prompts)):
                raise CheckFailed(f"the answers repeat their prompts ({where}): decode only the "
                                  "new tokens, after each prompt's own length")
            wrong = [i for i, (g, r) in enumerate(zip(got, ref)) if g != r]
            raise CheckFailed(f"{where}: prompts {[prompts[i] for i in wrong]} get {[got[i] for i in wrong]}"
                              f", but alone, greedily, they continue as "
                              f"{[ref[i] for i in wrong]}. Padding a prompt changes what the "
                              "model reads: batch only prompts of the same length")


# --------------------------------------------------------------------------- 8.19 LoRA linear
@exercise("8.19", "A LoRA linear layer", builds="gptlib.lora:LoRALinear", tier="core",
          difficulty=3, importance=3)
def _(lora_cls):
    torch.manual_seed(case_seed(0))
    for in_f, out_f, r, alpha, dtype in [(8, 12, 2, 4.0, torch.float32),
                                         (16, 6, 4, 4.0, torch.float32),
                                         (10, 10, 1, 3.0, torch.float64)]:
        base = nn.Linear(in_f, out_f).to(dtype)
        w0 = base.weight.detach().clone()
        layer = lora_cls(base, r=r, alpha=alpha)
        for name, shape in (("lora_A", (r, in_f)), ("lora_B", (out_f, r))):
            p = getattr(layer, name, None)
            expect(isinstance(p, nn.Parameter), f"the layer needs an nn.Parameter named {name}")
            expect(tuple(p.shape) == shape, f"{name} should have shape {shape} (rank r={r}), got "
                                            f"{tuple(p.shape)}")
            expect(p.dtype == dtype, f"{name} should take the base weight's dtype ({dtype}), got "
                                     f"{p.dtype}")
        expect(getattr(layer, "base", None) is base, "keep the wrapped layer as self.base")
        expect(not base.weight.requires_grad,
               "freeze the base layer: its weight must have requires_grad=False, only A and B train")
        trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
        expect(trainable == {"lora_A", "lora_B"},
               f"only lora_A and lora_B train; trainable here: {sorted(trainable)}")
        x = torch.randn(3, 5, in_f, dtype=dtype)
        y0 = layer(x)
        expect(isinstance(y0, torch.Tensor) and y0.shape == (3, 5, out_f),
               f"forward should return a tensor of shape (3, 5, {out_f})")
        expect(torch.equal(base.weight.detach(), w0), "forward must not change the base weight")
        expect(bool(layer.lora_A.detach().abs().sum() > 0),
               "lora_A is all zeros: initialise A randomly (e.g. kaiming_uniform_) and B to zero, "
               "otherwise no gradient ever reaches B")
        expect(_close(y0, base(x)),
               "at initialisation the output must equal the base layer's: initialise lora_B to "
               "zero (A random), so the update B @ A starts at zero")
        with torch.no_grad():
            layer.lora_B.copy_(torch.randn(out_f, r, dtype=dtype))
            y = layer(x)
        A, B = layer.lora_A.detach(), layer.lora_B.detach()
        low_rank = x @ A.T @ B.T
        ref = base(x) + (alpha / r) * low_rank
        if not _close(y, ref, atol=1e-4):
            if _close(y, base(x) + low_rank, atol=1e-4):
                raise CheckFailed("you forgot the scaling: multiply the low-rank path by alpha / r")
            if _close(y, base(x) + (r / alpha) * low_rank, atol=1e-4):
                raise CheckFailed("the scaling is upside down: it is alpha / r, not r / alpha")
            if _close(y, base(x) + alpha * low_rank, atol=1e-4):
                raise CheckFailed("scale by alpha / r, not alpha alone")
            if in_f == out_f and _close(y, base(x) + (alpha / r) * (x @ B @ A), atol=1e-4):
                raise CheckFailed("the order of the factors is wrong: x goes through A first "
                                  "(x @ A.T), then B (@ B.T)")
            raise CheckFailed("forward should be base(x) + (alpha / r) * (x @ A.T @ B.T)")
        delta = layer.delta_weight
        expect(isinstance(delta, torch.Tensor) and _close(delta, (alpha / r) * B @ A, atol=1e-5),
               f"delta_weight is the update (alpha / r) * B @ A, shaped like the base weight "
               f"({out_f}, {in_f})")
        layer.merge()
        expect(layer.merged is True, "merge() sets merged to True")
        expect(_close(base.weight.detach(), w0 + (alpha / r) * B @ A, atol=1e-5),
               "merge() adds delta_weight into the base weight")
        with torch.no_grad():
            y_merged = layer(x)
        if not _close(y_merged, y, atol=1e-4):
            if _close(y_merged, y + (alpha / r) * low_rank, atol=1e-4):
                raise CheckFailed("after merge() the update is counted twice: once in the base "
                                  "weight and once in the low-rank path; forward returns base(x) "
                                  "alone while merged")
            raise CheckFailed("after merge() the layer must compute what it computed before")
        layer.unmerge()
        expect(layer.merged is False and _close(base.weight.detach(), w0, atol=1e-5),
               "unmerge() takes delta_weight back out of the base weight and sets merged to False")
        with torch.no_grad():
            expect(_close(layer(x), y, atol=1e-4), "after unmerge() the layer must compute what "
                                                   "it computed before merging")


# --------------------------------------------------------------------------- 8.20 apply LoRA
def _linear_children(model, targets):
    out = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if child_name in targets and isinstance(child, nn.Linear):
                out.append((f"{name}.{child_name}" if name else child_name, child))
    return out


@exercise("8.20", "Apply LoRA to a model", builds="gptlib.lora:apply_lora", tier="core",
          difficulty=2, importance=3)
def _(apply_lora):
    for seed, targets, r in [(0, ("c_attn",), 2), (1, ("c_attn", "c_proj", "c_fc"), 1),
                             (2, ("c_proj",), 3)]:
        model = _tiny_gpt(seed)
        ids = torch.randint(model.config.vocab_size, (2, 9))
        with torch.no_grad():
            y0 = model(ids)[0]
        expected = _linear_children(model, targets)
        got = apply_lora(model, targets=targets, r=r, alpha=2.0 * r)
        names = [n for n, _ in expected]
        modules = dict(model.named_modules())
        for name, linear in expected:
            wrapped = modules.get(name)
            if wrapped is linear or not hasattr(wrapped, "lora_A"):
                raise CheckFailed(f"targets={targets}: {name} is still a plain nn.Linear; wrap "
                                  "every child whose attribute name is in targets, in every block "
                                  "(setattr on its parent module)")
            expect(getattr(wrapped, "base", None) is linear,
                   f"{name}: the adapter must wrap the original layer (its base is that nn.Linear)")
        expect(isinstance(got, list) and list(got) == names,
               f"return the full names of the wrapped layers, in the order named_modules() "
               f"visits them: {names[:3]}{' ...' if len(names) > 3 else ''}; got {got}")
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        adapters = [n for n in trainable if ".lora_" in n]
        if not adapters:
            raise CheckFailed(f"targets={targets}: nothing trains, not even the adapters: freeze "
                              "the model's parameters first, then wrap (the new lora_A and "
                              "lora_B must keep requires_grad=True)")
        others = [n for n in trainable if ".lora_" not in n]
        expect(not others, f"every parameter but the adapters' must be frozen; still trainable: "
                           f"{', '.join(others[:3])}{' ...' if len(others) > 3 else ''}")
        expect(len(adapters) == 2 * len(names),
               f"each wrapped layer brings a trainable lora_A and lora_B: {2 * len(names)} "
               f"tensors, got {len(adapters)}")
        with torch.no_grad():
            expect(_close(model(ids)[0], y0, atol=1e-5),
                   "right after apply_lora the model must compute exactly what it computed "
                   "before (every lora_B starts at zero)")


# --------------------------------------------------------------------------- 8.21 merge LoRA
def _lora_class_of(candidate):
    cls = getattr(candidate, "__globals__", {}).get("LoRALinear")
    if isinstance(cls, type):
        return cls
    from gptlib.lora import LoRALinear
    return LoRALinear


@exercise("8.21", "Merge the adapters back", builds="gptlib.lora:merge_lora", tier="warm-up",
          difficulty=2, importance=2)
def _(merge_lora):
    lora_cls = _lora_class_of(merge_lora)  # the adapters the candidate's own module makes
    for seed, targets in [(0, ("c_attn", "c_fc")), (1, ("c_proj",))]:
        model = _tiny_gpt(seed)
        keys = set(model.state_dict())
        wrapped = []
        for name, linear in _linear_children(model, targets):
            parent, _, attr = name.rpartition(".")
            adapter = lora_cls(linear, r=2, alpha=4.0)
            with torch.no_grad():
                adapter.lora_B.normal_(0.0, 0.1)   # a trained adapter is not zero
            setattr(model.get_submodule(parent), attr, adapter)
            wrapped.append((name, linear))
        ids = torch.randint(model.config.vocab_size, (2, 9))
        with torch.no_grad():
            y0 = model(ids)[0]
        out = merge_lora(model)
        expect(out is model, "return the model (merged in place)")
        left = [n for n, m in model.named_modules() if isinstance(m, lora_cls)]
        expect(not left, f"every adapter must be replaced by its base nn.Linear; still wrapped: "
                         f"{', '.join(left[:3])}")
        for name, linear in wrapped:
            expect(model.get_submodule(name) is linear,
                   f"{name} should be the adapter's own base nn.Linear again")
        with torch.no_grad():
            y = model(ids)[0]
        if not _close(y, y0, atol=1e-5):
            raise CheckFailed(f"after merging (targets {targets}) the model computes something "
                              "else: fold each adapter's update into its base weight "
                              "(merge()) before putting the base back")
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        expect(not frozen, f"the merged weights must be trainable again; still frozen: "
                           f"{', '.join(frozen[:3])}")
        expect(set(model.state_dict()) == keys,
               "the merged model has exactly the original model's tensors")


# --------------------------------------------------------------------------- 8.22 rank experiment
class _PrivateLoRA(nn.Module):
    def __init__(self, base, r=4, alpha=8.0):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scaling = alpha / r
        g = _gen(r)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features, generator=g)
                                   / base.in_features ** 0.5)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)


def _rank_k_change(k, n=16, seed=0):
    g = _gen(100 + seed)
    W0 = torch.randn(n, n, generator=g) / n ** 0.5
    U = torch.linalg.qr(torch.randn(n, k, generator=g))[0]
    V = torch.linalg.qr(torch.randn(n, k, generator=g))[0]
    return W0, U @ V.T          # k singular values of 1


@exercise("8.22", "Fit a low-rank change", tier="stretch", difficulty=2, importance=2)
def _(adapter_fit_loss):
    n = 16
    for k, ranks in [(2, (1, 2, 3)), (3, (2, 4)), (1, (1,))]:
        W0, delta = _rank_k_change(k, n, seed=k)
        for r in ranks:
            torch.manual_seed(case_seed(r))
            loss = adapter_fit_loss(_PrivateLoRA, r, W0.clone(), delta.clone())
            expect(isinstance(loss, float), f"return the final error as a float, got "
                                             f"{type(loss).__name__}")
            floor = (k - r) / n if r < k else 0.0      # the energy a rank-r adapter cannot reach
            start = k / n                              # the error before any training
            if r >= k and not loss < 0.01 * start:
                raise CheckFailed(f"a change of rank {k} fits an adapter of rank {r} exactly, but "
                                  f"your error ends at {loss:.4g} (it starts near {start:.3g}): "
                                  "train longer or with a larger learning rate, and check that "
                                  "the optimizer gets lora_A and lora_B")
            if r < k and not loss > 0.25 * floor:
                raise CheckFailed(f"an adapter of rank {r} cannot express a change of rank {k}: "
                                  f"its error cannot fall below about {floor:.3g}, yours is "
                                  f"{loss:.4g}. Is the teacher x @ (W0 + delta).T, and is the "
                                  "error measured on fresh inputs?")


# --------------------------------------------------------------------------- 8.23 pair input
_PAIR_SPECIALS = {"<|start|>": 50, "<|delim|>": 51, "<|classify|>": 52}


def _ref_pair(a, b, specials, max_len):
    budget = max_len - 3
    n_a = min(len(a), max(budget // 2, budget - len(b)))
    n_b = min(len(b), budget - n_a)
    return [specials["<|start|>"], *a[:n_a], specials["<|delim|>"], *b[:n_b], specials["<|classify|>"]]


@exercise("8.23", "GPT-1's input for a pair", builds="gptlib.classify:pair_input", tier="core",
          difficulty=2, importance=3)
def _(pair_input):
    s, d, c = _PAIR_SPECIALS.values()
    a, b = [1, 2, 3], [4, 5]
    got = list(pair_input(a, b, dict(_PAIR_SPECIALS), 20))
    want = _ref_pair(a, b, _PAIR_SPECIALS, 20)
    expect(d in got, f"for a = {a}, b = {b} the delimiter id {d} is missing from {got}: the "
                     "model must be told where the first text ends")
    expect(got.count(c) == 1 and got[-1] == c,
           f"the classify id {c} must be the last id (the only position that has read both "
           f"texts), got {got}")
    expect(got[0] == s, f"the start id {s} must come first, got {got}")
    expect(got == want, f"for a = {a}, b = {b}: expected {want}, got {got}: a comes before "
                        "the delimiter, b after it, each in its own order")
    probes = [(list(range(1, 21)), list(range(21, 41)), 13),
              (list(range(1, 31)), [44, 45], 16), ([7], list(range(1, 40)), 12),
              (list(range(1, 9)), list(range(11, 19)), 19)]
    g = _gen(823)
    for _ in range(4):  # hidden cases: texts of random lengths, a random max_len
        probes.append((_ids(1, 50, _randint(1, 30, g), g), _ids(1, 50, _randint(1, 30, g), g),
                       _randint(5, 40, g)))
    for a, b, max_len in probes:
        got = list(pair_input(a, b, dict(_PAIR_SPECIALS), max_len))
        want = _ref_pair(a, b, _PAIR_SPECIALS, max_len)
        expect(len(got) <= max_len and got[-1] == c,
               f"a pair of {len(a)} and {len(b)} tokens with max_len = {max_len} gave {len(got)} "
               f"ids ending in {got[-1]}: cut the texts, never the special tokens")
        expect(got == want, f"a = {len(a)} tokens, b = {len(b)}, max_len = {max_len}: expected "
                            f"{want}, got {got}. Of the max_len - 3 ids for the texts, a keeps "
                            "up to half (more when b is short), b takes what remains")


# --------------------------------------------------------------------------- 8.24 new tokens
@exercise("8.24", "Room for new tokens", builds="gptlib.classify:add_special_tokens",
          tier="core", difficulty=2, importance=2)
def _(add_special_tokens):
    model = _tiny_gpt(seed=3, vocab_size=11)
    config = model.config
    old = model.transformer.wte.weight.detach().clone()
    ids = add_special_tokens(model, ["<|a|>", "<|b|>", "<|c|>"])
    expect(dict(ids) == {"<|a|>": 11, "<|b|>": 12, "<|c|>": 13},
           f"a vocabulary of 11 grown by 3 names gives them the ids 11, 12, 13 (after the old "
           f"ones, which keep theirs), got {ids}")
    W = model.transformer.wte.weight
    expect(tuple(W.shape) == (14, 8), f"the embedding needs one row per token: (14, 8), got "
                                      f"{tuple(W.shape)}")
    expect(torch.equal(W[:11].detach(), old), "the old rows must be kept exactly: the pretrained "
                                               "tokens keep what they learned")
    expect(model.lm_head.weight is W, "the output layer must stay tied to the new embedding "
                                      "(model.lm_head.weight = the new table's weight)")
    expect(model.config.vocab_size == 14 and config.vocab_size == 11,
           f"model.config.vocab_size must be 14 and the old config object untouched (11); got "
           f"{model.config.vocab_size} and {config.vocab_size}: use dataclasses.replace")
    new_rows = W[11:].detach()
    expect(new_rows.abs().sum() > 0 and new_rows.std() < 0.1,
           "draw the new rows as a TokenEmbedding draws its table (small random values), "
           f"not zeros or large values; their std is {new_rows.std():.3g}")
    logits = model(torch.tensor([[13, 0, 12, 11]]))[0]
    expect(tuple(logits.shape) == (1, 4, 14), f"the model must accept the new ids and predict "
                                             f"over 14 tokens, got logits {tuple(logits.shape)}")
