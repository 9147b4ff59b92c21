"""Shared test set-up: the repository root, the offline mirrors, and small factories.

Import ``ROOT`` with ``from tools import ROOT`` (one definition, the course tooling's). Fixtures
here: ``root``, ``one_thread``, ``tiny_config`` / ``tiny_gpt`` (factories for a small model),
``gpt2_tokenizer`` (tiktoken's GPT-2 encoding as a BPETokenizer, built once per session) and
``assert_check_fails`` (run an exercise check on a wrong candidate, assert it fails with a hint).
"""
import os
from pathlib import Path

import pytest
import torch

from tools import ROOT

os.environ.setdefault("GPTLIB_PROFILE", "smoke")
SHARED = ROOT.parent / "shared"
if "GPTLIB_DATA_DIR" not in os.environ and (SHARED / "data").is_dir():
    os.environ["GPTLIB_DATA_DIR"] = str(SHARED / "data")
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken-cache").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken-cache")

# The small model most unit tests train or compare: one block, two heads, a 13-token vocabulary.
TINY = dict(vocab_size=13, block_size=16, n_layer=1, n_head=2, n_embd=32)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one torch thread (and do not fight other processes for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_config():
    """``tiny_config(**changes)``: a GPTConfig of ``TINY`` with ``changes`` applied."""
    from gptlib.model import GPTConfig

    def make(**changes):
        return GPTConfig(**{**TINY, **changes})
    return make


@pytest.fixture
def tiny_gpt(tiny_config):
    """``tiny_gpt(seed=0, **changes)``: a freshly initialised GPT of ``tiny_config(**changes)``."""
    from gptlib.model import GPT

    def make(seed=0, **changes):
        torch.manual_seed(seed)
        return GPT(tiny_config(**changes))
    return make


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """tiktoken's GPT-2 encoding as a gptlib BPETokenizer (needs the tiktoken cache)."""
    pytest.importorskip("tiktoken")
    from gptlib.tokenizer import BPETokenizer
    return BPETokenizer.from_tiktoken("gpt2")


def _assert_check_fails(exercise_id, candidate, phrase=None):
    from gptlib.exercises import run_check

    result = run_check(exercise_id, candidate)
    assert result.status == "failed", (result.status, result.message)
    if phrase is not None:
        assert phrase in result.message, result.message
    return result


@pytest.fixture
def assert_check_fails():
    """``assert_check_fails(exercise_id, candidate, phrase=None)``: the check rejects
    ``candidate``, and its message names ``phrase``; returns the CheckResult."""
    return _assert_check_fails
