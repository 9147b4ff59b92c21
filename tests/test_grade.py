"""The grader decides every verdict itself, on Chapter 3 (and a small Chapter 4) submission."""
import copy
import json
import os
import re
import subprocess
import sys
import time
import zipfile

import nbformat
import pytest

from gptlib.exercises import registry
from tools import ROOT, autograder, grade, grade_source, student

CH3 = ROOT / "notebooks" / "03_causal_mask.ipynb"
CH3_IDS = [e for e, s in registry().items() if s.chapter == 3]
FAST = dict(run_timeout=None, salt=7, time_limit=60)


def _code(nb, marker: str):
    return next(c for c in nb.cells if c.cell_type == "code" and marker in c.source)


@pytest.fixture(scope="module")
def solved():
    nb = nbformat.read(CH3, as_version=4)
    nb.metadata.setdefault("gptlib", {})["chapter"] = 3
    return nb


@pytest.fixture(scope="module")
def unsolved(solved):
    return student.student_notebook(solved, 3)


def _wrong(solved):
    """Exercise 3.2 filled with 0 instead of -inf; everything else solved."""
    nb = copy.deepcopy(solved)
    cell = _code(nb, "def apply_mask(")
    cell.source = cell.source.replace('scores.masked_fill(~mask, float("-inf"))', "scores.masked_fill(~mask, 0.0)")
    assert "0.0)" in cell.source
    return nb


_FORGERIES = [
    # a forged log line and a forged verdict printed
    "import json, os\nopen(os.environ.get('GPTLIB_GRADE_LOG', 'log.jsonl'), 'a').write("
    "json.dumps({'exercise': '3.1', 'status': 'passed', 'message': ''}) + '\\n')\n"
    "print('✅ Exercise 3.1 (The causal mask): passed')",
    # the check functions patched
    "import gptlib.exercises as E\nimport gptlib.exercises.ch03 as C\n"
    "E.run_check = lambda eid, cand: E.CheckResult(eid, 'passed')\nC.expect = lambda *a, **k: None\n"
    "for spec in E.registry().values():\n    object.__setattr__(spec, 'func', lambda cand: None)",
    # an exported cell that patches at definition time, which the grader does run
    "#| export\nimport gptlib.exercises.ch03 as _C\n_patched = setattr(_C, 'expect', lambda *a, **k: None)",
    # check re-run with the library's reference
    "from gptlib.masking import causal_mask as _ref, apply_mask as _ref2\n"
    "check('3.1', _ref)\ncheck('3.2', _ref2)",
]


