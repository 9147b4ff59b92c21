"""Data at scale: the prepare step against tiktoken, encode_iterable's memory, training from shards.

    .venv/bin/python benchmarks/data.py [--mb 200] [--workers 2] [--corpus DIR] [--shards DIR]

1. A corpus of at least ``--mb`` megabytes is generated once, deterministically, from Tiny
   Shakespeare: each document (one ``.txt`` file) is 20 to 60 speeches drawn at random, and 2% of
   the words of three letters or more get one letter replaced (typos and new names, so that the
   corpus keeps meeting chunks the encoder has not seen, as real text does).
2. ``prepare_shards`` encodes the folder with ``--workers`` processes into GPT-2 ``uint16`` shards;
   tiktoken's ``encode_ordinary_batch`` encodes the same documents with as many threads (its time
   excludes reading the files; ours includes reading, writing and hashing the shards). The two
   token streams, documents joined with ``<|endoftext|>``, are asserted identical (SHA-256).
3. In a fresh process, ``encode_iterable`` encodes the whole corpus fed line by line (the
   documents' lines with ``<|endoftext|>`` between documents); its stream is asserted identical
   to the shards', and the process's peak resident memory while encoding (the kernel's peak,
   reset once the tokenizer is built) above what it held before encoding is recorded against the
   corpus size.
4. The same small GPT trains for a few steps with ``train`` reading windows from the shards
   (``ShardedTokens``, through ``np.memmap``) and from the same tokens as an in-memory tensor.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import print_table, write_results  # noqa: E402

import numpy as np  # noqa: E402

from gptlib.runtime import atomic_write  # noqa: E402
from gptlib.tokenizer import ENDOFTEXT, BPETokenizer  # noqa: E402

CORPUS_VERSION = 1          # bump when the generator changes
TYPO_RATE = 0.02
SPEECHES_PER_DOC = (20, 60)


def build_corpus(folder: Path, megabytes: int, seed: int = 0) -> dict:
    """Write the generated corpus into ``folder`` (kept and reused when its record matches)."""
    from gptlib.datasets import load_text
    record = {"version": CORPUS_VERSION, "megabytes": megabytes, "seed": seed, "typo_rate": TYPO_RATE,
              "speeches_per_doc": list(SPEECHES_PER_DOC)}
    done = folder / "corpus.json"
    if done.exists() and {k: v for k, v in json.loads(done.read_text()).items() if k in record} == record:
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.txt"):
        old.unlink()
    speeches = [s.strip("\n") for s in load_text("tinyshakespeare").split("\n\n") if s.strip()]
    rng = random.Random(seed)
    word = re.compile(r"[A-Za-z]{3,}")

    def typo(m: re.Match) -> str:
        if rng.random() >= TYPO_RATE:
            return m.group()
        w = list(m.group())
        w[rng.randrange(len(w))] = rng.choice(string.ascii_lowercase)
        return "".join(w)

    written, k = 0, 0
    t0 = time.perf_counter()
    while written < megabytes * 1_000_000:
        doc = "\n\n".join(word.sub(typo, rng.choice(speeches)) for _ in range(rng.randint(*SPEECHES_PER_DOC)))
        data = doc.encode("utf-8")
        (folder / f"doc_{k:06d}.txt").write_bytes(data)
        written, k = written + len(data), k + 1
    out = {**record, "documents": k, "bytes": written, "seconds_to_build": round(time.perf_counter() - t0, 1)}
    atomic_write(done, lambda tmp: tmp.write_text(json.dumps(out, indent=1)))
    return out


def documents(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.txt"))


def stream_sha(arrays) -> str:
    """SHA-256 of uint16 token arrays laid end to end."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a, dtype=np.uint16).tobytes())
    return digest.hexdigest()


def tiktoken_run(paths: list[Path], threads: int, group: int = 2000) -> tuple[float, str, int]:
    """(seconds spent encoding, SHA-256 of the packed stream, tokens) with tiktoken's batch encoder."""
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    eot = enc.eot_token
    seconds, digest, tokens = 0.0, hashlib.sha256(), 0
    for start in range(0, len(paths), group):
        texts = [p.read_text(encoding="utf-8") for p in paths[start:start + group]]
        t0 = time.perf_counter()
        batch = enc.encode_ordinary_batch(texts, num_threads=threads)
        seconds += time.perf_counter() - t0
        for k, ids in enumerate(batch):
            if start + k > 0:
                digest.update(np.array([eot], dtype=np.uint16).tobytes())
                tokens += 1
            digest.update(np.asarray(ids, dtype=np.uint16).tobytes())
            tokens += len(ids)
    return seconds, digest.hexdigest(), tokens


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak resident memory (Linux 4.0+); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def iterable_worker(folder: Path) -> None:
    """Run in a fresh process: encode_iterable over the corpus's lines; print a JSON record."""
    tok = BPETokenizer.from_tiktoken("gpt2")
    tok.encode("warm up the regex and the cache")
    paths = documents(folder)

    def lines():
        for k, path in enumerate(paths):
            if k:
                yield ENDOFTEXT
            with open(path, encoding="utf-8") as f:
                yield from f

    before = rss_mb()
    reset = reset_peak_rss()            # the peak so far is building the tokenizer, not encoding
    sampled = before
    digest, tokens, buffer = hashlib.sha256(), 0, []
    t0 = time.perf_counter()
    for i in tok.encode_iterable(lines(), allowed_special={ENDOFTEXT}):
        buffer.append(i)
        if len(buffer) == 65536:
            digest.update(np.asarray(buffer, dtype=np.uint16).tobytes())
            tokens, buffer = tokens + len(buffer), []
            sampled = max(sampled, rss_mb())
    digest.update(np.asarray(buffer, dtype=np.uint16).tobytes())
    seconds = time.perf_counter() - t0
    peak = max(sampled, peak_rss_mb()) if reset else sampled
    print(json.dumps({"seconds": seconds, "sha256": digest.hexdigest(), "tokens": tokens + len(buffer),
                      "rss_before_mb": before, "peak_rss_mb": peak, "peak_from": "VmHWM after a reset"
                      if reset else "RSS sampled every 65,536 tokens", "cache_entries": len(tok._cache)}))


