"""Linux tests of the Mac proof kit (scripts/mac): model generation, the report and its logic.

Run by scripts/test.sh with the venv .venv-mac (scripts/requirements-mac.txt):
    .venv-mac/bin/python -m pytest -q tests/mackit
"""
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MAC = os.path.join(ROOT, "scripts", "mac")
sys.path.insert(0, MAC)


@pytest.fixture(scope="session")
def small_models(tmp_path_factory):
    """Every kit model in --small mode, generated once per session."""
    import make_models

    out = tmp_path_factory.mktemp("models")
    assert make_models.main([str(out), "--small"]) == 0
    return out
