"""gptlib.shards: packed documents in shard files, resumable prepare, windows read via memmap."""
import json

import numpy as np
import pytest
import torch

from gptlib.data import get_batch, iter_batches
from gptlib.shards import ShardedTokens, pack_documents, plan_shards, prepare_shards, read_positions
from gptlib.tokenizer import ENDOFTEXT, BPETokenizer


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer().train("the cat sat on the mat. " * 40 + "Hello, world!\n" * 20, 279,
                                special_tokens=[ENDOFTEXT])  # 22 merges + the separator


DOCS = ([f"Document {k}: the cat sat on the mat {k * 'ha'}.\n\nHello, world!" for k in range(40)]
        + ["", "short", "", "ünïcode ☃ text"])


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_pack_and_plan():
    enc = lambda s: [ord(c) for c in s]
    assert pack_documents(["ab", "", "c"], enc, 0) == [97, 98, 0, 0, 99]
    assert pack_documents(iter(["x"]), enc, 0) == [120]
    assert plan_shards([3, 3, 3, 10, 1], 5) == [(0, 2), (2, 4), (4, 5)]
    assert plan_shards([1], 100) == [(0, 1)]


@pytest.mark.parametrize("workers", [1, 2])
def test_round_trip(tmp_path, tok, workers):
    manifest = prepare_shards(DOCS, tmp_path, tok, shard_size=200, workers=workers)
    assert manifest["complete"] and len(manifest["shards"]) > 3 and manifest["dtype"] == "uint16"
    tokens = ShardedTokens(tmp_path)
    ids = tokens.tensor()
    assert len(tokens) == manifest["tokens"] == len(ids)
    assert tok.decode(ids.tolist()) == ENDOFTEXT.join(DOCS)
    assert ids.tolist() == tok.encode(ENDOFTEXT.join(DOCS), allowed_special="all")
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def test_folder_and_file_sources(tmp_path, tok):
    (tmp_path / "docs").mkdir()
    for k, d in enumerate(DOCS[:6]):
        (tmp_path / "docs" / f"{k:02d}.txt").write_text(d, encoding="utf-8")
    (tmp_path / "corpus.txt").write_text(ENDOFTEXT.join(DOCS[:6]), encoding="utf-8")
    a = prepare_shards(tmp_path / "docs", tmp_path / "a", tok, shard_size=50, workers=1)
    b = prepare_shards(str(tmp_path / "corpus.txt"), tmp_path / "b", tok, shard_size=50, workers=1)
    assert a["documents"] == b["documents"] == 6 and a["tokens"] == b["tokens"]
    assert ShardedTokens(tmp_path / "a").tensor().tolist() == ShardedTokens(tmp_path / "b").tensor().tolist()
    assert tok.decode(ShardedTokens(tmp_path / "a").tensor().tolist()) == ENDOFTEXT.join(DOCS[:6])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("shard_size", [1, 60, 300, 10_000])
