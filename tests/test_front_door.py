"""gptlib's front door: the names a learner reaches for first, and a light `import gptlib.model`."""
import importlib
import subprocess
import sys

import pytest

import gptlib


@pytest.mark.parametrize("name", gptlib.__all__)
def test_front_door_names_are_the_modules_own_objects(name):
    module = importlib.import_module(f"gptlib.{gptlib._FRONT_DOOR[name]}")
    assert getattr(gptlib, name) is getattr(module, name)
    assert name in dir(gptlib)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'GTP'"):
        gptlib.GTP


def test_importing_the_model_stays_light():
    code = ("import sys, gptlib.model, gptlib.sampling; "
            "print(sorted(m for m in ('matplotlib', 'ipywidgets', 'gptlib.training', 'gptlib.viz') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