def train_speed(shards_dir: Path, steps: int) -> list[dict]:
    """Tokens/s of the same short run from the shards and from an in-memory tensor of the same tokens."""
    import torch
    from gptlib.data import get_batch
    from gptlib.model import GPT, GPTConfig
    from gptlib.shards import ShardedTokens
    from gptlib.training import TrainConfig, train
    sharded = ShardedTokens(shards_dir, verify=False)
    t0 = time.perf_counter()
    memory = sharded.tensor()
    load_s = time.perf_counter() - t0
    rows = []
    for name, data in (("shards (memmap)", sharded), ("in-memory tensor", memory)):
        n = len(data)
        train_data, val_data = data[: n - n // 100], data[n - n // 100:]
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=50304, block_size=128, n_layer=4, n_head=4, n_embd=128))
        config = TrainConfig(max_steps=steps, batch_size=16, eval_interval=steps + 1, eval_iters=2,
                             warmup_steps=0, device="cpu", compile=False, seed=0)
        t0 = time.perf_counter()
        history = train(model, train_data, val_data, config, progress=False)
        seconds = time.perf_counter() - t0
        draw = torch.Generator().manual_seed(0)
        t1 = time.perf_counter()
        for _ in range(200):
            get_batch(data, 128, 16, generator=draw)
        batch_ms = (time.perf_counter() - t1) / 200 * 1e3
        rows.append({"data": name, "steps": steps, "seconds": round(seconds, 2),
                     "tokens/s": round(steps * 16 * 128 / seconds), "get_batch ms": round(batch_ms, 3),
                     "final train loss": round(history.train_loss[-1], 4)})
    rows[1]["load s"] = round(load_s, 1)
    assert rows[0]["final train loss"] == rows[1]["final train loss"], rows    # the same batches, the same run
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "gptlib-bench-corpus")
    parser.add_argument("--shards", type=Path, default=Path(tempfile.gettempdir()) / "gptlib-bench-shards")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--iterable-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterable_worker:
        return iterable_worker(args.iterable_worker)

    from gptlib.shards import prepare_shards
    corpus = build_corpus(args.corpus, args.mb)
    paths = documents(args.corpus)
    mb = corpus["bytes"] / 1e6
    print(f"corpus: {corpus['documents']:,} documents, {mb:.1f} MB in {args.corpus}")

    tok = BPETokenizer.from_tiktoken("gpt2")
    for old in args.shards.glob("*"):
        old.unlink()
    t0 = time.perf_counter()
    manifest = prepare_shards(args.corpus, args.shards, tok, workers=args.workers)
    ours_s = time.perf_counter() - t0
    ours_sha = stream_sha(np.fromfile(args.shards / e["file"], dtype=np.uint16) for e in manifest["shards"])

    tk_s, tk_sha, tk_tokens = tiktoken_run(paths, args.workers)
    assert (ours_sha, manifest["tokens"]) == (tk_sha, tk_tokens), "prepare_shards and tiktoken disagree"

    out = subprocess.run([sys.executable, __file__, "--iterable-worker", str(args.corpus)],
                         capture_output=True, text=True, check=True)
    it = json.loads(out.stdout.strip().splitlines()[-1])
    assert (it["sha256"], it["tokens"]) == (ours_sha, manifest["tokens"]), "encode_iterable and the shards disagree"
    grown = it["peak_rss_mb"] - it["rss_before_mb"]

    encode_rows = [
        {"encoder": f"prepare_shards, {args.workers} processes", "seconds": round(ours_s, 1),
         "MB/s": round(mb / ours_s, 2), "tokens": manifest["tokens"], "stream": "identical"},
        {"encoder": f"tiktoken encode_ordinary_batch, {args.workers} threads", "seconds": round(tk_s, 1),
         "MB/s": round(mb / tk_s, 2), "tokens": tk_tokens, "stream": "identical"},
        {"encoder": "encode_iterable, 1 process, line by line", "seconds": round(it["seconds"], 1),
         "MB/s": round(mb / it["seconds"], 2), "tokens": it["tokens"], "stream": "identical"},
    ]
    print_table(encode_rows)
    ratio = tk_s / ours_s
    print(f"\nprepare_shards runs at {ratio:.2f}x tiktoken's speed (target >= 0.5)")
    print(f"encode_iterable: resident memory grew by {grown:.1f} MB while encoding {mb:.0f} MB "
          f"(peak {it['peak_rss_mb']:.0f} MB, {it['rss_before_mb']:.0f} MB before; target: growth < 50 MB); "
          f"chunk cache {it['cache_entries']:,} entries at the end\n")

    train_rows = train_speed(args.shards, args.train_steps)
    print_table(train_rows)
    write_results("data", {"corpus": corpus, "encode": encode_rows, "speed_vs_tiktoken": round(ratio, 3),
                           "encode_iterable_rss_growth_mb": round(grown, 1),
                           "encode_iterable_peak_rss_mb": round(it["peak_rss_mb"], 1), "train": train_rows})


if __name__ == "__main__":
    main()
