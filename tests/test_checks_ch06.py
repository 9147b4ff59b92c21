"""Chapter 6 checks: the references pass, the usual mistakes fail with the matching hint."""
import inspect
import math
import random
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from gptlib.checkpoint import (_rng_state, _set_numpy_state, _set_rng_state, load_checkpoint, read_checkpoint,
                               save_checkpoint, unwrap)
from gptlib.data import get_batch, iter_batches
from gptlib.exercises import run_check
import gptlib.checkpoint
import gptlib.training
from gptlib.training import (DistInfo, History, bits_per_char, configure_optimizer, draw_batch, evaluate,
                             evaluate_full, lr_at, param_groups, perplexity, train, train_step)


def _edited(func, name, *edits, namespace=None):
    """``func`` (a gptlib function) with each ``(old, new)`` of ``edits`` applied to its source, run in
    its module's namespace (or ``namespace``)."""
    source = inspect.getsource(func)
    for old, new in edits:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    namespace = dict(vars(sys.modules[func.__module__])) if namespace is None else namespace
    exec(compile(source, f"<{name}>", "exec"), namespace)
    namespace[func.__name__].__name__ = name
    return namespace[func.__name__]


# ---- 6.1 perplexity -----------------------------------------------------------------------

def perplexity_in_base_2(loss):
    return 2.0 ** loss


def perplexity_as_a_probability(loss):
    return math.exp(-loss)


def perplexity_as_the_loss(loss):
    return loss


# ---- 6.2 bits per character ----------------------------------------------------------------

def bpc_times_ln2(loss, t, c):
    return loss * t / c * math.log(2)


def bpc_log2_of_loss(loss, t, c):
    return math.log2(loss * t / c)


def bpc_per_token(loss, t, c):
    return loss / math.log(2)


def bpc_ratio_swapped(loss, t, c):
    return loss * c / t / math.log(2)


def bpc_nats(loss, t, c):
    return loss * t / c


# ---- 6.3 parameter groups ------------------------------------------------------------------

def groups_decaying_everything(model, wd):
    return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": wd}]


def groups_by_name_decaying_layernorm_gains(model, wd):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if not n.endswith("bias")], "weight_decay": wd},
            {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0}]


def groups_with_tied_weight_twice(model, wd):
    mats = [m.weight for m in model.modules() if hasattr(m, "weight") and m.weight.requires_grad
            and m.weight.dim() >= 2]
    vecs = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": mats, "weight_decay": wd}, {"params": vecs, "weight_decay": 0.0}]


def groups_with_frozen_parameters(model, wd):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": wd},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def groups_with_a_fixed_decay(model, wd):
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


# ---- 6.4 the optimizer ---------------------------------------------------------------------

def adamw_over_every_parameter(model, lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device_type=None):
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def adamw_with_the_default_betas(model, lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device_type=None):
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, eps=eps)


def adam_with_an_l2_penalty(model, lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device_type=None):
    return torch.optim.Adam(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


def adamw_fused_everywhere(model, lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device_type=None):
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=True)


def adamw_never_fused(model, lr, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, device_type=None):
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


# ---- 6.5 warmup + cosine -------------------------------------------------------------------

def _cosine(step, max_lr, min_lr, warmup, max_steps, floor=None):
    progress = (step - warmup) / (max_steps - warmup)
    low = min_lr if floor is None else floor
    return low + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - low)


def lr_warmup_starting_at_zero(step, max_lr, min_lr, warmup, max_steps):
    if step < warmup:
        return max_lr * step / warmup
    return min_lr if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps)


def lr_warmup_that_never_reaches_max(step, max_lr, min_lr, warmup, max_steps):
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    return min_lr if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps)


def lr_decay_to_zero(step, max_lr, min_lr, warmup, max_steps):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    return 0.0 if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps, floor=0.0)


def lr_cosine_to_zero_clamped_at_the_end(step, max_lr, min_lr, warmup, max_steps):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    return min_lr if step >= max_steps else _cosine(step, max_lr, min_lr, warmup, max_steps, floor=0.0)


def lr_linear_decay(step, max_lr, min_lr, warmup, max_steps):
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= max_steps:
        return min_lr
    return max_lr - (max_lr - min_lr) * (step - warmup) / (max_steps - warmup)


# ---- 6.6 the training step -----------------------------------------------------------------

def _slipped_step(model, optimizer, micro_loss, step, config, *, set_lr=True, divide=True, clip=True,
                  zero=True, micro_batches=None, last_loss=False):
    """The step with one of the usual slips switched on."""
    if set_lr:
        lr = lr_at(step, config.lr, config.min_lr, config.warmup_steps, config.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
    losses = []
    for i in range(config.grad_accum_steps if micro_batches is None else micro_batches):
        loss = micro_loss(i)
        (loss / config.grad_accum_steps if divide else loss).backward()
        losses.append(loss.detach())
    if clip:
        norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip or math.inf)
    else:
        norm = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.step()
    if zero:
        optimizer.zero_grad(set_to_none=True)
    return (losses[-1] if last_loss else torch.stack(losses).mean()), norm


