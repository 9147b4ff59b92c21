"""Course tooling, run from the repository root (``python -m tools.export`` etc., or the Makefile).

Not part of the installed ``gptlib`` package: it needs the repository (notebooks, ``_config.yml``)
and the ``course`` extra (nbformat, nbdev, nbclient). ``ROOT`` is the repository these files sit in.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
