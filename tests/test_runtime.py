import random

import numpy as np
import pytest
import torch

from gptlib import runtime


def test_profile_override(monkeypatch):
    for name in runtime.PROFILES:
        monkeypatch.setenv("GPTLIB_PROFILE", name)
        assert runtime.get_profile() == name
    monkeypatch.setenv("GPTLIB_PROFILE", " CPU ")
    assert runtime.get_profile() == "cpu"


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GPTLIB_PROFILE", "huge")
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        runtime.get_profile()


def test_default_profile_follows_the_hardware(monkeypatch):
    monkeypatch.delenv("GPTLIB_PROFILE", raising=False)
    assert runtime.get_profile() == ("gpu" if torch.cuda.is_available() else "cpu")


def test_by_profile_picks_and_falls_back():
    assert runtime.by_profile(smoke=1, cpu=2, gpu=3, profile="smoke") == 1
    assert runtime.by_profile(smoke=1, cpu=2, gpu=3, profile="cpu") == 2
    assert runtime.by_profile(smoke=1, cpu=2, gpu=3, profile="gpu") == 3
    assert runtime.by_profile(smoke=1, cpu=2, profile="gpu") == 2
    with pytest.raises(ValueError):
        runtime.by_profile(smoke=1, cpu=2, profile="tiny")


def test_device_choice(monkeypatch):
    monkeypatch.delenv("GPTLIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    assert runtime.get_device().type == "cpu"
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert runtime.get_device().type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.get_device().type == "cuda"


def test_device_override_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("GPTLIB_DEVICE", "cpu")
    assert runtime.get_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        runtime.get_device("cuda")


def test_seed_everything_repeats():
    g1 = runtime.seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=g1))
    g2 = runtime.seed_everything(7)
    b = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=g2))
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


def test_describe_names_profile_and_device():
    text = runtime.describe()
    assert "profile=" in text and "device=" in text and torch.__version__ in text