def step_without_setting_the_lr(*args):
    return _slipped_step(*args, set_lr=False)


def step_without_dividing_by_accumulation(*args):
    return _slipped_step(*args, divide=False)


def step_without_clipping(*args):
    return _slipped_step(*args, clip=False)


def step_that_keeps_the_gradients(*args):
    return _slipped_step(*args, zero=False)


def step_with_one_micro_batch(*args):
    return _slipped_step(*args, micro_batches=1)


def step_returning_the_last_loss(*args):
    return _slipped_step(*args, last_loss=True)


def step_returning_the_clipped_norm(model, optimizer, micro_loss, step, config):
    loss, norm = train_step(model, optimizer, micro_loss, step, config)
    return loss, norm.clamp(max=config.grad_clip) if config.grad_clip > 0 else norm


def step_returning_floats(model, optimizer, micro_loss, step, config):
    loss, norm = train_step(model, optimizer, micro_loss, step, config)
    return loss.item(), norm.item()


# ---- 6.7 evaluate --------------------------------------------------------------------------

def _losses(model, data, block_size, batch_size, eval_iters, generator):
    return [model(*get_batch(data, block_size, batch_size, generator=generator))[1] for _ in range(eval_iters)]


def evaluate_in_train_mode(model, data, block_size, batch_size, eval_iters, *, seed=0, device=None, autocast=None):
    with torch.no_grad():
        losses = _losses(model, data, block_size, batch_size, eval_iters, torch.Generator().manual_seed(seed))
    return torch.stack(losses).mean().item()


def evaluate_with_gradients(model, data, block_size, batch_size, eval_iters, *, seed=0, device=None, autocast=None):
    was = model.training
    model.eval()
    losses = _losses(model, data, block_size, batch_size, eval_iters, torch.Generator().manual_seed(seed))
    model.train(was)
    return torch.stack(losses).mean().item()


def evaluate_that_leaves_train_mode_on(model, data, block_size, batch_size, eval_iters, *, seed=0, device=None,
                                       autocast=None):
    model.eval()
    with torch.no_grad():
        losses = _losses(model, data, block_size, batch_size, eval_iters, torch.Generator().manual_seed(seed))
    model.train()
    return torch.stack(losses).mean().item()


def evaluate_with_the_global_generator(model, data, block_size, batch_size, eval_iters, *, seed=0, device=None,
                                       autocast=None):
    was = model.training
    model.eval()
    with torch.no_grad():
        losses = _losses(model, data, block_size, batch_size, eval_iters, None)
    model.train(was)
    return torch.stack(losses).mean().item()


def evaluate_summing(model, data, block_size, batch_size, eval_iters, *, seed=0, device=None, autocast=None):
    return evaluate(model, data, block_size, batch_size, eval_iters, seed=seed) * eval_iters


def evaluate_returning_a_tensor(model, data, block_size, batch_size, eval_iters, *, seed=0, device=None,
                                autocast=None):
    return torch.tensor(evaluate(model, data, block_size, batch_size, eval_iters, seed=seed))


# ---- 6.8 evaluate_full ---------------------------------------------------------------------

def evaluate_full_mean_of_batch_means(model, data, block_size, batch_size=32, device=None, autocast=None):
    was = model.training
    model.eval()
    with torch.no_grad():
        means = [model(x, y)[1].item() for x, y in iter_batches(data, block_size, batch_size)]
        count = sum(y.numel() for _, y in iter_batches(data, block_size, batch_size))
    model.train(was)
    return sum(means) / len(means), count


def evaluate_full_counting_windows(model, data, block_size, batch_size=32, device=None, autocast=None):
    mean, count = evaluate_full(model, data, block_size, batch_size)
    return mean, count // block_size


def evaluate_full_in_train_mode(model, data, block_size, batch_size=32, device=None, autocast=None):
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in iter_batches(data, block_size, batch_size):
            total += model(x, y)[1].item() * y.numel()
            count += y.numel()
    return total / count, count


def evaluate_full_that_leaves_eval_mode_on(model, data, block_size, batch_size=32, device=None, autocast=None):
    result = evaluate_full(model, data, block_size, batch_size)
    model.eval()
    return result


# ---- 6.10 / 6.11 random states ---------------------------------------------------------------

def capture_without_numpy(generator=None):
    state = _rng_state(generator)
    del state["numpy"]
    return state


def capture_with_numpys_own_tuple(generator=None):
    return {**_rng_state(generator), "numpy": np.random.get_state()}


def capture_without_the_batch_generator(generator=None):
    return _rng_state(None)


def capture_a_fresh_torch_state(generator=None):
    return {**_rng_state(generator), "torch": torch.Generator().get_state()}


