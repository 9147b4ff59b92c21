"""Checkpoints: atomic, safe to load, clear errors, and a resumed run equals an uninterrupted one."""
import json
import os
import subprocess
import sys

import pytest
import torch

from gptlib.model import GPT
from gptlib.checkpoint import (CheckpointError, best_checkpoint_path, load_checkpoint, model_from_checkpoint,
                               read_checkpoint, save_checkpoint)
from gptlib.training import TrainConfig, evaluate, train
from tools import ROOT


pytestmark = pytest.mark.usefixtures("one_thread")


def data():
    ids = (torch.arange(3000) * 5) % 13
    ids[::7] = (ids[::7] + 3) % 13
    return ids[:2700], ids[2700:]


RUN = TrainConfig(max_steps=12, batch_size=4, grad_accum_steps=2, warmup_steps=3, eval_interval=4,
                  eval_iters=2, log_interval=5, lr=3e-3, min_lr=3e-4)


def test_resumed_run_equals_uninterrupted_run(tmp_path, tiny_config):
    """Train 12 steps; separately train 5, save, build a *new* model in a scrambled RNG state,
    load, continue: same losses bit for bit (dropout on, so torch's RNG state matters)."""
    tr, va = data()
    torch.manual_seed(1)
    whole = train(GPT(tiny_config(dropout=0.1)), tr, va, RUN, progress=False)
    torch.manual_seed(1)
    first = train(GPT(tiny_config(dropout=0.1)), tr, va, RUN, checkpoint_path=tmp_path / "c.pt",
                  until_step=5, progress=False)
    assert len(first.train_loss) == 5 and read_checkpoint(tmp_path / "c.pt")["step"] == 5
    torch.manual_seed(999)
    model = GPT(tiny_config(dropout=0.1))
    resumed = train(model, tr, va, RUN, resume_from=tmp_path / "c.pt", progress=False)
    assert resumed.train_loss == whole.train_loss
    assert resumed.val_loss == whole.val_loss and resumed.grad_norm == whole.grad_norm


@pytest.mark.slow
def test_resume_in_new_processes_via_cli(tmp_path):
    """The same, with each part in its own process (python -m gptlib --until / --resume)."""
    config = {"data": {"tokenizer": "char", "max_chars": 20000},
              "model": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32, "dropout": 0.1},
              "train": {"max_steps": 8, "batch_size": 4, "warmup_steps": 2, "eval_interval": 4,
                        "eval_iters": 1, "log_interval": 3}}
    histories = {}
    for name, extra in (("whole", []), ("split", ["--until", "3"]), ("split", ["--resume"])):
        cfg = {**config, "out_dir": str(tmp_path / name)}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg))
        out = subprocess.run([sys.executable, "-m", "gptlib", "--config", str(path), "--no-progress",
                              *extra], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "GPTLIB_THREADS": "1"})
        assert out.returncode == 0, out.stderr
        histories[name] = json.loads((tmp_path / name / "history.json").read_text())
    assert histories["split"]["train_loss"] == histories["whole"]["train_loss"]
    assert histories["split"]["val_loss"] == histories["whole"]["val_loss"]


def test_roundtrip_restores_weights_optimizer_and_rng(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    gen = torch.Generator().manual_seed(7)
    gen_state, torch_state = gen.get_state(), torch.get_rng_state()
    save_checkpoint(tmp_path / "c.pt", model, opt, step=3, train_config=RUN, generator=gen,
                    extra={"note": "hi"})
    torch.rand(5), torch.rand(5, generator=gen)          # move both generators on
    clone, opt2 = GPT(tiny_config()), None
    opt2 = torch.optim.AdamW(clone.parameters(), lr=1e-3)
    payload = load_checkpoint(tmp_path / "c.pt", clone, opt2, generator=gen)
    assert payload["step"] == 3 and payload["extra"] == {"note": "hi"}
    assert payload["train_config"]["batch_size"] == RUN.batch_size
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), clone.state_dict().values()))
    assert clone.lm_head.weight is clone.transformer.wte.weight      # tying survives loading
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(gen.get_state(), gen_state) and torch.equal(torch.get_rng_state(), torch_state)
    rebuilt, _ = model_from_checkpoint(tmp_path / "c.pt")
    assert rebuilt.config == model.config


def test_write_is_atomic(tmp_path, monkeypatch, tiny_config):
    model = GPT(tiny_config())
    target = tmp_path / "c.pt"
    save_checkpoint(target, model, step=1)
    before = target.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, model, step=2)
    assert target.read_bytes() == before                      # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]   # no temporary file left behind


