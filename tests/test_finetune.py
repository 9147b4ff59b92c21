"""gptlib.finetune: the forgery task, padding and pooling, the classifier, loss masking, checkpoints."""
import pytest
import torch
import torch.nn.functional as F

from gptlib.datasets import load_text
from gptlib.finetune import (KINDS, ClassificationData, Example, GPTClassifier, answer, corrupt,
                             encode_batch, finetune_run, lm_targets, load_classifier,
                             make_forgery_task, mask_prompt, passage, pool_last, pool_mean,
                             pretrained_char_model, save_classifier, set_trainable, sft_batch,
                             sft_pair, split_speeches)
from gptlib.model import GPT, GPTConfig
from gptlib.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def text():
    return load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def tok(text):
    return CharTokenizer(text)


def tiny(vocab=65, block=128):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=16))


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


def test_encode_batch_right_pads(tok):
    ids, mask = encode_batch(["ab", "abcd"], tok, max_len=3)
    assert ids.shape == (2, 3) and mask.tolist() == [[True, True, False], [True, True, True]]
    with pytest.raises(ValueError, match="at least one token"):
        encode_batch(["", "a"], tok, max_len=3)


def test_pooling_picks_real_tokens():
    h = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    assert torch.equal(pool_last(h, mask), torch.stack([h[0, 1], h[1, 3]]))
    assert torch.allclose(pool_mean(h, mask), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))
    with pytest.raises(ValueError, match="right-padded"):
        pool_last(h, torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]).bool())
    with pytest.raises(ValueError, match="no real token"):
        pool_last(h, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]).bool())


def test_padding_never_changes_the_classifier(tok):
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
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    assert lm_targets(ids, mask).tolist() == [[6, 7, -100, -100], [2, 3, 4, -100]]


def test_classifier_loss_and_auxiliary_lm_loss(tok):
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


def test_set_trainable_modes():
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
    assert x == [1, 2, 3, 4] and y == [-100, -100, 4, 5]
    with pytest.raises(ValueError):
        mask_prompt([], [1])
    prompt, response = sft_pair(Example("To be or not to be", 0))
    assert response == "genuine\n" and prompt.endswith("Answer: ")
    ids, targets = sft_batch([(prompt, response), ("Q: ", "ab\n")], tok)
    assert (targets != -100).sum(1).tolist() == [len(response), 3]


def test_masked_positions_contribute_nothing(tok):
    """Changing the logits or the inputs' future at masked prompt positions leaves the loss and
    the gradients of the model unchanged."""
    model = tiny()
    ids, targets = sft_batch([("Genuine or forged?\nab\nAnswer: ", "genuine\n")], tok)
    logits = model(ids)[0].detach().requires_grad_(True)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    masked = targets == -100
    assert logits.grad[masked].abs().max() == 0
    noisy = torch.where(masked[..., None], torch.randn_like(logits) * 50, logits.detach())
    assert torch.allclose(F.cross_entropy(noisy.flatten(0, 1), targets.flatten(), ignore_index=-100), loss)
    # the model's loss is exactly the mean cross-entropy over the response positions only
    full_logits, model_loss = model(ids, targets)
    keep = ~masked
    manual = F.cross_entropy(full_logits[keep], targets[keep])
    assert torch.allclose(model_loss, manual)


def test_answer_is_padding_independent(tok):
    model = tiny()
    one = answer(model, tok, ["To be"], max_new_tokens=5, stop="")
    two = answer(model, tok, ["To be", "or not to be, that is"], max_new_tokens=5, stop="")
    assert one[0] == two[0] and len(one[0]) == 5
    with pytest.raises(ValueError, match="block_size"):
        answer(model, tok, ["x" * 127], max_new_tokens=5)


def test_checkpoint_roundtrip_reproduces_accuracy(tmp_path, tok):
    data = ClassificationData.from_examples([Example("abc", 0), Example("de f", 1), Example("ghij", 2),
                                             Example("k", 1)], tok, 8)
    row, clf, _ = finetune_run("t", tiny(), "full", data, data, steps=3, batch_size=2, lr=1e-3)
    path = save_classifier(clf, tmp_path / "c.safetensors")
    back = load_classifier(path)
    assert torch.equal(back(data.ids, data.attention_mask)[0], clf(data.ids, data.attention_mask)[0])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_classifier(bad)


def test_pretrained_model_is_cached(tmp_path, tok):
    text = "To be, or not to be, that is the question. " * 20
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    m1, info1 = pretrained_char_model(text, tok, cfg, steps=3, batch_size=2, cache_dir=tmp_path)
    m2, info2 = pretrained_char_model(text, tok, cfg, steps=3, batch_size=2, cache_dir=tmp_path)
    assert not info1["cached"] and info2["cached"] and info2["losses"] == info1["losses"]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    assert len(list(tmp_path.glob("*.tmp"))) == 0