def _restore_but(skip):
    def restore(state, generator=None):
        if "python" not in skip:
            random.setstate(state["python"])
        if "numpy" not in skip:
            _set_numpy_state(state["numpy"])
        if "torch" not in skip:
            torch.set_rng_state(state["torch"])
        if generator is not None and "generator" not in skip:
            generator.set_state(state["generator"])
    return restore


restore_without_torch = _restore_but({"torch"})
restore_without_the_batch_generator = _restore_but({"generator"})
restore_without_python = _restore_but({"python"})


# ---- 6.12 save_checkpoint -------------------------------------------------------------------

def _save_but(**changes):
    def save(path, model, optimizer=None, step=0, train_config=None, generator=None, history=None, extra=None):
        payload = {"format": "gptlib-checkpoint", "version": 1, "step": step, "model_config": None,
                   "train_config": train_config, "model": model.state_dict(),
                   "optimizer": optimizer.state_dict() if optimizer is not None else None,
                   "rng": _rng_state(generator), "history": history.to_dict() if history else None,
                   "extra": extra or {}}
        for key, value in changes.items():
            payload[key] = value(payload, locals()) if callable(value) else value
        torch.save(payload, path)
        return path
    return save


save_without_the_optimizer = _save_but(optimizer=None)
save_without_the_batch_generator = _save_but(rng=lambda payload, args: _rng_state(None))
save_the_next_step = _save_but(step=lambda payload, args: payload["step"] + 1)
save_without_the_history = _save_but(history=None)


def _calling_a_slipped(func, helper, name, *edits):
    """``func`` (gptlib.checkpoint's) calling its ``helper`` with ``edits`` applied."""
    namespace = dict(vars(gptlib.checkpoint))
    _edited(helper, name, *edits, namespace=namespace)
    return _edited(func, name, namespace=namespace)


save_without_unwrapping = _edited(gptlib.checkpoint.save_checkpoint, "save_without_unwrapping",
                                  ("    model = unwrap(model)\n", ""))
save_unwrapping_once = _calling_a_slipped(gptlib.checkpoint.save_checkpoint, gptlib.checkpoint.unwrap,
                                          "save_unwrapping_once", ("    while True:\n", "    for _ in range(1):\n"),
                                             ("            return model\n", "            return model\n    return model\n"))
save_the_model_config_object = _calling_a_slipped(
    gptlib.checkpoint.save_checkpoint, gptlib.checkpoint._model_config, "save_the_model_config_object",
    ("return asdict(config) if is_dataclass(config) else None", "return config"))
load_listing_every_field = _calling_a_slipped(
    gptlib.checkpoint.load_checkpoint, gptlib.checkpoint._config_mismatch, "load_listing_every_field",
    (" if saved.get(k) != current.get(k)]", "]"))
load_trusting_a_missing_config = _calling_a_slipped(
    gptlib.checkpoint.load_checkpoint, gptlib.checkpoint._config_mismatch, "load_trusting_a_missing_config",
    ("return [] if saved == current else", "return [] if True else"))
save_the_config_object = _edited(gptlib.checkpoint.save_checkpoint, "save_the_config_object",
                                 ("    if is_dataclass(train_config):\n        train_config = asdict(train_config)\n", ""))


class HistoryForgettingTheSavedValues(History):
    @classmethod
    def from_dict(cls, values):
        return cls()


class HistoryFailingOnNone(History):
    @classmethod
    def from_dict(cls, values):
        return cls(**values)


# ---- 6.14 History.best_val / best_step ----------------------------------------------------

class HistoryWithTheLastLoss(History):
    @property
    def best_val(self):
        return self.val_loss[-1] if self.val_loss else math.inf


class HistoryWithTheIndex(History):
    @property
    def best_step(self):
        return self.val_loss.index(self.best_val) if self.val_loss else None


class HistoryWithTheLastTie(History):
    @property
    def best_step(self):
        if not self.val_loss:
            return None
        return self.eval_step[len(self.val_loss) - 1 - self.val_loss[::-1].index(self.best_val)]


class HistoryFailingBeforeTheFirstEvaluation(History):
    @property
    def best_val(self):
        return min(self.val_loss)


# ---- 6.15 draw_batch ----------------------------------------------------------------------

def draw_only_my_own_rows(data, block_size, batch_size, generator, dist_info=DistInfo(), device=None):
    return get_batch(data, block_size, batch_size, generator=generator)


def draw_every_world_size_th_row(data, block_size, batch_size, generator, dist_info=DistInfo(), device=None):
    x, y = get_batch(data, block_size, batch_size * dist_info.world_size, generator=generator)
    return x[dist_info.rank::dist_info.world_size], y[dist_info.rank::dist_info.world_size]


def draw_the_same_first_rows_everywhere(data, block_size, batch_size, generator, dist_info=DistInfo(), device=None):
    x, y = get_batch(data, block_size, batch_size * dist_info.world_size, generator=generator)
    return x[:batch_size], y[:batch_size]


# ---- 6.13 load_checkpoint ----------------------------------------------------------------------

