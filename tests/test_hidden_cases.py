"""The grader's hidden cases: under ``GPTLIB_CHECK_SALT`` the checks of Chapters 0 to 9 draw other
inputs than the notebook's wherever they draw them (``case_seed``), and keep their meaning on every
one: the references still pass, and every wrong version of the chapter's FAILING table is still
rejected with its hint. The checks in FIXED keep their inputs, for the reason given there.

The tables are the chapters' own (``tests/test_checks_chNN.py``); this file only runs them again
under a few salts, and shows that each chapter has a check whose inputs move with the salt.
"""
import importlib
import math

import numpy as np
import pytest
import torch

from gptlib.exercises import registry, run_check

CHAPTERS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
SALTS = (1, 7919, 2_024_061)  # the grader's salt is random; these stand in for it
WRONG_SALTS = SALTS[:2]       # the wrong versions run under two of them (the file stays fast)
FIXED = {"0.9": "its texts are hand-picked: on them the validation loss is lowest at n = order + 1",
         "6.20": "the learner picks lr and warmup_steps by measuring loss_after_budget, whose stream and "
                 "seeds the check runs: other initialisations could fail settings those measurements back"}


def _table_module(chapter):
    # pytest puts tests/ on sys.path for a test file outside a package: the module pytest
    # collected is the one imported here, not a second copy
    return importlib.import_module(f"test_checks_ch{chapter:02d}")


def _rows(table):
    """(values, id) of each row of a table of tuples or of pytest.param rows."""
    for row in table:
        values = tuple(row.values) if hasattr(row, "values") else tuple(row)
        ident = getattr(row, "id", None)
        yield values, ident


def _name(candidate):
    return getattr(candidate, "__name__", type(candidate).__name__)


_LIBRARY = object()  # stands for the exercise's gptlib component, imported when the test runs


def _passing():
    cases = []
    for chapter in CHAPTERS:
        module = _table_module(chapter)
        seen = set()
        for (eid, candidate), ident in _rows(module.PASSING):
            if eid in FIXED:
                continue
            cases.append(pytest.param(eid, candidate, id=ident or f"{eid}-{_name(candidate)}"))
            seen.add(eid)
        for eid, spec in registry().items():  # the library's own component, for every exercise
            if spec.chapter == chapter and spec.builds is not None and eid not in FIXED:
                cases.append(pytest.param(eid, _LIBRARY, id=f"{eid}-gptlib"))
    return cases


def _failing():
    cases = []
    for chapter in CHAPTERS:
        module = _table_module(chapter)
        ids = getattr(module, "FAILING_IDS", None)
        for i, ((eid, candidate, phrase), ident) in enumerate(_rows(module.FAILING)):
            ident = ident or (ids[i] if ids else f"{eid}-{_name(candidate)}")
            for salt in WRONG_SALTS:
                if eid not in FIXED:
                    cases.append(pytest.param(salt, eid, candidate, phrase, id=f"salt{salt}-{ident}"))
    return cases


@pytest.fixture(params=SALTS, ids=[f"salt{s}" for s in SALTS])
def salt(request, monkeypatch):
    monkeypatch.setenv("GPTLIB_CHECK_SALT", str(request.param))
    return request.param


@pytest.mark.parametrize("exercise_id, candidate", _passing())
def test_reference_passes_on_hidden_cases(salt, exercise_id, candidate):
    if candidate is _LIBRARY:
        candidate = registry()[exercise_id].reference()
    result = run_check(exercise_id, candidate)
    assert result.status == "passed", (salt, result.message)


@pytest.mark.parametrize("salt, exercise_id, candidate, phrase", _failing())
def test_wrong_version_rejected_on_hidden_cases(monkeypatch, salt, exercise_id, candidate, phrase):
    monkeypatch.setenv("GPTLIB_CHECK_SALT", str(salt))
    result = run_check(exercise_id, candidate)
    if phrase is None:  # Chapter 9's rows without words: failing or crashing both reject it
        assert result.status in ("failed", "error"), (salt, result)
    else:
        assert result.status == "failed", (salt, result.status, result.message)
        assert phrase in result.message, (salt, result.message)


# ---- the salt changes what a check feeds the candidate -------------------------------------------
def _snapshot(value):
    """A copy of what a call was given: tensors (and arrays, as tensors), numbers, strings and the
    lists, tuples and dicts made of them; anything else (a model, a generator) by its type only."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {key: _snapshot(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_snapshot(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return type(value).__name__


def _recording(func, seen):
    def candidate(*args, **kwargs):
        seen.append(_snapshot([args, kwargs]))
        return func(*args, **kwargs)
    candidate.__name__ = func.__name__
    return candidate


def _inputs(exercise_id, func, salt, monkeypatch):
    monkeypatch.setenv("GPTLIB_CHECK_SALT", str(salt))
    seen = []
    assert run_check(exercise_id, _recording(func, seen)).passed
    return seen


def _same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(_same(a[k], b[k]) for k in a))
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return a == b or both_nan


RECORDED = [  # one function-shaped exercise per chapter whose inputs come from case_seed
    ("0.1", "gptlib.ngram:bigram_counts"),
    ("1.2", "gptlib.tokenizer:count_pairs"),         # lists of ids: recorded as plain values
    ("2.5", "gptlib.embeddings:one_hot_embed"),
    ("3.3", "gptlib.masking:masked_softmax"),
    ("4.1", "gptlib.attention:attention_weights"),
    ("5.9", "gptlib.model:convert_hf_state_dict"),
    ("6.7", "gptlib.training:evaluate"),
    ("7.3", "gptlib.sampling:top_k_filter"),
    ("8.6", "gptlib.classify:pool_last"),
    ("9.3", "gptlib.llama:apply_rope"),
]


@pytest.mark.parametrize("exercise_id, path", RECORDED, ids=[e for e, _ in RECORDED])
def test_a_salt_changes_the_inputs(monkeypatch, exercise_id, path):
    module, _, name = path.partition(":")
    func = getattr(importlib.import_module(module), name)
    notebook = _inputs(exercise_id, func, 0, monkeypatch)
    assert _same(notebook, _inputs(exercise_id, func, 0, monkeypatch))   # the same salt: the same cases
    assert not _same(notebook, _inputs(exercise_id, func, SALTS[0], monkeypatch))
    assert not _same(_inputs(exercise_id, func, SALTS[0], monkeypatch),
                     _inputs(exercise_id, func, SALTS[1], monkeypatch))


def test_every_chapter_records_a_salted_check():
    assert {int(e.split(".")[0]) for e, _ in RECORDED} == set(CHAPTERS)
