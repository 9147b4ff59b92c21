"""Device, run profile and seeding: the three things every chapter sets up first.

Hand-written (not exported from a notebook). A chapter picks its sizes in one visible cell::

    from gptlib.runtime import by_profile
    steps = by_profile(smoke=20, cpu=2000, gpu=5000)

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
from typing import Any

import numpy as np
import torch

PROFILES = ("smoke", "cpu", "gpu")

__all__ = ["PROFILES", "get_device", "get_profile", "by_profile", "seed_everything", "describe"]


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