def _loader(weights=True, optimizer_state=True, rng=True, generator=True, obey=True, give_back=True):
    def load(path, model=None, optimizer=None, generator_=None, restore_rng=True, map_location="cpu"):
        payload = read_checkpoint(path, map_location)
        if model is not None and weights:
            unwrap(model).load_state_dict(payload["model"])
        if optimizer is not None and optimizer_state:
            optimizer.load_state_dict(payload["optimizer"])
        if rng and (restore_rng or not obey):
            _set_rng_state(payload["rng"], generator_ if generator else None)
        return payload if give_back else None
    return load


def load_without_the_weights(*a, **k):
    return _loader(weights=False)(*a, **k)


def load_without_the_optimizer(*a, **k):
    return _loader(optimizer_state=False)(*a, **k)


def load_without_the_random_states(*a, **k):
    return _loader(rng=False)(*a, **k)


def load_without_the_batch_generator(*a, **k):
    return _loader(generator=False)(*a, **k)


def load_restoring_the_rng_always(*a, **k):
    return _loader(obey=False)(*a, **k)


def load_returning_nothing(*a, **k):
    return _loader(give_back=False)(*a, **k)


# ---- 6.19 load_text_data: gptlib's with one slip each --------------------------------------

def _data_loader_with(name, *edits):
    return _edited(gptlib.training.load_text_data, name, *edits)


_CUT = '    if data["max_chars"]:\n        text = text[: int(data["max_chars"])]\n'
DATA_SLIPS = {name: _data_loader_with(name, *edits) for name, edits in {
    "data_ignoring_max_chars": [(_CUT, "")],
    "data_cut_after_the_tokenizer": [(_CUT, ""), ("    ids = torch.tensor(", _CUT + "    ids = torch.tensor(")],
    "data_bpe_of_the_default_size": [('int(data["bpe_vocab_size"])', "512")],
    "data_always_char": [('if data["tokenizer"] == "char":', "if True:")],
    "data_split_at_the_default_fraction": [('train_val_split(ids, data["val_fraction"])', "train_val_split(ids)")],
}.items()}


# ---- 6.6 with float16's scaler, and 6.9 precision: gptlib's with one slip each ----------------

def _step_with(name, *edits):
    return _edited(gptlib.training.train_step, name, *edits)


_UNSCALE = "    scaler.unscale_(optimizer)\n"
_CLIP = "    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)\n"
STEP_SLIPS = {name: _step_with(name, *edits) for name, edits in {
    "step_clipping_the_scaled_gradients": [(_UNSCALE, ""), (_CLIP, _CLIP + _UNSCALE)],
    "step_updating_before_stepping": [("    scaler.step(optimizer)\n    scaler.update()\n",
                                       "    scaler.update()\n    scaler.step(optimizer)\n")],
    "step_past_the_scaler": [("    scaler.step(optimizer)\n", "    optimizer.step()\n")],
    "step_without_updating_the_scale": [("    scaler.update()\n", "")],
}.items()}


def _precision_with(name, *edits):
    return _edited(gptlib.training.resolve_precision, name, *edits)


_AUTO = ('        major, _ = torch.cuda.get_device_capability(device)\n'
         '        return "bfloat16" if major >= 8 else "float16"\n')
PRECISION_SLIPS = {name: _precision_with(name, *edits) for name, edits in {
    "precision_trusting_is_bf16_supported": [
        (_AUTO, '        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"\n')],
    "precision_float32_on_old_gpus": [(_AUTO, _AUTO.replace('else "float16"', 'else "float32"'))],
    "precision_from_9_0_only": [("major >= 8", "major > 8")],
    "precision_by_the_device_alone": [('        if device.type != "cuda" or not torch.cuda.is_available():',
                                       '        if not torch.cuda.is_available():')],
}.items()}


# ---- 6.16 _setup_distributed: gptlib's with one slip each -----------------------------------

SETUP_SLIPS = {name: _edited(gptlib.training._setup_distributed, name, *edits) for name, edits in {
    "setup_with_the_local_rank_as_rank": [('rank, local_rank = int(os.environ["RANK"])', 'rank, local_rank = int(os.environ.get("LOCAL_RANK", "0"))')],
    "setup_always_nccl": [('backend = "nccl" if torch.cuda.is_available() else "gloo"', 'backend = "nccl"')],
    "setup_joining_twice": [("    if not torch.distributed.is_initialized():\n", "    if True:\n")],
    "setup_without_choosing_the_gpu": [("            torch.cuda.set_device(local_rank)\n", "            pass\n")],
    "setup_joining_alone": [("    if world_size <= 1:\n", "    if world_size < 1:\n")],
}.items()}


# ---- 6.18 evaluate_sliding: gptlib's with one slip each -------------------------------------

