"""gptlib.training: metrics, optimizer groups, schedule, evaluation, precision switches, the loop and its
hooks, recipes, the CLI."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from gptlib.model import GPT
from gptlib.checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint
from gptlib.training import (DistInfo, History, Recipe, TrainConfig, autocast_context, bits_per_char,
                          configure_optimizer, draw_batch, evaluate, evaluate_full, load_recipe, lr_at,
                          grad_scaler, maybe_compile, param_groups, perplexity, recipe_file, resolve_precision,
                          train, train_step, uniform_loss)
from tools import ROOT


pytestmark = pytest.mark.usefixtures("one_thread")


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

def test_param_groups_decay_matrices_only(tiny_config):
    model = GPT(tiny_config())
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ln = model.transformer.h[0].ln_1
    assert any(p is ln.weight for p in no_decay["params"]) and any(p is ln.bias for p in no_decay["params"])
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # tied head counted once


def test_configure_optimizer_settings_and_errors(tiny_config):
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

def test_evaluate_is_repeatable_and_leaves_mode_and_rng_alone(tiny_config):
    torch.manual_seed(0)
    model = GPT(tiny_config(dropout=0.5)).train()
    _, val = pattern_data()
    state = torch.get_rng_state()
    a = evaluate(model, val, 16, 8, 3, seed=5)
    b = evaluate(model, val, 16, 8, 3, seed=5)
    assert a == b and model.training and torch.equal(state, torch.get_rng_state())
    full, n = evaluate_full(model, val, 16, batch_size=4)
    assert n == (len(val) - 1) // 16 * 16 and math.isfinite(full)


def test_precision_and_compile_are_off_on_cpu(tiny_config):
    assert resolve_precision("cpu") == "float32"
    assert isinstance(autocast_context("cpu"), type(autocast_context("cpu")))
    model = GPT(tiny_config())
    same, compiled = maybe_compile(model, "cpu")
    assert same is model and not compiled
    assert resolve_precision("cpu", "float16") == "float16"     # explicit: kept (CPU autocast has float16)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("cpu", "fp8")
    with pytest.raises(ValueError, match="MPS"):
        resolve_precision("mps", "bfloat16")


@pytest.mark.parametrize("device, available, capability, want", [
    ("cuda", True, (7, 5), "float16"),     # T4: bf16 only through emulation, though is_bf16_supported() says True
    ("cuda", True, (7, 0), "float16"),     # V100
    ("cuda", True, (8, 0), "bfloat16"),    # A100
    ("cuda:0", True, (9, 0), "bfloat16"),  # H100
    ("cpu", True, (8, 0), "float32"),
    ("mps", False, (8, 0), "float32"),
    ("cuda", False, (8, 0), "float32"),
])
def test_auto_precision_follows_the_compute_capability(monkeypatch, device, available, capability, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)   # what a T4 answers
    assert resolve_precision(device) == want
    scaler = grad_scaler(device)
    assert scaler.is_enabled() == (want == "float16")


def test_float16_autocast_and_its_scaler_on_the_cpu(tiny_config):
    """The float16 path runs on the CPU too: autocast to float16, an enabled GradScaler, a skipped
    step (and a lower scale) when a gradient is inf."""
    with autocast_context("cpu", "float16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float16
    scaler = grad_scaler("cpu", "float16")
    assert scaler.is_enabled() and scaler.get_scale() == 2.0 ** 16
    model = GPT(tiny_config())
    optimizer = configure_optimizer(model, 1e-3)
    cfg = TrainConfig(max_steps=4, warmup_steps=0, grad_clip=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randint(0, 13, (2, 8))
    loss, norm = train_step(model, optimizer, lambda i: model(x, x)[1] * math.inf, 0, cfg, scaler)
    assert not math.isfinite(norm.item()) and scaler.get_scale() == 2.0 ** 15      # skipped, scale halved
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    loss, norm = train_step(model, optimizer, lambda i: model(x, x)[1], 1, cfg, scaler)
    assert math.isfinite(norm.item()) and not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_float16_run_resumes_exactly_with_its_scaler(tmp_path, tiny_config):
    tr, va = pattern_data(1200)
    cfg = TrainConfig(max_steps=6, batch_size=4, warmup_steps=1, eval_interval=3, eval_iters=1, log_interval=2,
                      precision="float16", device="cpu", compile=False)
    torch.manual_seed(0)
    whole = train(GPT(tiny_config()), tr, va, cfg, progress=False)
    torch.manual_seed(0)
    train(GPT(tiny_config()), tr, va, cfg, checkpoint_path=tmp_path / "c.pt", until_step=3, progress=False)
    saved = read_checkpoint(tmp_path / "c.pt")["scaler"]
    assert saved and saved["scale"] > 0
    torch.manual_seed(5)
    resumed = train(GPT(tiny_config()), tr, va, cfg, resume_from=tmp_path / "c.pt", progress=False)
    assert resumed.train_loss == whole.train_loss and resumed.val_loss == whole.val_loss


def test_draw_batch_slices_one_global_batch():
    data = torch.arange(500)
    whole = draw_batch(data, 8, 6, torch.Generator().manual_seed(3))
    parts = [draw_batch(data, 8, 2, torch.Generator().manual_seed(3), DistInfo(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])


# ---- the loop ------------------------------------------------------------------------------

def test_train_loss_falls_and_history_is_complete(tiny_config):
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


def test_train_rejects_data_shorter_than_context(tiny_config):
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
    out = subprocess.run([sys.executable, "-m", "gptlib", "--config", str(path), "--no-progress"],
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
    out = subprocess.run([sys.executable, "-m", "gptlib", "--config", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "unknown config sections: modle" in out.stderr


def test_train_config_takes_what_fine_tuning_needs(tiny_config):
    cfg = TrainConfig(max_steps=5, lr=1e-3, min_lr=1e-3, warmup_steps=0, eval_interval=50, eval_iters=1)
    assert {lr_at(s, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps) for s in range(5)} == {1e-3}
    train_ids, val_ids = pattern_data()
    torch.manual_seed(0)
    h = train(GPT(tiny_config()), train_ids, val_ids, cfg, progress=False)
    assert h.eval_step == [5] and h.lr == [1e-3] * 5      # evaluated only at the end, constant rate


@pytest.mark.parametrize("kw, phrase", [
    (dict(beta2=1.0), "beta"), (dict(precision="fp16"), "precision"), (dict(compile="yes"), "compile"),
    (dict(eval_batch_size=0), "eval_batch_size"), (dict(warmup_steps=1.5), "warmup_steps"),
])
def test_train_config_checks_its_fields_once(kw, phrase):
    with pytest.raises(ValueError, match=phrase):
        TrainConfig(**kw)


# ---- the hooks: one loop for any model and any loss ----------------------------------------

class Classifier(torch.nn.Module):
    """Not a GPT: a frozen random feature layer and a linear head, on a linearly separable task."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(16, 2)
        self.features.requires_grad_(False)

    def forward(self, x):
        return self.head(torch.tanh(self.features(x)))


