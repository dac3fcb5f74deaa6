"""docs/api.md is generated from the docstrings (scripts/gen_api_docs.py): it must be current,
and every public name must be in it with a docstring that has an example."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest

import fastmine
import fastmine.distributed
import fastmine.nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gen_api_docs.py")


def test_api_md_is_current():
    proc = subprocess.run([sys.executable, SCRIPT, "--check"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("module", [fastmine.nn, fastmine.distributed], ids=lambda m: m.__name__)
def test_public_callables_have_an_example(module):
    for name in module.__all__:
        obj = getattr(module, name)
        doc = inspect.getdoc(obj) or ""
        assert ">>>" in doc, f"{module.__name__}.{name} has no example in its docstring"


def test_checker_fails_on_a_stale_file(tmp_path, monkeypatch):
    """The --check mode must be able to fail."""
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import gen_api_docs
    finally:
        sys.path.pop(0)
    stale = tmp_path / "api.md"
    stale.write_text(gen_api_docs.render().replace("fastmine.nn.BatchHardTripletLoss", "Gone"))
    monkeypatch.setattr(gen_api_docs, "OUT", str(stale))
    assert gen_api_docs.main(["--check"]) == 1
    stale.write_text(gen_api_docs.render())
    assert gen_api_docs.main(["--check"]) == 0
