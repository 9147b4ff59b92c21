"""How much of gptlib the learner writes: per chapter, exported lines, learner lines, exercises.

Hand-written course tooling. Exported lines are the non-blank lines of a chapter's ``#| export``
cells, without nbdev directives and solution markers (what reaches gptlib). Learner lines are the
non-blank lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` inside those cells (what a
student writes into gptlib). Exercises are the checks registered for the chapter, by tier.

    python -m tools.build_track          # the table
    python -m tools.build_track --json   # the same, machine-readable
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field

import nbformat

from tools import ROOT
from tools.export import DIRECTIVE, chapter_notebooks, module_sections
from tools.student import BEGIN_RE, END_RE


__all__ = ["ChapterStats", "chapter_stats", "all_stats"]


@dataclass
class ChapterStats:
    chapter: int
    notebook: str
    exported: int = 0
    learner: int = 0
    exercises: dict[str, int] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.learner / self.exported if self.exported else 0.0


def _count(source: str) -> tuple[int, int]:
    exported = learner = 0
    inside = False
    for line in source.splitlines():
        if BEGIN_RE.match(line):
            inside = True
            continue
        if END_RE.match(line):
            inside = False
            continue
        if not line.strip() or DIRECTIVE.match(line):
            continue
        exported += 1
        learner += inside
    return exported, learner


def chapter_stats(path) -> ChapterStats:
    from gptlib.exercises import registry
    nb = nbformat.read(path, as_version=4)
    chapter = int(path.name[:2])
    stats = ChapterStats(chapter, path.name)
    for cells in module_sections(nb).values():
        for i in cells:
            e, l = _count(nb.cells[i].source)
            stats.exported += e
            stats.learner += l
    for spec in registry().values():
        if spec.chapter == chapter:
            stats.exercises[spec.tier] = stats.exercises.get(spec.tier, 0) + 1
    return stats


def all_stats() -> list[ChapterStats]:
    return [chapter_stats(p) for p in chapter_notebooks(ROOT)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    stats = all_stats()
    if args.json:
        print(json.dumps([asdict(s) | {"share": round(s.share, 3)} for s in stats], indent=1))
        return 0
    print(f"{'chapter':<28} {'exported':>8} {'learner':>8} {'share':>6}  exercises (warm-up/core/stretch)")
    for s in stats:
        tiers = "/".join(str(s.exercises.get(t, 0)) for t in ("warm-up", "core", "stretch"))
        print(f"{s.notebook:<28} {s.exported:>8} {s.learner:>8} {s.share:>6.1%}  {tiers}")
    e, l = sum(s.exported for s in stats), sum(s.learner for s in stats)
    n = sum(sum(s.exercises.values()) for s in stats)
    print(f"{'total':<28} {e:>8} {l:>8} {l / e:>6.1%}  {n} exercises")
    return 0


if __name__ == "__main__":
    sys.exit(main())