POINTS = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
LABELS = (POINTS[:, 0] + POINTS[:, 1] > 0).long()


def classifier_loss(net, generator, device):
    rows = torch.randint(0, len(POINTS), (16,), generator=generator)
    return torch.nn.functional.cross_entropy(net(POINTS[rows].to(device)), LABELS[rows].to(device))


def classifier_eval(model):
    return torch.nn.functional.cross_entropy(model(POINTS[:128]), LABELS[:128]).item()


HOOKED = TrainConfig(max_steps=30, batch_size=16, lr=3e-2, min_lr=3e-3, warmup_steps=2, eval_interval=10,
                     eval_iters=1, log_interval=4)


def hooked_run(**kw):
    torch.manual_seed(0)
    model = Classifier()
    frozen = model.features.weight.clone()
    h = train(model, None, None, HOOKED, batch_loss=classifier_loss, eval_loss=classifier_eval,
              progress=False, **kw)
    return model, frozen, h


def test_batch_loss_hook_trains_any_module_and_leaves_frozen_parameters_alone():
    model, frozen, h = hooked_run()
    assert h.eval_step == [0, 10, 20, 30] and h.val_loss[-1] < h.val_loss[0] - 0.2
    assert all(math.isnan(v) for v in h.eval_train_loss)       # eval_loss gives val only
    assert torch.equal(model.features.weight, frozen)          # frozen: not in the optimizer
    assert model.training                                      # eval_loss ran in eval mode, then back


def test_batch_loss_hook_resumes_exactly(tmp_path):
    _, _, whole = hooked_run()
    hooked_run(checkpoint_path=tmp_path / "c.pt", until_step=13)
    assert read_checkpoint(tmp_path / "c.pt")["model_config"] is None
    torch.manual_seed(5)
    resumed = train(Classifier(), None, None, HOOKED, batch_loss=classifier_loss, eval_loss=classifier_eval,
                    resume_from=tmp_path / "c.pt", progress=False)
    assert resumed.train_loss == whole.train_loss and resumed.val_loss == whole.val_loss
    with pytest.raises(CheckpointError, match="no GPTConfig"):
        model_from_checkpoint(tmp_path / "c.pt")


