"""Shared bits for benchmark scripts: machine facts, a printed table, an atomic JSON record."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def result_name(base: str, device) -> str:
    """``base`` for a CPU run, ``base_gpu`` for a CUDA one, so GPU figures never overwrite CPU ones."""
    return f"{base}_gpu" if str(device).startswith("cuda") else base


def write_results(name: str, figures: dict) -> Path:
    """Write ``results/<name>.json`` atomically with the machine facts; return its path."""
    from gptlib.runtime import atomic_write
    record = {"benchmark": name, "machine": machine(), **figures}
    text = json.dumps(record, indent=2, default=str) + "\n"
    target = atomic_write(RESULTS / f"{name}.json", lambda tmp: tmp.write_text(text))
    print(f"wrote {target}")
    return target
