"""DistributedDataParallel: 2 gloo processes on CPU take exactly the steps of one process that
sees the same global batch. Launched the way torchrun launches (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT in the environment), on localhost only, with a time limit."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from gptlib.checkpoint import read_checkpoint
from gptlib.training import History
from tools import ROOT

TIMEOUT = 240

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or
                                not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path, name, batch_size):
    cfg = {"data": {"tokenizer": "char", "max_chars": 20000},
           "model": {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 32},
           "train": {"max_steps": 4, "batch_size": batch_size, "grad_accum_steps": 2, "warmup_steps": 1,
                     "eval_interval": 2, "eval_iters": 1, "device": "cpu", "compile": False, "keep_best": True},
           "out_dir": str(tmp_path / name)}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _env(**extra):
    env = {**os.environ, "GPTLIB_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **extra}
    env.pop("GPTLIB_DEVICE", None)
    return env


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_global_batch(tmp_path):
    cmd = [sys.executable, "-m", "gptlib", "--no-progress", "--config"]
    port = str(_free_port())
    procs = [subprocess.Popen(cmd + [str(_config(tmp_path, "ddp", 3))], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in range(2)]
    single = subprocess.Popen(cmd + [str(_config(tmp_path, "single", 6))], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(WORLD_SIZE="1"))
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in (*procs, single)]
    finally:
        for p in (*procs, single):
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip((*procs, single), outs):
        assert p.returncode == 0, err[-2000:]
    ddp = read_checkpoint(tmp_path / "ddp" / "ckpt.pt")
    ref = read_checkpoint(tmp_path / "single" / "ckpt.pt")
    assert ddp["step"] == ref["step"] == 4
    worst = max((ddp["model"][k] - ref["model"][k]).abs().max().item() for k in ref["model"])
    assert worst < 1e-5, f"DDP parameters differ from the single-process run by {worst:.2e}"
    # the step really moved the weights (so equality is not trivial)
    assert any(not torch.equal(ref["model"][k], torch.zeros_like(ref["model"][k])) for k in ref["model"])
    # the logged losses are averaged over both processes: they match the single process too
    ddp_h = json.loads((tmp_path / "ddp" / "history.json").read_text())
    ref_h = json.loads((tmp_path / "single" / "history.json").read_text())
    assert ddp_h["train_loss"] == pytest.approx(ref_h["train_loss"], abs=1e-5)
    # keep_best under DDP: rank 0 alone writes the best checkpoint, at the lowest estimate's step
    assert read_checkpoint(tmp_path / "ddp" / "ckpt.best.pt")["step"] == History.from_dict(ddp_h).best_step
