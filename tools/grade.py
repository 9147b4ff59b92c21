"""Grade submitted notebooks: run each one, collect which exercise checks passed.

Hand-written (not exported from a notebook).

    python -m tools.grade SUBMISSION.ipynb [...] [--out DIR] [--timeout SECONDS]

Each submission runs in a fresh kernel (nbclient) in its own process, in the ``smoke`` profile
unless ``GPTLIB_PROFILE`` says otherwise, with a time limit for the whole notebook. Every call to
``check(...)`` appends its verdict to a log (``GPTLIB_GRADE_LOG``). A notebook that raises keeps
running (later exercises still count) and the first error is reported; one that runs past the
time limit is stopped and reported. Neither stops the grading of the others.

The exercises a notebook is graded on are those registered for its chapter (the number its file
name starts with), so deleting a check does not dodge it. Writes ``gradebook.csv`` (one row per
submission, one column per exercise) and ``gradebook.md`` (a readable summary) into ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gptlib.exercises import registry

__all__ = ["GradeReport", "grade_notebook", "grade", "write_gradebook", "expected_exercises"]


@dataclass
class GradeReport:
    submission: str
    chapter: int | None
    outcome: str  # "completed" | "crashed" | "timed out"
    detail: str = ""
    results: dict[str, str] = field(default_factory=dict)  # exercise id -> status
    seconds: float = 0.0

    @property
    def score(self) -> int:
        return sum(1 for s in self.results.values() if s == "passed")

    @property
    def total(self) -> int:
        return len(self.results)


def chapter_of(path: Path) -> int | None:
    m = re.match(r"(\d+)_", path.name)
    return int(m.group(1)) if m else None


def expected_exercises(chapter: int | None) -> list[str]:
    if chapter is None:
        return []
    return [eid for eid in registry() if eid.split(".")[0] == str(chapter)]


def _run_one(notebook: Path, log: Path, cell_timeout: int) -> int:
    """Child process: execute ``notebook``; exit 0 when all cells ran, 3 when one raised."""
    import nbclient
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=cell_timeout, allow_errors=True,
                                     kernel_name="python3",
                                     resources={"metadata": {"path": str(notebook.parent)}})
    client.execute()
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                print(json.dumps({"error": f"cell {i} raised {out.get('ename')}: "
                                           f"{out.get('evalue', '')[:300]}"}), file=sys.stderr)
                return 3
    return 0


def grade_notebook(path: Path, timeout: float = 900.0) -> GradeReport:
    """Run one submission and report which of its chapter's checks passed."""
    path = Path(path)
    chapter = chapter_of(path)
    report = GradeReport(submission=str(path), chapter=chapter, outcome="completed")
    expected = expected_exercises(chapter)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        work = Path(tmp) / path.name
        work.write_bytes(path.read_bytes())
        log = Path(tmp) / "checks.jsonl"
        env = dict(os.environ, GPTLIB_GRADE_LOG=str(log))
        env.setdefault("GPTLIB_PROFILE", "smoke")
        # the child runs this file as a script: it needs neither the repository on sys.path
        # nor a working directory other than the submission's own temporary folder
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-one", str(work), str(log),
               "--timeout", str(int(timeout))]
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode == 3:
                report.outcome = "crashed"
                report.detail = _last_json(err, "error") or "a cell raised an error"
            elif proc.returncode != 0:
                report.outcome = "crashed"
                report.detail = (err.strip().splitlines() or ["the notebook could not run"])[-1][:300]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            report.outcome = "timed out"
            report.detail = f"stopped after {timeout:.0f} s"
        seen: dict[str, str] = {}
        if log.exists():
            for line in log.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                # a later check of the same exercise (e.g. a retry) overrides an earlier one
                seen[entry["exercise"]] = entry["status"]
    report.results = {eid: seen.get(eid, "missing") for eid in expected}
    for eid, status in seen.items():
        report.results.setdefault(eid, status)
    report.seconds = time.monotonic() - start
    return report


def _last_json(text: str, key: str) -> str | None:
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)[key]
        except (ValueError, KeyError, TypeError):
            continue
    return None


def grade(paths: list[Path], timeout: float = 900.0) -> list[GradeReport]:
    return [grade_notebook(p, timeout) for p in paths]


def write_gradebook(reports: list[GradeReport], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted({e for r in reports for e in r.results},
                 key=lambda e: [int(x) for x in e.split(".")])
    csv_path, md_path = out_dir / "gradebook.csv", out_dir / "gradebook.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "chapter", "outcome", "score", "total", *ids, "detail"])
        for r in reports:
            writer.writerow([r.submission, r.chapter or "", r.outcome, r.score, r.total,
                             *[r.results.get(e, "") for e in ids], r.detail])
    lines = ["# Gradebook", ""]
    for r in reports:
        lines.append(f"## {Path(r.submission).name}: {r.score}/{r.total} ({r.outcome}, "
                     f"{r.seconds:.0f} s)")
        if r.detail:
            lines.append(f"- note: {r.detail}")
        for eid, status in r.results.items():
            mark = "x" if status == "passed" else " "
            lines.append(f"- [{mark}] exercise {eid}: {status}")
        lines.append("")
    md_path.write_text("\n".join(lines), encoding="utf-8")
    return csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--run-one":
        parser = argparse.ArgumentParser()
        parser.add_argument("--run-one", nargs=2, metavar=("NOTEBOOK", "LOG"))
        parser.add_argument("--timeout", type=int, default=900)
        args = parser.parse_args(argv)
        return _run_one(Path(args.run_one[0]), Path(args.run_one[1]), args.timeout)
    parser = argparse.ArgumentParser(description="Grade submitted notebooks.")
    parser.add_argument("submissions", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("gradebook"))
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="time limit per notebook, in seconds (default 900)")
    args = parser.parse_args(argv)
    missing = [p for p in args.submissions if not p.exists()]
    if missing:
        parser.error(f"no such file: {', '.join(map(str, missing))}")
    reports = grade(args.submissions, args.timeout)
    csv_path, md_path = write_gradebook(reports, args.out)
    for r in reports:
        print(f"{r.submission}: {r.score}/{r.total} ({r.outcome}) {r.detail}")
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