def test_a_text_file_is_sharded_as_it_streams(tmp_path, tok, workers, shard_size):
    """A corpus file gives the stream of its documents joined with the separator, cut into shards
    right after a separator (byte ranges in the manifest), empty documents and one at the end too."""
    docs = DOCS + [""]                                   # the file ends with the separator
    text = ENDOFTEXT.join(docs)
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    manifest = prepare_shards(tmp_path / "corpus.txt", tmp_path / "out", tok, shard_size=shard_size, workers=workers)
    ids = ShardedTokens(tmp_path / "out").tensor().tolist()
    assert ids == tok.encode(text, allowed_special="all")
    assert manifest["documents"] == len(docs) and manifest["source_bytes"] == len(text.encode("utf-8"))
    raw = text.encode("utf-8")
    spans = [e["bytes"] for e in manifest["shards"]]
    assert spans[0][0] == 0 and spans[-1][1] == len(raw)
    assert all(a[1] == b[0] and raw[:a[1]].endswith(ENDOFTEXT.encode()) for a, b in zip(spans, spans[1:]))
    ranges = [e["documents"] for e in manifest["shards"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == len(docs) and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    if shard_size == 10_000:
        assert len(spans) == 1
    if shard_size == 1:
        assert len(spans) == len(docs) - 1               # one document per shard; the empty last one
        assert ranges[-1] == [len(docs) - 2, len(docs)]  # rides with the one before it


def test_a_killed_run_on_a_text_file_resumes(tmp_path, tok):
    (tmp_path / "corpus.txt").write_text(ENDOFTEXT.join(DOCS), encoding="utf-8")
    whole = prepare_shards(tmp_path / "corpus.txt", tmp_path / "whole", tok, shard_size=300, workers=1)
    calls = []

    def die_after_two(k, reused):
        calls.append(k)
        if len(calls) == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(tmp_path / "corpus.txt", tmp_path / "cut", tok, shard_size=300, workers=1, progress=die_after_two)
    assert "documents" not in json.loads((tmp_path / "cut" / "manifest.json").read_text())
    calls.clear()
    again = prepare_shards(tmp_path / "corpus.txt", tmp_path / "cut", tok, shard_size=300, workers=1,
                           progress=lambda k, r: calls.append((k, r)))
    assert [k for k, r in calls if r] == [0, 1] and again == whole
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")


def test_an_empty_text_file_is_refused(tmp_path, tok):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        prepare_shards(tmp_path / "empty.txt", tmp_path / "out", tok, workers=1)


def test_uint32_when_the_vocabulary_needs_it(tmp_path, tok):
    big = BPETokenizer.from_merges([((a, b), i) for (a, b), i in tok.merges.items()],
                                   special_tokens={ENDOFTEXT: 70_000})
    manifest = prepare_shards(DOCS[:5], tmp_path, big, workers=1)
    assert manifest["dtype"] == "uint32"
    assert ShardedTokens(tmp_path).tensor().tolist() == big.encode(ENDOFTEXT.join(DOCS[:5]), allowed_special="all")


def test_killed_run_resumes_to_identical_files(tmp_path, tok):
    prepare_shards(DOCS, tmp_path / "whole", tok, shard_size=200, workers=1)
    calls = []

    def die_after_three(k, reused):
        calls.append((k, reused))
        if len(calls) == 3:
            raise KeyboardInterrupt          # the run is killed after its third shard
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(DOCS, tmp_path / "cut", tok, shard_size=200, workers=1, progress=die_after_three)
    partial = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 3
    (tmp_path / "cut" / "shard_00001.bin").write_bytes(b"\0\0")     # one damaged shard
    calls.clear()
    prepare_shards(DOCS, tmp_path / "cut", tok, shard_size=200, workers=1, progress=lambda k, r: calls.append((k, r)))
    reused = [k for k, r in calls if r]
    assert reused == [0, 2]                                        # whole ones kept, the damaged one redone
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")


def test_get_batch_from_shards_equals_memory(tmp_path, tok):
    prepare_shards(DOCS, tmp_path, tok, shard_size=200, workers=1)
    tokens = ShardedTokens(tmp_path)
    ids = tokens.tensor()
    for seed in range(3):
        xs, ys = get_batch(tokens, 16, 32, generator=torch.Generator().manual_seed(seed))
        xm, ym = get_batch(ids, 16, 32, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(xs, xm) and torch.equal(ys, ym) and xs.dtype == torch.long
    view = tokens[100:400]
    assert len(view) == 300 and torch.equal(view.tensor(), ids[100:400])
    a = list(iter_batches(view, 16, 8))
    b = list(iter_batches(ids[100:400], 16, 8))
    assert all(torch.equal(p, q) for (p, _), (q, _) in zip(a, b)) and len(a) == len(b)
    with pytest.raises(ValueError, match="block_size"):
        get_batch(tokens[:10], 10, 2)


def test_corrupt_or_missing_shards_are_refused(tmp_path, tok):
    manifest = prepare_shards(DOCS, tmp_path, tok, shard_size=200, workers=1)
    path = tmp_path / manifest["shards"][1]["file"]
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="shard_00001.bin is missing or corrupt"):
        ShardedTokens(tmp_path)
    ShardedTokens(tmp_path, verify=False)                          # same size: only the hash tells
    path.write_bytes(bytes(data[:-2]))
    with pytest.raises(ValueError, match="missing or corrupt"):
        ShardedTokens(tmp_path, verify=False)
    with pytest.raises(ValueError, match="no readable manifest"):
        ShardedTokens(tmp_path / "nothing")


def test_read_positions_crosses_boundaries():
    shards = [np.arange(0, 3, dtype=np.uint16), np.zeros(0, np.uint16), np.arange(3, 8, dtype=np.uint16)]
    offsets = np.array([0, 3, 3, 8])
    pos = np.array([[1, 2, 3, 4], [7, 3, 0, 5]])
    assert np.array_equal(read_positions(shards, offsets, pos), pos)


def test_train_runs_from_shards(tmp_path, tok):
    from gptlib.model import GPT, GPTConfig
    from gptlib.training import TrainConfig, train
    prepare_shards(DOCS * 3, tmp_path, tok, shard_size=500, workers=1)
    tokens = ShardedTokens(tmp_path)
    n = int(len(tokens) * 0.9)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    history = train(model, tokens[:n], tokens[n:], TrainConfig(max_steps=4, batch_size=4, eval_interval=2, warmup_steps=0,
                                                                 eval_iters=1, device="cpu"))
    assert len(history.train_loss) == 4 and len(history.val_loss) >= 1
    assert all(np.isfinite(history.train_loss + history.val_loss))


def test_the_command_line_prepares_shards(tmp_path, capsys):
    """`python -m gptlib prepare FOLDER OUT` writes the shards and their manifest."""
    pytest.importorskip("tiktoken")
    from gptlib.__main__ import main
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("First document.\n")
    (corpus / "b.txt").write_text("Second one.\n")
    assert main(["prepare", str(corpus), str(tmp_path / "out"), "--workers", "1"]) == 0
    assert "tokens in 1 shards" in capsys.readouterr().out
    assert len(ShardedTokens(tmp_path / "out")) > 0
