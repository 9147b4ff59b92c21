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


def test_positive_int_names_the_argument():
    from gptlib.runtime import positive_int
    assert positive_int("n", 3) == 3
    for bad in (0, -1, True, 2.0, "3", None):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            positive_int("n", bad)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    from gptlib.runtime import atomic_write
    target = tmp_path / "sub" / "f.txt"
    atomic_write(target, lambda p: p.write_text("one"))
    assert target.read_text() == "one"
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)

    def fail(p):
        p.write_text("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "one"
    assert sorted(x.name for x in target.parent.iterdir()) == ["f.txt"]


def test_artifact_dir_is_apart_from_the_data_dir(monkeypatch, tmp_path):
    from gptlib import datasets
    from gptlib.runtime import artifact_dir
    monkeypatch.delenv("GPTLIB_CACHE_DIR", raising=False)
    monkeypatch.delenv("GPTLIB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert artifact_dir() == tmp_path / "gptlib" / "artifacts"
    assert datasets.cache_dir() != artifact_dir()
    monkeypatch.setenv("GPTLIB_CACHE_DIR", str(tmp_path / "mine"))
    assert artifact_dir() == tmp_path / "mine"