SLIDING_SLIPS = {name: _edited(gptlib.training.evaluate_sliding, name, *edits) for name, edits in {
    "sliding_scoring_whole_windows": [("                new = start + block_size - scored\n",
                                       "                new = block_size\n")],
    "sliding_without_the_last_window": [("    if starts[-1] != last:\n        starts.append(last)\n", "")],
    "sliding_scoring_the_first_positions": [("total += losses[row, block_size - new:]", "total += losses[row, :new]")],
    "sliding_in_train_mode": [("    model.eval()\n", "")],
}.items()}


# ---- 6.17 the training loop: gptlib's train with one slip each -----------------------------

def _train_with(name, *edits):
    """gptlib.training.train with each ``(old, new)`` of ``edits`` applied to its source."""
    return _edited(gptlib.training.train, name, *edits)


_EVAL_FIRST = "        if eval_due(step):\n            run_eval(step)\n"
_STEP = "        loss, norm = train_step(raw, optimizer, micro_loss, step, config, scaler)\n"
_TRAIN_SLIPS = {  # name: the (old, new) edits of gptlib's train that make the slip
    "train_evaluating_after_the_step": [(_EVAL_FIRST + _STEP, _STEP + _EVAL_FIRST)],
    "train_stepping_one_ahead": [(_STEP, _STEP.replace("step, config", "step + 1, config"))],
    "train_without_the_final_evaluation": [
        ("    if end == config.max_steps and evaluates:\n        run_eval(end)\n", "")],
    "train_evaluating_at_the_end_of_a_stopped_run": [("if end == config.max_steps and evaluates:", "if evaluates:")],
    "train_evaluating_at_step_0_always": [("and (step > 0 or config.eval_interval <= config.max_steps)", "and True")],
    "train_scoring_the_hook_in_train_mode": [("            raw.eval()\n", "")],
    "train_scoring_the_hook_with_gradients": [("with torch.no_grad(), autocast:", "with autocast:")],
    "train_evaluating_with_the_run_seed": [("seed=config.seed + 1,", "seed=config.seed,")],
    "train_with_the_default_betas": [("(config.beta1, config.beta2)", "(0.9, 0.999)")],
    "train_recording_the_peak_rate": [('lr = optimizer.param_groups[0]["lr"]', "lr = config.lr")],
    "train_counting_steps_from_1": [("history.step.append(step)", "history.step.append(step + 1)")],
    "train_resuming_from_step_0": [
        ('History.from_dict(payload["history"]), payload["step"]', 'History.from_dict(payload["history"]), 0')],
    "train_with_an_unseeded_generator": [
        ("manual_seed(config.seed)\n    optimizer", "manual_seed(config.seed + 7)\n    optimizer")],
    "train_saving_the_step_just_taken": [("            save(step + 1)\n", "            save(step)\n")],
    "train_saving_without_flushing": [
        ("        flush()\n        if dist_info.is_main:\n            save_checkpoint(",
         "        if dist_info.is_main:\n            save_checkpoint(")],
    "train_without_the_final_save": [("    if checkpoint_path:\n        save(end)\n", "")],
    "train_keeping_every_evaluation_as_best": [("if config.keep_best and improved and", "if config.keep_best and")],
    "train_comparing_after_recording": [
        ("        improved = val < history.best_val\n        history.val_loss.append(val)\n",
         "        history.val_loss.append(val)\n        improved = val < history.best_val\n")],
    "train_without_no_sync": [("sync = contextlib.nullcontext() if last or dist_info.world_size == 1 else net.no_sync()",
                               "sync = contextlib.nullcontext()")],
    "train_syncing_the_first_micro_batch": [("last = micro == config.grad_accum_steps - 1", "last = micro == 0")],
    "train_without_ddp": [("    if dist_info.world_size > 1:\n        net = nn.parallel", "    if False:\n        net = nn.parallel")],
    "train_keeping_its_own_losses": [("                torch.distributed.all_reduce(values)\n", "")],
    "train_summing_the_losses": [("                values /= dist_info.world_size\n", "")],
    "train_without_the_barrier": [("            torch.distributed.barrier()\n", "            pass\n")],
    "train_ignoring_the_eval_hook": [("    evaluates = eval_loss is not None or val_data is not None\n",
                                      "    evaluates = val_data is not None\n")],
    "train_with_the_batch_size_for_evaluation": [("    eval_bs = config.eval_batch_size or config.batch_size\n",
                                                  "    eval_bs = config.batch_size\n")],
}
TRAIN_SLIPS = {name: _train_with(name, *edits) for name, edits in _TRAIN_SLIPS.items()}


def _train_with_a_slipped(helper, name, *edits):
    """gptlib's train calling ``helper`` (a function of gptlib.training) with ``edits`` applied."""
    namespace = dict(vars(gptlib.training))
    _edited(helper, name, *edits, namespace=namespace)
    return _edited(gptlib.training.train, name, namespace=namespace)


