"""A Gradescope autograder bundle that runs the course's grader (``make autograder``).

Hand-written (not exported from a notebook).

    python -m tools.autograder [--out _build/autograder] [--chapter N]

writes ``autograder.zip`` (Gradescope unpacks it into ``/autograder/source``) with Gradescope's two
entry points at its top, ``setup.sh`` (installs the tested
versions) and ``run_autograder`` (grades the submitted notebook with ``tools.grade`` and writes
``results/results.json``), and the sources they need (``gptlib/``, the grading tools,
``requirements.txt``, ``constraints.txt``). Upload the zip as the assignment's autograder; with
``--chapter`` every submission is graded as that chapter, otherwise the chapter comes from the
notebook's metadata. ``AUTOGRADER_ROOT`` (default ``/autograder``) and ``AUTOGRADER_PYTHON``
let the same script run outside Gradescope (the tests do).
"""
from __future__ import annotations

import argparse
import json
import stat
import sys
import zipfile
from pathlib import Path

from gptlib.exercises import registry
from tools import ROOT

__all__ = ["write_results", "gradescope_results", "build_bundle"]

_TOOLS = ["__init__.py", "grade.py", "grade_source.py", "grade_worker.py", "autograder.py",
          "course.py", "export.py", "student.py"]

SETUP_SH = """#!/usr/bin/env bash
# Gradescope runs this once, when the autograder image is built.
set -euo pipefail
cd /autograder/source
apt-get update -qq && apt-get install -y -qq python3 python3-pip python3-venv
python3 -m venv /autograder/venv
torch_pin="$(grep -i '^torch==' constraints.txt || echo torch)"
/autograder/venv/bin/pip install --quiet "$torch_pin" --index-url https://download.pytorch.org/whl/cpu
/autograder/venv/bin/pip install --quiet -r requirements.txt -c constraints.txt
"""

RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope runs this for every submission: grade the submitted notebook, write results.json.
set -euo pipefail
ROOT="${{AUTOGRADER_ROOT:-/autograder}}"
PY="${{AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}}"
mkdir -p "$ROOT/results"
shopt -s nullglob
notebooks=("$ROOT"/submission/*.ipynb)
if [ ${{#notebooks[@]}} -ne 1 ]; then
  printf '{{"score": 0, "output": "Submit exactly one notebook (.ipynb); found %s."}}\\n' "${{#notebooks[@]}}" \\
    > "$ROOT/results/results.json"
  exit 0
fi
cd "$ROOT/source"
export GPTLIB_PROFILE="${{GPTLIB_PROFILE:-smoke}}"
"$PY" -m tools.grade "${{notebooks[0]}}" --out "$ROOT/results/gradebook" --jobs 1 \\
  --gradescope "$ROOT/results/results.json" {chapter} ${{AUTOGRADER_ARGS:-}}
"""


def gradescope_results(report) -> dict:
    """Gradescope's results JSON for one graded submission (a ``tools.grade.GradeReport``)."""
    from tools.grade import POINTS
    tests = []
    for eid, status in report.results.items():
        spec = registry()[eid]
        tests.append({"number": eid, "name": f"Exercise {eid} · {spec.title} ({spec.tier})",
                      "score": report.points(eid), "max_score": POINTS[spec.tier],
                      "status": "passed" if status == "passed" else "failed",
                      "output": status + (f": {report.messages[eid]}" if report.messages.get(eid) else "")})
    output = f"Runs top to bottom: {report.runs}."
    if report.note:
        output += f" {report.note}"
    return {"score": report.score, "tests": tests, "output": output}


def write_results(reports, path: Path) -> Path:
    """Write the results JSON of the (single) submission in ``reports`` to ``path``."""
    if len(reports) != 1:
        raise ValueError(f"Gradescope grades one submission at a time, got {len(reports)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gradescope_results(reports[0]), indent=1, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    return path


def _add(zf: zipfile.ZipFile, arcname: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = ((0o755 if executable else 0o644) | stat.S_IFREG) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def build_bundle(out_dir: Path, chapter: int | None = None, root: Path = ROOT) -> Path:
    """Write ``autograder.zip`` into ``out_dir``; return its path. Deterministic for given sources."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "autograder.zip"
    sources = sorted(p for p in (root / "gptlib").rglob("*.py") if "__pycache__" not in p.parts)
    sources += [root / "tools" / name for name in _TOOLS]
    sources += [root / name for name in ("requirements.txt", "constraints.txt", "pyproject.toml")]
    # the course notebooks: the grader's forbidden-call scan reads what the course provides from
    # them (the bundle is the instructor's; Gradescope does not show it to students)
    sources += sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    with zipfile.ZipFile(target, "w") as zf:
        _add(zf, "setup.sh", SETUP_SH.encode(), executable=True)
        run = RUN_AUTOGRADER.format(chapter=f"--chapter {int(chapter)}" if chapter is not None else "")
        _add(zf, "run_autograder", run.encode(), executable=True)
        for path in sources:
            if path.exists():
                _add(zf, path.relative_to(root).as_posix(), path.read_bytes())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a Gradescope autograder bundle.")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "autograder")
    parser.add_argument("--chapter", type=int, default=None,
                        help="grade every submission as this chapter (default: the notebook's metadata)")
    args = parser.parse_args(argv)
    print(f"wrote {build_bundle(args.out, args.chapter)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
