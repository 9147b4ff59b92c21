"""Chapter 8's modules: the forgery task (gptlib.forgery), the classifier (gptlib.classify) and
instruction tuning (gptlib.instruct): padding and pooling, loss masking, training through
Chapter 6's train, answers through Chapter 7's generate, checkpoints and the pretraining cache."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from gptlib.classify import (ClassificationData, GPTClassifier, encode_batch, finetune_run,
                             lm_targets, load_classifier, pool_last, pool_mean, save_classifier,
                             set_trainable)
from gptlib.datasets import load_text
from gptlib.forgery import (KINDS, Example, corrupt, finetune_config, make_forgery_task, passage,
                            pretrained_char_model, split_speeches)
from gptlib.sampling import generate
from gptlib.instruct import (exact_match, greedy_answers, mask_prompt, sft_batch, sft_pair,
                             train_sft)
from gptlib.masking import padding_mask
from gptlib.model import IGNORE_INDEX, GPTConfig
from gptlib.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def text():
    return load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def tok(text):
    return CharTokenizer(text)


@pytest.fixture
def tiny(tiny_gpt):
    """``tiny()``: a fresh 2-layer, 16-wide GPT over Tiny Shakespeare's 65 characters, context 128."""
    return lambda: tiny_gpt(vocab_size=65, block_size=128, n_layer=2, n_head=2, n_embd=16)


def recipe(steps=3, batch_size=2, lr=1e-3):
    return replace(finetune_config(steps, batch_size, lr), device="cpu")


def test_split_speeches_and_passage():
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    s = split_speeches(text)
    assert [x.speaker for x in s] == ["First Citizen", "All"]
    assert s[1].text == "Speak, speak." and text[s[1].start:].startswith("All:")
    assert passage("one two three four", 9) == "one two"
    assert passage("a\nb  c", 20) == "a b c"


def test_corruptions_are_deterministic_and_change_the_text():
    line = "Before we proceed any further, hear me speak."
    for kind in KINDS[1:]:
        a = corrupt(line, kind, torch.Generator().manual_seed(3))
        b = corrupt(line, kind, torch.Generator().manual_seed(3))
        assert a == b and a != line and len(a) == len(line)
    assert sorted(corrupt(line, "shuffled words", torch.Generator()).split()) == sorted(line.split())
    with pytest.raises(ValueError, match="kind must be one of"):
        corrupt(line, "reversed", torch.Generator())


def test_task_holds_out_text_pretraining_never_sees(text):
    task = make_forgery_task(text, n_train_per_class=4, n_test=40)
    again = make_forgery_task(text, n_train_per_class=4, n_test=40)
    assert task.train == again.train and task.test == again.test
    assert task.pretrain_text == text[:int(0.9 * len(text))]
    assert len(task.train) == 16 and len(task.test) == 40
    assert [e.label for e in task.test[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]
    for e in task.test:
        if e.label == 0:  # genuine passages from the held-out split are not in the pretraining text
            assert e.text not in task.pretrain_text.replace("\n", " ")
    with pytest.raises(ValueError, match="val_fraction"):
        make_forgery_task(text, val_fraction=1.5)


def test_finetune_config_is_the_recipe():
    c = finetune_config(100, 8, 3e-4)
    assert (c.max_steps, c.batch_size, c.lr, c.warmup_steps) == (100, 8, 3e-4, 10)
    assert c.min_lr == pytest.approx(3e-5)
    assert (c.beta2, c.grad_clip, c.weight_decay, c.compile) == (0.95, 1.0, 0.01, False)
    assert finetune_config(4, 8, 1e-3).warmup_steps == 4


def test_encode_batch_right_pads_with_chapter_3s_mask(tok):
    ids, mask = encode_batch(["ab", "abcd"], tok, max_len=3)
    assert ids.shape == (2, 3) and torch.equal(mask, padding_mask([2, 3], 3))
    assert ids[0].tolist() == tok.encode("ab") + [0] and ids[1].tolist() == tok.encode("abc")
    with pytest.raises(ValueError, match="at least one token"):
        encode_batch(["", "a"], tok, max_len=3)
    with pytest.raises(ValueError, match="max_len"):
        encode_batch(["a"], tok, max_len=0)


def test_pooling_picks_real_tokens():
    h = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    mask = padding_mask([2, 4], 4)
    assert torch.equal(pool_last(h, mask), torch.stack([h[0, 1], h[1, 3]]))
    assert torch.equal(pool_last(h, mask.long()), pool_last(h, mask))  # a 0/1 mask works too
    assert torch.allclose(pool_mean(h, mask), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))
    with pytest.raises(ValueError, match="attention_mask"):
        pool_last(h, mask[:, :3])