def _write(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_solved_unsolved_wrong_and_renamed(tmp_path, solved, unsolved):
    paths = [_write(solved, tmp_path / "Copy of 03_causal_mask.ipynb"),
             _write(unsolved, tmp_path / "hw3 (1).ipynb"),
             _write(_wrong(solved), tmp_path / "submission.ipynb")]
    full, empty, wrong = grade.grade(paths, jobs=2, **FAST)
    assert full.chapter == empty.chapter == wrong.chapter == 3       # from the metadata
    assert full.results == {e: "passed" for e in CH3_IDS}, full.messages
    assert full.score == full.total > 0
    assert empty.results == {e: "not done" for e in CH3_IDS} and empty.score == 0
    assert {e: s for e, s in wrong.results.items() if s != "passed"} == {"3.2": "failed"}
    assert "filled with 0" in wrong.messages["3.2"]
    csv_path, md_path = grade.write_gradebook([full, empty, wrong], tmp_path / "book", salt=7)
    rows = csv_path.read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("submission,chapter," + ",".join(CH3_IDS))
    assert rows[1].startswith("Copy of 03_causal_mask.ipynb,3,passed") and len(rows) == 4
    assert "filled with 0" in md_path.read_text(encoding="utf-8")


def test_chapter_override_and_missing_metadata(tmp_path, unsolved):
    bare = copy.deepcopy(unsolved)
    bare.metadata.pop("gptlib")
    # no metadata and no check calls: nothing says which chapter
    bare.cells = [c for c in bare.cells if not re.search(r"""(build|check)\(["']\d""", c.source)]
    path = _write(bare, tmp_path / "notebook.ipynb")
    assert grade.grade_notebook(path, **FAST).note.startswith("no chapter")
    report = grade.grade_notebook(path, chapter=3, **FAST)
    assert report.results == {e: "not done" for e in CH3_IDS}


def test_forgeries_change_no_verdict(tmp_path, solved, unsolved):
    forged_empty, forged_wrong = copy.deepcopy(unsolved), _wrong(solved)
    for nb in (forged_empty, forged_wrong):
        nb.cells += [nbformat.v4.new_code_cell(src) for src in _FORGERIES]
    empty, wrong = grade.grade([_write(forged_empty, tmp_path / "a.ipynb"),
                                _write(forged_wrong, tmp_path / "b.ipynb")], jobs=2, **FAST)
    assert empty.results == {e: "not done" for e in CH3_IDS}
    assert {e: s for e, s in wrong.results.items() if s != "passed"} == {"3.2": "failed"}


def test_delegating_to_the_reference_is_not_passed(tmp_path, unsolved):
    nb = copy.deepcopy(unsolved)
    placeholder = student.PLACEHOLDER
    mask = _code(nb, "def causal_mask(")      # named in the source: the static scan
    mask.source = mask.source.replace(placeholder, "import gptlib.masking\n    return gptlib.masking.causal_mask(T, device)")
    apply = _code(nb, "def apply_mask(")      # hidden from the scan: the reference refuses the call
    apply.source = apply.source.replace(placeholder, "return getattr(__import__('gptlib.masking', fromlist=['x']), "
                                                     "'apply' + '_mask')(scores, mask)")
    nb.cells.append(nbformat.v4.new_code_cell("from gptlib.masking import padding_mask as _p\npadding_mask = _p"))
    report = grade.grade_notebook(_write(nb, tmp_path / "d.ipynb"), **FAST)
    assert report.results["3.1"] == "forbidden" and "gptlib.masking.causal_mask" in report.messages["3.1"]
    assert report.results["3.2"] == "forbidden" and "unavailable" not in report.messages["3.2"]
    assert "apply_mask" in report.messages["3.2"]
    assert report.results["3.6"] == "forbidden"
    assert report.results["3.3"] == "not done"


def _minimal(chapter: int, source: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["gptlib"] = {"chapter": chapter}
    nb.cells = [nbformat.v4.new_markdown_cell(f"# Chapter {chapter}"), nbformat.v4.new_code_cell(source)]
    return nb


def test_a_forbidden_call_is_named(tmp_path):
    spec = registry()["4.1"]
    if "F.scaled_dot_product_attention" not in spec.forbids:
        pytest.skip("exercise 4.1 does not rule out F.scaled_dot_product_attention")
    nb = _minimal(4, "import torch.nn.functional as F\n\n"
                     "def attention_weights(q, k, mask=None):\n"
                     "    return F.scaled_dot_product_attention(q, k, torch.eye(k.shape[-2]))\n")
    report = grade.grade_notebook(_write(nb, tmp_path / "hw4.ipynb"), **FAST)
    assert report.results["4.1"] == "forbidden"
    assert "F.scaled_dot_product_attention" in report.messages["4.1"]


def test_static_scan_resolves_aliases():
    nb = _minimal(5, "from torch.nn.functional import layer_norm as ln\nimport torch\n\n"
                     "def _norm(x):\n    return ln(x, x.shape[-1:])\n\n"
                     "class LayerNorm(torch.nn.Module):\n    def forward(self, x):\n        return _norm(x)\n\n"
                     "def gelu(x):\n    return torch.nn.functional.gelu(x)\n")
    sub = grade_source.read_submission(nb)
    why = grade_source.ruled_out(sub, "LayerNorm", ("F.layer_norm",), [])
    assert why and "`ln`" in why and "_norm" in why
    assert grade_source.ruled_out(sub, "gelu", ("F.gelu",), []).startswith("`torch.nn.functional.gelu`")
    assert grade_source.ruled_out(sub, "gelu", ("F.layer_norm",), []) is None


_HANGS_AND_CRASHES = '''import os
import torch

def causal_mask(T, device=None):
    while True:
        pass

def apply_mask(scores, mask):
    os._exit(3)

def masked_softmax(scores, mask):
    masked = apply_mask(scores, mask)      # the reference, as apply_mask did not pass
    empty = ~mask.any(dim=-1, keepdim=True)
    return torch.softmax(masked.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
'''


def test_a_hang_and_a_crash_cost_one_exercise_each(tmp_path):
    path = _write(_minimal(3, _HANGS_AND_CRASHES), tmp_path / "h.ipynb")
    start = time.monotonic()
    report = grade.grade_notebook(path, **dict(FAST, time_limit=5))
    assert time.monotonic() - start < 120
    assert report.results["3.1"] == "timed out" and "5 s" in report.messages["3.1"]
    assert report.results["3.2"] == "error" and "stopped" in report.messages["3.2"]
    assert report.results["3.3"] == "passed"
    assert report.results["3.4"] == "not done"


def test_twenty_submissions_are_graded_in_parallel(tmp_path, solved):
    cells = [c.source for c in solved.cells if c.cell_type == "code"
             and (c.source.startswith("#| export") or "mean_attention_offset" in c.source)]
    nb = _minimal(3, "")
    nb.cells = nb.cells[:1] + [nbformat.v4.new_code_cell(src) for src in cells]
    paths = [_write(nb, tmp_path / f"student {i:02d}.ipynb") for i in range(20)]
    reports = grade.grade(paths, jobs=2, **FAST)
    assert [r.results for r in reports] == [{e: "passed" for e in CH3_IDS}] * 20
    spans = sorted((r.started, r.started + r.seconds) for r in reports)
    assert any(b0 < a1 for (_, a1), (b0, _) in zip(spans, spans[1:])), "no two gradings overlapped"


def test_gradescope_bundle_grades_a_solved_and_an_unsolved_notebook(tmp_path, solved, unsolved):
    bundle = autograder.build_bundle(tmp_path / "out")
    assert bundle.read_bytes() == autograder.build_bundle(tmp_path / "again").read_bytes()
    scores = []
    for nb in (solved, unsolved):
        root = tmp_path / f"ag{len(scores)}"
        with zipfile.ZipFile(bundle) as zf:
            zf.extractall(root / "source")
            names = zf.namelist()
        assert {"setup.sh", "run_autograder", "tools/grade.py", "gptlib/exercises/ch03.py"} <= set(names)
        _write(nb, root / "submission" / "my notebook.ipynb")
        env = dict(os.environ, AUTOGRADER_ROOT=str(root), AUTOGRADER_PYTHON=sys.executable,
                   AUTOGRADER_ARGS="--no-run --salt 7")
        env.pop("PYTHONPATH", None)
        subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env, check=True,
                       cwd=tmp_path, timeout=600, capture_output=True)
        results = json.loads((root / "results" / "results.json").read_text(encoding="utf-8"))
        assert [t["number"] for t in results["tests"]] == CH3_IDS
        scores.append((results["score"], sum(t["max_score"] for t in results["tests"]),
                       {t["status"] for t in results["tests"]}))
    (full, top, st_full), (zero, _, st_zero) = scores
    assert full == top > 0 and st_full == {"passed"}
    assert zero == 0 and st_zero == {"failed"}


def test_every_solved_chapter_passes_every_exercise(tmp_path):
    """The course's own notebooks are correct submissions: in every chapter each exercise is
    `passed`. In particular the course's provided hardening (LayerNorm's fused path, the static
    cache's fused kernel) is not taken for a forbidden call, and the scan of one exercise does not
    follow into another exercise's graded code (4.8's layer calls 4.7's fused kernel)."""
    from tools import export
    paths = []
    for path in export.chapter_notebooks(ROOT):
        paths.append(tmp_path / path.name)
        paths[-1].write_bytes(path.read_bytes())
    for report in grade.grade(paths, run_timeout=None):
        assert report.results and all(s == "passed" for s in report.results.values()), (
            report.submission, report.results, report.messages)