SWITCH_SLIPS = {
    "train_autocasting_to_bfloat16_always": _train_with_a_slipped(
        gptlib.training.autocast_context, "train_autocasting_to_bfloat16_always",
        ('{"bfloat16": torch.bfloat16, "float16": torch.float16}.get(resolve_precision(device, precision))',
         "torch.bfloat16")),
    "train_compiling_on_the_cpu": _train_with_a_slipped(
        gptlib.training.maybe_compile, "train_compiling_on_the_cpu",
        ('compile = device.type == "cuda"', "compile = True")),
    "train_without_a_scaler": _train_with_a_slipped(
        gptlib.training.grad_scaler, "train_without_a_scaler",
        ('enabled=resolve_precision(device, precision) == "float16"', "enabled=False")),
    "train_with_rank_1_as_main": _train_with_a_slipped(
        gptlib.training.DistInfo, "train_with_rank_1_as_main", ("return self.rank == 0", "return self.rank == 1")),
}


# ---- 6.20 stretch: the settings ------------------------------------------------------------

def budget_reference():
    return {"lr": 3e-2, "warmup_steps": 5}


def budget_rate_too_low():
    return {"lr": 1e-3, "warmup_steps": 5}


def budget_high_rate_without_warmup():
    return {"lr": 3e-2, "warmup_steps": 0}


def budget_rate_far_too_high():
    return {"lr": 1.0, "warmup_steps": 5}


def budget_warmup_past_the_budget():
    return {"lr": 3e-2, "warmup_steps": 50}


# ---- the table -----------------------------------------------------------------------------

PASSING = [("6.1", perplexity), ("6.2", bits_per_char), ("6.3", param_groups), ("6.4", configure_optimizer),
           ("6.5", lr_at), ("6.6", train_step), ("6.7", evaluate), ("6.8", evaluate_full), ("6.10", _rng_state),
           ("6.11", _set_rng_state), ("6.12", save_checkpoint), ("6.14", History), ("6.15", draw_batch),
           ("6.17", train), ("6.20", budget_reference), ("6.13", load_checkpoint),
           ("6.19", gptlib.training.load_text_data), ("6.9", gptlib.training.resolve_precision),
           ("6.16", gptlib.training._setup_distributed), ("6.18", gptlib.training.evaluate_sliding)]

