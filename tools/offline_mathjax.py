"""Sphinx extension: the book serves MathJax itself, so a copy read offline still shows formulas.

Sphinx's ``mathjax`` extension loads MathJax from a CDN by default; a book built or read without
internet then shows raw TeX. This extension points ``mathjax_path`` at ``_static/mathjax/`` and
copies MathJax's self-contained SVG build there from the ``django-static-mathjax`` wheel (MathJax's
own browser files, packaged for PyPI; nothing from Django is used). The SVG build needs no font
files, so one file is all the book carries. Enabled in ``_config.yml`` under
``sphinx.local_extensions``.
"""
from __future__ import annotations

import shutil
from pathlib import Path

MATHJAX_FILE = "tex-svg-full.js"  # TeX input (every extension preloaded), SVG output, no fonts


def mathjax_source() -> Path:
    """Where the installed MathJax build is, or a clear error if it is missing."""
    try:
        import mathjax
    except ImportError as err:
        raise RuntimeError("MathJax for the book comes from the django-static-mathjax package: "
                           "`make setup` installs it (requirements.txt)") from err
    path = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / MATHJAX_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall django-static-mathjax")
    return path


def _use_local_path(app, config) -> None:
    mathjax_source()  # fail at the start of a build, not after it
    config.mathjax_path = f"mathjax/{MATHJAX_FILE}"


def _copy_into_book(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        target = Path(app.outdir) / "_static" / "mathjax"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(mathjax_source(), target / MATHJAX_FILE)


def setup(app):
    app.connect("config-inited", _use_local_path)
    app.connect("build-finished", _copy_into_book)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