def test_padding_never_changes_the_classifier(tok, tiny):
    clf = GPTClassifier(tiny(), 4, pooling="last").eval()
    ids, mask = encode_batch(["To be, or not", "to be"], tok, max_len=20)
    other = ids.masked_fill(~mask, 7)
    with torch.no_grad():
        a, _ = clf(ids, mask)
        b, _ = clf(other, mask)
        alone, _ = clf(ids[1:, :5], mask[1:, :5])
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a[1:], alone, atol=1e-6)


def test_lm_targets_ignore_padding():
    ids = torch.tensor([[5, 6, 7, 0], [1, 2, 3, 4]])
    mask = padding_mask([3, 4], 4)
    I = IGNORE_INDEX
    assert lm_targets(ids, mask).tolist() == [[6, 7, I, I], [2, 3, 4, I]]


def test_classifier_loss_and_auxiliary_lm_loss(tok, tiny):
    clf = GPTClassifier(tiny(), 4)
    ids, mask = encode_batch(["abc", "de"], tok, max_len=8)
    labels = torch.tensor([0, 3])
    logits, loss = clf(ids, mask, labels)
    assert logits.shape == (2, 4) and torch.allclose(loss, F.cross_entropy(logits, labels))
    _, loss_aux = clf(ids, mask, labels, lm_lambda=0.5)
    lm = clf.backbone(ids, lm_targets(ids, mask))[1]
    assert torch.allclose(loss_aux, loss + 0.5 * lm, atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        GPTClassifier(tiny(), 4, pooling="max")


def test_set_trainable_modes(tiny):
    clf = GPTClassifier(tiny(), 4)
    head = sum(p.numel() for p in clf.head.parameters())
    assert set_trainable(clf, "head") == head
    top = set_trainable(clf, "top", n_top=1)
    block = sum(p.numel() for p in clf.backbone.transformer.h[-1].parameters())
    ln_f = sum(p.numel() for p in clf.backbone.transformer.ln_f.parameters())
    assert top == head + block + ln_f
    assert set_trainable(clf, "full") == sum(p.numel() for p in clf.parameters())
    with pytest.raises(ValueError, match="apply_lora"):
        set_trainable(clf, "lora")
    with pytest.raises(ValueError, match="mode must be one of"):
        set_trainable(clf, "some")


def test_mask_prompt_and_sft_batch(tok):
    x, y = mask_prompt([1, 2, 3], [4, 5])
    assert x == [1, 2, 3, 4] and y == [IGNORE_INDEX, IGNORE_INDEX, 4, 5]
    with pytest.raises(ValueError):
        mask_prompt([], [1])
    prompt, response = sft_pair(Example("To be or not to be", 0), KINDS)
    assert response == "genuine\n" and prompt.endswith("Answer: ")
    ids, targets = sft_batch([(prompt, response), ("Q: ", "ab\n")], tok)
    assert (targets != IGNORE_INDEX).sum(1).tolist() == [len(response), 3]
    short = len(tok.encode("Q: ab\n")) - 1   # the second row's inputs, then padding
    assert (ids[1, short:] == 0).all() and (targets[1, short:] == IGNORE_INDEX).all()


def test_masked_positions_contribute_nothing(tok, tiny):
    """Changing the logits at masked prompt positions leaves the loss and the gradients unchanged,
    and the model's loss is the mean cross-entropy over the response positions only."""
    model = tiny()
    ids, targets = sft_batch([("Genuine or forged?\nab\nAnswer: ", "genuine\n")], tok)
    logits = model(ids)[0].detach().requires_grad_(True)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    masked = targets == IGNORE_INDEX
    assert logits.grad[masked].abs().max() == 0
    noisy = torch.where(masked[..., None], torch.randn_like(logits) * 50, logits.detach())
    assert torch.allclose(F.cross_entropy(noisy.flatten(0, 1), targets.flatten(),
                                          ignore_index=IGNORE_INDEX), loss)
    full_logits, model_loss = model(ids, targets)
    assert torch.allclose(model_loss, F.cross_entropy(full_logits[~masked], targets[~masked]))


def test_greedy_answers_are_generate_per_prompt(tok, tiny):
    """Prompts of different lengths, batched by length, answer exactly as generate does alone."""
    model = tiny()
    prompts = ["To be", "or not to be, that is", "ay me"]   # two of length 5, one longer
    got = greedy_answers(model, tok, prompts, max_new_tokens=5, stop="")
    for p, g in zip(prompts, got):
        ids = torch.tensor(tok.encode(p))
        alone = generate(model, ids, 5, temperature=0)[len(ids):].tolist()
        assert g == tok.decode(alone) and len(g) == 5
    with pytest.raises(ValueError, match="block_size"):
        greedy_answers(model, tok, ["x" * 127], max_new_tokens=5)


def test_greedy_answers_stop_at_the_newline(tok, tiny):
    model = tiny()
    newline = tok.encode("\n")[0]
    with torch.no_grad():   # hidden states all ones, every logit 0 but the newline's: "\n" at once
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[newline] = 1.0
    assert greedy_answers(model, tok, ["abc", "de"], max_new_tokens=4, stop="") == ["\n" * 4] * 2
    assert greedy_answers(model, tok, ["abc", "de"], max_new_tokens=4) == ["", ""]
    assert exact_match(model, tok, [("abc", "\n"), ("de", "x\n")]) == 0.5


def test_train_sft_uses_the_one_loop(tok, tiny):
    model = tiny()
    pairs = [sft_pair(Example("To be or not", i % 4), KINDS) for i in range(8)]
    history = train_sft(model, pairs, tok, recipe(steps=6, batch_size=4, lr=3e-3))
    assert history.step == list(range(6)) and len(history.train_loss) == 6
    assert history.train_loss[-1] < history.train_loss[0] and not model.training


def test_frozen_parameters_stay_put_and_runs_repeat(tok, tiny):
    data = ClassificationData.from_examples([Example("abc", 0), Example("de f", 1), Example("ghij", 2),
                                             Example("k", 1)], tok, 8)
    backbone = tiny()
    row, clf, history = finetune_run("t", backbone, "head", data, data, recipe(steps=4))
    assert len(history.train_loss) == 4 and row["trainable"] == 16 * 3 + 3
    for (name, a), b in zip(backbone.state_dict().items(), clf.backbone.state_dict().values()):
        assert torch.equal(a, b), name   # only the head trained
    row2, _, history2 = finetune_run("t", backbone, "head", data, data, recipe(steps=4))
    assert history2.train_loss == history.train_loss and row2["accuracy"] == row["accuracy"]


def test_checkpoint_roundtrip_reproduces_accuracy(tmp_path, tok, tiny):
    data = ClassificationData.from_examples([Example("abc", 0), Example("de f", 1), Example("ghij", 2),
                                             Example("k", 1)], tok, 8)
    row, clf, _ = finetune_run("t", tiny(), "full", data, data, recipe())
    path = save_classifier(clf, tmp_path / "c.safetensors")
    back = load_classifier(path)
    assert torch.equal(back(data.ids, data.attention_mask)[0], clf(data.ids, data.attention_mask)[0])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_classifier(bad)


def test_pretrained_model_is_cached_in_the_artifact_dir(tmp_path, monkeypatch, tok):
    monkeypatch.setenv("GPTLIB_CACHE_DIR", str(tmp_path))
    text = "To be, or not to be, that is the question. " * 20
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    m1, info1 = pretrained_char_model(text, tok, cfg, recipe(steps=3))
    m2, info2 = pretrained_char_model(text, tok, cfg, recipe(steps=3))
    assert not info1["cached"] and info2["cached"] and info2["losses"] == info1["losses"]
    assert len(info1["losses"]) == 3 and info1["path"].startswith(str(tmp_path))
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert len(list(tmp_path.glob("*.tmp"))) == 0
    _, info3 = pretrained_char_model(text, tok, cfg, recipe(steps=4))   # another setting: a new model
    assert not info3["cached"] and info3["path"] != info1["path"]
