"""gptlib.train: metrics, optimizer groups, schedule, evaluation, precision switches, the loop, the CLI."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptlib.model import GPT, GPTConfig
from gptlib.train import (DistInfo, History, TrainConfig, autocast_context, bits_per_char,
                          configure_optimizer, draw_batch, evaluate, evaluate_full, lr_at,
                          maybe_compile, param_groups, perplexity, resolve_precision, sample, train,
                          uniform_loss)

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw):
    return GPTConfig(**{**dict(vocab_size=13, block_size=16, n_layer=1, n_head=2, n_embd=32), **kw})


def pattern_data(n=3000):
    """A learnable stream: a fixed cycle with a little noise."""
    g = torch.Generator().manual_seed(0)
    ids = (torch.arange(n) * 5) % 13
    noise = torch.rand(n, generator=g) < 0.05
    ids[noise] = torch.randint(0, 13, (int(noise.sum()),), generator=g)
    return ids[: int(n * 0.9)], ids[int(n * 0.9):]


# ---- metrics -------------------------------------------------------------------------------

def test_metrics_relations():
    assert uniform_loss(65) == pytest.approx(math.log(65))
    assert perplexity(uniform_loss(65)) == pytest.approx(65)
    assert bits_per_char(math.log(2), 10, 10) == pytest.approx(1.0)
    # 3 chars per token: 3 nats per token is 1 nat per char
    assert bits_per_char(3.0, 100, 300) == pytest.approx(1 / math.log(2))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_metrics_reject_bad_losses(bad):
    with pytest.raises(ValueError, match="loss"):
        perplexity(bad)
    with pytest.raises(ValueError, match="loss"):
        bits_per_char(bad, 1, 1)
    with pytest.raises(ValueError, match="positive"):
        bits_per_char(1.0, 0, 1)


# ---- optimizer -----------------------------------------------------------------------------

def test_param_groups_decay_matrices_only():
    model = GPT(tiny_config())
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ln = model.transformer.h[0].ln_1
    assert any(p is ln.weight for p in no_decay["params"]) and any(p is ln.bias for p in no_decay["params"])
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # tied head counted once


def test_configure_optimizer_settings_and_errors():
    model = GPT(tiny_config())
    opt = configure_optimizer(model, 1e-3, 0.1, (0.9, 0.99))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.99)
    with pytest.raises(ValueError, match="lr"):
        configure_optimizer(model, 0.0)
    with pytest.raises(ValueError, match="betas"):
        configure_optimizer(model, 1e-3, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, -0.1)


# ---- schedule ------------------------------------------------------------------------------

def test_lr_schedule_shape():
    args = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, **args) == pytest.approx(0.1)
    assert lr_at(9, **args) == 1.0
    assert lr_at(10, **args) == 1.0
    assert lr_at(60, **args) == pytest.approx(0.55)            # halfway: midpoint
    assert lr_at(110, **args) == 0.1 and lr_at(500, **args) == 0.1
    values = [lr_at(s, **args) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))   # monotone decay
    assert lr_at(0, 1.0, 0.1, 0, 10) == 1.0                    # no warmup


@pytest.mark.parametrize("kw, phrase", [
    (dict(step=-1), "step"), (dict(warmup_steps=20, max_steps=10), "warmup_steps"),
    (dict(min_lr=2.0), "min_lr"),
])
def test_lr_schedule_rejects_bad_settings(kw, phrase):
    args = {**dict(step=0, max_lr=1.0, min_lr=0.1, warmup_steps=5, max_steps=10), **kw}
    with pytest.raises(ValueError, match=phrase):
        lr_at(**args)


# ---- config --------------------------------------------------------------------------------

def test_train_config_validation_and_from_dict():
    assert TrainConfig.from_dict({"max_steps": 5, "warmup_steps": 1}).max_steps == 5
    with pytest.raises(ValueError, match="unknown TrainConfig keys: lerning_rate"):
        TrainConfig.from_dict({"lerning_rate": 1e-3})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(max_steps=10, warmup_steps=20)
    assert TrainConfig(batch_size=12, grad_accum_steps=2).tokens_per_step(64, world_size=4) == 12 * 64 * 2 * 4


# ---- evaluation, precision, compile --------------------------------------------------------

def test_evaluate_is_repeatable_and_leaves_mode_and_rng_alone():
    torch.manual_seed(0)
    model = GPT(tiny_config(dropout=0.5)).train()
    _, val = pattern_data()
    state = torch.get_rng_state()
    a = evaluate(model, val, 16, 8, 3, seed=5)
    b = evaluate(model, val, 16, 8, 3, seed=5)
    assert a == b and model.training and torch.equal(state, torch.get_rng_state())
    full, n = evaluate_full(model, val, 16, batch_size=4)
    assert n == (len(val) - 1) // 16 * 16 and math.isfinite(full)


def test_precision_and_compile_are_off_on_cpu():
    assert resolve_precision("cpu") == "float32"
    assert isinstance(autocast_context("cpu"), type(autocast_context("cpu")))
    model = GPT(tiny_config())
    same, compiled = maybe_compile(model, "cpu")
    assert same is model and not compiled
    with pytest.raises(ValueError, match="gradient scaler"):
        resolve_precision("cpu", "float16")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("cpu", "fp8")


def test_draw_batch_slices_one_global_batch():
    data = torch.arange(500)
    whole = draw_batch(data, 8, 6, torch.Generator().manual_seed(3))
    parts = [draw_batch(data, 8, 2, torch.Generator().manual_seed(3), DistInfo(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])


def test_sample_is_reproducible_and_checks_temperature():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    start = torch.zeros(1, 1, dtype=torch.long)
    a = sample(model, start, 20, generator=torch.Generator().manual_seed(1))
    b = sample(model, start, 20, generator=torch.Generator().manual_seed(1))
    assert a.shape == (1, 21) and torch.equal(a, b)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, start, 2, temperature=0)


# ---- the loop ------------------------------------------------------------------------------

def test_train_loss_falls_and_history_is_complete():
    train_ids, val_ids = pattern_data()
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=40, batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=4,
                      eval_interval=10, eval_iters=2, log_interval=7)
    seen = []
    h = train(GPT(tiny_config()), train_ids, val_ids, cfg, progress=False,
              callbacks=[lambda step, hist, model: seen.append(step)])
    assert h.step == list(range(40)) and len(h.train_loss) == len(h.grad_norm) == len(h.lr) == 40
    assert h.eval_step == [0, 10, 20, 30, 40] == seen
    assert h.val_loss[-1] < h.val_loss[0] - 0.5
    assert h.lr[cfg.warmup_steps - 1] == cfg.lr
    assert History.from_dict(h.to_dict()) == h


def test_train_rejects_data_shorter_than_context():
    with pytest.raises(ValueError, match="val_data"):
        train(GPT(tiny_config()), torch.arange(100) % 13, torch.arange(10) % 13,
              TrainConfig(max_steps=2, warmup_steps=0), progress=False)


def test_cli_trains_and_writes_checkpoint(tmp_path):
    config = {"data": {"tokenizer": "char", "max_chars": 20000},
              "model": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32},
              "train": {"max_steps": 6, "batch_size": 4, "warmup_steps": 1, "eval_interval": 3,
                        "eval_iters": 1},
              "out_dir": str(tmp_path / "run")}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-m", "gptlib.train", "--config", str(path), "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GPTLIB_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "val loss" in out.stdout
    assert (tmp_path / "run" / "ckpt.pt").is_file()
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["eval_step"] == [0, 3, 6]


def test_cli_rejects_unknown_keys(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"train": {"max_steps": 2}, "modle": {}}))
    out = subprocess.run([sys.executable, "-m", "gptlib.train", "--config", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "unknown config sections: modle" in out.stderr
