"""Device, run profile and seeding: the three things every chapter sets up first.

Hand-written (not exported from a notebook). A chapter picks its sizes in one visible cell::

    from gptlib.runtime import by_profile
    steps = by_profile(smoke=20, cpu=2000, gpu=5000)

It also holds the few small rules every module shares, written once: :func:`positive_int`
(argument checking), :func:`atomic_write` (files appear whole or not at all) and
:func:`artifact_dir` (where models the course trains for reuse are kept, apart from downloads).

Profiles
--------
``smoke``  seconds per notebook; the tests use it. Still real work: a loss must still fall.
``cpu``    the default without a GPU: minutes, results worth showing.
``gpu``    the default with CUDA: full-size results.

``GPTLIB_PROFILE`` overrides the choice, ``GPTLIB_DEVICE`` overrides the device.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

PROFILES = ("smoke", "cpu", "gpu")

__all__ = ["PROFILES", "get_device", "get_profile", "by_profile", "seed_everything", "describe",
           "positive_int", "atomic_write", "artifact_dir"]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(prefer: str | None = None) -> torch.device:
    """The device to compute on: CUDA, then Apple MPS, then the CPU.

    ``prefer`` (or the ``GPTLIB_DEVICE`` environment variable) forces one, e.g. ``"cpu"``.
    Asking for a device this machine lacks is an error, not a silent fallback.
    """
    choice = prefer or os.environ.get("GPTLIB_DEVICE") or None
    if choice:
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} was asked for, but CUDA is not available here")
        if device.type == "mps" and not _mps_available():
            raise ValueError(f"device {choice!r} was asked for, but Apple MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def get_profile() -> str:
    """The run profile: ``GPTLIB_PROFILE`` if set, else ``gpu`` with CUDA, else ``cpu``."""
    name = os.environ.get("GPTLIB_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILES:
            raise ValueError(f"GPTLIB_PROFILE={name!r} is not one of {', '.join(PROFILES)}")
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


def by_profile(*, smoke: Any, cpu: Any, gpu: Any | None = None, profile: str | None = None) -> Any:
    """Pick the value for the current profile (``gpu`` falls back to ``cpu`` when not given)."""
    profile = profile or get_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    if profile == "smoke":
        return smoke
    if profile == "gpu" and gpu is not None:
        return gpu
    return cpu


def seed_everything(seed: int = 1337) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a CPU generator with that seed."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return torch.Generator().manual_seed(seed)


def describe() -> str:
    """One line saying what this notebook runs on; handy as a setup cell's output."""
    device = get_device()
    extra = ""
    if device.type == "cuda":
        extra = f" ({torch.cuda.get_device_name(device)})"
    return (f"gptlib profile={get_profile()} device={device}{extra} "
            f"torch={torch.__version__} threads={torch.get_num_threads()}")


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool); else raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a file so that it appears whole or not at all.

    ``write(tmp)`` writes the content to a temporary path in the target's folder; the file is
    then flushed to disk and renamed over ``path`` (a rename is atomic on one file system). If
    ``write`` raises, the target is untouched and the temporary file is removed. The new file
    gets the usual permissions (0o644 less the umask), not ``mkstemp``'s private 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def artifact_dir() -> Path:
    """Where computed artefacts (models a chapter trains for later reuse) are kept:
    ``GPTLIB_CACHE_DIR`` if set, else ``~/.cache/gptlib/artifacts``. Never the data folder,
    which holds only downloaded files (and may be a read-only mirror)."""
    env = os.environ.get("GPTLIB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gptlib" / "artifacts"