FAILING = [  # (exercise, candidate, a phrase its hint must contain)
    ("6.1", perplexity_in_base_2, "not 2 ** loss"),
    ("6.1", perplexity_as_a_probability, "its inverse"),
    ("6.1", perplexity_as_the_loss, "perplexity 65"),
    ("6.2", bpc_times_ln2, "multiplied by ln 2"),
    ("6.2", bpc_log2_of_loss, "log2 of the loss"),
    ("6.2", bpc_per_token, "bits per token"),
    ("6.2", bpc_ratio_swapped, "swapped"),
    ("6.2", bpc_nats, "nats per character"),
    ("6.3", groups_decaying_everything, "LayerNorm weights/biases are decayed"),
    ("6.3", groups_by_name_decaying_layernorm_gains, "LayerNorm weights/biases are decayed"),
    ("6.3", groups_with_tied_weight_twice, "appears twice"),
    ("6.3", groups_with_frozen_parameters, "frozen"),
    ("6.3", groups_with_a_fixed_decay, "with weight_decay=0.3"),
    ("6.4", adamw_over_every_parameter, "one group"),
    ("6.4", adamw_with_the_default_betas, "expected (0.9, 0.95)"),
    ("6.4", adam_with_an_l2_penalty, "return a torch.optim.AdamW"),
    ("6.4", adamw_fused_everywhere, "for device_type='cuda' only"),
    ("6.4", adamw_never_fused, "ask for the fused kernel"),
    ("6.5", lr_warmup_starting_at_zero, "off by one"),
    ("6.5", lr_warmup_that_never_reaches_max, "off by one"),
    ("6.5", lr_decay_to_zero, "decays to 0 instead of to min_lr"),
    ("6.5", lr_cosine_to_zero_clamped_at_the_end, "decays to 0 instead of to min_lr"),
    ("6.5", lr_linear_decay, "straight line"),
    ("6.6", step_without_setting_the_lr, "the schedule says"),
    ("6.6", step_without_dividing_by_accumulation, "not divided by grad_accum_steps"),
    ("6.6", step_without_clipping, "were not clipped"),
    ("6.6", step_that_keeps_the_gradients, "gradients are left"),
    ("6.6", step_with_one_micro_batch, "once per micro-batch"),
    ("6.6", step_returning_the_clipped_norm, "after clipping"),
    ("6.6", step_returning_floats, "0-dim tensors"),
    ("6.6", step_returning_the_last_loss, "the mean of the micro-batch losses"),
    ("6.7", evaluate_in_train_mode, "model.eval()"),
    ("6.7", evaluate_with_gradients, "torch.no_grad()"),
    ("6.7", evaluate_that_leaves_train_mode_on, "model.train(was_training)"),
    ("6.7", evaluate_with_the_global_generator, "global generator"),
    ("6.7", evaluate_summing, "sum of the"),
    ("6.7", evaluate_returning_a_tensor, "Python float"),
    ("6.8", evaluate_full_mean_of_batch_means, "mean of the batch means"),
    ("6.8", evaluate_full_counting_windows, "number of windows"),
    ("6.8", evaluate_full_in_train_mode, "model.eval()"),
    ("6.8", evaluate_full_that_leaves_eval_mode_on, "model.train(was_training)"),
    ("6.10", capture_without_numpy, "'numpy' entry"),
    ("6.10", capture_with_numpys_own_tuple, "weights_only=True"),
    ("6.10", capture_without_the_batch_generator, "'generator' entry"),
    ("6.10", capture_a_fresh_torch_state, "torch's CPU generator"),
    ("6.11", restore_without_torch, "restore state['torch']"),
    ("6.11", restore_without_the_batch_generator, "restore state['generator']"),
    ("6.11", restore_without_python, "restore state['python']"),
    ("6.12", save_without_the_optimizer, "AdamW's moments"),
    ("6.12", save_without_the_batch_generator, "batch generator's state"),
    ("6.12", save_the_next_step, "'step' is"),
    ("6.12", save_without_the_history, "history.to_dict()"),
    ("6.12", save_without_unwrapping, "save the model inside every wrapper"),
    ("6.12", save_unwrapping_once, "save the model inside every wrapper"),
    ("6.12", save_the_config_object, "asdict"),
    ("6.14", HistoryForgettingTheSavedValues, "not the same History again"),
    ("6.14", HistoryFailingOnNone, "return an empty History"),
    ("6.12", save_the_model_config_object, "as a dict"),
    ("6.13", load_listing_every_field, "and only those"),
    ("6.13", load_trusting_a_missing_config, "only one side has a config"),
    ("6.14", HistoryWithTheLastLoss, "the last validation loss"),
    ("6.14", HistoryWithTheIndex, "the position in val_loss"),
    ("6.14", HistoryWithTheLastTie, "the last of the tied"),
    ("6.14", HistoryFailingBeforeTheFirstEvaluation, "before the first evaluation"),
    ("6.15", draw_only_my_own_rows, "one global batch"),
    ("6.15", draw_every_world_size_th_row, "rows r * batch_size"),
    ("6.15", draw_the_same_first_rows_everywhere, "the same windows"),
    ("6.17", TRAIN_SLIPS["train_evaluating_after_the_step"], "evaluate before the step"),
    ("6.17", TRAIN_SLIPS["train_stepping_one_ahead"], "one step ahead"),
    ("6.17", TRAIN_SLIPS["train_without_the_final_evaluation"], "no evaluation at the end"),
    ("6.17", TRAIN_SLIPS["train_evaluating_at_the_end_of_a_stopped_run"], "stopped early by until_step"),
    ("6.17", TRAIN_SLIPS["train_evaluating_at_step_0_always"], "not at step 0"),
    ("6.17", TRAIN_SLIPS["train_scoring_the_hook_in_train_mode"], "in train mode"),
    ("6.17", TRAIN_SLIPS["train_scoring_the_hook_with_gradients"], "torch.no_grad()"),
    ("6.17", TRAIN_SLIPS["train_evaluating_with_the_run_seed"], "seed=config.seed + 1"),
    ("6.17", TRAIN_SLIPS["train_with_the_default_betas"], "the training losses differ"),
    ("6.17", TRAIN_SLIPS["train_recording_the_peak_rate"], "record optimizer.param_groups[0]['lr']"),
    ("6.17", TRAIN_SLIPS["train_counting_steps_from_1"], "record every step's number"),
    ("6.17", TRAIN_SLIPS["train_resuming_from_step_0"], "continue at payload['step']"),
    ("6.17", TRAIN_SLIPS["train_with_an_unseeded_generator"], "generator seeded with config.seed"),
    ("6.17", TRAIN_SLIPS["train_saving_the_step_just_taken"], "save the run as it continues, at step s + 1"),
    ("6.17", TRAIN_SLIPS["train_saving_without_flushing"], "flush() before saving"),
    ("6.17", TRAIN_SLIPS["train_without_the_final_save"], "did not end saved"),
    ("6.17", TRAIN_SLIPS["train_keeping_every_evaluation_as_best"], "only when val is below history.best_val"),
    ("6.17", TRAIN_SLIPS["train_comparing_after_recording"], "no best checkpoint"),
    ("6.13", load_without_the_weights, "load payload['model']"),
    ("6.13", load_without_the_optimizer, "AdamW's moments"),
    ("6.13", load_without_the_random_states, "restore every random state"),
    ("6.13", load_without_the_batch_generator, "give the generator to _set_rng_state"),
    ("6.13", load_restoring_the_rng_always, "only when restore_rng"),
    ("6.13", load_returning_nothing, "return the checkpoint's dict"),
    ("6.19", DATA_SLIPS["data_ignoring_max_chars"], "first max_chars characters"),
    ("6.19", DATA_SLIPS["data_cut_after_the_tokenizer"], "after the max_chars cut"),
    ("6.19", DATA_SLIPS["data_bpe_of_the_default_size"], "trained to bpe_vocab_size"),
    ("6.19", DATA_SLIPS["data_always_char"], "asks for a BPETokenizer"),
    ("6.19", DATA_SLIPS["data_split_at_the_default_fraction"], "train_val_split(ids, data['val_fraction'])"),
    ("6.6", STEP_SLIPS["step_clipping_the_scaled_gradients"], "before clipping"),
    ("6.6", STEP_SLIPS["step_updating_before_stepping"], "scaler.step(optimizer), scaler.update()"),
    ("6.6", STEP_SLIPS["step_past_the_scaler"], "must be skipped"),
    ("6.6", STEP_SLIPS["step_without_updating_the_scale"], "scaler.update()"),
    ("6.9", PRECISION_SLIPS["precision_trusting_is_bf16_supported"], "not is_bf16_supported()"),
    ("6.9", PRECISION_SLIPS["precision_float32_on_old_gpus"], "gradient scaler"),
    ("6.9", PRECISION_SLIPS["precision_from_9_0_only"], "bf16 is native"),
    ("6.9", PRECISION_SLIPS["precision_by_the_device_alone"], "train in float32"),
    ("6.17", TRAIN_SLIPS["train_without_no_sync"], "inside net.no_sync()"),
    ("6.17", TRAIN_SLIPS["train_syncing_the_first_micro_batch"], "all but the last micro-batch"),
    ("6.17", TRAIN_SLIPS["train_without_ddp"], "not wrapped in DistributedDataParallel"),
    ("6.17", TRAIN_SLIPS["train_keeping_its_own_losses"], "all_reduce the queued values"),
    ("6.17", TRAIN_SLIPS["train_summing_the_losses"], "divide by world_size"),
    ("6.17", TRAIN_SLIPS["train_without_the_barrier"], "barrier()"),
    ("6.16", SETUP_SLIPS["setup_with_the_local_rank_as_rank"], "RANK is the process's number among all"),
    ("6.16", SETUP_SLIPS["setup_always_nccl"], "gloo otherwise"),
    ("6.16", SETUP_SLIPS["setup_joining_twice"], "joined already"),
    ("6.16", SETUP_SLIPS["setup_without_choosing_the_gpu"], "set_device(local_rank)"),
    ("6.16", SETUP_SLIPS["setup_joining_alone"], "WORLD_SIZE > 1"),
    ("6.18", SLIDING_SLIPS["sliding_scoring_whole_windows"], "not all of its own"),
    ("6.18", SLIDING_SLIPS["sliding_without_the_last_window"], "add one last window"),
    ("6.18", SLIDING_SLIPS["sliding_scoring_the_first_positions"], "its last"),
    ("6.18", SLIDING_SLIPS["sliding_in_train_mode"], "model.eval()"),
    ("6.17", TRAIN_SLIPS["train_ignoring_the_eval_hook"], "evaluations at steps"),
    ("6.17", TRAIN_SLIPS["train_with_the_batch_size_for_evaluation"], "val_loss at step"),
    ("6.17", SWITCH_SLIPS["train_autocasting_to_bfloat16_always"], "autocast to"),
    ("6.17", SWITCH_SLIPS["train_compiling_on_the_cpu"], "torch.compile was called"),
    ("6.17", SWITCH_SLIPS["train_without_a_scaler"], "scaler state"),
    ("6.17", SWITCH_SLIPS["train_with_rank_1_as_main"], "DistInfo.is_main"),
    ("6.20", budget_rate_too_low, "above the target"),
    ("6.20", budget_high_rate_without_warmup, "above the target"),
    ("6.20", budget_rate_far_too_high, "too high"),
    ("6.20", budget_warmup_past_the_budget, "from 0 to 40"),
]


@pytest.mark.parametrize("exercise_id, candidate", PASSING, ids=[c.__name__ for _, c in PASSING])
def test_reference_passes(exercise_id, candidate):
    assert run_check(exercise_id, candidate).status == "passed"


@pytest.mark.parametrize("exercise_id, candidate, phrase", FAILING,
                         ids=[c.__name__ for _, c, _ in FAILING])
def test_check_rejects_the_mistake_with_a_hint(assert_check_fails, exercise_id, candidate, phrase):
    assert_check_fails(exercise_id, candidate, phrase)


def test_unsolved_exercise_is_not_done():
    def todo(*args, **kwargs):
        raise NotImplementedError
    for ex in {e for e, _ in PASSING}:
        assert run_check(ex, todo).status == "not done"


def test_checks_leave_the_global_random_states_alone():
    state = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    for ex, candidate in PASSING:
        run_check(ex, candidate)
    assert torch.equal(state[0], torch.get_rng_state()) and state[1] == random.getstate()
    assert (state[2] == np.random.get_state()[1]).all()