def test_no_val_data_and_no_eval_loss_means_no_evaluation():
    seen = []
    torch.manual_seed(0)
    h = train(Classifier(), None, None, HOOKED, batch_loss=classifier_loss, progress=False,
              callbacks=[lambda *a: seen.append(a)])
    assert h.eval_step == h.val_loss == [] and seen == [] and len(h.train_loss) == HOOKED.max_steps


def test_hooks_are_needed_for_a_model_that_is_not_a_gpt(tiny_config):
    with pytest.raises(ValueError, match="give batch_loss"):
        train(Classifier(), None, None, HOOKED, progress=False)
    with pytest.raises(ValueError, match="train_data is None"):
        train(GPT(tiny_config()), None, pattern_data()[1], HOOKED, progress=False)
    frozen = GPT(tiny_config()).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train(frozen, *pattern_data(), HOOKED, progress=False)


# ---- recipes and the command line ----------------------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.json")), ids=lambda p: p.stem)
def test_every_committed_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe == load_recipe(path.stem) and recipe_file(path.stem) == path
    assert recipe.description and recipe.data["dataset"] == "tinyshakespeare"
    assert recipe.model_config(65).vocab_size == 65


def test_profiles_have_recipes():
    for profile in ("smoke", "cpu", "gpu"):
        assert isinstance(load_recipe(f"shakespeare_char_{profile}"), Recipe)


@pytest.mark.parametrize("values, phrase", [
    ({"modle": {}}, "unknown config sections: modle"),
    ({"model": {"vocab_size": 65}}, "the tokenizer sets vocab_size"),
    ({"model": {"n_embd": 30, "n_head": 4}}, "divisible"),
    ({"data": {"tokeniser": "char"}}, "unknown data keys: tokeniser"),
    ({"data": {"tokenizer": "words"}}, "tokenizer must be"),
])
def test_recipe_errors_name_the_problem(values, phrase):
    with pytest.raises(ValueError, match=phrase):
        Recipe.from_dict(values)


def test_unknown_recipe_name_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match="known: .*shakespeare_char_cpu"):
        load_recipe("shakespeare_char_tpu")


def test_cli_runs_the_smoke_recipe_as_the_chapter_prints_it(tmp_path):
    """The chapter's command, from the repository root, on the committed smoke recipe."""
    out = subprocess.run([sys.executable, "-m", "gptlib", "--config", "configs/shakespeare_char_smoke.json",
                          "--out-dir", str(tmp_path / "run"), "--until", "3", "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GPTLIB_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert read_checkpoint(tmp_path / "run" / "ckpt.pt")["step"] == 3
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history["train_loss"]) == 3 and history["eval_step"] == [0]


def test_live_plot_draws_in_hosted_notebooks(monkeypatch):
    """Colab's and Kaggle's shells subclass ZMQInteractiveShell under other names: found by type."""
    import types
    import IPython
    from ipykernel.zmqshell import ZMQInteractiveShell
    from gptlib.viz.training import is_interactive

    class Shell(ZMQInteractiveShell):      # as google.colab._shell.Shell is
        pass
    for name in ("GPTLIB_LIVE", "KAGGLE_KERNEL_RUN_TYPE", "JPY_SESSION_NAME", "VSCODE_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(IPython, "get_ipython", lambda: Shell.__new__(Shell))
    assert not is_interactive()                        # a kernel run in batch (nbval, the book build)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert is_interactive()                            # Colab
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert is_interactive()                            # Kaggle
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    assert not is_interactive()                        # a terminal IPython, or no IPython at all


def test_sliding_evaluation_scores_every_target_once(tiny_config):
    from gptlib.training import evaluate_sliding
    torch.manual_seed(0)
    model = GPT(tiny_config())
    _, val = pattern_data()
    block = model.config.block_size
    data = val[: 4 * block + 1]                       # four whole windows
    full, n = evaluate_full(model, data, block, batch_size=3)
    same, m = evaluate_sliding(model, data, block, stride=block, batch_size=3)
    assert m == n == len(data) - 1 and math.isclose(same, full, rel_tol=1e-6)   # stride = block_size: the same windows
    half, k = evaluate_sliding(model, val, block, batch_size=5)
    assert k == len(val) - 1 and math.isfinite(half)
    with pytest.raises(ValueError, match="stride"):
        evaluate_sliding(model, val, block, stride=block + 1)