def test_truncated_file_is_a_clear_error(tmp_path, tiny_config):
    path = save_checkpoint(tmp_path / "c.pt", GPT(tiny_config()), step=1)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(path, GPT(tiny_config()))


def test_garbage_and_foreign_files_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="could not be read"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a gptlib checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "missing.pt")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "gptlib-checkpoint", "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="could not be read"):
        read_checkpoint(path)


def test_mismatched_model_names_the_fields(tmp_path, tiny_config):
    path = save_checkpoint(tmp_path / "c.pt", GPT(tiny_config()), step=1)
    with pytest.raises(CheckpointError, match=r"n_embd: checkpoint 32, model 64"):
        load_checkpoint(path, GPT(tiny_config(n_embd=64)))


def test_optimizer_missing_or_mismatched(tmp_path, tiny_config):
    model = GPT(tiny_config())
    path = save_checkpoint(tmp_path / "c.pt", model, step=1)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, model, torch.optim.AdamW(model.parameters()))
    opt = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path / "d.pt", model, opt, step=1)
    other = torch.optim.AdamW([{"params": list(model.parameters())[:2]}, {"params": list(model.parameters())[2:]}])
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        load_checkpoint(path, model, other)


def test_newer_version_is_refused(tmp_path, tiny_config):
    path = save_checkpoint(tmp_path / "c.pt", GPT(tiny_config()), step=1)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="version 99"):
        read_checkpoint(path)


KEEP_BEST = TrainConfig(**{**RUN.__dict__, "keep_best": True, "max_steps": 24, "lr": 1e-2, "min_lr": 1e-3})


def unrelated_val():
    """Random tokens: held-out "text" the training pattern says nothing about."""
    return torch.randint(0, 13, (300,), generator=torch.Generator().manual_seed(0))


def test_keep_best_needs_a_checkpoint_path(tiny_config):
    tr, va = data()
    with pytest.raises(ValueError, match="keep_best=True needs a checkpoint_path"):
        train(GPT(tiny_config()), tr, va, KEEP_BEST, progress=False)


@pytest.mark.parametrize("val_kind", ["same pattern", "other text"])
def test_keep_best_keeps_the_lowest_validation_checkpoint(tmp_path, val_kind, tiny_config):
    """On held-out text like the training text the estimates fall; on unrelated random tokens they
    rise once the model grows confident. Either way the best checkpoint holds the step of the
    lowest estimate, and its weights reproduce that estimate."""
    tr, va = data()
    if val_kind == "other text":
        va = unrelated_val()
    torch.manual_seed(1)
    history = train(GPT(tiny_config()), tr, va, KEEP_BEST, checkpoint_path=tmp_path / "run.pt",
                    progress=False)
    lowest = history.best_step
    best_path = tmp_path / "run.best.pt"
    assert best_checkpoint_path(tmp_path / "run.pt") == best_path
    model, payload = model_from_checkpoint(best_path)
    assert payload["step"] == lowest
    if val_kind == "other text":
        assert lowest < history.eval_step[-1], "the estimates on unrelated text should rise"
    else:
        assert lowest == history.eval_step[-1], "the estimates on held-out text like the training text should fall"
    again = evaluate(model, va, 16, KEEP_BEST.batch_size, KEEP_BEST.eval_iters, seed=KEEP_BEST.seed + 1)
    assert again == pytest.approx(history.best_val, abs=1e-6)
    assert read_checkpoint(tmp_path / "run.pt")["step"] == KEEP_BEST.max_steps


def test_keep_best_survives_a_resume(tmp_path, tiny_config):
    """A run split in two keeps the same best checkpoint as one uninterrupted run."""
    tr, va = data()[0], unrelated_val()
    torch.manual_seed(1)
    train(GPT(tiny_config()), tr, va, KEEP_BEST, checkpoint_path=tmp_path / "whole.pt",
          progress=False)
    torch.manual_seed(1)
    train(GPT(tiny_config()), tr, va, KEEP_BEST, checkpoint_path=tmp_path / "split.pt", until_step=10,
          progress=False)
    train(GPT(tiny_config()), tr, va, KEEP_BEST, checkpoint_path=tmp_path / "split.pt",
          resume_from=tmp_path / "split.pt", progress=False)
    whole, split = (read_checkpoint(tmp_path / f"{name}.best.pt") for name in ("whole", "split"))
    assert whole["step"] == split["step"]
    for key, value in whole["model"].items():
        assert torch.equal(value, split["model"][key]), key
